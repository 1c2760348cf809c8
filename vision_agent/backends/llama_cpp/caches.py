"""Byte-bounded LRU caches for the llama.cpp backend: image embeddings and sequence-state snapshots."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteBoundedLRU(Generic[K, V]):
    """Least-recently-used entries go first once the sizes add up to more than `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V, size: int) -> bool:
        """False (and nothing stored) when the entry alone exceeds the bound."""
        self.pop(key)
        if size > self.max_bytes:
            return False
        self._entries[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted
        return True

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self.bytes -= entry[1]
        return entry[0]

    def values(self) -> list[V]:
        return [value for value, _ in self._entries.values()]


def common_prefix(a: Sequence, b: Sequence) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass(frozen=True)
class Snapshot:
    """The KV state of one sequence and the positions it holds (see PositionKeys)."""

    keys: tuple[int, ...]
    data: Any  # a ctypes byte buffer from llama_state_seq_get_data


class SnapshotStore:
    """Saved conversation states; the one sharing the longest prefix with a new prompt is restored."""

    def __init__(self, max_bytes: int):
        self._lru: ByteBoundedLRU[tuple[int, ...], Snapshot] = ByteBoundedLRU(max_bytes)

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def bytes(self) -> int:
        return self._lru.bytes

    @property
    def max_bytes(self) -> int:
        return self._lru.max_bytes

    def add(self, snapshot: Snapshot, size: int) -> None:
        # A saved state that is a prefix of the new one is superseded by it.
        for old in self._lru.values():
            if len(old.keys) <= len(snapshot.keys) and snapshot.keys[: len(old.keys)] == old.keys:
                self._lru.pop(old.keys)
        self._lru.put(snapshot.keys, snapshot, size)

    def covers(self, keys: Sequence[int]) -> bool:
        """True when some saved state already starts with all of `keys`."""
        keys = tuple(keys)
        return any(s.keys[: len(keys)] == keys for s in self._lru.values())

    def best(self, keys: Sequence[int]) -> tuple[Snapshot | None, int]:
        best, best_prefix = None, 0
        for snapshot in self._lru.values():
            prefix = common_prefix(snapshot.keys, keys)
            if prefix > best_prefix:
                best, best_prefix = snapshot, prefix
        if best is not None:
            self._lru.get(best.keys)  # mark as recently used
        return best, best_prefix


class PositionKeys:
    """One int per KV position: a text token's id, or a negative key naming (image, offset).

    Two prompts agree on a position exactly when their keys are equal, so the held prefix of a new
    prompt is a plain common prefix of two int lists.
    """

    _SHIFT = 24  # offsets within one image stay below 2**24 positions

    def __init__(self):
        self._serials: dict[str, int] = {}
        self._names: dict[int, str] = {}

    def image(self, image_id: str, n_pos: int) -> list[int]:
        base = self._serial(image_id) << self._SHIFT
        return [-(base + offset) for offset in range(n_pos)]

    def _serial(self, image_id: str) -> int:
        serial = self._serials.setdefault(image_id, len(self._serials) + 1)
        self._names[serial] = image_id
        return serial

    def to_portable(self, keys: Sequence[int]) -> tuple[list[str], list[int]]:
        """Keys another process can read: serials are this process's own, so images are renumbered
        1, 2, ... in order of appearance and their names (the `image_id`s) listed."""
        names: list[str] = []
        local: dict[int, int] = {}
        out = []
        for key in keys:
            if key >= 0:
                out.append(key)
                continue
            serial, offset = divmod(-key, 1 << self._SHIFT)
            if serial not in local:
                names.append(self._names[serial])
                local[serial] = len(names)
            out.append(-((local[serial] << self._SHIFT) + offset))
        return names, out

    def from_portable(self, names: Sequence[str], keys: Sequence[int]) -> list[int]:
        """This process's keys for `to_portable`'s output (ValueError when an image index is out of range)."""
        serials = [self._serial(name) for name in names]
        out = []
        for key in keys:
            if key >= 0:
                out.append(key)
                continue
            index, offset = divmod(-key, 1 << self._SHIFT)
            if not 1 <= index <= len(serials):
                raise ValueError(f"image index {index} of {len(serials)}")
            out.append(-((serials[index - 1] << self._SHIFT) + offset))
        return out
