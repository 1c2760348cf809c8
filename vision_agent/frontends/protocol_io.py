"""The stdio of a protocol server (`jsonl`, `acp`): stdout carries protocol lines and nothing else.

llama-cpp-python points fds 1 and 2 at /dev/null while it loads a model, inits the projector and encodes an
image, and llama.cpp, ggml and our own logging may print to fd 1 at any time. So the protocol claims a private
duplicate of the real stdout, fd 1 is pointed at stderr for everyone else, and one lock makes each protocol
line a single whole write. Input lines are read as bytes with a cap: a client cannot make us hold an endless line.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO, NamedTuple

MAX_LINE_BYTES = 64 * 2**20  # a base64 image at the 48 MiB file limit fits
_READ_CHUNK = 1 << 16
# Characters that str.splitlines() breaks lines at but JSON leaves raw inside strings: escaped, a JSON-lines
# reader in any language sees exactly one object per line.
_LINE_BREAKS = re.compile("[\x85\u2028\u2029]")


class ProtocolOut:
    """Whole protocol lines to the real stdout, from any thread."""

    def __init__(self, fd: int):
        self._fd = fd
        self._lock = threading.Lock()
        self.closed = False

    @classmethod
    def claim(cls) -> ProtocolOut:
        """Keep the real stdout for the protocol; fd 1 (and sys.stdout) now lead to stderr. Call before anything
        can print: before logging is set up and before llama.cpp loads."""
        sys.stdout.flush()
        private = os.dup(1)
        os.set_inheritable(private, False)  # a tool's child process must not write into the protocol
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return cls(private)

    def write_line(self, text: str) -> bool:
        """One line (the newline is added), written whole; False once the reader has gone (EPIPE)."""
        data = (text + "\n").encode("utf-8", errors="replace")
        with self._lock:
            if self.closed:
                return False
            view = memoryview(data)
            try:
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
            except (BrokenPipeError, OSError):
                self.closed = True
                return False
        return True

    def write_json(self, message: Any) -> bool:
        """A dict or a pydantic model as one compact JSON line (lone surrogates become U+FFFD)."""
        return self.write_line(json_line(message))

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                try:
                    os.close(self._fd)
                except OSError:
                    pass


def json_line(message: Any) -> str:
    """Compact JSON of a dict or a pydantic model, one line, valid UTF-8 whatever strings it holds."""
    import json

    from vision_agent.text import valid_values

    if hasattr(message, "model_dump"):
        message = message.model_dump(mode="json", exclude_none=False)
    line = json.dumps(valid_values(message), ensure_ascii=False, separators=(",", ":"))
    return _LINE_BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


class Oversized(NamedTuple):
    """A line longer than the cap: its bytes were read and dropped up to its newline."""

    size: int


def read_lines(stream: BinaryIO, max_bytes: int = MAX_LINE_BYTES) -> Iterator[bytes | Oversized]:
    """Each line of `stream` without its newline (and a trailing CR), or Oversized for a line over `max_bytes`.
    Ends at EOF; a last line without a newline counts."""
    read = getattr(stream, "read1", stream.read)
    pending = bytearray()
    skipping = 0  # > 0: inside an oversized line, this many bytes dropped so far
    while True:
        chunk = read(_READ_CHUNK)
        if not chunk:
            break
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            piece = chunk[start:] if newline < 0 else chunk[start:newline]
            if skipping:
                skipping += len(piece)
            elif len(pending) + len(piece) > max_bytes:
                skipping = len(pending) + len(piece)
                pending.clear()
            else:
                pending += piece
            if newline < 0:
                break
            if skipping:
                yield Oversized(skipping)
                skipping = 0
            else:
                yield _strip_cr(bytes(pending))
                pending.clear()
            start = newline + 1
    if skipping:
        yield Oversized(skipping)
    elif pending:
        yield _strip_cr(bytes(pending))


def _strip_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


MAX_DEPTH = 64  # JSON nesting refused beyond this (no request of ours needs more than a few levels)


class BadLine(ValueError):
    """An input line that is not JSON: invalid UTF-8, too deeply nested, or not parseable."""


def loads_line(line: bytes) -> Any:
    """The JSON value of one input line; BadLine with a one-line reason. NaN and Infinity are not JSON here, and
    deep nesting is refused before the parser recurses into it."""
    import json

    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadLine(f"the line is not valid UTF-8 (byte {exc.start})") from None
    if _too_deep(text):
        raise BadLine(f"JSON nested deeper than {MAX_DEPTH}")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadLine(f"not JSON: {str(exc)[:200]}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_deep(text: str) -> bool:
    """Nesting deeper than MAX_DEPTH, counted outside strings."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif char in "]}":
            depth -= 1
    return False
