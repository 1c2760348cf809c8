"""Loading the text model into llama.cpp, and the one-line messages when that fails.

A context llama.cpp cannot allocate is a configuration problem (exit 2), not a bad file; it is refused
before llama.cpp tries when the KV cache and attention buffers cannot fit in this machine's memory,
because llama.cpp would first write a KV cache that fits (tens of GB, tens of seconds) and only then fail
on the attention buffers. Whatever still fails is reported with llama.cpp's own last error lines.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

from vision_agent.backends.llama_cpp import log as llama_log
from vision_agent.catalog.gguf_info import GGUFSummary, kv_cache_bytes
from vision_agent.config import ModelSettings
from vision_agent.errors import BackendError, ConfigError, ModelFileError
from vision_agent.files import utf8_path

log = logging.getLogger(__name__)
GIB = 1024**3
MAX_N_CTX = 2**32 - 1  # llama.cpp keeps n_ctx in a uint32
N_UBATCH = 512  # llama-cpp-python's default micro-batch: the attention scores scale with it


def load_text_model(path: Path, settings: ModelSettings, n_gpu_layers: int, info: GGUFSummary | None = None):
    """llama_cpp.Llama for `path`, with failures turned into one-line messages that quote llama.cpp.

    Loaded with verbose=True: with verbose=False llama-cpp-python points fds 1 and 2 at /dev/null while
    loading, which hides the message of a llama.cpp abort. llama.cpp's log lines go to our logger either
    way (llama_log); what verbose=True makes llama-cpp-python print itself (system info, metadata, chat
    format guesses) goes to a buffer that is thrown away, and verbose is off again once loaded (it would
    print timings and cache chatter later).
    """
    import llama_cpp

    llama_log.install()
    point = llama_log.mark()
    chatter = io.StringIO()
    try:
        with (
            utf8_path(path, what="model file", error=ModelFileError) as usable,
            contextlib.redirect_stdout(chatter),
            contextlib.redirect_stderr(chatter),
        ):
            llama = llama_cpp.Llama(
                model_path=usable,
                n_ctx=settings.n_ctx,
                # llama-cpp-python sizes a logits array by n_batch before it caps n_batch at n_ctx.
                n_batch=min(settings.n_batch, settings.n_ctx),
                n_threads=settings.n_threads,
                n_gpu_layers=n_gpu_layers,
                verbose=True,
            )
    except (ValueError, RuntimeError) as exc:
        raise _load_error(path, settings.n_ctx, info, str(exc), point) from None
    llama.verbose = False
    log.debug("llama-cpp-python while loading: %s", chatter.getvalue())
    return llama


def _load_error(path: Path, n_ctx: int, info: GGUFSummary | None, error: str, point: int) -> Exception:
    details = llama_log.describe_since(point, error)
    lowered = details.lower()
    out_of_memory = any(sign in lowered for sign in ("failed to allocate", "insufficient memory", "out of memory"))
    if "llama_context" not in error:  # "Failed to load model from file"
        if out_of_memory:  # the weights do not fit: not the file's fault
            return BackendError(f"llama.cpp ran out of memory loading {path}: {details}")
        return ModelFileError(f"llama.cpp could not load {path}: {details}")
    if out_of_memory:
        kv = kv_cache_bytes(info, n_ctx) if info is not None else None
        size = f" (its KV cache alone needs ~{kv / GIB:.1f} GiB)" if kv else ""
        return ConfigError(f"llama.cpp could not create a {n_ctx}-token context{size}: {details}; lower --ctx")
    return BackendError(f"llama.cpp could not create a {n_ctx}-token context for {path}: {details}")


def check_context_size(n_ctx: int, info: GGUFSummary, *, host_memory: bool) -> None:
    """Refuse a context that cannot be allocated before llama.cpp tries: a KV cache that fits in memory but
    not with its attention buffers would first be written whole (tens of GB, tens of seconds) and then fail.
    `host_memory`: the buffers live in RAM (nothing offloaded to a GPU, whose memory we cannot see). Only
    what llama.cpp needs at least counts (a file that does not say enough counts for less), so a context
    that would fit is never refused.

    A context longer than the model was trained with is allowed (llama.cpp allows it, and RoPE scaling can
    make it useful), with a warning."""
    if n_ctx > MAX_N_CTX:
        raise ConfigError(f"--ctx {n_ctx} is more than llama.cpp supports ({MAX_N_CTX}); lower --ctx")
    total = _physical_memory()
    need = minimum_bytes(n_ctx, info)
    if host_memory and total is not None and need > total:
        kv = kv_cache_bytes(info, n_ctx)
        kv_text = f" (its KV cache ~{kv / GIB:.1f} GiB)" if kv else ""
        raise ConfigError(
            f"a {n_ctx}-token context does not fit: llama.cpp would need at least ~{need / GIB:.1f} GiB for it"
            f"{kv_text} and this machine has {total / GIB:.1f} GiB; lower --ctx"
        )
    if info.context_length and n_ctx > info.context_length:
        log.warning(
            "--ctx %d is more than the %d tokens %s was trained with; answers may degrade past that",
            n_ctx,
            info.context_length,
            info.path.name,
        )


def minimum_bytes(n_ctx: int, info: GGUFSummary) -> int:
    """What llama.cpp needs at least for the context: the KV cache (when the file says enough to know it)
    and the attention scores of one micro-batch against the whole context (f32, no flash attention)."""
    return (kv_cache_bytes(info, n_ctx) or 0) + n_ctx * N_UBATCH * (info.head_count or 1) * 4


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
