"""A bounded GGUF reader: structure and metadata, never trusting a length, a count or an offset.

Every length, count, type, dimension and offset is checked against the file's size and a fixed cap before
it is used; large arrays are skipped by seeking, and only the values asked for are materialised, so a
52-byte file claiming an array of 2^40 items is refused at once with bounded memory. Failures are
ModelFileError (exit 4) with one line that names the key.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn, overload

from vision_agent.errors import ModelFileError
from vision_agent.files import open_regular

# -- caps (real files stay far below each one) ------------------------------------------------------------
MAX_KVS = 16_384
MAX_TENSORS = 65_536
MAX_KEY_BYTES = 1_024
MAX_NAME_BYTES = 63  # GGML_MAX_NAME is 64 with the terminating NUL
MAX_ARRAY_ITEMS = 1 << 30  # llama.cpp's own GGUF_MAX_ARRAY_ELEMENTS
MAX_STRING_ARRAY_ITEMS = 4_000_000  # walked one by one: this bounds the time (real: tokens + merges < 1M)
MAX_VOCAB = 1 << 19  # real vocabularies: 32k-262k tokens; llama.cpp allocates n_vocab x n_batch logits
MAX_VALUE_BYTES = 1 << 20  # a string value we materialise (names, tokenizer model, ...)
MAX_TEMPLATE_BYTES = 256 * 1024  # real chat templates: 1-30 KB
MAX_LAYERS = 512  # LLAMA_MAX_LAYERS
MAX_EXPERTS = 1_024  # LLAMA_MAX_EXPERTS

# GGUF value types: code -> (name, struct format or None for string/array)
STRING, ARRAY = 8, 9
VALUE_TYPES = {
    0: ("u8", "<B"),
    1: ("i8", "<b"),
    2: ("u16", "<H"),
    3: ("i16", "<h"),
    4: ("u32", "<I"),
    5: ("i32", "<i"),
    6: ("f32", "<f"),
    7: ("bool", "<b"),
    STRING: ("str", None),
    ARRAY: ("arr", None),
    10: ("u64", "<Q"),
    11: ("i64", "<q"),
    12: ("f64", "<d"),
}
INTEGER_TYPES = {0, 1, 2, 3, 4, 5, 10, 11}
U32, I32, F32, BOOL = 4, 5, 6, 7

# ggml tensor types of this llama.cpp: code -> (name, block size, bytes per block). Removed types are absent.
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18), 42: ("Q2_0", 64, 18),
}  # fmt: skip

# llama_ftype (include/llama.h) for `models info`
FILE_TYPES = (
    "ALL_F32 F16 Q4_0 Q4_1 - - - Q8_0 Q5_0 Q5_1 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K "
    "IQ2_XXS IQ2_XS Q2_K_S IQ3_XS IQ3_XXS IQ1_S IQ4_NL IQ3_S IQ3_M IQ2_S IQ2_M IQ4_XS IQ1_M BF16 - - - TQ1_0 TQ2_0 "
    "MXFP4_MOE NVFP4 Q1_0 Q2_0"
).split()


# -- the bounded reader -----------------------------------------------------------------------------------


@dataclass
class KeyValue:
    type: int  # a value type, or ARRAY
    elem: int | None = None  # element type of an array
    count: int = 1
    value: int | float | bytes | None = None  # scalars: the value; strings: bytes (None past MAX_VALUE_BYTES)
    offset: int = 0  # where the value (an array's first element, a string's bytes) starts


@dataclass
class TensorInfo:
    name: str
    dims: tuple[int, ...]
    type: int
    offset: int
    n_elements: int
    n_bytes: int


class _Cursor:
    """Reads little-endian values from a buffer; every read is checked against its end."""

    def __init__(self, buf, where: str):
        self.buf, self.pos, self.end, self.where = buf, 0, len(buf), where

    def fail(self, message: str) -> NoReturn:
        raise ModelFileError(f"{self.where}: {message}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.end:
            self.fail(f"truncated or corrupt GGUF ({what} at byte {self.pos} runs past the end of the file)")

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        self.need(size, what)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self, what: str, max_bytes: int | None = None) -> tuple[int, int]:
        """(offset, length) of a length-prefixed string, checked and skipped."""
        length = self.unpack("<Q", f"length of {what}")
        if max_bytes is not None and length > max_bytes:
            self.fail(f"{what} is {length:,} bytes long (the limit is {max_bytes:,})")
        self.need(length, what)
        start = self.pos
        self.pos += length
        return start, length


class GGUFFile:
    """The parsed structure of one GGUF file: its key/value pairs and tensor infos (lazily read arrays)."""

    def __init__(self, path: Path, buf, size: int):
        self.path, self.buf, self.size = path, buf, size
        self.where = f"model file {path}"
        self.kvs: dict[str, KeyValue] = {}
        self.tensors: list[TensorInfo] = []
        self.version = 0
        self.alignment = 32
        self.data_offset = 0
        self._parse()

    def fail(self, message: str) -> NoReturn:
        raise ModelFileError(f"{self.where}: {message}")

    # structure

    def _parse(self) -> None:
        c = _Cursor(self.buf, self.where)
        if self.size < 4 or bytes(self.buf[:4]) != b"GGUF":
            self.fail("not a GGUF file")
        c.pos = 4
        self.version = c.unpack("<I", "version")
        if self.version & 0xFFFF == 0 and self.version:
            self.fail(f"GGUF version {self.version:#x}: a big-endian file, not supported")
        if self.version not in (2, 3):
            self.fail(f"GGUF version {self.version} is not supported (2 and 3 are)")
        n_tensors = c.unpack("<q", "tensor count")
        n_kv = c.unpack("<q", "key/value count")
        # Each key/value pair takes at least 13 bytes and each tensor info at least 24: counts past what
        # the file could hold are refused before any loop.
        if not 0 <= n_kv <= min(MAX_KVS, (self.size - c.pos) // 13):
            self.fail(f"key/value count {n_kv:,} is impossible for a {self.size:,}-byte file (limit {MAX_KVS:,})")
        if not 0 <= n_tensors <= min(MAX_TENSORS, (self.size - c.pos) // 24):
            self.fail(f"tensor count {n_tensors:,} is impossible for a {self.size:,}-byte file (limit {MAX_TENSORS:,})")
        string_items = 0
        for index in range(n_kv):
            start, length = c.string(f"key {index}", MAX_KEY_BYTES)
            if length == 0:
                self.fail(f"key {index} is empty")
            key = decode_text(self.buf[start : start + length], f"key {index}", self.fail)
            if key in self.kvs:
                self.fail(f"duplicate key {show(key)}")
            kv = self._value(c, key)
            if kv.type == ARRAY and kv.elem == STRING:
                string_items += kv.count
                if string_items > 2 * MAX_STRING_ARRAY_ITEMS:
                    self.fail(f"too many strings in arrays (more than {2 * MAX_STRING_ARRAY_ITEMS:,})")
            self.kvs[key] = kv
        alignment = self.kvs.get("general.alignment")
        if alignment is not None:
            value = alignment.value
            if alignment.type != U32 or not isinstance(value, int) or not 0 < value <= 1 << 20 or value & (value - 1):
                self.fail("general.alignment must be a u32 power of two")
            self.alignment = value
        names: set[str] = set()
        for index in range(n_tensors):
            tensor = self._tensor_info(c, index)
            if tensor.name in names:
                self.fail(f"duplicate tensor {show(tensor.name)}")
            names.add(tensor.name)
            self.tensors.append(tensor)
        self.data_offset = c.pos + (-c.pos % self.alignment)
        self._check_tensor_data()

    def _value(self, c: _Cursor, key: str) -> KeyValue:
        type_code = c.unpack("<I", f"type of {show(key)}")
        if type_code not in VALUE_TYPES:
            self.fail(f"key {show(key)} has unknown value type {type_code}")
        if type_code == STRING:
            start, length = c.string(f"value of {show(key)}")
            value = bytes(self.buf[start : start + length]) if length <= MAX_VALUE_BYTES else None
            return KeyValue(STRING, value=value, count=length, offset=start)
        if type_code != ARRAY:
            fmt = _fixed_format(type_code)
            offset = c.pos
            return KeyValue(type_code, value=c.unpack(fmt, f"value of {show(key)}"), offset=offset)
        elem = c.unpack("<I", f"element type of {show(key)}")
        count = c.unpack("<Q", f"length of {show(key)}")
        if elem not in VALUE_TYPES:
            self.fail(f"array {show(key)} has unknown element type {elem}")
        if elem == ARRAY:
            self.fail(f"array {show(key)} holds arrays (nested arrays are not supported)")
        offset = c.pos
        if elem == STRING:
            # Each string is at least its 8-byte length: the count is checked before the walk.
            if count > min(MAX_STRING_ARRAY_ITEMS, (c.end - c.pos) // 8):
                self.fail(f"array {show(key)} claims {count:,} strings, more than the file can hold or the limit")
            c.pos = _skip_strings(c, count, show(key))
        else:
            size = struct.calcsize(_fixed_format(elem))
            if count > MAX_ARRAY_ITEMS or count * size > c.end - c.pos:
                self.fail(f"array {show(key)} claims {count:,} items, more than the file can hold")
            c.pos += count * size
        return KeyValue(ARRAY, elem=elem, count=count, offset=offset)

    def _tensor_info(self, c: _Cursor, index: int) -> TensorInfo:
        start, length = c.string(f"name of tensor {index}", MAX_NAME_BYTES)
        name = decode_text(self.buf[start : start + length], f"name of tensor {index}", self.fail)
        n_dims = c.unpack("<I", f"dimension count of {show(name)}")
        if n_dims > 4:
            self.fail(f"tensor {show(name)} has {n_dims} dimensions (at most 4)")
        dims = tuple(c.unpack("<q", f"dimensions of {show(name)}") for _ in range(n_dims))
        if any(d < 0 for d in dims):
            self.fail(f"tensor {show(name)} has a negative dimension {dims}")
        type_code = c.unpack("<i", f"type of {show(name)}")
        if type_code not in GGML_TYPES:
            self.fail(f"tensor {show(name)} has unknown ggml type {type_code}")
        offset = c.unpack("<Q", f"offset of {show(name)}")
        n_elements = math.prod(dims)
        _, block, block_bytes = GGML_TYPES[type_code]
        if n_elements >= 1 << 62:
            self.fail(f"tensor {show(name)} has an impossible shape {dims}")
        if dims and dims[0] % block:
            self.fail(f"tensor {show(name)} rows of {dims[0]} are not a multiple of its block size {block}")
        return TensorInfo(name, dims, type_code, offset, n_elements, n_elements // block * block_bytes)

    def _check_tensor_data(self) -> None:
        """Offsets as llama.cpp requires them: each tensor right after the previous one (padded), all inside
        the file. This also rules out overlapping tensors."""
        expected = 0
        for tensor in self.tensors:
            if tensor.offset != expected:
                self.fail(f"tensor {show(tensor.name)} is at offset {tensor.offset:,}, expected {expected:,}")
            expected += tensor.n_bytes + (-tensor.n_bytes % self.alignment)
        if self.tensors and self.data_offset + expected > self.size:
            last = self.tensors[-1]
            self.fail(
                f"truncated (tensor {show(last.name)} ends past the end of the file; re-download it)"
                if self.data_offset + last.offset <= self.size
                else "truncated (tensor data ends past the end of the file; re-download it)"
            )

    # values

    def has(self, key: str) -> bool:
        return key in self.kvs

    def type_name(self, key: str) -> str:
        kv = self.kvs[key]
        if kv.type == ARRAY and kv.elem is not None:
            return f"array of {VALUE_TYPES[kv.elem][0]}"
        return VALUE_TYPES[kv.type][0]

    @overload
    def string(self, key: str, *, required: Literal[True], max_bytes: int = ...) -> str: ...
    @overload
    def string(self, key: str, *, required: bool = False, max_bytes: int = ...) -> str | None: ...
    def string(self, key: str, *, required: bool = False, max_bytes: int = MAX_VALUE_BYTES) -> str | None:
        kv = self.kvs.get(key)
        if kv is None:
            if required:
                self.fail(f"{key} is missing")
            return None
        if kv.type != STRING:
            self.fail(f"{key} must be a string, not {self.type_name(key)}")
        if not isinstance(kv.value, bytes) or kv.count > max_bytes:
            self.fail(f"{key} is {kv.count:,} bytes long (the limit is {max_bytes:,})")
        return decode_text(kv.value, key, self.fail)

    @overload
    def integer(self, key: str, lo: int, hi: int, *, default: int, types: Collection[int] = ...) -> int: ...
    @overload
    def integer(
        self, key: str, lo: int, hi: int, *, default: None = None, types: Collection[int] = ...
    ) -> int | None: ...
    def integer(
        self, key: str, lo: int, hi: int, *, default: int | None = None, types: Collection[int] = INTEGER_TYPES
    ) -> int | None:
        """An integer scalar in [lo, hi]; `types` restricts the value types llama.cpp accepts for it."""
        kv = self.kvs.get(key)
        if kv is None:
            return default
        if kv.type not in types:
            wanted = " or ".join(sorted(VALUE_TYPES[t][0] for t in types))
            self.fail(f"{key} must be {wanted}, not {self.type_name(key)}")
        value = kv.value
        assert isinstance(value, int), "integer value types unpack to int"
        if not lo <= value <= hi:
            self.fail(f"{key} = {value} is out of range ({lo}..{hi})")
        return value

    def number(self, key: str, *, types: Collection[int] = (F32,)) -> float | None:
        kv = self.kvs.get(key)
        if kv is None:
            return None
        if kv.type not in types:
            self.fail(f"{key} must be {'/'.join(VALUE_TYPES[t][0] for t in types)}, not {self.type_name(key)}")
        value = kv.value
        assert isinstance(value, (int, float)), "numeric value types unpack to int or float"
        if not math.isfinite(value):
            self.fail(f"{key} = {value} is not a finite number")
        return value

    def boolean(self, key: str) -> bool | None:
        kv = self.kvs.get(key)
        if kv is None:
            return None
        if kv.type != BOOL:
            self.fail(f"{key} must be bool, not {self.type_name(key)}")
        return bool(kv.value)

    def array(self, key: str, elem_types: Collection[int], *, max_items: int = 1 << 20) -> list | None:
        """A fixed-size-element array as a list (at most `max_items`, read only when asked)."""
        kv = self.kvs.get(key)
        if kv is None:
            return None
        if kv.type != ARRAY or kv.elem is None or kv.elem not in elem_types:
            wanted = "/".join(VALUE_TYPES[t][0] for t in elem_types)
            self.fail(f"{key} must be an array of {wanted}, not {self.type_name(key)}")
        if kv.count > max_items:
            self.fail(f"{key} has {kv.count:,} items (the limit is {max_items:,})")
        fmt = _fixed_format(kv.elem)
        values = list(struct.unpack_from(f"<{kv.count}{fmt[1]}", self.buf, kv.offset))
        if kv.elem == F32 and not all(math.isfinite(v) for v in values):
            self.fail(f"{key} holds a value that is not a finite number")
        return values

    def int_or_array(self, key: str, n: int, lo: int, hi: int, *, default: list[int]) -> list[int]:
        """A per-layer value given as one integer or as an array of exactly `n` (llama.cpp get_key_or_arr)."""
        kv = self.kvs.get(key)
        if kv is None:
            return default
        if kv.type == ARRAY:
            values = self.array(key, INTEGER_TYPES - {10, 11}, max_items=MAX_LAYERS)
            assert values is not None, "the key exists"
            if len(values) != n:
                self.fail(f"{key} has {len(values)} items, expected one per layer ({n})")
            for value in values:
                if not lo <= value <= hi:
                    self.fail(f"{key} holds {value}, out of range ({lo}..{hi})")
            return values
        return [self.integer(key, lo, hi, default=0)] * n  # the key exists: the default is never used

    def strings(self, key: str) -> list[bytes]:
        """Every string of a string array (callers bound the count first)."""
        kv = self.kvs[key]
        buf, pos, out = self.buf, kv.offset, []
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(kv.count):
            length = unpack(buf, pos)[0]
            out.append(bytes(buf[pos + 8 : pos + 8 + length]))
            pos += 8 + length
        return out

    def tensor(self, name: str) -> TensorInfo | None:
        if not hasattr(self, "_by_name"):
            self._by_name = {t.name: t for t in self.tensors}
        return self._by_name.get(name)


def _skip_strings(c: _Cursor, count: int, what: str) -> int:
    buf, pos, end = c.buf, c.pos, c.end
    unpack = struct.Struct("<Q").unpack_from
    for index in range(count):
        if pos + 8 > end:
            c.pos = pos
            c.fail(f"truncated or corrupt GGUF (string {index} of {what} runs past the end of the file)")
        pos += 8 + unpack(buf, pos)[0]
        if pos > end:
            c.pos = pos
            c.fail(f"truncated or corrupt GGUF (string {index} of {what} runs past the end of the file)")
    return pos


def _fixed_format(type_code: int) -> str:
    """The struct format of a fixed-size value type (callers have ruled out strings and arrays)."""
    fmt = VALUE_TYPES[type_code][1]
    assert fmt is not None, f"value type {type_code} has no fixed size"
    return fmt


def decode_text(data: bytes | memoryview, what: str, fail: Callable[[str], NoReturn]) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        fail(f"{what} is not valid UTF-8")


def show(text: str, limit: int = 80) -> str:
    """File-derived text for a one-line message: quoted, control characters escaped, shortened."""
    shown = repr(text[:limit] + ("..." if len(text) > limit else ""))
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in shown)


def open_gguf(path: str | Path) -> GGUFFile:
    """Map a GGUF file read-only and parse its structure (nothing is read beyond what is needed)."""
    path = Path(path)
    fd = open_regular(path, what="model file", error=ModelFileError)
    try:
        info = os.fstat(fd)
        if info.st_size < 24:
            raise ModelFileError(f"model file {path}: not a GGUF file ({info.st_size} bytes)")
        try:
            buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"model file {path}: cannot read ({exc})") from None
    finally:
        os.close(fd)
    return GGUFFile(path, memoryview(buf), info.st_size)
