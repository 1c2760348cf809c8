"""What llama.cpp and libmtmd assert on, checked before they see a file.

GGML_ASSERT aborts the whole process (with fds 1/2 pointed at /dev/null while llama-cpp-python loads, so
silently). These rules come from the llama.cpp we build (0.3.36: src/llama-model.cpp, llama-hparams.cpp,
llama-vocab.cpp, src/models/*.cpp, tools/mtmd/clip.cpp); each refusal is a ModelFileError (exit 4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, overload

from vision_agent.catalog.gguf_reader import (
    ARRAY,
    BOOL,
    F32,
    GGML_TYPES,
    I32,
    MAX_EXPERTS,
    MAX_LAYERS,
    MAX_TEMPLATE_BYTES,
    MAX_VOCAB,
    STRING,
    U32,
    VALUE_TYPES,
    GGUFFile,
    TensorInfo,
    decode_text,
    show,
)  # fmt: skip
from vision_agent.errors import ModelFileError

if TYPE_CHECKING:
    from vision_agent.catalog.gguf_info import GGUFSummary


# Types ggml cannot multiply or add with as weights (integers, F64, the Q8_1/Q8_K activation formats): a
# crafted file with one of them crashes llama.cpp or libmtmd in the middle of a computation.
_NOT_WEIGHTS = frozenset({9, 15, 24, 25, 26, 27, 28})


def check_tensor_types(g: GGUFFile) -> None:
    """Norms, biases and scales enter additions and multiplications, which ggml's CPU backend aborts on
    unless they are F32 (real converters always store vectors as F32); conv kernels must be F32 or F16."""
    for t in g.tensors:
        type_name = GGML_TYPES[t.type][0]
        if t.type in _NOT_WEIGHTS:
            g.fail(f"tensor {show(t.name)} has type {type_name}, which llama.cpp cannot compute with")
        if t.n_elements == (t.dims[0] if t.dims else 1) and t.type != 0:
            g.fail(f"tensor {show(t.name)} is a vector stored as {type_name}; llama.cpp needs F32 there")
        if t.name.startswith("v.patch_embd.weight") and t.type not in (0, 1):
            g.fail(f"tensor {show(t.name)} is a convolution kernel stored as {type_name}; F32 or F16 needed")


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


def check_text_model(g: GGUFFile, s: GGUFSummary) -> None:
    a = f"{s.architecture}."
    u32 = {U32}
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
    for key in ("rope.freq_base", "rope.scaling.factor", "rope.scale_linear"):
        g.number(a + key)
    for key in ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"):
        eps = g.number(a + key)
        if eps is not None and eps < 0:  # ggml's norm operators assert eps >= 0 (an abort at the first token)
            g.fail(f"{a}{key} = {eps} is negative")
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
    u32 = {U32}
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
    sections = g.array(key, {I32, U32}, max_items=4)
    assert sections is not None, "the key exists"
    if len(sections) != 4 or any(not 0 <= x <= n_rot for x in sections) or not any(sections[:3]):
        g.fail(f"{key} must be 4 non-negative sizes, one of the first three above 0")


def _check_vocabulary(g: GGUFFile, s: GGUFSummary) -> None:
    """llama-vocab.cpp asserts that token texts are unique, aborts on missing byte tokens and special ids,
    and llama-cpp-python decodes the BOS/EOS texts as UTF-8."""
    model = g.string("tokenizer.ggml.model", required=True, max_bytes=64)
    if model not in _TOKENIZERS:
        g.fail(f"tokenizer.ggml.model {show(model)} is not a tokenizer this program can use")
    key = "tokenizer.ggml.tokens"
    if not g.has(key) or g.kvs[key].type != ARRAY or g.kvs[key].elem != STRING:
        g.fail(f"{key} is missing or not an array of strings")
    n_vocab = g.kvs[key].count
    if not 1 <= n_vocab <= MAX_VOCAB:
        g.fail(f"{key} has {n_vocab:,} tokens (1..{MAX_VOCAB:,} supported)")
    s.vocab_size = n_vocab
    for extra, types in (("tokenizer.ggml.scores", {F32, I32}), ("tokenizer.ggml.token_type", {I32})):
        kv = g.kvs.get(extra)
        if kv is not None and (kv.type != ARRAY or kv.elem not in types or kv.count < n_vocab):
            g.fail(f"{extra} must be an array of {'/'.join(VALUE_TYPES[t][0] for t in types)} with one per token")
    if (
        model in ("gpt2", "gemma4", "whitespace", "hybriddna")
        and g.string("tokenizer.ggml.pre", max_bytes=64) != "kimi-k2"
    ):
        merges = g.kvs.get("tokenizer.ggml.merges")
        if merges is None or merges.type != ARRAY or merges.elem != STRING:
            g.fail("tokenizer.ggml.merges is missing or not an array of strings")

    tokens = g.strings(key)
    seen = set()
    for index, token in enumerate(tokens):
        token = token or f"[EMPTY_{index}]".encode()  # as llama-vocab.cpp renames empty tokens
        if token in seen:
            g.fail(f"{key}: token {index} {show(token.decode('utf-8', 'backslashreplace'))} appears twice")
        seen.add(token)
    token_types = g.array("tokenizer.ggml.token_type", {I32}, max_items=MAX_VOCAB + (1 << 16)) or []
    for index, token_type in enumerate(token_types[:n_vocab]):
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
        explicit = g.integer(f"tokenizer.ggml.{name}_token_id", 0, (1 << 32) - 1, types={U32})
        if explicit is not None and explicit >= n_vocab:
            g.fail(f"tokenizer.ggml.{name}_token_id = {explicit} is outside the vocabulary ({n_vocab:,} tokens)")
        default = defaults[name]
        effective = (
            explicit if explicit is not None else (default if default is not None and default < n_vocab else None)
        )
        if name in ("bos", "eos"):
            if effective is None:
                g.fail(f"tokenizer.ggml.{name}_token_id is missing (the model has no usable {name.upper()} token)")
            decode_text(tokens[effective], f"the {name.upper()} token's text", g.fail)
    for flag in ("add_bos_token", "add_eos_token", "add_space_prefix"):
        g.boolean(f"tokenizer.ggml.{flag}")


def _check_templates(g: GGUFFile, s: GGUFSummary) -> None:
    """llama-cpp-python compiles every tokenizer.chat_template* with Jinja while loading (a syntax error
    there is an uncaught exception): compile each here first, with time and size caps."""
    from vision_agent.backends.llama_cpp.chat_format import compile_template

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
    "general.name": STRING,
    "general.description": STRING,
    "clip.minicpmv_version": I32,
    "clip.minicpmv_query_num": U32,
    "clip.vision.swiglu_clamp": F32,
}
_CLIP_SCALARS |= dict.fromkeys(
    ["clip.projector_type", "clip.vision.mm_patch_merge_type", "clip.gen.audio.model_variant"]
    + [f"clip.{m}.projector_type" for m in ("vision", "audio", "gen.audio")],
    STRING,
)
_CLIP_SCALARS |= dict.fromkeys(
    [f"clip.{k}" for k in "has_vision_encoder has_audio_encoder has_gen_audio_encoder use_gelu use_silu".split()],
    BOOL,
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
    U32,
)
_CLIP_SCALARS |= {f"clip.{m}.attention.layer_norm_epsilon": F32 for m in ("vision", "audio", "gen.audio")}
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


def check_projector(g: GGUFFile, s: GGUFSummary) -> None:
    for key, type_code in _CLIP_SCALARS.items():
        kv = g.kvs.get(key)
        if kv is not None and kv.type != type_code:
            g.fail(f"{key} must be {VALUE_TYPES[type_code][0]}, not {g.type_name(key)}")
        if kv is not None and type_code == U32 and isinstance(kv.value, int) and kv.value > _INT32_MAX:
            g.fail(f"{key} = {kv.value} is out of range")
    for key in _CLIP_INT_ARRAYS:
        g.array(key, {I32}, max_items=4096)
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
    n_embd, n_head, n_layer = _check_encoder(g, "vision", "v")
    s.projection_dim = g.integer("clip.vision.projection_dim", 0, 1 << 20) or None
    image = g.integer("clip.vision.image_size", 1, 8192)
    patch = g.integer("clip.vision.patch_size", 1, 8192)
    if image is None or patch is None:
        g.fail("clip.vision.image_size and clip.vision.patch_size are required")
    if patch > image or image % patch:
        g.fail(f"clip.vision.image_size {image} is not a multiple of clip.vision.patch_size {patch}")
    s.image_size, s.patch_size = image, patch
    for key in ("clip.vision.image_mean", "clip.vision.image_std"):
        values = g.array(key, {F32}, max_items=16)
        if values is None or len(values) < 3:
            g.fail(f"{key} must hold 3 numbers (one per colour channel)")
        if key == "clip.vision.image_std" and any(v == 0 for v in values[:3]):
            g.fail("clip.vision.image_std must not be 0")
    _check_vision_options(g, kind, n_layer, patch)
    if kind != "gemma3nv":
        _check_layers(g, "v", n_embd, n_layer)
    if kind in ("mlp", "mlp_norm"):
        s.projection_dim = _check_llava(g, n_embd, n_head, n_layer, image, patch)


def _is(g: GGUFFile, kind: str) -> bool:
    return kind in (g.string("clip.projector_type", max_bytes=64), g.string("clip.vision.projector_type", max_bytes=64))


def _check_encoder(g: GGUFFile, modality: str, prefix: str) -> tuple[int, int, int]:
    """The transformer sizes every clip graph divides by (head size = width / heads): (width, heads, layers)."""
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
        for value in g.array(key, {I32}) or []:
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
    return n_embd, n_head, n_layer


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
    pinpoints = g.array(v + "image_grid_pinpoints", {I32}, max_items=1024) or []
    if len(pinpoints) % 2 or any(not patch <= x <= 16384 for x in pinpoints):
        g.fail(f"{v}image_grid_pinpoints must be width/height pairs of {patch}..16384 pixels")
    pattern = g.array(v + "wa_pattern_mode", {I32}, max_items=4096)
    if pattern is not None and len(pattern) != n_layer:
        g.fail(f"{v}wa_pattern_mode must have one item per layer ({n_layer})")
    for value in g.array(v + "wa_layer_indexes", {I32}, max_items=4096) or []:
        if not 0 <= value < n_layer:
            g.fail(f"{v}wa_layer_indexes holds {value}, out of range (0..{n_layer - 1})")


@overload
def _dims(g: GGUFFile, name: str, expected: tuple, *, required: Literal[True]) -> TensorInfo: ...
@overload
def _dims(g: GGUFFile, name: str, expected: tuple, *, required: bool = False) -> TensorInfo | None: ...
def _dims(g: GGUFFile, name: str, expected: tuple, *, required: bool = False) -> TensorInfo | None:
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


def _check_llava(g: GGUFFile, n_embd: int, n_head: int, n_layer: int, image: int, patch: int) -> int:
    """The LLaVA graph (tools/mtmd/models/llava.cpp) in full: every tensor it multiplies, by shape.
    Returns the width the projector outputs."""
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
    layers = [v for v in g.array("clip.vision.feature_layer", {I32}) or [] if v >= 0]
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
