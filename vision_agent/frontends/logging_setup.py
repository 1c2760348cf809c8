"""Where diagnostics go, chosen by each front end: stderr for the CLI, a file for a full-screen app (a stderr
handler would draw over it). llama.cpp's own chatter only with -v."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO


class _SafeFormatter(logging.Formatter):
    """Log records carry file names, plugin errors and llama.cpp lines: shown, never obeyed by the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        from vision_agent.frontends.terminal import safe

        return safe(super().format(record))


def configure_logging(verbose: bool, destination: TextIO | Path | None = None) -> None:
    """Send every log record to `destination`: a stream (default: stderr) or a file, appended to."""
    handler: logging.Handler
    if isinstance(destination, Path):
        destination.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(destination, encoding="utf-8", errors="backslashreplace")
    else:
        handler = logging.StreamHandler(destination or sys.stderr)
    handler.setFormatter(_SafeFormatter("%(name)s: %(message)s" if verbose else "vision-agent: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    # Silenced, not filtered: the backend still keeps llama.cpp's last error for its own messages.
    logging.getLogger("vision_agent.llama").setLevel(logging.INFO if verbose else logging.CRITICAL + 1)
    for noisy in ("httpx", "httpcore", "huggingface_hub", "filelock", "markdown_it", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
