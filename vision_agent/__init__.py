"""vision-agent: a local, private, agentic vision assistant for the terminal."""

__version__ = "0.1.0"
