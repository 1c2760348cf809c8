"""Reads GGUF metadata before llama.cpp sees a file, so bad or mismatched files get a clear refusal.

llama.cpp may abort the whole process on a malformed file; we check structure and pairing first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vision_agent.errors import ModelFileError, ModelMismatchError


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
    # projectors
    projector_type: str | None = None
    projection_dim: int | None = None
    image_size: int | None = None
    patch_size: int | None = None
    has_vision: bool = False

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
    """Parse a GGUF header and check that every tensor lies inside the file."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path}: no such file")
    if not path.is_file():
        raise ModelFileError(f"model file {path}: not a regular file")
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelFileError(f"model file {path}: cannot read ({exc.strerror})") from None
    if magic != b"GGUF":
        raise ModelFileError(f"model file {path}: not a GGUF file")

    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises many kinds on corrupt headers
        raise ModelFileError(f"model file {path}: corrupt GGUF header ({type(exc).__name__}: {exc})") from None

    size = path.stat().st_size
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            raise ModelFileError(
                f"model file {path}: truncated (tensor {tensor.name} ends past the end of the file; re-download it)"
            )

    def value(key: str, default=None):
        f = reader.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception:
            return default

    arch = value("general.architecture", "")
    if not arch:
        raise ModelFileError(f"model file {path}: GGUF without general.architecture")
    summary = GGUFSummary(
        path=path,
        architecture=arch,
        name=value("general.name", "") or "",
        size_bytes=size,
        n_params=sum(int(t.n_elements) for t in reader.tensors),
        file_type=_file_type_name(value("general.file_type")),
    )
    if arch == "clip":
        summary.has_vision = bool(value("clip.has_vision_encoder", False))
        summary.projector_type = value("clip.projector_type") or value("clip.vision.projector_type")
        summary.projection_dim = value("clip.vision.projection_dim")
        summary.image_size = value("clip.vision.image_size")
        summary.patch_size = value("clip.vision.patch_size")
    else:
        summary.embedding_length = value(f"{arch}.embedding_length")
        summary.context_length = value(f"{arch}.context_length")
        summary.block_count = value(f"{arch}.block_count")
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        summary.vocab_size = len(tokens.data) if tokens is not None else None
        template = value("tokenizer.chat_template")
        summary.chat_template = template if isinstance(template, str) and template else None
    return summary


def check_pair(text: GGUFSummary, mmproj: GGUFSummary) -> None:
    """Refuse a text model / projector pair that llama.cpp could not use together."""
    if text.is_projector:
        raise ModelMismatchError(f"{text.path} is a projector (mmproj), not a text model")
    if not mmproj.is_projector:
        raise ModelMismatchError(
            f"{mmproj.path} is not a projector: its architecture is {mmproj.architecture!r}, expected 'clip'"
        )
    if not mmproj.has_vision:
        raise ModelMismatchError(f"{mmproj.path} has no vision encoder (an audio-only projector?)")
    if mmproj.projection_dim and text.embedding_length and mmproj.projection_dim != text.embedding_length:
        raise ModelMismatchError(
            f"mismatched pair: projector {mmproj.path.name} outputs width {mmproj.projection_dim} "
            f"but text model {text.path.name} has embedding width {text.embedding_length}"
        )


def _file_type_name(code) -> str:
    if code is None:
        return ""
    try:
        import gguf

        return gguf.LlamaFileType(int(code)).name.removeprefix("MOSTLY_")
    except Exception:
        return str(code)
