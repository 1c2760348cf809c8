"""The llama.cpp backend: a GGUF text model plus its mmproj, driven through libmtmd.

Prompt evaluation is ours (prompt_eval.PromptEvaluator: only what the KV cache does not hold yet, images
from an embedding cache), and so is the token loop (token_loop: llama-cpp-python's sampler chain, an
incremental decoder, the cancel event looked at after every token and, through llama.cpp's abort
callback, inside every llama_decode).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Generator
from pathlib import Path

from vision_agent.backends.base import Chunk, Finished, GenerationRequest, Usage
from vision_agent.backends.llama_cpp import log as llama_log
from vision_agent.backends.llama_cpp import token_loop
from vision_agent.backends.llama_cpp.answer_tokens import AnswerTokens, Piece
from vision_agent.backends.llama_cpp.caches import ByteBoundedLRU, SnapshotStore
from vision_agent.backends.llama_cpp.chat_format import choose_template, compile_template, render_prompt
from vision_agent.backends.llama_cpp.disk_embeddings import DiskEmbeddings
from vision_agent.backends.llama_cpp.disk_states import DiskStates, model_identity
from vision_agent.backends.llama_cpp.load import check_context_size, load_text_model
from vision_agent.backends.llama_cpp.prompt_eval import GuardedText, PromptEvaluator
from vision_agent.backends.llama_cpp.special_text import TextGuard, read_vocab
from vision_agent.catalog import ResolvedModel
from vision_agent.catalog.gguf_info import check_pair, read_summary
from vision_agent.config import MIB, ModelSettings
from vision_agent.core.messages import ImagePart
from vision_agent.errors import (
    BackendError,
    ContextOverflowError,
    ModelFileError,
    ModelMismatchError,
    VisionAgentError,
)
from vision_agent.files import utf8_path

log = logging.getLogger(__name__)


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


class LlamaCppBackend:
    def __init__(self, model: ResolvedModel, settings: ModelSettings, embedding_cache: ByteBoundedLRU | None = None):
        """`embedding_cache` may be shared between backends: its keys name the projector file."""
        if model.text is None:
            raise ModelFileError("no text model: pass -m PATH")
        text_info = read_summary(model.text)
        if model.mmproj is None:
            raise ModelFileError(f"no projector for {model.text}: pass --mmproj PATH")
        mmproj_info = read_summary(model.mmproj)
        check_pair(text_info, mmproj_info)

        self.label = model.label
        self.text_info, self.mmproj_info = text_info, mmproj_info
        n_gpu_layers = settings.n_gpu_layers
        if n_gpu_layers is None:
            n_gpu_layers = -1 if gpu_offload_supported() else 0
        self.n_gpu_layers = n_gpu_layers
        self._lock = threading.Lock()
        self.last_completion_tokens: list[int] = []
        check_context_size(settings.n_ctx, text_info, host_memory=n_gpu_layers == 0 or not gpu_offload_supported())
        self.llama = load_text_model(model.text, settings, n_gpu_layers, text_info)
        self._pieces = token_loop.Pieces(self.llama._model.vocab)
        self._abort = AbortSwitch(self.llama.ctx)
        self._mtmd = self._init_mtmd(str(model.mmproj), settings)
        self._evaluator = PromptEvaluator(
            self.llama,
            self._mtmd,
            _file_identity(model.mmproj),
            reuse_prompt=settings.kv_reuse,
            embeddings=ByteBoundedLRU(settings.image_cache_mb * MIB) if embedding_cache is None else embedding_cache,
            snapshots=SnapshotStore(settings.state_cache_mb * MIB),
            disk=_disk_embeddings(model.mmproj, settings),
            states=_disk_states(model.text, model.mmproj, settings, self.context_size),
        )
        template = choose_template(model.chat_format, text_info.chat_template)
        self.template = compile_template(template)
        vocab = read_vocab(self.llama._model.vocab)
        structural = vocab.structural(template)
        self._guard = TextGuard(vocab.specials, self.media_marker, unbreakable=tuple(structural))
        # Tokens an answer must not bring back as structure when its sampled tokens are reused.
        self._control_ids = vocab.control_ids | frozenset(structural.values())
        self._max_token_bytes = vocab.max_token_bytes
        self.keep_answer_tokens = settings.keep_answer_tokens
        self._answers = AnswerTokens()

    def _init_mtmd(self, mmproj_path: str, settings: ModelSettings):
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd_cpp

        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = settings.mmproj_offload
        params.print_timings = False
        params.n_threads = self.llama.n_threads
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if self.llama.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        point = llama_log.mark()
        with utf8_path(mmproj_path, what="projector", error=ModelFileError) as usable:
            ctx = mtmd_cpp.mtmd_init_from_file(usable.encode(), self.llama.model, params)
        if not ctx:
            self.llama.close()
            raise ModelMismatchError(
                f"llama.cpp could not use projector {mmproj_path} with this model: "
                f"{llama_log.describe_since(point, 'unknown error')}"
            )
        if not mtmd_cpp.mtmd_support_vision(ctx):
            mtmd_cpp.mtmd_free(ctx)
            self.llama.close()
            raise ModelMismatchError(f"projector {mmproj_path} has no vision support")
        self.media_marker = mtmd_cpp.mtmd_default_marker().decode("utf-8")
        return ctx

    # -- generation -------------------------------------------------------------------------------

    def render(self, request: GenerationRequest) -> str:
        """The prompt text (special strings in the messages' text appear as placeholders, see special_text)."""
        return self._render(request)[0]

    def _render(self, request: GenerationRequest) -> tuple[str, GuardedText | None]:
        llama = self.llama
        messages, table = self._guard.protect(request.messages)
        try:
            text = render_prompt(
                messages,
                self.template,
                media_marker=self.media_marker,
                bos_token=_piece(llama.detokenize([llama.token_bos()])),
                eos_token=_piece(llama.detokenize([llama.token_eos()])),
            )
        except VisionAgentError:
            raise
        except Exception as exc:  # a template may raise anything
            raise BackendError(f"the chat template failed: {exc}") from None
        return text, GuardedText(self._guard, table) if table else None

    @property
    def max_prompt_bytes(self) -> int:
        """No text longer than this can fit the context: a token stands for at most `max_token_bytes`."""
        return self.context_size * self._max_token_bytes

    def generate(self, request: GenerationRequest) -> Generator[Chunk, None, None]:
        with self._lock:
            yield from self._generate_locked(request)

    def _generate_locked(self, request: GenerationRequest) -> Generator[Chunk, None, None]:
        cancel = request.cancel
        grammar = token_loop.checked_grammar(self.llama, request.grammar)  # refused before any work
        prompt_text, guarded = self._render(request)
        with self._abort.watching(cancel):
            prompt_len, stats = self._evaluate_prompt(request, prompt_text, guarded, cancel)
            if stats is None:  # cancelled before or while the prompt was evaluated
                self.last_completion_tokens = []
                yield Finished(reason="cancelled", usage=Usage(prompt_tokens=prompt_len))
                return
            end = yield from self._sample(request, grammar, prompt_text, prompt_len)
        usage = Usage(
            prompt_tokens=prompt_len,
            completion_tokens=end.sampled,
            cached_tokens=stats.reused,
            images_encoded=stats.images_encoded,
            images_cached=stats.images_from_cache,
        )
        yield Finished(reason=end.reason, usage=usage)

    def _evaluate_prompt(
        self, request: GenerationRequest, prompt_text: str, guarded: GuardedText | None, cancel: threading.Event | None
    ):
        """(prompt positions, EvalStats) once sequence 0 holds the rendered prompt; the stats are None when
        `cancel` was set before or during the evaluation."""
        images = [part for message in request.messages for part in message.images]
        with self._tokenize(prompt_text, images, guarded) as prompt:
            if prompt.n_pos + max(request.reserve, 1) >= self.context_size:
                raise ContextOverflowError(self._overflow_message(prompt.n_pos, len(images), request.reserve))
            if cancel is not None and cancel.is_set():
                return prompt.n_pos, None
            point = llama_log.mark()
            try:
                return prompt.n_pos, self._evaluator.evaluate(prompt, request.conversation_id)
            except BaseException as exc:
                # An aborted or failed llama_decode leaves the KV cache holding part of the prompt.
                self._evaluator.forget()
                if isinstance(exc, (RuntimeError, BackendError)) and cancel is not None and cancel.is_set():
                    return prompt.n_pos, None
                if isinstance(exc, RuntimeError):  # llama-cpp-python's "llama_decode returned N"
                    details = llama_log.describe_since(point, "no details logged")
                    raise BackendError(f"llama.cpp failed to evaluate the prompt ({exc}): {details}") from None
                raise

    def _sample(self, request: GenerationRequest, grammar, prompt_text: str, prompt_len: int):
        """The token loop after the evaluated prompt; returns its LoopEnd."""
        llama = self.llama
        room = self.context_size - prompt_len  # the last sampled token is never evaluated
        max_tokens = min(request.max_tokens, room) if request.max_tokens > 0 else room
        end = token_loop.LoopEnd("cancelled", 0, "")
        sampler = token_loop.make_sampler(
            llama, temperature=request.temperature, top_p=request.top_p, seed=request.seed, grammar=grammar
        )
        try:
            end = yield from token_loop.sample(
                llama, sampler, self._pieces, stops=list(request.stop), max_tokens=max_tokens, cancel=request.cancel
            )
        finally:
            sampler.close()
            self._evaluator.sync_after_generation(prompt_len)
            # The sampled tokens that were evaluated (all but the last): for equality tests and debugging.
            self.last_completion_tokens = llama.input_ids[prompt_len : llama.n_tokens].tolist()
        if self.keep_answer_tokens and end.reason != "cancelled":
            self._record_answer(prompt_text, prompt_len, end.text)
        return end

    def finish_conversation(self, conversation_id: str) -> bool:
        """A turn of `conversation_id` ended: with `model.save_state`, save what the KV cache holds so that
        a new process evaluates only the next turn. True when a state file was written; never raises."""
        with self._lock:
            try:
                return self._evaluator.save_state(conversation_id)
            except Exception as exc:  # a cache must never fail a turn that is already answered
                log.warning("the conversation's KV state was not saved: %s", exc)
                return False

    @property
    def context_size(self) -> int:
        # llama.cpp may round n_ctx up (384 becomes 512); llama-cpp-python's token buffer keeps the
        # size asked for, and writing past it fails, so the smaller of the two is the real bound.
        return min(self.llama.n_ctx(), len(self.llama.input_ids))

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """The KV positions the request's prompt needs (tokenised exactly as generate would)."""
        with self._lock:
            images = [part for message in request.messages for part in message.images]
            text, guarded = self._render(request)
            with self._tokenize(text, images, guarded) as prompt:
                return prompt.n_pos

    def _tokenize(self, text: str, images: list[ImagePart], guarded: GuardedText | None):
        pieces: list[Piece] = self._answers.split(text) if self.keep_answer_tokens else [text]
        return self._evaluator.tokenize(pieces, images, guarded)

    def _record_answer(self, prompt_text: str, prompt_len: int, answer: str) -> None:
        """Remember the sampled tokens behind `answer` (see answer_tokens). The last sampled token was never
        evaluated, so its text is tokenised; an answer cut by a stop string does not match and is skipped."""
        llama = self.llama
        evaluated = llama.input_ids[prompt_len : llama.n_tokens].tolist()
        prompt = llama.input_ids[:prompt_len].tolist()
        done = llama.detokenize(evaluated, prev_tokens=prompt).decode("utf-8", errors="ignore")
        if not answer.startswith(done):
            return
        rest = answer[len(done) :]
        tokens = evaluated + (llama.tokenize(rest.encode(), add_bos=False, special=False) if rest else [])
        if any(token in self._control_ids for token in tokens):
            return  # a control token the model wrote must not come back as structure: its text is used instead
        self._answers.record(prompt_text, answer, tokens)

    def _overflow_message(self, n_tokens: int, n_images: int, reserve: int) -> str:
        room = f" with {reserve} left for the answer" if reserve > 1 else ""
        return (
            f"prompt too long: {n_tokens} tokens ({n_images} image(s) included) do not fit the "
            f"{self.context_size}-token context{room}; raise --ctx or send fewer or smaller images"
        )

    def close(self) -> None:
        import llama_cpp.mtmd_cpp as mtmd_cpp

        if self._mtmd:
            mtmd_cpp.mtmd_free(self._mtmd)
            self._mtmd = None
        self.llama.close()


class AbortSwitch:
    """Makes llama_decode stop within a graph node of a threading.Event being set (CPU backend).

    llama.cpp calls the context's abort callback after every graph node. A Python callback would take the
    GIL there about a hundred times per token (measured: +60 % per token while another Python thread is
    busy), so the callback is libc's strlen on a one-byte flag: 0 (go on) while the byte is NUL, 1 (abort)
    once a watcher thread, woken by the event, writes it.
    """

    POLL_S = 0.25  # how often a watcher looks whether its request ended

    def __init__(self, ctx):
        self._ctx = ctx
        self._callback = _strlen_callback()

    @contextlib.contextmanager
    def watching(self, cancel: threading.Event | None):
        import llama_cpp

        if cancel is None or self._callback is None:
            yield
            return
        flag = ctypes.create_string_buffer(2)  # a fresh one per request: a late watcher cannot touch the next
        ended = threading.Event()

        def watch():
            while not ended.is_set():
                if cancel.wait(self.POLL_S):
                    flag[0] = b"x"
                    return

        llama_cpp.llama_set_abort_callback(self._ctx, self._callback, ctypes.addressof(flag))
        threading.Thread(target=watch, name="llama-abort-watch", daemon=True).start()
        try:
            yield
        finally:
            ended.set()
            llama_cpp.llama_set_abort_callback(self._ctx, llama_cpp.ggml_abort_callback(), None)


def _strlen_callback():
    """libc's strlen as a ggml_abort_callback, or None where it cannot be found (no abort inside a decode;
    cancel is still looked at after every token)."""
    import llama_cpp

    for name in (None, "msvcrt"):
        try:
            address = ctypes.cast(ctypes.CDLL(name).strlen, ctypes.c_void_p).value
        except (OSError, AttributeError, TypeError):
            continue
        return llama_cpp.ggml_abort_callback(address)
    return None


def _disk_embeddings(mmproj: Path, settings: ModelSettings) -> DiskEmbeddings | None:
    """The on-disk tier of the image-embedding cache, or None when off or unusable (never an error)."""
    if settings.embedding_cache_mb <= 0:
        return None
    from vision_agent.paths import cache_dir

    try:
        root = cache_dir()
        return DiskEmbeddings(root / "embeddings", mmproj, settings.embedding_cache_mb * MIB, root / "hashes")
    except OSError as exc:
        log.warning("image embeddings are not kept on disk: %s", exc)
        return None


def _disk_states(text: Path, mmproj: Path, settings: ModelSettings, context_size: int) -> DiskStates | None:
    """Conversation KV states on disk (opt-in), or None. The model files are hashed on first use."""
    if not settings.save_state or settings.state_dir_mb <= 0:
        return None
    from vision_agent.paths import cache_dir

    root = cache_dir()
    return DiskStates(
        root / "states",
        lambda: model_identity([text, mmproj], root / "hashes"),
        settings.state_dir_mb * MIB,
        context_size,
    )


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _piece(piece) -> str:
    return piece.decode("utf-8", errors="ignore") if isinstance(piece, bytes) else str(piece)
