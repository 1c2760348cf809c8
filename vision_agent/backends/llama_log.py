"""Routes llama.cpp and libmtmd log lines into Python logging instead of raw stderr.

Quiet by default (the CLI's -v shows them); the last error lines are kept so a failure message can
say what llama.cpp complained about.
"""

from __future__ import annotations

import collections
import logging
import threading

logger = logging.getLogger("vision_agent.llama")
recent_errors: collections.deque[str] = collections.deque(maxlen=5)

# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous line's level.
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_CONTINUE = 5
_previous_level = logging.DEBUG
_installed = False
_callback = None  # keeps the ctypes callback alive for the process lifetime
_install_lock = threading.Lock()


def install() -> None:
    global _installed, _callback
    with _install_lock:
        if _installed:
            return
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd_cpp

        @llama_cpp.llama_log_callback
        def forward(level, text, _user_data):
            global _previous_level
            line = text.decode("utf-8", errors="replace").rstrip("\n") if text else ""
            python_level = _previous_level if level == _CONTINUE else _LEVELS.get(level, logging.DEBUG)
            _previous_level = python_level
            if not line.strip():
                return
            if python_level >= logging.ERROR:
                recent_errors.append(line.strip())
            logger.log(python_level, "%s", line)

        _callback = forward
        llama_cpp.llama_log_set(forward, None)
        mtmd_cpp.mtmd_log_set(forward, None)
        mtmd_cpp.mtmd_helper_log_set(forward, None)
        _installed = True


def last_error(default: str = "") -> str:
    return recent_errors[-1] if recent_errors else default
