"""Routes llama.cpp and libmtmd log lines into Python logging instead of raw stderr.

Quiet by default (the CLI's -v shows them); the last error lines are kept so a failure message can
say what llama.cpp complained about. A ggml abort (a failed GGML_ASSERT) cannot be survived; it is
reported on stderr as one line with llama.cpp's last error lines, and the process exits with the
documented llama.cpp-failure code instead of dying on SIGABRT with, at best, a debugger's backtrace.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading

logger = logging.getLogger("vision_agent.llama")
recent_errors: collections.deque[str] = collections.deque(maxlen=5)
# (sequence number, line) of recent error lines: failures quote only what was logged since they began.
_numbered: collections.deque[tuple[int, str]] = collections.deque(maxlen=32)
_sequence = itertools.count(1)
_last_number = 0

ABORT_EXIT_CODE = 11  # errors.BackendError.exit_code: a llama.cpp failure
# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous line's level.
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_CONTINUE = 5
_previous_level = logging.DEBUG
_installed = False
_callbacks: list = []  # keeps the ctypes callbacks alive for the process lifetime
_install_lock = threading.Lock()
_abort_lock = threading.Lock()  # several compute threads can fail the same assert at once: one report


def install() -> None:
    global _installed
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
                _remember(line.strip())
            logger.log(python_level, "%s", line)

        _callbacks.append(forward)
        llama_cpp.llama_log_set(forward, None)
        mtmd_cpp.mtmd_log_set(forward, None)
        mtmd_cpp.mtmd_helper_log_set(forward, None)
        _install_abort_handler()
        _installed = True


def _remember(line: str) -> None:
    global _last_number
    _last_number = next(_sequence)
    recent_errors.append(line)
    _numbered.append((_last_number, line))


def last_error(default: str = "") -> str:
    return recent_errors[-1] if recent_errors else default


def mark() -> int:
    """A point in the log; `errors_since(mark)` gives the error lines logged after it."""
    return _last_number


def errors_since(point: int, limit: int = 3) -> list[str]:
    return [line for number, line in _numbered if number > point][-limit:]


def describe_since(point: int, default: str) -> str:
    """llama.cpp's last error lines since `point`, as one line, or `default` when it logged none."""
    lines = errors_since(point)
    return " | ".join(lines) if lines else default


def _install_abort_handler() -> None:
    """ggml_abort calls this instead of printing and forking a debugger; abort() would follow it."""
    import ctypes

    import llama_cpp._ggml as ggml

    try:
        setter = ggml.libggml.ggml_set_abort_callback
    except AttributeError:  # a build without it: ggml's own message and SIGABRT
        return
    callback_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p)

    @callback_type
    def on_abort(message):
        if not _abort_lock.acquire(blocking=False):  # another thread is reporting and leaving: wait for the end
            threading.Event().wait()
        text = (message or b"").decode("utf-8", errors="replace").strip()
        text = text.rsplit("/llama.cpp/", 1)[-1]  # the build machine's path says nothing to the user
        lines = [line for line in recent_errors if line not in text][-3:]
        report = f"vision-agent: llama.cpp aborted: {text}"
        if lines:
            report += f" (its last errors: {' | '.join(lines)})"
        try:
            os.write(2, (report + "\n").encode("utf-8", errors="replace"))
        finally:
            os._exit(ABORT_EXIT_CODE)

    setter.argtypes = [callback_type]
    setter.restype = ctypes.c_void_p
    setter(on_abort)
    _callbacks.append(on_abort)
