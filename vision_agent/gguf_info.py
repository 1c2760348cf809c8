"""Reads GGUF metadata before llama.cpp sees a file, so bad or mismatched files get a clear refusal.

Two walls. The reader is bounded: every length, count, type, dimension and offset is checked against the
file's size and a fixed cap before it is used, large arrays are skipped by seeking, and only the values
this module needs are materialised. Then the values llama.cpp and libmtmd assert on (GGML_ASSERT aborts
the process, with fds 1/2 pointed at /dev/null while loading) are validated, with their types, against the
rules of the llama.cpp we build (0.3.36: src/llama-model.cpp, llama-vocab.cpp, tools/mtmd/clip.cpp).
A refusal is a ModelFileError (exit 4) or, for a pair that does not belong together, a ModelMismatchError
(exit 5), with one line that names the key.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from vision_agent.errors import ModelFileError, ModelMismatchError

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
_STRING, _ARRAY = 8, 9
_VALUE_TYPES = {
    0: ("u8", "<B"),
    1: ("i8", "<b"),
    2: ("u16", "<H"),
    3: ("i16", "<h"),
    4: ("u32", "<I"),
    5: ("i32", "<i"),
    6: ("f32", "<f"),
    7: ("bool", "<b"),
    _STRING: ("str", None),
    _ARRAY: ("arr", None),
    10: ("u64", "<Q"),
    11: ("i64", "<q"),
    12: ("f64", "<d"),
}
_INTEGER_TYPES = {0, 1, 2, 3, 4, 5, 10, 11}
_U32, _I32, _F32, _BOOL = 4, 5, 6, 7

# ggml tensor types of this llama.cpp: code -> (name, block size, bytes per block). Removed types are absent.
_GGML_TYPES = {
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
_FILE_TYPES = (
    "ALL_F32 F16 Q4_0 Q4_1 - - - Q8_0 Q5_0 Q5_1 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K "
    "IQ2_XXS IQ2_XS Q2_K_S IQ3_XS IQ3_XXS IQ1_S IQ4_NL IQ3_S IQ3_M IQ2_S IQ2_M IQ4_XS IQ1_M BF16 - - - TQ1_0 TQ2_0 "
    "MXFP4_MOE NVFP4 Q1_0 Q2_0"
).split()


# -- the bounded reader -----------------------------------------------------------------------------------


@dataclass
class _KV:
    type: int  # a value type, or _ARRAY
    elem: int | None = None  # element type of an array
    count: int = 1
    value: object = None  # scalars: the value; strings: bytes (None when longer than MAX_VALUE_BYTES)
    offset: int = 0  # where the value (an array's first element, a string's bytes) starts


@dataclass
class _Tensor:
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

    def fail(self, message: str):
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
        self.kvs: dict[str, _KV] = {}
        self.tensors: list[_Tensor] = []
        self.version = 0
        self.alignment = 32
        self.data_offset = 0
        self._parse()

    def fail(self, message: str):
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
            key = _text(self.buf[start : start + length], f"key {index}", self.fail)
            if key in self.kvs:
                self.fail(f"duplicate key {show(key)}")
            kv = self._value(c, key)
            if kv.type == _ARRAY and kv.elem == _STRING:
                string_items += kv.count
                if string_items > 2 * MAX_STRING_ARRAY_ITEMS:
                    self.fail(f"too many strings in arrays (more than {2 * MAX_STRING_ARRAY_ITEMS:,})")
            self.kvs[key] = kv
        alignment = self.kvs.get("general.alignment")
        if alignment is not None:
            if alignment.type != _U32 or not 0 < alignment.value <= 1 << 20 or alignment.value & (alignment.value - 1):
                self.fail("general.alignment must be a u32 power of two")
            self.alignment = alignment.value
        names: set[str] = set()
        for index in range(n_tensors):
            tensor = self._tensor_info(c, index)
            if tensor.name in names:
                self.fail(f"duplicate tensor {show(tensor.name)}")
            names.add(tensor.name)
            self.tensors.append(tensor)
        self.data_offset = c.pos + (-c.pos % self.alignment)
        self._check_tensor_data()

    def _value(self, c: _Cursor, key: str) -> _KV:
        type_code = c.unpack("<I", f"type of {show(key)}")
        if type_code not in _VALUE_TYPES:
            self.fail(f"key {show(key)} has unknown value type {type_code}")
        if type_code == _STRING:
            start, length = c.string(f"value of {show(key)}")
            value = bytes(self.buf[start : start + length]) if length <= MAX_VALUE_BYTES else None
            return _KV(_STRING, value=value, count=length, offset=start)
        if type_code != _ARRAY:
            fmt = _VALUE_TYPES[type_code][1]
            offset = c.pos
            return _KV(type_code, value=c.unpack(fmt, f"value of {show(key)}"), offset=offset)
        elem = c.unpack("<I", f"element type of {show(key)}")
        count = c.unpack("<Q", f"length of {show(key)}")
        if elem not in _VALUE_TYPES:
            self.fail(f"array {show(key)} has unknown element type {elem}")
        if elem == _ARRAY:
            self.fail(f"array {show(key)} holds arrays (nested arrays are not supported)")
        offset = c.pos
        if elem == _STRING:
            # Each string is at least its 8-byte length: the count is checked before the walk.
            if count > min(MAX_STRING_ARRAY_ITEMS, (c.end - c.pos) // 8):
                self.fail(f"array {show(key)} claims {count:,} strings, more than the file can hold or the limit")
            c.pos = _skip_strings(c, count, show(key))
        else:
            size = struct.calcsize(_VALUE_TYPES[elem][1])
            if count > MAX_ARRAY_ITEMS or count * size > c.end - c.pos:
                self.fail(f"array {show(key)} claims {count:,} items, more than the file can hold")
            c.pos += count * size
        return _KV(_ARRAY, elem=elem, count=count, offset=offset)

    def _tensor_info(self, c: _Cursor, index: int) -> _Tensor:
        start, length = c.string(f"name of tensor {index}", MAX_NAME_BYTES)
        name = _text(self.buf[start : start + length], f"name of tensor {index}", self.fail)
        n_dims = c.unpack("<I", f"dimension count of {show(name)}")
        if n_dims > 4:
            self.fail(f"tensor {show(name)} has {n_dims} dimensions (at most 4)")
        dims = tuple(c.unpack("<q", f"dimensions of {show(name)}") for _ in range(n_dims))
        if any(d < 0 for d in dims):
            self.fail(f"tensor {show(name)} has a negative dimension {dims}")
        type_code = c.unpack("<i", f"type of {show(name)}")
        if type_code not in _GGML_TYPES:
            self.fail(f"tensor {show(name)} has unknown ggml type {type_code}")
        offset = c.unpack("<Q", f"offset of {show(name)}")
        n_elements = math.prod(dims)
        _, block, block_bytes = _GGML_TYPES[type_code]
        if n_elements >= 1 << 62:
            self.fail(f"tensor {show(name)} has an impossible shape {dims}")
        if dims and dims[0] % block:
            self.fail(f"tensor {show(name)} rows of {dims[0]} are not a multiple of its block size {block}")
        return _Tensor(name, dims, type_code, offset, n_elements, n_elements // block * block_bytes)

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
        if kv.type == _ARRAY:
            return f"array of {_VALUE_TYPES[kv.elem][0]}"
        return _VALUE_TYPES[kv.type][0]

    def string(self, key: str, *, required: bool = False, max_bytes: int = MAX_VALUE_BYTES) -> str | None:
        kv = self.kvs.get(key)
        if kv is None:
            if required:
                self.fail(f"{key} is missing")
            return None
        if kv.type != _STRING:
            self.fail(f"{key} must be a string, not {self.type_name(key)}")
        if kv.value is None or kv.count > max_bytes:
            self.fail(f"{key} is {kv.count:,} bytes long (the limit is {max_bytes:,})")
        return _text(kv.value, key, self.fail)

    def integer(self, key: str, lo: int, hi: int, *, default: int | None = None, types=_INTEGER_TYPES) -> int | None:
        """An integer scalar in [lo, hi]; `types` restricts the value types llama.cpp accepts for it."""
        kv = self.kvs.get(key)
        if kv is None:
            return default
        if kv.type not in types:
            wanted = " or ".join(sorted(_VALUE_TYPES[t][0] for t in types))
            self.fail(f"{key} must be {wanted}, not {self.type_name(key)}")
        if not lo <= kv.value <= hi:
            self.fail(f"{key} = {kv.value} is out of range ({lo}..{hi})")
        return kv.value

    def number(self, key: str, *, types=(_F32,)) -> float | None:
        kv = self.kvs.get(key)
        if kv is None:
            return None
        if kv.type not in types:
            self.fail(f"{key} must be {'/'.join(_VALUE_TYPES[t][0] for t in types)}, not {self.type_name(key)}")
        if not math.isfinite(kv.value):
            self.fail(f"{key} = {kv.value} is not a finite number")
        return kv.value

    def boolean(self, key: str) -> bool | None:
        kv = self.kvs.get(key)
        if kv is None:
            return None
        if kv.type != _BOOL:
            self.fail(f"{key} must be bool, not {self.type_name(key)}")
        return bool(kv.value)

    def array(self, key: str, elem_types, *, max_items: int = 1 << 20) -> list | None:
        """A fixed-size-element array as a list (at most `max_items`, read only when asked)."""
        kv = self.kvs.get(key)
        if kv is None:
            return None
        if kv.type != _ARRAY or kv.elem not in elem_types:
            wanted = "/".join(_VALUE_TYPES[t][0] for t in elem_types)
            self.fail(f"{key} must be an array of {wanted}, not {self.type_name(key)}")
        if kv.count > max_items:
            self.fail(f"{key} has {kv.count:,} items (the limit is {max_items:,})")
        fmt = _VALUE_TYPES[kv.elem][1]
        values = list(struct.unpack_from(f"<{kv.count}{fmt[1]}", self.buf, kv.offset))
        if kv.elem == _F32 and not all(math.isfinite(v) for v in values):
            self.fail(f"{key} holds a value that is not a finite number")
        return values

    def int_or_array(self, key: str, n: int, lo: int, hi: int, *, default: list[int]) -> list[int]:
        """A per-layer value given as one integer or as an array of exactly `n` (llama.cpp get_key_or_arr)."""
        kv = self.kvs.get(key)
        if kv is None:
            return default
        if kv.type == _ARRAY:
            values = self.array(key, _INTEGER_TYPES - {10, 11}, max_items=MAX_LAYERS)
            if len(values) != n:
                self.fail(f"{key} has {len(values)} items, expected one per layer ({n})")
            for value in values:
                if not lo <= value <= hi:
                    self.fail(f"{key} holds {value}, out of range ({lo}..{hi})")
            return values
        return [self.integer(key, lo, hi)] * n

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

    def tensor(self, name: str) -> _Tensor | None:
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


def _text(data, what: str, fail) -> str:
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
    try:
        # Non-blocking so that a FIFO cannot hang the open; fstat then refuses anything but a regular file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ModelFileError(f"model file {path}: no such file") from None
    except OSError as exc:
        raise ModelFileError(f"model file {path}: cannot open ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ModelFileError(f"model file {path}: not a regular file")
        if info.st_size < 24:
            raise ModelFileError(f"model file {path}: not a GGUF file ({info.st_size} bytes)")
        try:
            buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"model file {path}: cannot read ({exc})") from None
    finally:
        os.close(fd)
    return GGUFFile(path, memoryview(buf), info.st_size)


# -- the summary --------------------------------------------------------------------------------------------


@dataclass
class GGUFSummary:
    path: Path
    architecture: str
    name: str = ""
    size_bytes: int = 0
    n_params: int = 0
    file_type: str = ""
    # text models
    embedding_length: int | None = None
    context_length: int | None = None
    block_count: int | None = None
    vocab_size: int | None = None
    chat_template: str | None = None
    head_count: int | None = None
    head_count_kv: int | None = None  # the largest over the layers
    key_length: int | None = None
    value_length: int | None = None
    # projectors
    projector_type: str | None = None
    projection_dim: int | None = None  # the width the projector really outputs when its tensors say so
    image_size: int | None = None
    patch_size: int | None = None
    has_vision: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def is_projector(self) -> bool:
        return self.architecture == "clip"

    @property
    def template_family(self) -> str:
        """The prompt family a text model would use with chat_format=auto."""
        if not self.chat_template:
            return "vicuna (no chat template in the file)"
        t = self.chat_template
        for marker, family in (
            ("<|im_start|>", "chatml"),
            ("[INST]", "mistral"),
            ("<start_of_turn>", "gemma"),
            ("<|start_header_id|>", "llama3"),
            ("<|User|>", "deepseek"),
        ):
            if marker in t:
                return f"gguf ({family}-style template)"
        return "gguf (embedded template)"


def read_summary(path: str | Path) -> GGUFSummary:
    """Parse a GGUF file with the bounded reader and validate what llama.cpp would assert on."""
    g = open_gguf(path)
    arch = g.string("general.architecture", required=True, max_bytes=64)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", arch):
        g.fail(f"general.architecture {show(arch)} is not an architecture name")
    file_type = g.integer("general.file_type", 0, 1 << 16, types={_U32})
    summary = GGUFSummary(
        path=Path(path),
        architecture=arch,
        name=g.string("general.name") or "",
        size_bytes=g.size,
        n_params=sum(t.n_elements for t in g.tensors),
        file_type=_file_type_name(file_type),
    )
    if g.integer("split.count", 0, 1 << 16, default=0) > 1:
        g.fail("a split GGUF (one part of several); merge the parts with llama-gguf-split --merge")
    _check_tensor_types(g)
    if arch == "clip":
        _check_projector(g, summary)
    else:
        _check_text_model(g, summary)
    return summary


# Types ggml cannot multiply or add with as weights (integers, F64, the Q8_1/Q8_K activation formats): a
# crafted file with one of them crashes llama.cpp or libmtmd in the middle of a computation.
_NOT_WEIGHTS = frozenset({9, 15, 24, 25, 26, 27, 28})


def _check_tensor_types(g: GGUFFile) -> None:
    """Norms, biases and scales enter additions and multiplications, which ggml's CPU backend aborts on
    unless they are F32 (real converters always store vectors as F32); conv kernels must be F32 or F16."""
    for t in g.tensors:
        type_name = _GGML_TYPES[t.type][0]
        if t.type in _NOT_WEIGHTS:
            g.fail(f"tensor {show(t.name)} has type {type_name}, which llama.cpp cannot compute with")
        if t.n_elements == (t.dims[0] if t.dims else 1) and t.type != 0:
            g.fail(f"tensor {show(t.name)} is a vector stored as {type_name}; llama.cpp needs F32 there")
        if t.name.startswith("v.patch_embd.weight") and t.type not in (0, 1):
            g.fail(f"tensor {show(t.name)} is a convolution kernel stored as {type_name}; F32 or F16 needed")


def check_pair(text: GGUFSummary, mmproj: GGUFSummary) -> None:
    """Refuse a text model / projector pair that llama.cpp could not use together."""
    if text.is_projector:
        raise ModelMismatchError(f"{text.path} is a projector (mmproj), not a text model")
    if not mmproj.is_projector:
        raise ModelMismatchError(
            f"{mmproj.path} is not a projector: its architecture is {show(mmproj.architecture)}, expected 'clip'"
        )
    if not mmproj.has_vision:
        raise ModelMismatchError(f"{mmproj.path} has no vision encoder (an audio-only projector?)")
    if mmproj.projection_dim and text.embedding_length and mmproj.projection_dim != text.embedding_length:
        raise ModelMismatchError(
            f"mismatched pair: projector {mmproj.path.name} outputs width {mmproj.projection_dim} "
            f"but text model {text.path.name} has embedding width {text.embedding_length}"
        )


def kv_cache_bytes(text: GGUFSummary, n_ctx: int, bytes_per_value: int = 2) -> int | None:
    """An estimate of the KV cache llama.cpp allocates for `n_ctx` (f16 K and V, every layer): for refusing
    an absurd --ctx before loading. None when the file does not say enough."""
    if not (text.block_count and text.head_count_kv and text.key_length and text.value_length):
        return None
    per_token = text.block_count * text.head_count_kv * (text.key_length + text.value_length) * bytes_per_value
    return per_token * n_ctx


def _file_type_name(code: int | None) -> str:
    if code is None:
        return ""
    name = _FILE_TYPES[code] if code < len(_FILE_TYPES) else "-"
    return str(code) if name == "-" else name


# -- text models: what src/llama-model.cpp, llama-hparams.cpp and llama-vocab.cpp assert on -----------------

# Graph builders (src/models/*.cpp) that GGML_ASSERT head_dim_v == head_dim_k, and those that also assert
# head_dim == n_rot; extracted from llama.cpp 0.3.36.
_HEADS_EQUAL = frozenset(
    "afmoe apertus arcee arctic baichuan bailingmoe2 bert bitnet bloom chameleon chatglm codeshell cogvlm cohere2 "
    "cohere2moe command-r dbrx deci deepseek dflash dots1 dream eagle3 ernie4_5 ernie4_5-moe eurobert exaone "
    "exaone-moe exaone4 falcon glm4 glm4moe gpt2 gptneox granite granite_swa granitehybrid graniteswitch grok "
    "grovemoe hunyuan-moe hunyuan_vl hy_v3 internlm2 jais jais2 laguna llada llada-moe llama llama4 maincoder "
    "mellum minimax-01 minimax-m2 minimax-m3 mistral3 modern-bert mpt muse-glimmer nanbeige nemotron nemotron_h "
    "neo-bert olmo olmo2 olmoe openelm orion paddleocr pangu-embedded phi2 phi3 plamo pockettts qwen qwen2 qwen2moe "
    "qwen2vl qwen3 qwen35 qwen35moe qwen3moe qwen3vl qwen3vlmoe refact rnd1 seed_oss smallthinker smollm3 spark2_5 "
    "stablelm starcoder starcoder2 t5 talkie xverse".split()
)
_HEAD_IS_ROT = frozenset(
    "apertus arcee arctic baichuan chameleon codeshell cogvlm cohere2moe dbrx deci deepseek dots1 dream ernie4_5 "
    "ernie4_5-moe exaone exaone-moe exaone4 falcon granite granite_swa graniteswitch grok grovemoe hunyuan-moe "
    "hunyuan_vl hy_v3 internlm2 jais2 llada llada-moe llama llama4 maincoder mellum minimax-01 minimax-m2 mistral3 "
    "nemotron olmo olmo2 olmoe orion paddleocr pangu-embedded plamo pockettts qwen2 qwen2moe qwen2vl qwen3 qwen3moe "
    "qwen3vl qwen3vlmoe rnd1 seed_oss smallthinker smollm3 starcoder2 talkie xverse".split()
)
# Multi-section RoPE (llama_model_rope_type: MROPE/IMROPE): ggml asserts a non-empty section.
_MROPE = frozenset("dflash paddleocr qwen2vl qwen35 qwen35moe qwen3tts qwen3vl qwen3vlmoe qwen4exp".split())
_ROPE_SCALING = frozenset({"none", "linear", "yarn", "longrope"})
# Tokenizers a chat model can use here, with llama-vocab.cpp's default (bos, eos, unk) ids. Left out: none and
# no_vocab (tokenising asserts), rwkv (asserts on a vocabulary without "\n"), bert (byte tokens abort), test.
_TOKENIZERS = {
    "llama": (1, 2, 0),
    "gpt2": (11, 11, None),
    "whitespace": (11, 11, None),
    "hybriddna": (11, 11, None),
    "t5": (None, 1, 2),
    "plamo2": (1, 2, 0),
    "gemma4": (None, None, None),
}
_SPECIAL_IDS = ("bos", "eos", "unknown")
_BYTE_TOKEN = 6  # LLAMA_TOKEN_TYPE_BYTE
_HEX = "0123456789ABCDEF"


def _check_text_model(g: GGUFFile, s: GGUFSummary) -> None:
    a = f"{s.architecture}."
    u32 = {_U32}
    n_layer = g.integer(a + "block_count", 1, MAX_LAYERS, types=u32)
    if n_layer is None:
        g.fail(f"{a}block_count is missing")
    n_embd = g.integer(a + "embedding_length", 1, 1 << 20, types=u32)
    if n_embd is None:
        g.fail(f"{a}embedding_length is missing")
    s.block_count, s.embedding_length = n_layer, n_embd
    s.context_length = g.integer(a + "context_length", 1, 1 << 30, types=u32)
    if s.context_length is None:
        g.fail(f"{a}context_length is missing")
    g.integer(a + "nextn_predict_layers", 0, n_layer, types=u32)
    _check_experts(g, a, n_layer)

    heads = g.int_or_array(a + "attention.head_count", n_layer, 0, 1 << 16, default=[0] * n_layer)
    heads_kv = g.int_or_array(a + "attention.head_count_kv", n_layer, 0, 1 << 16, default=heads)
    for il, (n_head, n_head_kv) in enumerate(zip(heads, heads_kv, strict=True)):
        if n_head and n_head_kv and n_head % n_head_kv:
            g.fail(f"layer {il}: {n_head} attention heads do not divide into {n_head_kv} KV heads")
    s.head_count, s.head_count_kv = heads[0], max(heads_kv)
    scaling = g.string(a + "rope.scaling.type", max_bytes=64)
    if scaling is not None and scaling not in _ROPE_SCALING:
        g.fail(f"{a}rope.scaling.type {show(scaling)} is unknown (none, linear, yarn or longrope)")
    for key in ("rope.freq_base", "rope.scaling.factor", "rope.scale_linear", "attention.layer_norm_rms_epsilon"):
        g.number(a + key)
    if heads[0]:
        head_k = g.integer(a + "attention.key_length", 1, 1 << 16, default=n_embd // heads[0], types=u32)
        head_v = g.integer(a + "attention.value_length", 1, 1 << 16, default=n_embd // heads[0], types=u32)
        if head_k == 0:
            g.fail(f"{a}embedding_length {n_embd} is smaller than the {heads[0]} attention heads")
        s.key_length, s.value_length = head_k, head_v
        n_rot = g.integer(a + "rope.dimension_count", 0, head_k, default=head_k, types=u32)
        head_k_swa = g.integer(a + "attention.key_length_swa", 1, 1 << 16, default=head_k, types=u32)
        head_v_swa = g.integer(a + "attention.value_length_swa", 1, 1 << 16, default=head_v, types=u32)
        n_rot_swa = g.integer(a + "rope.dimension_count_swa", 0, head_k_swa, default=n_rot, types=u32)
        for k, v, rot, sfx in ((head_k, head_v, n_rot, ""), (head_k_swa, head_v_swa, n_rot_swa, "_swa")):
            if rot % 2:
                g.fail(f"{a}rope.dimension_count{sfx} = {rot} must be even")
            if s.architecture in _HEADS_EQUAL and k != v:
                g.fail(f"{a}attention.key_length{sfx} ({k}) and value_length{sfx} ({v}) must be equal for this model")
            if s.architecture in _HEAD_IS_ROT and rot != v:
                g.fail(f"{a}rope.dimension_count{sfx} ({rot}) must equal the head size ({v}) for this model")
        _check_rope_sections(g, a, s.architecture, n_rot)
    _check_vocabulary(g, s)
    _check_templates(g, s)


def _check_experts(g: GGUFFile, a: str, n_layer: int) -> None:
    """llama_model_base::load_hparams: expert counts and groups."""
    u32 = {_U32}
    n_expert = g.integer(a + "expert_count", 0, MAX_EXPERTS, default=0, types=u32)
    used = max(g.int_or_array(a + "expert_used_count", n_layer, 0, MAX_EXPERTS, default=[0]))
    groups = g.integer(a + "expert_group_count", 0, MAX_EXPERTS, default=0, types=u32)
    group_used = g.integer(a + "expert_group_used_count", 0, MAX_EXPERTS, default=0, types=u32)
    if n_expert == 0:
        if used or groups:
            g.fail(f"{a}expert_used_count/expert_group_count are set but {a}expert_count is 0")
        return
    if not 0 < used <= n_expert:
        g.fail(f"{a}expert_used_count = {used} must be in 1..{a}expert_count ({n_expert})")
    if groups >= n_expert:
        g.fail(f"{a}expert_group_count = {groups} must be below {a}expert_count ({n_expert})")
    if groups > 1 and (n_expert % groups or not 0 < group_used < groups):
        g.fail(f"{a}expert groups are inconsistent ({n_expert} experts, {groups} groups, {group_used} used)")


def _check_rope_sections(g: GGUFFile, a: str, arch: str, n_rot: int) -> None:
    key = a + "rope.dimension_sections"
    if not g.has(key):
        if arch in _MROPE:
            g.fail(f"{key} is missing")
        return
    sections = g.array(key, {_I32, _U32}, max_items=4)
    if len(sections) != 4 or any(not 0 <= x <= n_rot for x in sections) or not any(sections[:3]):
        g.fail(f"{key} must be 4 non-negative sizes, one of the first three above 0")


def _check_vocabulary(g: GGUFFile, s: GGUFSummary) -> None:
    """llama-vocab.cpp asserts that token texts are unique, aborts on missing byte tokens and special ids,
    and llama-cpp-python decodes the BOS/EOS texts as UTF-8."""
    model = g.string("tokenizer.ggml.model", required=True, max_bytes=64)
    if model not in _TOKENIZERS:
        g.fail(f"tokenizer.ggml.model {show(model)} is not a tokenizer this program can use")
    key = "tokenizer.ggml.tokens"
    if not g.has(key) or g.kvs[key].type != _ARRAY or g.kvs[key].elem != _STRING:
        g.fail(f"{key} is missing or not an array of strings")
    n_vocab = g.kvs[key].count
    if not 1 <= n_vocab <= MAX_VOCAB:
        g.fail(f"{key} has {n_vocab:,} tokens (1..{MAX_VOCAB:,} supported)")
    s.vocab_size = n_vocab
    for extra, types in (("tokenizer.ggml.scores", {_F32, _I32}), ("tokenizer.ggml.token_type", {_I32})):
        kv = g.kvs.get(extra)
        if kv is not None and (kv.type != _ARRAY or kv.elem not in types or kv.count < n_vocab):
            g.fail(f"{extra} must be an array of {'/'.join(_VALUE_TYPES[t][0] for t in types)} with one per token")
    if (
        model in ("gpt2", "gemma4", "whitespace", "hybriddna")
        and g.string("tokenizer.ggml.pre", max_bytes=64) != "kimi-k2"
    ):
        merges = g.kvs.get("tokenizer.ggml.merges")
        if merges is None or merges.type != _ARRAY or merges.elem != _STRING:
            g.fail("tokenizer.ggml.merges is missing or not an array of strings")

    tokens = g.strings(key)
    seen = set()
    for index, token in enumerate(tokens):
        token = token or f"[EMPTY_{index}]".encode()  # as llama-vocab.cpp renames empty tokens
        if token in seen:
            g.fail(f"{key}: token {index} {show(token.decode('utf-8', 'backslashreplace'))} appears twice")
        seen.add(token)
    types = g.array("tokenizer.ggml.token_type", {_I32}, max_items=MAX_VOCAB + (1 << 16)) or []
    for index, token_type in enumerate(types[:n_vocab]):
        text = tokens[index]
        if token_type == _BYTE_TOKEN and not (
            len(text) == 6
            and text[:3] == b"<0x"
            and text[5:] == b">"
            and all(c in b"0123456789abcdefABCDEF" for c in text[3:5])
        ):
            g.fail(f"token {index} is marked as a byte token but is not of the form <0xXX>")
    if model in ("llama", "plamo2"):
        for byte in range(256):
            hexed = f"<0x{_HEX[byte >> 4]}{_HEX[byte & 15]}>".encode()
            if hexed not in seen and (model == "plamo2" or bytes([byte]) not in seen):
                g.fail(f"{key} lacks the byte token {hexed.decode()} (tokenising would abort)")

    defaults = dict(zip(_SPECIAL_IDS, _TOKENIZERS[model], strict=True))
    for name in _SPECIAL_IDS:
        explicit = g.integer(f"tokenizer.ggml.{name}_token_id", 0, (1 << 32) - 1, types={_U32})
        if explicit is not None and explicit >= n_vocab:
            g.fail(f"tokenizer.ggml.{name}_token_id = {explicit} is outside the vocabulary ({n_vocab:,} tokens)")
        default = defaults[name]
        effective = (
            explicit if explicit is not None else (default if default is not None and default < n_vocab else None)
        )
        if name in ("bos", "eos"):
            if effective is None:
                g.fail(f"tokenizer.ggml.{name}_token_id is missing (the model has no usable {name.upper()} token)")
            _text(tokens[effective], f"the {name.upper()} token's text", g.fail)
    for flag in ("add_bos_token", "add_eos_token", "add_space_prefix"):
        g.boolean(f"tokenizer.ggml.{flag}")


def _check_templates(g: GGUFFile, s: GGUFSummary) -> None:
    """llama-cpp-python compiles every tokenizer.chat_template* with Jinja while loading (a syntax error
    there is an uncaught exception): compile each here first, with time and size caps."""
    from vision_agent.chat_format import compile_template

    for key in [k for k in g.kvs if k == "tokenizer.chat_template" or k.startswith("tokenizer.chat_template.")]:
        text = g.string(key, max_bytes=MAX_TEMPLATE_BYTES)
        try:
            compile_template(text)
        except ModelFileError as exc:
            g.fail(f"{show(key)}: {exc}")
        if key == "tokenizer.chat_template":
            s.chat_template = text or None


# -- projectors: what tools/mtmd/clip.cpp asserts on ----------------------------------------------------------

# clip.cpp reads these scalars with gguf_get_val_*, which GGML_ASSERTs the exact type (and a non-array).
_CLIP_SCALARS: dict[str, int] = {
    "general.name": _STRING,
    "general.description": _STRING,
    "clip.minicpmv_version": _I32,
    "clip.minicpmv_query_num": _U32,
    "clip.vision.swiglu_clamp": _F32,
}
_CLIP_SCALARS |= dict.fromkeys(
    ["clip.projector_type", "clip.vision.mm_patch_merge_type", "clip.gen.audio.model_variant"]
    + [f"clip.{m}.projector_type" for m in ("vision", "audio", "gen.audio")],
    _STRING,
)
_CLIP_SCALARS |= dict.fromkeys(
    [f"clip.{k}" for k in "has_vision_encoder has_audio_encoder has_gen_audio_encoder use_gelu use_silu".split()],
    _BOOL,
)
_CLIP_SCALARS |= dict.fromkeys(
    [
        f"clip.{m}.{k}"
        for m in ("vision", "audio", "gen.audio")
        for k in (
            "embedding_length feed_forward_length block_count projection_dim attention.head_count "
            "attention.head_count_kv attention.head_dim"
        ).split()
    ]
    + [
        f"clip.vision.{k}"
        for k in (
            "image_size image_min_pixels image_max_pixels preproc_min_tiles preproc_max_tiles preproc_image_size "
            "patch_size projector.scale_factor projector.query_side projector.window_side spatial_merge_size "
            "n_wa_pattern window_size sam.head_count sam.block_count sam.embedding_length expert_used_count"
        ).split()
    ]
    + [
        f"clip.audio.{k}"
        for k in (
            "num_mel_bins projector.stack_factor chunk_size conv_kernel_size max_pos_emb projector.window_size "
            "projector.downsample_rate projector.head_count rvq.num_quantizers window_size local_block_count "
            "local_group_size subsampling_factor"
        ).split()
    ],
    _U32,
)
_CLIP_SCALARS |= {f"clip.{m}.attention.layer_norm_epsilon": _F32 for m in ("vision", "audio", "gen.audio")}
_CLIP_INT_ARRAYS = (
    [f"clip.{m}.feature_layer" for m in ("vision", "audio", "gen.audio")]
    + [
        f"clip.vision.{k}"
        for k in "image_grid_pinpoints wa_layer_indexes wa_pattern_mode projector.spatial_offsets".split()
    ]
    + ["clip.audio.rvq.codebook_size", "clip.audio.wa_pattern_mode"]
)

# PROJECTOR_TYPE_NAMES (tools/mtmd/clip-impl.h)
_PROJECTORS = frozenset(
    "mlp ldp ldpv2 resampler adapter qwen2vl_merger qwen2.5vl_merger qwen3vl_merger ling3vl step3vl gemma3 gemma3nv "
    "gemma3na gemma4v gemma4a gemma4uv gemma4ua phi4 idefics3 pixtral ultravox internvl llama4 qwen2a qwen3a glma "
    "qwen2.5o voxtral meralion musicflamingo lfm2 kimivl paddleocr lightonocr cogvlm janus_pro dots_ocr dots3note_v "
    "dots3note_a deepseekocr deepseekocr2 deepseek4v lfm2a glm4v glm5v youtuvl yasa2 kimik25 nemotron_v2_vl "
    "exaone4_5 hunyuanvl minicpmv4_6 granite_speech mimovl minimax_m3 granite4_vision mimo_audio parakeet "
    "qwen3tts_spkenc qwen3tts_gen pockettts_spkenc pockettts_gen muse-glimmer".split()
)
_INT32_MAX = (1 << 31) - 1


def _check_projector(g: GGUFFile, s: GGUFSummary) -> None:
    for key, type_code in _CLIP_SCALARS.items():
        kv = g.kvs.get(key)
        if kv is not None and kv.type != type_code:
            g.fail(f"{key} must be {_VALUE_TYPES[type_code][0]}, not {g.type_name(key)}")
        if kv is not None and type_code == _U32 and kv.value > _INT32_MAX:
            g.fail(f"{key} = {kv.value} is out of range")
    for key in _CLIP_INT_ARRAYS:
        g.array(key, {_I32}, max_items=4096)
    s.has_vision = bool(g.boolean("clip.has_vision_encoder"))
    if g.boolean("clip.has_audio_encoder") and not _is(g, "gemma3nv"):
        _check_encoder(g, "audio", "a")
    if not s.has_vision:
        return
    kind = g.string("clip.projector_type", max_bytes=64) or g.string("clip.vision.projector_type", max_bytes=64)
    if not kind:
        g.fail("clip.projector_type is missing")
    if kind not in _PROJECTORS:
        g.fail(f"clip.projector_type {show(kind)} is not a projector llama.cpp knows")
    s.projector_type = kind
    n_embd, n_layer = _check_encoder(g, "vision", "v")
    s.projection_dim = g.integer("clip.vision.projection_dim", 0, 1 << 20) or None
    image = g.integer("clip.vision.image_size", 1, 8192)
    patch = g.integer("clip.vision.patch_size", 1, 8192)
    if image is None or patch is None:
        g.fail("clip.vision.image_size and clip.vision.patch_size are required")
    if patch > image or image % patch:
        g.fail(f"clip.vision.image_size {image} is not a multiple of clip.vision.patch_size {patch}")
    s.image_size, s.patch_size = image, patch
    for key in ("clip.vision.image_mean", "clip.vision.image_std"):
        values = g.array(key, {_F32}, max_items=16)
        if values is None or len(values) < 3:
            g.fail(f"{key} must hold 3 numbers (one per colour channel)")
    if any(v == 0 for v in g.array("clip.vision.image_std", {_F32})[:3]):
        g.fail("clip.vision.image_std must not be 0")
    _check_vision_options(g, kind, n_layer, patch)
    if kind != "gemma3nv":
        _check_layers(g, "v", n_embd, n_layer)
    if kind in ("mlp", "mlp_norm"):
        s.projection_dim = _check_llava(g, n_embd, n_layer, image, patch)


def _is(g: GGUFFile, kind: str) -> bool:
    return kind in (g.string("clip.projector_type", max_bytes=64), g.string("clip.vision.projector_type", max_bytes=64))


def _check_encoder(g: GGUFFile, modality: str, prefix: str) -> tuple[int, int]:
    """The transformer sizes every clip graph divides by (head size = width / heads)."""
    p = f"clip.{modality}."
    n_embd = g.integer(p + "embedding_length", 1, 1 << 16)
    n_head = g.integer(p + "attention.head_count", 1, 1 << 12)
    n_layer = g.integer(p + "block_count", 1, MAX_LAYERS)
    if n_embd is None or n_head is None or n_layer is None or g.integer(p + "feed_forward_length", 0, 1 << 20) is None:
        g.fail(f"{p}embedding_length, feed_forward_length, attention.head_count and block_count are required")
    head_dim = g.integer(p + "attention.head_dim", 1, 1 << 12)
    if head_dim is None and n_embd % n_head:
        g.fail(f"{p}embedding_length {n_embd} is not a multiple of {p}attention.head_count {n_head}")
    n_head_kv = g.integer(p + "attention.head_count_kv", 1, n_head, default=n_head)
    if n_head % n_head_kv:
        g.fail(f"{p}attention.head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
    eps = g.number(p + "attention.layer_norm_epsilon")
    if eps is None or eps < 0:
        g.fail(f"{p}attention.layer_norm_epsilon is missing or negative")
    for key in [f"clip.{modality}.feature_layer"]:
        for value in g.array(key, {_I32}) or []:
            if not -1 <= value <= n_layer:
                g.fail(f"{key} holds {value}, out of range (-1..{n_layer})")
    if modality == "audio":
        kind = g.string("clip.projector_type", max_bytes=64) or g.string("clip.audio.projector_type", max_bytes=64)
        if kind == "parakeet":
            kernel = g.integer("clip.audio.conv_kernel_size", 1, 1 << 10, default=0)
            if g.integer("clip.audio.subsampling_factor", 0, 1 << 10) != 8 or kernel % 2 == 0:
                g.fail("clip.audio.subsampling_factor must be 8 and conv_kernel_size odd for a parakeet projector")
        if kind == "granite_speech" and g.integer("clip.audio.chunk_size", 1, 8192) is None:
            g.fail("clip.audio.chunk_size is required (1..8192)")
    return n_embd, n_layer


def _check_vision_options(g: GGUFFile, kind: str, n_layer: int, patch: int) -> None:
    """Optional vision keys that clip.cpp asserts on or divides by."""
    v = "clip.vision."
    for key in ("projector.scale_factor", "spatial_merge_size"):
        g.integer(v + key, 1, 64)
    if kind == "minicpmv4_6" and g.integer(v + "projector.scale_factor", 1, 64, default=4) not in (2, 4):
        g.fail(f"{v}projector.scale_factor must be 2 or 4 for this projector")
    low = g.integer(v + "preproc_min_tiles", 0, 256, default=0)
    if low > g.integer(v + "preproc_max_tiles", 0, 256, default=256):
        g.fail(f"{v}preproc_min_tiles is above preproc_max_tiles")
    pinpoints = g.array(v + "image_grid_pinpoints", {_I32}, max_items=1024) or []
    if len(pinpoints) % 2 or any(not patch <= x <= 16384 for x in pinpoints):
        g.fail(f"{v}image_grid_pinpoints must be width/height pairs of {patch}..16384 pixels")
    pattern = g.array(v + "wa_pattern_mode", {_I32}, max_items=4096)
    if pattern is not None and len(pattern) != n_layer:
        g.fail(f"{v}wa_pattern_mode must have one item per layer ({n_layer})")
    for value in g.array(v + "wa_layer_indexes", {_I32}, max_items=4096) or []:
        if not 0 <= value < n_layer:
            g.fail(f"{v}wa_layer_indexes holds {value}, out of range (0..{n_layer - 1})")


def _dims(g: GGUFFile, name: str, expected: tuple, *, required: bool = False) -> _Tensor | None:
    """Check a tensor's shape (ggml order); None in `expected` matches any size."""
    tensor = g.tensor(name)
    if tensor is None:
        if required:
            g.fail(f"tensor {name} is missing")
        return None
    dims = tensor.dims + (1,) * (len(expected) - len(tensor.dims))
    if len(dims) != len(expected) or any(e is not None and d != e for d, e in zip(dims, expected, strict=True)):
        shape = tuple("*" if e is None else e for e in expected)
        g.fail(f"tensor {name} has shape {tensor.dims}, expected {shape}")
    return tensor


def _check_layers(g: GGUFFile, prefix: str, n_embd: int, n_layer: int) -> None:
    """Every clip graph feeds the hidden state (width n_embd) to q/k/v and adds attn_out back onto it."""
    for il in range(n_layer):
        b = f"{prefix}.blk.{il}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_qkv"):
            weight = _dims(g, f"{b}{name}.weight", (n_embd, None))
            if weight is not None:
                _dims(g, f"{b}{name}.bias", (weight.dims[1] if len(weight.dims) > 1 else 1,))
        _dims(g, f"{b}attn_out.weight", (None, n_embd))
        _dims(g, f"{b}attn_out.bias", (n_embd,))
        for norm in ("ln1", "ln2"):
            _dims(g, f"{b}{norm}.weight", (n_embd,))
            _dims(g, f"{b}{norm}.bias", (n_embd,))


def _check_llava(g: GGUFFile, n_embd: int, n_layer: int, image: int, patch: int) -> int:
    """The LLaVA graph (tools/mtmd/models/llava.cpp) in full: every tensor it multiplies, by shape.
    Returns the width the projector outputs."""
    n_head = g.integer("clip.vision.attention.head_count", 1, 1 << 12)
    d_head = g.integer("clip.vision.attention.head_dim", 1, 1 << 12, default=n_embd // n_head)
    inner = d_head * n_head
    n_class = 1 if _dims(g, "v.class_embd", (n_embd,)) is not None else 0
    _dims(g, "v.patch_embd.weight", (patch, patch, 3, n_embd), required=True)
    _dims(g, "v.patch_embd.bias", (n_embd,))
    position = _dims(g, "v.position_embd.weight", (n_embd, None), required=True)
    n_pos = (image // patch) ** 2 + n_class
    if (position.dims + (1,))[1] < n_pos:
        g.fail(f"tensor v.position_embd.weight has {position.dims[1]} positions, the image needs {n_pos}")
    for norm in ("pre_ln", "post_ln"):
        _dims(g, f"v.{norm}.weight", (n_embd,))
        _dims(g, f"v.{norm}.bias", (n_embd,))
    layers = [v for v in g.array("clip.vision.feature_layer", {_I32}) or [] if v >= 0]
    deepest = max(layers) if layers else n_layer - 1
    for il in range(deepest):
        b = f"v.blk.{il}."
        for name in ("attn_q", "attn_k", "attn_v"):
            _dims(g, f"{b}{name}.weight", (n_embd, inner), required=True)
            _dims(g, f"{b}{name}.bias", (inner,))
        _dims(g, f"{b}attn_out.weight", (inner, n_embd), required=True)
        up, down = g.tensor(f"{b}ffn_up.weight"), g.tensor(f"{b}ffn_down.weight")
        if up is None or down is None:
            g.fail(f"tensor {b}ffn_up.weight or {b}ffn_down.weight is missing")
        if down.dims[0] == n_embd:  # the legacy layout clip.cpp swaps back
            up, down = down, up
        n_ff = up.dims[1] if len(up.dims) > 1 else 1
        _dims(g, up.name, (n_embd, n_ff))
        _dims(g, down.name, (n_ff, n_embd))
        _dims(g, up.name.replace(".weight", ".bias"), (n_ff,))
        _dims(g, down.name.replace(".weight", ".bias"), (n_embd,))
        _dims(g, f"{b}ffn_gate.weight", (n_embd, n_ff))
    width = n_embd * max(1, len(set(layers)))
    if g.tensor("mm.3.weight") is not None:  # Yi-style MLP with layer norms (PROJECTOR_TYPE_MLP_NORM)
        hidden = _dims(g, "mm.0.weight", (width, None), required=True).dims[1]
        _dims(g, "mm.0.bias", (hidden,), required=True)
        _dims(g, "mm.1.weight", (hidden,), required=True)
        _dims(g, "mm.1.bias", (hidden,), required=True)
        out = _dims(g, "mm.3.weight", (hidden, None), required=True).dims[1]
        for name in ("mm.3.bias", "mm.4.weight", "mm.4.bias"):
            _dims(g, name, (out,), required=True)
        return out
    hidden = _dims(g, "mm.0.weight", (width, None), required=True).dims[1]
    _dims(g, "mm.0.bias", (hidden,), required=True)
    out = _dims(g, "mm.2.weight", (hidden, None), required=True).dims[1]
    _dims(g, "mm.2.bias", (out,), required=True)
    return out
