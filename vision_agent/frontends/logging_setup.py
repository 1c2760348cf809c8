"""Diagnostics go to stderr; llama.cpp's own chatter only with -v."""

from __future__ import annotations

import logging
import sys


class _SafeFormatter(logging.Formatter):
    """Log records carry file names, plugin errors and llama.cpp lines: shown, never obeyed by the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        from vision_agent.frontends.terminal import safe

        return safe(super().format(record))


def configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("%(name)s: %(message)s" if verbose else "vision-agent: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    # Silenced, not filtered: the backend still keeps llama.cpp's last error for its own messages.
    logging.getLogger("vision_agent.llama").setLevel(logging.INFO if verbose else logging.CRITICAL + 1)
    for noisy in ("httpx", "httpcore", "huggingface_hub", "filelock", "markdown_it", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
