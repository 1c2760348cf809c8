"""Byte-level GGUF crafting for hostile-file tests: any key with any type, any count, any tensor info.

`rewrite` takes a trusted file (the demo pair) and writes a copy whose key/value pairs are changed while
the tensor infos and tensor data are copied verbatim, so one metadata value is wrong and nothing else.
The trusted file is read with the `gguf` package; the crafted bytes are written by hand.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q"}
_SCALAR |= {I64: "<q", F64: "<d"}


@dataclass
class Value:
    """A typed GGUF value: a scalar of `type`, or (type ARR) an array of `elem` values; `raw` overrides all."""

    type: int
    value: object = None
    elem: int | None = None
    raw: bytes | None = None


def u32(v: int) -> Value:
    return Value(U32, v)


def i32(v: int) -> Value:
    return Value(I32, v)


def f32(v: float) -> Value:
    return Value(F32, v)


def s(v: str | bytes) -> Value:
    return Value(STR, v)


def boolean(v: bool) -> Value:
    return Value(BOOL, v)


def arr(elem: int, values: list) -> Value:
    return Value(ARR, values, elem)


def raw(type_code: int, payload: bytes) -> Value:
    """A value whose type code is `type_code` and whose encoded bytes are exactly `payload`."""
    return Value(type_code, raw=payload)


def string_bytes(v: str | bytes) -> bytes:
    data = v.encode() if isinstance(v, str) else v
    return struct.pack("<Q", len(data)) + data


def _payload(type_code: int, value) -> bytes:
    if type_code == STR:
        return string_bytes(value)
    return struct.pack(_SCALAR[type_code], value)


def encode_kv(key: str | bytes, v: Value) -> bytes:
    out = string_bytes(key) + struct.pack("<I", v.type)
    if v.raw is not None:
        return out + v.raw
    if v.type == ARR:
        out += struct.pack("<IQ", v.elem, len(v.value))
        return out + b"".join(_payload(v.elem, item) for item in v.value)
    return out + _payload(v.type, v.value)


def header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def tensor_info(name: str | bytes, dims: list[int], ggml_type: int, offset: int) -> bytes:
    out = string_bytes(name) + struct.pack("<I", len(dims))
    out += b"".join(struct.pack("<q", d) for d in dims)
    return out + struct.pack("<iQ", ggml_type, offset)


def _read_trusted(path: Path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    kvs: dict[str, Value] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        types = field.types
        if types[0] == gguf.GGUFValueType.ARRAY:
            kvs[name] = Value(ARR, list(field.contents()), int(types[1]))
        else:
            kvs[name] = Value(int(types[0]), field.contents())
    first, last = reader.tensors[0].field, reader.tensors[-1].field
    infos_start = first.offset
    infos_end = last.offset + sum(part.nbytes for part in last.parts)
    data = path.read_bytes()
    return kvs, len(reader.tensors), data[infos_start:infos_end], data[reader.data_offset :], reader.alignment


def rewrite(
    src: Path,
    dst: Path,
    changes: dict[str, Value | None] | None = None,
    *,
    version: int = 3,
    extra_kvs: list[bytes] = (),
) -> Path:
    """Copy `src` to `dst` with `changes` applied to its metadata (None deletes a key); `extra_kvs` are
    pre-encoded pairs appended as they are (duplicates, odd types)."""
    kvs, n_tensors, infos, data, alignment = _read_trusted(src)
    for key, value in (changes or {}).items():
        if value is None:
            kvs.pop(key, None)
        else:
            kvs[key] = value
    body = b"".join(encode_kv(k, v) for k, v in kvs.items()) + b"".join(extra_kvs)
    out = header(n_tensors, len(kvs) + len(extra_kvs), version) + body + infos
    out += b"\0" * (-len(out) % alignment)
    dst.write_bytes(out + data)
    return dst


def trusted_tensors(src: Path) -> list[tuple[str, list[int], int, int]]:
    """(name, dims as stored, ggml type, offset) of each tensor of a trusted file."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    return [
        (t.name, [int(d) for d in t.field.parts[3]], int(t.tensor_type), int(t.field.parts[-1][0]))
        for t in reader.tensors
    ]


def trusted_kvs(src: Path) -> dict[str, Value]:
    """The key/value pairs of a trusted file, typed as stored."""
    return _read_trusted(src)[0]


def rename_tensor(path: Path, old: str, new: str) -> Path:
    """Rename a tensor in place (names of equal length, so nothing moves)."""
    assert len(old) == len(new)
    data = path.read_bytes()
    needle = string_bytes(old)
    assert data.count(needle) == 1
    path.write_bytes(data.replace(needle, string_bytes(new)))
    return path


def retype(src: Path, dst: Path, tensor: str, ggml_type: int) -> Path:
    """Copy `src` with one tensor's type code changed (to a type of the same size, so nothing moves)."""
    data = bytearray(src.read_bytes())
    needle = string_bytes(tensor)
    at = data.index(needle) + len(needle)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<i", data, at + 4 + 8 * n_dims, ggml_type)
    dst.write_bytes(bytes(data))
    return dst


def reencode(src: Path, dst: Path, dtypes: dict) -> Path:
    """Rewrite `src` with the gguf package's writer, storing the named tensors as other numpy dtypes."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data).astype(dtypes.get(tensor.name, np.float32)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
