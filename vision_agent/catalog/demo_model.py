"""Writes a tiny random-weight LLaVA-style GGUF pair: a llama text model and a CLIP mmproj.

Its output is noise. It exists to prove an install and to run the real llama.cpp path in tests
(and, in a bigger shape, in benchmarks) where no real weights can be downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vision_agent.core.prompts import chat_template

TEXT_FILE = "demo-text.gguf"
MMPROJ_FILE = "mmproj-demo.gguf"

# A few words so the noise reads like words; everything else falls back to byte tokens.
_WORDS = (
    "the a an of and to in is it that on for with as was at by this be are from or have not "
    "image picture photo shows there red green blue white black yellow colour color shape circle "
    "square triangle line text chart graph bar cat dog tree sky sun car house person people left "
    "right top bottom small large bright dark light number one two three four five yes no I see "
    "looks like appears contains background foreground center edge pattern"
).split()


@dataclass(frozen=True)
class DemoShape:
    n_embd: int = 64
    n_ff: int = 128
    n_layer: int = 2
    n_head: int = 4
    n_ctx_train: int = 4096
    extra_vocab: int = 0  # pad the vocabulary with synthetic words (benchmarks use ~32k)
    image_size: int = 56
    patch_size: int = 14
    v_embd: int = 32
    v_ff: int = 64
    v_layer: int = 1
    v_head: int = 2
    projection_dim: int | None = None  # defaults to n_embd; set otherwise to build a mismatched pair
    with_chat_template: bool = True  # False: exercise the Vicuna fallback for template-less GGUFs


def write_demo_pair(directory: str | Path, shape: DemoShape = DemoShape(), *, seed: int = 0) -> tuple[Path, Path]:
    """Write the text model and the projector into DIRECTORY; return both paths. A directory that cannot be
    written is a ConfigError (exit 2) that says why."""
    import numpy as np

    from vision_agent.errors import ConfigError

    directory = Path(directory)
    rng = np.random.default_rng(seed)
    text_path, mmproj_path = directory / TEXT_FILE, directory / MMPROJ_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_text_model(text_path, shape, rng)
        _write_projector(mmproj_path, shape, rng)
    except OSError as exc:
        raise ConfigError(f"the demo pair cannot be written in {directory}: {exc.strerror or exc}") from None
    return text_path, mmproj_path


def _weights(rng, *shape):
    import numpy as np

    return (rng.standard_normal(shape) * 0.02).astype(np.float32)


def _vocabulary(extra: int) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    words = ["\u2581" + w for w in _WORDS] + [f"\u2581w{i}" for i in range(extra)]
    tokens += words
    types += [1] * len(words)
    scores = [0.0] * 259 + [-float(i) for i in range(len(words))]
    return tokens, scores, types


def _write_text_model(path: Path, shape: DemoShape, rng) -> None:
    import gguf
    import numpy as np

    tokens, scores, types = _vocabulary(shape.extra_vocab)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("vision-agent demo (random weights)")
    writer.add_uint32("llama.context_length", shape.n_ctx_train)
    writer.add_uint32("llama.embedding_length", shape.n_embd)
    writer.add_uint32("llama.feed_forward_length", shape.n_ff)
    writer.add_uint32("llama.block_count", shape.n_layer)
    writer.add_uint32("llama.attention.head_count", shape.n_head)
    writer.add_uint32("llama.attention.head_count_kv", shape.n_head)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_uint32("llama.rope.dimension_count", shape.n_embd // shape.n_head)
    writer.add_string("tokenizer.ggml.model", "llama")
    writer.add_array("tokenizer.ggml.tokens", tokens)
    writer.add_array("tokenizer.ggml.scores", scores)
    writer.add_array("tokenizer.ggml.token_type", types)
    writer.add_uint32("tokenizer.ggml.unknown_token_id", 0)
    writer.add_uint32("tokenizer.ggml.bos_token_id", 1)
    writer.add_uint32("tokenizer.ggml.eos_token_id", 2)
    if shape.with_chat_template:
        writer.add_string("tokenizer.chat_template", chat_template("demo"))

    e, f, v = shape.n_embd, shape.n_ff, len(tokens)
    ones = np.ones(e, dtype=np.float32)
    writer.add_tensor("token_embd.weight", _weights(rng, v, e))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", _weights(rng, v, e))
    for i in range(shape.n_layer):
        block = f"blk.{i}"
        writer.add_tensor(f"{block}.attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{block}.{name}.weight", _weights(rng, e, e))
        writer.add_tensor(f"{block}.ffn_norm.weight", ones)
        writer.add_tensor(f"{block}.ffn_gate.weight", _weights(rng, f, e))
        writer.add_tensor(f"{block}.ffn_up.weight", _weights(rng, f, e))
        writer.add_tensor(f"{block}.ffn_down.weight", _weights(rng, e, f))
    _finish(writer)


def _write_projector(path: Path, shape: DemoShape, rng) -> None:
    import gguf
    import numpy as np

    e, f, p = shape.v_embd, shape.v_ff, shape.patch_size
    out = shape.projection_dim or shape.n_embd
    n_pos = (shape.image_size // p) ** 2 + 1
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_name("vision-agent demo projector (random weights)")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_llava_projector", True)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("clip.vision.image_size", shape.image_size)
    writer.add_uint32("clip.vision.patch_size", p)
    writer.add_uint32("clip.vision.embedding_length", e)
    writer.add_uint32("clip.vision.feed_forward_length", f)
    writer.add_uint32("clip.vision.projection_dim", out)
    writer.add_uint32("clip.vision.attention.head_count", shape.v_head)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    writer.add_uint32("clip.vision.block_count", shape.v_layer)
    writer.add_array("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
    writer.add_array("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])

    ones, zeros = np.ones(e, dtype=np.float32), np.zeros(e, dtype=np.float32)
    writer.add_tensor("v.class_embd", _weights(rng, e))
    writer.add_tensor("v.patch_embd.weight", _weights(rng, e, 3, p, p))
    writer.add_tensor("v.position_embd.weight", _weights(rng, n_pos, e))
    writer.add_tensor("v.pre_ln.weight", ones)
    writer.add_tensor("v.pre_ln.bias", zeros)
    for i in range(shape.v_layer):
        block = f"v.blk.{i}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"{block}.{name}.weight", _weights(rng, e, e))
            writer.add_tensor(f"{block}.{name}.bias", zeros)
        # Legacy CLIP layout: ffn_down maps embd -> ff and ffn_up maps ff -> embd.
        writer.add_tensor(f"{block}.ffn_down.weight", _weights(rng, f, e))
        writer.add_tensor(f"{block}.ffn_down.bias", np.zeros(f, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_up.weight", _weights(rng, e, f))
        writer.add_tensor(f"{block}.ffn_up.bias", zeros)
        for norm in ("ln1", "ln2"):
            writer.add_tensor(f"{block}.{norm}.weight", ones)
            writer.add_tensor(f"{block}.{norm}.bias", zeros)
    writer.add_tensor("mm.0.weight", _weights(rng, out, e))
    writer.add_tensor("mm.0.bias", np.zeros(out, dtype=np.float32))
    writer.add_tensor("mm.2.weight", _weights(rng, out, out))
    writer.add_tensor("mm.2.bias", np.zeros(out, dtype=np.float32))
    _finish(writer)


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
