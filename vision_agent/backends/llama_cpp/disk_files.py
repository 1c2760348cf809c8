"""Plain-file helpers shared by the on-disk caches (disk_embeddings, disk_states): files other processes
write at the same time and anyone may have damaged, so every read is checked and every write is whole."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

_HASH_CHUNK = 1 << 20
STALE_TEMPORARY_NS = 3600 * 10**9  # a write in progress is never this old


def file_sha256(path: Path, memo: Path) -> str:
    """The sha256 of the file's bytes, memoised under `memo` by (device, inode, size, mtime, ctime, path).

    A full hash, not a sample: a fine-tuned projector can differ from its base only in the small MLP after
    a frozen vision tower, which a sample of the file would miss. The memo makes it once per file version
    (~1 s for 600 MB); ctime changes on any rewrite, even one that restores the mtime."""
    info = path.stat()
    stamp = f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}:".encode()
    memo_file = memo / hashlib.sha256(stamp + os.fsencode(path.resolve())).hexdigest()  # paths need not be UTF-8
    try:
        remembered = read_regular(memo_file, 64)
        if remembered is not None and is_sha256(remembered.decode("ascii", "replace")):
            return remembered.decode("ascii")
    except OSError:
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(_HASH_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    write_atomic(memo_file, [value.encode()])
    return value


def open_regular(path: Path) -> int | None:
    """A read-only fd on `path` if it is a regular file (not a link, FIFO, device, folder), else None.
    FileNotFoundError propagates; never blocks."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def read_exactly(fd: int, size: int) -> bytes:
    """Up to `size` bytes (fewer only at the end of the file)."""
    chunks, left = [], size
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_regular(path: Path, limit: int) -> bytes | None:
    """At most limit + 1 bytes of a regular file (None if it is something else); never blocks on a FIFO."""
    fd = open_regular(path)
    if fd is None:
        return None
    try:
        return read_exactly(fd, limit + 1)
    finally:
        os.close(fd)


def write_atomic(path: Path, parts: Iterable) -> bool:
    """Write `parts` (bytes-like) to a temporary file beside `path`, then rename it over `path`: a reader sees
    the old file or the new one, never half. False (and nothing left behind) when it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                for part in parts:
                    out.write(part)
            os.replace(temporary, path)
        except BaseException:
            remove(Path(temporary))
            raise
    except OSError:
        return False
    return True


def touch(path: Path) -> None:
    """Mark as recently used (the LRU order is the files' mtimes)."""
    try:
        os.utime(path)
    except OSError:
        pass


def evict_lru(folders: Iterable[Path], suffix: str, max_bytes: int) -> None:
    """Remove the least recently used `*suffix` files of `folders` until their sizes add up to `max_bytes`."""
    entries = []
    stale = time.time_ns() - STALE_TEMPORARY_NS
    for folder in folders:
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    temporary = entry.name.startswith(".") and entry.name.endswith(".tmp")
                    if not (temporary or entry.name.endswith(suffix)):
                        continue
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if not temporary:
                        entries.append((info.st_mtime_ns, info.st_size, Path(entry.path)))
                    elif info.st_mtime_ns < stale:  # left by a writer that was killed
                        remove(Path(entry.path))
        except OSError:
            continue
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        remove(path)
        total -= size


def remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except OSError:
        pass


def is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)
