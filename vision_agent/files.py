"""Opening a file someone else named (a flag, a config, a stored record, a model): no hang, no traceback.

A FIFO with no writer blocks `open()` forever, `/dev/zero` never ends, a symlink loop or an over-long name
raises an OSError no caller expects. Here the open is non-blocking, fstat refuses anything but a regular
file, reads are bounded, and every failure is the caller's own error type with one line that says why.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from vision_agent.errors import VisionAgentError


def open_regular(path: str | Path, *, what: str, error: type[VisionAgentError], missing=None) -> int:
    """A read-only descriptor for the regular file at `path` (the caller closes it).

    `what` names the file in messages ("config file", "image"); `missing` is raised instead of the usual
    error when there is no such file, for callers to whom that means something else.
    """
    name = display_name(path)
    try:
        # Non-blocking, so that a FIFO with no writer cannot hang the open; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise (missing or error(f"{what} {name}: no such file")) from None
    except OSError as exc:  # ELOOP, EACCES, ENAMETOOLONG, ENOTDIR, EIO, …
        raise error(f"{what} {name}: cannot open ({exc.strerror or exc})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{what} {name}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(
    path: str | Path, max_bytes: int, *, what: str, error: type[VisionAgentError], too_large=None, missing=None
) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; `too_large` (an error type) says when it is larger."""
    fd = open_regular(path, what=what, error=error, missing=missing)
    try:
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{what} {display_name(path)}: cannot read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise (too_large or error)(f"{what} {display_name(path)}: larger than the limit of {max_bytes:,} bytes")
    return data


def exists(path: str | Path, *, what: str, error: type[VisionAgentError]) -> bool:
    """Whether something is at `path`; a name the system refuses (a loop of symlinks, too long, a file used
    as a directory) is an error with the reason, not 'absent'."""
    try:
        os.stat(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise error(f"{what} {display_name(path)}: cannot access ({exc.strerror or exc})") from None


def display_name(path: str | Path) -> str:
    """A file name as valid text: undecodable bytes (from argv or the file system) become U+FFFD."""
    return os.fsencode(path).decode("utf-8", errors="replace")


@contextlib.contextmanager
def utf8_path(path: str | Path, *, what: str, error: type[VisionAgentError]) -> Iterator[str]:
    """`path` as text llama.cpp can take: llama-cpp-python encodes paths as UTF-8, so a name in another
    encoding is reached through /proc/self/fd (Linux) while the block runs."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        if not os.path.isdir("/proc/self/fd"):
            raise error(f"{what} {display_name(path)}: the name is not valid UTF-8; rename it or link to it") from None
        fd = open_regular(path, what=what, error=error)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    yield text
