"""The summary of a GGUF file that the rest of the app uses, read before llama.cpp sees the file.

Two walls: gguf_reader reads it with every length, count and offset bounded; gguf_rules then checks the
values llama.cpp and libmtmd assert on (a GGML_ASSERT aborts the process, silently while loading). A
refusal is a ModelFileError (exit 4) or, for a pair that does not belong together, a ModelMismatchError
(exit 5), with one line that names the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from vision_agent.catalog.gguf_reader import FILE_TYPES, U32, open_gguf, show
from vision_agent.catalog.gguf_rules import check_projector, check_tensor_types, check_text_model
from vision_agent.errors import ModelMismatchError

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
    file_type = g.integer("general.file_type", 0, 1 << 16, types={U32})
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
    check_tensor_types(g)
    if arch == "clip":
        check_projector(g, summary)
    else:
        check_text_model(g, summary)
    return summary


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
    name = FILE_TYPES[code] if code < len(FILE_TYPES) else "-"
    return str(code) if name == "-" else name
