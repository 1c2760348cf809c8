"""Crafted model and projector files through the real CLI: `ask` (which loads the pair with llama.cpp) and
`models info`. Each must be refused with its documented exit code and one line naming the problem, quickly
and within an address-space limit; never a signal (llama.cpp's GGML_ASSERT aborts the whole process).

Metadata cases change one value of the generated demo pair (tests/hostile/gguf_craft.py); structure
cases are written byte by byte.
"""

from __future__ import annotations

import math
import struct
import time

import pytest

from tests.hostile import gguf_craft as gc
from tests.hostile.bounded import assert_refused, run_bounded
from vision_agent.catalog.gguf_info import read_summary
from vision_agent.errors import ModelFileError

TEXT, MMPROJ = "text", "mmproj"


def _tokens_with(index_value: dict[int, str]):
    def change(kvs):
        tokens = list(kvs["tokenizer.ggml.tokens"].value)
        for index, value in index_value.items():
            tokens[index] = value
        return {"tokenizer.ggml.tokens": gc.arr(gc.STR, tokens)}

    return change


def _byte_token_missing(kvs):
    """`h` has no byte token: SentencePiece's byte fallback would throw through the C API (abort)."""
    tokens = list(kvs["tokenizer.ggml.tokens"].value)
    types = list(kvs["tokenizer.ggml.token_type"].value)
    index = tokens.index("<0x68>")
    tokens[index], types[index] = "<0x68>!", 1
    return {"tokenizer.ggml.tokens": gc.arr(gc.STR, tokens), "tokenizer.ggml.token_type": gc.arr(gc.I32, types)}


def _word_marked_as_byte(kvs):
    types = list(kvs["tokenizer.ggml.token_type"].value)
    types[300] = 6
    return {"tokenizer.ggml.token_type": gc.arr(gc.I32, types)}


def _duplicate_token(kvs):
    return _tokens_with({300: kvs["tokenizer.ggml.tokens"].value[299]})(kvs)


AUDIO_WITHOUT_SIZES = {
    "clip.has_audio_encoder": gc.boolean(True),
    "clip.audio.projector_type": gc.s("parakeet"),
    "clip.audio.subsampling_factor": gc.u32(4),
}

# (id, which file, changes (or a function of the trusted key/values), exit code, text the message must hold)
METADATA_CASES = [
    ("block_count_100000", TEXT, {"llama.block_count": gc.u32(100_000)}, 4, "llama.block_count"),
    ("block_count_zero", TEXT, {"llama.block_count": gc.u32(0)}, 4, "llama.block_count"),
    ("block_count_as_string", TEXT, {"llama.block_count": gc.s("2")}, 4, "llama.block_count"),
    ("embedding_length_zero", TEXT, {"llama.embedding_length": gc.u32(0)}, 4, "llama.embedding_length"),
    ("context_length_zero", TEXT, {"llama.context_length": gc.u32(0)}, 4, "llama.context_length"),
    ("kv_heads_not_a_divisor", TEXT, {"llama.attention.head_count_kv": gc.u32(3)}, 4, "KV heads"),
    ("head_count_array_short", TEXT, {"llama.attention.head_count": gc.arr(gc.U32, [4])}, 4, "head_count"),
    ("rope_dims_odd", TEXT, {"llama.rope.dimension_count": gc.u32(15)}, 4, "rope.dimension_count"),
    (
        "key_and_value_lengths_differ",
        TEXT,
        {"llama.attention.key_length": gc.u32(16), "llama.attention.value_length": gc.u32(8)},
        4,
        "value_length",
    ),
    ("expert_count_huge", TEXT, {"llama.expert_count": gc.u32(100_000)}, 4, "expert_count"),
    ("experts_used_without_experts", TEXT, {"llama.expert_used_count": gc.u32(2)}, 4, "expert_count"),
    ("rope_scaling_unknown", TEXT, {"llama.rope.scaling.type": gc.s("bogus")}, 4, "rope.scaling.type"),
    ("norm_epsilon_nan", TEXT, {"llama.attention.layer_norm_rms_epsilon": gc.f32(math.nan)}, 4, "epsilon"),
    ("duplicate_token", TEXT, _duplicate_token, 4, "appears twice"),
    ("byte_token_missing", TEXT, _byte_token_missing, 4, "<0x68>"),
    ("word_marked_as_byte_token", TEXT, _word_marked_as_byte, 4, "byte token"),
    ("bos_id_out_of_range", TEXT, {"tokenizer.ggml.bos_token_id": gc.u32(100_000)}, 4, "bos_token_id"),
    ("eos_id_as_string", TEXT, {"tokenizer.ggml.eos_token_id": gc.s("2")}, 4, "eos_token_id"),
    ("unk_id_out_of_range", TEXT, {"tokenizer.ggml.unknown_token_id": gc.u32(342)}, 4, "unknown_token_id"),
    ("tokenizer_none", TEXT, {"tokenizer.ggml.model": gc.s("none")}, 4, "tokenizer.ggml.model"),
    ("tokens_not_strings", TEXT, {"tokenizer.ggml.tokens": gc.arr(gc.U32, [1, 2, 3])}, 4, "tokenizer.ggml.tokens"),
    ("scores_too_short", TEXT, {"tokenizer.ggml.scores": gc.arr(gc.F32, [0.0] * 10)}, 4, "tokenizer.ggml.scores"),
    ("alignment_not_power_of_two", TEXT, {"general.alignment": gc.u32(3)}, 4, "general.alignment"),
    ("split_model", TEXT, {"split.count": gc.Value(gc.U16, 2)}, 4, "split"),
    ("architecture_with_escape", TEXT, {"general.architecture": gc.s("llama\x1b[2J")}, 4, "general.architecture"),
    ("image_size_zero", MMPROJ, {"clip.vision.image_size": gc.u32(0)}, 4, "clip.vision.image_size"),
    ("projector_type_integer", MMPROJ, {"clip.projector_type": gc.u32(1)}, 4, "clip.projector_type"),
    ("projector_type_unknown", MMPROJ, {"clip.projector_type": gc.s("bogus")}, 4, "clip.projector_type"),
    ("has_vision_as_u8", MMPROJ, {"clip.has_vision_encoder": gc.Value(gc.U8, 1)}, 4, "clip.has_vision_encoder"),
    ("use_gelu_as_u32", MMPROJ, {"clip.use_gelu": gc.u32(1)}, 4, "clip.use_gelu"),
    ("name_as_integer", MMPROJ, {"general.name": gc.u32(7)}, 4, "general.name"),
    ("epsilon_as_string", MMPROJ, {"clip.vision.attention.layer_norm_epsilon": gc.s("x")}, 4, "epsilon"),
    ("image_size_not_patch_multiple", MMPROJ, {"clip.vision.image_size": gc.u32(50)}, 4, "patch_size"),
    ("patch_size_zero", MMPROJ, {"clip.vision.patch_size": gc.u32(0)}, 4, "clip.vision.patch_size"),
    ("vision_heads_not_a_divisor", MMPROJ, {"clip.vision.attention.head_count": gc.u32(3)}, 4, "head_count"),
    ("vision_heads_zero", MMPROJ, {"clip.vision.attention.head_count": gc.u32(0)}, 4, "head_count"),
    ("vision_block_count_huge", MMPROJ, {"clip.vision.block_count": gc.u32(100_000)}, 4, "block_count"),
    ("image_mean_short", MMPROJ, {"clip.vision.image_mean": gc.arr(gc.F32, [0.5, 0.5])}, 4, "image_mean"),
    ("feature_layer_past_the_end", MMPROJ, {"clip.vision.feature_layer": gc.arr(gc.I32, [5])}, 4, "feature_layer"),
    ("pinpoints_odd", MMPROJ, {"clip.vision.image_grid_pinpoints": gc.arr(gc.I32, [56])}, 4, "pinpoints"),
    ("position_embd_too_small", MMPROJ, {"clip.vision.image_size": gc.u32(112)}, 4, "position_embd"),
    ("patch_embd_wrong_shape", MMPROJ, {"clip.vision.patch_size": gc.u32(7)}, 4, "patch_embd"),
    ("audio_encoder_incomplete", MMPROJ, AUDIO_WITHOUT_SIZES, 4, "clip.audio"),
]


@pytest.fixture(scope="module")
def crafted(demo_pair, tmp_path_factory):
    """Write every crafted file once: {case id: (text path, mmproj path)}."""
    text, mmproj = demo_pair
    directory = tmp_path_factory.mktemp("crafted")
    kvs = {TEXT: gc.trusted_kvs(text), MMPROJ: gc.trusted_kvs(mmproj)}
    files = {}
    for case_id, which, changes, _, _ in METADATA_CASES:
        if callable(changes):
            changes = changes(kvs[which])
        source = text if which == TEXT else mmproj
        out = gc.rewrite(source, directory / f"{case_id}-{which}.gguf", changes)
        files[case_id] = (out, mmproj) if which == TEXT else (text, out)
    missing = gc.rewrite(mmproj, directory / "no-mm2.gguf")
    gc.rename_tensor(missing, "mm.2.weight", "mm.9.weight")
    files["projector_without_mm2"] = (text, missing)
    return files


CASES = [pytest.param(c[0], c[1], c[3], c[4], id=c[0]) for c in METADATA_CASES] + [
    pytest.param("projector_without_mm2", MMPROJ, 4, "mm.2.weight", id="projector_without_mm2")
]


@pytest.mark.parametrize("case_id, which, exit_code, needle", CASES)
def test_crafted_metadata_is_refused_before_llama_cpp(
    crafted, case_id, which, exit_code, needle, cli_env, image, tmp_path
):
    text, mmproj = crafted[case_id]
    ask = run_bounded(
        "ask",
        "-m",
        str(text),
        "--mmproj",
        str(mmproj),
        "-a",
        str(image),
        "--no-tools",
        "hi",
        env=cli_env,
        tmp_path=tmp_path,
    )
    assert_refused(ask, exit_code, needle)
    info = run_bounded("models", "info", str(text if which == TEXT else mmproj), env=cli_env, tmp_path=tmp_path)
    assert_refused(info, exit_code, needle)
    assert b"\x1b" not in ask.stderr + info.stderr + info.stdout


def _tensor_cases(text, mmproj, directory):
    import numpy as np

    f16 = {"output_norm.weight": np.float16}
    return {
        "text_weight_as_i32": (gc.retype(text, directory / "t-i32.gguf", "output.weight", 26), mmproj, "I32"),
        "text_weight_as_f64": (
            gc.reencode(text, directory / "t-f64.gguf", {"blk.0.attn_q.weight": np.float64}),
            mmproj,
            "F64",
        ),
        "text_norm_as_f16": (gc.reencode(text, directory / "t-f16.gguf", f16), mmproj, "output_norm.weight"),
        "projector_weight_as_i32": (text, gc.retype(mmproj, directory / "p-i32.gguf", "mm.0.weight", 26), "I32"),
        "projector_bias_as_f16": (
            text,
            gc.reencode(mmproj, directory / "p-f16.gguf", {"mm.0.bias": np.float16}),
            "mm.0.bias",
        ),
    }


@pytest.mark.parametrize(
    "case_id",
    [
        "text_weight_as_i32",
        "text_weight_as_f64",
        "text_norm_as_f16",
        "projector_weight_as_i32",
        "projector_bias_as_f16",
    ],
)
def test_tensor_types_llama_cpp_cannot_compute_with_are_refused(case_id, demo_pair, cli_env, image, tmp_path):
    """Found while writing these tests: an I32/F64 weight or an F16 norm crashed llama.cpp mid-computation
    (SIGSEGV, or an abort in ggml's binary ops)."""
    text, mmproj, needle = _tensor_cases(*demo_pair, tmp_path)[case_id]
    args = ("ask", "-m", str(text), "--mmproj", str(mmproj), "-a", str(image), "--no-tools", "hi")
    assert_refused(run_bounded(*args, env=cli_env, tmp_path=tmp_path), 4, needle)


def test_mismatched_pair_is_exit_5(mismatched_pair, cli_env, image, tmp_path):
    text, mmproj = mismatched_pair
    ask = run_bounded(
        "ask", "-m", str(text), "--mmproj", str(mmproj), "-a", str(image), "hi", env=cli_env, tmp_path=tmp_path
    )
    assert_refused(ask, 5, "mismatched pair")


# -- structure: bytes written by hand ------------------------------------------------------------------------


def _kv_file(*pairs: bytes, n_tensors: int = 0, version: int = 3) -> bytes:
    return gc.header(n_tensors, len(pairs), version) + b"".join(pairs)


def _arch(name: str = "llama") -> bytes:
    return gc.encode_kv("general.architecture", gc.s(name))


def _array_header(key: str, elem: int, count: int) -> bytes:
    return gc.string_bytes(key) + struct.pack("<IIQ", gc.ARR, elem, count)


def _with_tensor(name: str | bytes, dims: list[int], ggml_type: int = 0, offset: int = 0, extra: bytes = b"") -> bytes:
    body = gc.header(1, 1) + _arch() + gc.tensor_info(name, dims, ggml_type, offset) + extra
    return body + b"\0" * (-len(body) % 32) + b"\0" * 64


STRUCTURE_CASES = {
    "empty": b"",
    "truncated_header": b"GGUF\x03\x00\x00\x00\x00\x00",
    "bad_magic": b"GGUX" + _kv_file(_arch())[4:],
    "version_1": _kv_file(_arch(), version=1),
    "version_4": _kv_file(_arch(), version=4),
    "big_endian": _kv_file(_arch(), version=3 << 24),
    "kv_count_2_40": gc.header(0, 1 << 40) + _arch(),
    "kv_count_negative": gc.header(0, -1 & (2**64 - 1)) + _arch(),
    "tensor_count_2_40": gc.header(1 << 40, 1) + _arch(),
    # The finding: 52 bytes, one array that claims 2^40 items (gguf.GGUFReader allocated its way to a hang).
    "array_of_2_40_items": gc.header(0, 1) + _array_header("arr4", gc.U32, 1 << 40),
    "string_array_of_2_40": gc.header(0, 2) + _arch() + _array_header("toks", gc.STR, 1 << 40),
    "string_length_2_62": gc.header(0, 1) + gc.string_bytes("k") + struct.pack("<IQ", gc.STR, 1 << 62),
    "key_length_2_62": gc.header(0, 1) + struct.pack("<Q", 1 << 62) + b"k",
    "unknown_value_type": gc.header(0, 2) + _arch() + gc.string_bytes("k") + struct.pack("<II", 13, 0),
    "unknown_element_type": gc.header(0, 2) + _arch() + _array_header("k", 99, 1) + b"\0" * 16,
    "nested_array": gc.header(0, 2) + _arch() + _array_header("k", gc.ARR, 1) + struct.pack("<IQ", gc.U8, 1) + b"\0",
    "duplicate_key": _kv_file(_arch(), _arch()),
    "truncated_string_array": gc.header(0, 2) + _arch() + _array_header("toks", gc.STR, 3) + gc.string_bytes("a"),
    "tensor_with_5_dims": _with_tensor("t", [1, 1, 1, 1, 1]),
    "tensor_with_negative_dim": _with_tensor("t", [-4]),
    "tensor_name_100_bytes": _with_tensor("t" * 100, [4]),
    "tensor_removed_type_q4_2": _with_tensor("t", [32], ggml_type=4),
    "tensor_unaligned_offset": _with_tensor("t", [4], offset=1),
    "tensor_data_past_the_end": _with_tensor("t", [1 << 20]),
    "tensor_shape_overflow": _with_tensor("t", [1 << 40, 1 << 40]),
    "tensor_rows_not_blocks": _with_tensor("t", [33], ggml_type=2),
    "tensor_infos_missing": gc.header(1000, 1) + _arch() + gc.tensor_info("t", [4], 0, 0),
}


@pytest.mark.parametrize("case_id", sorted(STRUCTURE_CASES))
def test_malformed_structure_is_exit_4(case_id, demo_pair, cli_env, image, tmp_path):
    path = tmp_path / f"{case_id}.gguf"
    path.write_bytes(STRUCTURE_CASES[case_id])
    info = run_bounded("models", "info", str(path), env=cli_env, tmp_path=tmp_path)
    assert_refused(info, 4, str(path))
    ask = run_bounded(
        "ask",
        "-m",
        str(path),
        "--mmproj",
        str(demo_pair[1]),
        "-a",
        str(image),
        "--no-tools",
        "hi",
        env=cli_env,
        tmp_path=tmp_path,
    )
    assert_refused(ask, 4)


def test_truncated_demo_model_and_duplicate_key_in_a_real_file(demo_pair, cli_env, tmp_path):
    text = demo_pair[0]
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(text.read_bytes()[:-1000])
    assert_refused(run_bounded("models", "info", str(cut), env=cli_env, tmp_path=tmp_path), 4, "truncated")
    twice = gc.rewrite(text, tmp_path / "twice.gguf", extra_kvs=[gc.encode_kv("llama.block_count", gc.u32(2))])
    assert_refused(run_bounded("models", "info", str(twice), env=cli_env, tmp_path=tmp_path), 4, "duplicate key")


def test_three_million_strings_are_walked_quickly(tmp_path, cli_env):
    """The largest string array the reader walks item by item (tokens, merges): bounded time and memory."""
    count = 3_000_000
    path = tmp_path / "many-strings.gguf"
    path.write_bytes(gc.header(0, 1) + _array_header("merges", gc.STR, count) + b"\0" * (8 * count))
    run = run_bounded("models", "info", str(path), env=cli_env, tmp_path=tmp_path)
    assert_refused(run, 4, "general.architecture is missing")


def test_special_files_are_refused_without_hanging(tmp_path, cli_env):
    import os

    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo), str(tmp_path)):
        assert_refused(run_bounded("models", "info", path, env=cli_env, tmp_path=tmp_path), 4, "not a regular file")


# -- speed on a real-sized vocabulary ---------------------------------------------------------------------------


def test_summary_of_a_150k_vocabulary_with_merges_is_fast(demo_pair, tmp_path):
    """A Qwen2-sized tokenizer (152k tokens, 151k merges): read and validated in a fraction of a second."""
    tokens = [f"t{i}" for i in range(152_064)]
    merges = [f"t{i} t{i + 1}" for i in range(151_387)]
    path = gc.rewrite(
        demo_pair[0],
        tmp_path / "big-vocab.gguf",
        {
            "tokenizer.ggml.model": gc.s("gpt2"),
            "tokenizer.ggml.tokens": gc.arr(gc.STR, tokens),
            "tokenizer.ggml.merges": gc.arr(gc.STR, merges),
            "tokenizer.ggml.token_type": gc.arr(gc.I32, [1] * len(tokens)),
            "tokenizer.ggml.scores": None,
            "tokenizer.ggml.bos_token_id": gc.u32(1),
            "tokenizer.ggml.eos_token_id": gc.u32(2),
        },
    )
    start = time.perf_counter()
    summary = read_summary(path)
    seconds = time.perf_counter() - start
    print(f"read_summary of {path.stat().st_size / 1e6:.1f} MB, 152k tokens + 151k merges: {seconds * 1000:.0f} ms")
    assert summary.vocab_size == 152_064
    assert seconds < 10  # generous: measured ~0.2 s on the 2-core test machine


def test_reader_refuses_in_process_too(tmp_path):
    path = tmp_path / "a.gguf"
    path.write_bytes(STRUCTURE_CASES["array_of_2_40_items"])
    assert len(path.read_bytes()) == 52
    with pytest.raises(ModelFileError, match="arr4"):
        read_summary(path)
