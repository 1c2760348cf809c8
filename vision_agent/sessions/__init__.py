"""Conversations that last: the SQLite store every process shares (store), and the session service every front
end calls (session): one model and tool registry per session, each run's turn committed to the store.

`from vision_agent.sessions import Session` imports the session module only when asked (start-up stays light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vision_agent.sessions.session import Session

__all__ = ["Session"]


def __getattr__(name: str):
    if name == "Session":
        from vision_agent.sessions.session import Session

        return Session
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
