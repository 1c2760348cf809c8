"""Conversation KV states on disk (opt-in, `model.save_state`): a new process restores what an earlier one
held and evaluates only the new turn.

One file per (conversation, model): `<cache>/states/<conversation id>-<model id prefix>.kvs`:

    header   magic, model identity (sha256), image count, key count, payload size, payload sha256
    images   per image: its sha256 (hex) and positions
    keys     one int64 per KV position: a token id, or -(image index << 24 | offset) (see PositionKeys)
    payload  llama_state_seq_get_data of sequence 0 (llama.cpp's sequence-state format)

The model identity is the sha256 of both GGUF files' bytes (memoised, see disk_files.file_sha256) and the
llama.cpp build: the state format is not versioned across builds. llama.cpp still checks the layer count,
cache types and layout when the state is set. The keys say what the state holds, so a file found under
another conversation's name is only ever used for a prompt it is a prefix of. Files are untrusted: the size
must be exact, the payload's hash must match, the keys must be valid; anything else is removed and the
prompt evaluated as if there were no file. The folder is bounded by `model.state_dir_mb` (LRU by mtime).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vision_agent.backends.llama_cpp.disk_files import (
    evict_lru,
    is_sha256,
    open_regular,
    read_exactly,
    remove,
    touch,
    write_atomic,
)

log = logging.getLogger(__name__)

MAGIC = b"VAKVS001"  # the last digits are the format's version
# magic, model identity, images, keys, payload bytes, payload sha256
HEADER = struct.Struct("<8s32sIIQ32s")
IMAGE = struct.Struct("<64sI")  # image sha256 (hex), positions
KEY = struct.Struct("<q")
SUFFIX = ".kvs"
IMAGE_SHIFT = 24
_CONVERSATION_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


@dataclass(frozen=True)
class SavedState:
    """What a state file says it holds; its payload is read (and checked) only when it is used."""

    path: Path
    names: list[str]  # image names as PositionKeys knows them: "<sha256>:<positions>"
    keys: list[int]  # portable keys (PositionKeys.to_portable)
    head: bytes  # header, images and keys as read: the file must still start with them when loaded
    payload_size: int
    payload_sha: bytes


class DiskStates:
    def __init__(self, root: Path, identity: Callable[[], bytes], max_bytes: int, max_positions: int):
        """`identity`: the model's 32-byte identity, computed on first use (it hashes the model files)."""
        self.root = root
        self.max_bytes = max_bytes
        self.max_positions = max_positions
        self._identity_of = identity
        self._identity: bytes | None = None

    @property
    def identity(self) -> bytes:
        if self._identity is None:
            self._identity = self._identity_of()
        return self._identity

    def path(self, conversation_id: str | None) -> Path | None:
        if conversation_id is None or not _CONVERSATION_ID.fullmatch(conversation_id):
            return None  # only names we can trust become paths
        return self.root / f"{conversation_id}-{self.identity.hex()[:16]}{SUFFIX}"

    def save(self, conversation_id: str, names: list[str], keys: list[int], payload, size: int) -> bool:
        """Write the state (`payload`: `size` bytes, a ctypes buffer or bytes) whole, or nothing."""
        path = self.path(conversation_id)
        images = [_split_name(name) for name in names]
        if path is None or None in images or not keys or len(keys) > self.max_positions:
            return False
        view = memoryview(payload).cast("B")[:size]
        head = b"".join(
            [
                HEADER.pack(MAGIC, self.identity, len(names), len(keys), size, hashlib.sha256(view).digest()),
                *(IMAGE.pack(sha.encode(), n_pos) for sha, n_pos in images),  # type: ignore[misc]
                struct.pack(f"<{len(keys)}q", *keys),
            ]
        )
        if len(head) + size > self.max_bytes:
            log.debug("KV state of %d positions (%d bytes) is over model.state_dir_mb", len(keys), size)
            return False
        if not write_atomic(path, [head, view]):
            log.debug("KV state: could not write %s", path.name)
            return False
        evict_lru([self.root], SUFFIX, self.max_bytes)
        return True

    def peek(self, conversation_id: str | None) -> SavedState | None:
        """The saved state's header and keys, checked; None (and the file removed if it is bad) otherwise."""
        path = self.path(conversation_id)
        if path is None:
            return None
        try:
            fd = open_regular(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._reject(path, f"unreadable ({exc})")
        if fd is None:
            return self._reject(path, "not a regular file")
        try:
            size = os.fstat(fd).st_size
            raw = read_exactly(fd, HEADER.size)
            if len(raw) != HEADER.size:
                return self._reject(path, "truncated header")
            magic, identity, n_images, n_keys, payload_size, payload_sha = HEADER.unpack(raw)
            if magic != MAGIC or identity != self.identity:
                return self._reject(path, "another format or model")
            if not 0 < n_keys <= self.max_positions or n_images > n_keys:
                return self._reject(path, "impossible key count")
            rest = n_images * IMAGE.size + n_keys * KEY.size
            if size != HEADER.size + rest + payload_size:
                return self._reject(path, "size does not match its header")
            body = read_exactly(fd, rest)
        except OSError as exc:
            return self._reject(path, f"unreadable ({exc})")
        finally:
            os.close(fd)
        if len(body) != rest:
            return self._reject(path, "truncated")
        names = []
        for index in range(n_images):
            sha, n_pos = IMAGE.unpack_from(body, index * IMAGE.size)
            sha = sha.decode("ascii", "replace")
            if not is_sha256(sha) or not 0 < n_pos < 1 << IMAGE_SHIFT:
                return self._reject(path, "bad image entry")
            names.append(f"{sha}:{n_pos}")
        keys = list(struct.unpack_from(f"<{n_keys}q", body, n_images * IMAGE.size))
        if not _valid_keys(keys, [int(name.split(":")[1]) for name in names]):
            return self._reject(path, "bad keys")
        return SavedState(path, names, keys, raw + body, payload_size, payload_sha)

    def load(self, saved: SavedState) -> bytearray | None:
        """The payload, if the file still starts with what `peek` read and the payload's hash matches."""
        try:
            fd = open_regular(saved.path)
        except OSError:
            return None
        if fd is None:
            return self._reject(saved.path, "not a regular file")
        try:
            if read_exactly(fd, len(saved.head)) != saved.head:
                return None  # replaced since (another process saved a newer state): just not used now
            payload = bytearray(saved.payload_size)
            with os.fdopen(os.dup(fd), "rb", buffering=0) as stream:
                got = stream.readinto(payload)
        except OSError as exc:
            return self._reject(saved.path, f"unreadable ({exc})")
        finally:
            os.close(fd)
        if got != saved.payload_size or hashlib.sha256(payload).digest() != saved.payload_sha:
            return self._reject(saved.path, "payload does not match its hash")
        touch(saved.path)
        return payload

    def discard(self, saved: SavedState, why: str) -> None:
        self._reject(saved.path, why)

    @staticmethod
    def _reject(path: Path, why: str) -> None:
        log.debug("KV state %s: %s; removed", path.name, why)
        remove(path)
        return None


def model_identity(files: list[Path], memo: Path) -> bytes:
    """sha256 over the files' own sha256s and the llama.cpp build."""
    import llama_cpp

    from vision_agent.backends.llama_cpp.disk_files import file_sha256

    digest = hashlib.sha256(f"vision-agent KV state; llama-cpp-python {llama_cpp.__version__}".encode())
    for path in files:
        digest.update(bytes.fromhex(file_sha256(path, memo)))
    return digest.digest()


def _split_name(name: str) -> tuple[str, int] | None:
    sha, _, n_pos = name.partition(":")
    if not is_sha256(sha) or not n_pos.isdigit() or not 0 < int(n_pos) < 1 << IMAGE_SHIFT:
        return None
    return sha, int(n_pos)


def _valid_keys(keys: list[int], image_positions: list[int]) -> bool:
    for key in keys:
        if key < 0:
            index, offset = divmod(-key, 1 << IMAGE_SHIFT)
            if not 1 <= index <= len(image_positions) or offset >= image_positions[index - 1]:
                return False
        elif key >= 1 << 31:  # no vocabulary is that large
            return False
    return True
