"""Conversations that last (to come): the SQLite store every process shares, and the session service every
front end calls. Until then the last conversation lives in vision_agent.history."""
