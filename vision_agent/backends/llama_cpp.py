"""The llama.cpp backend: a GGUF text model plus its mmproj, driven through libmtmd.

Prompt evaluation is ours (mtmd_prompt.PromptEvaluator: only what the KV cache does not hold yet, images
from an embedding cache); sampling and detokenisation reuse llama-cpp-python's create_completion on the
evaluated prompt, exactly as its MTMDChatHandler does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from vision_agent.backends import llama_log
from vision_agent.backends.answer_tokens import AnswerTokens
from vision_agent.backends.base import Chunk, Finished, GenerationRequest, TextDelta, Usage
from vision_agent.backends.caches import ByteBoundedLRU, SnapshotStore
from vision_agent.backends.mtmd_prompt import EvalStats, PromptEvaluator
from vision_agent.catalog import ResolvedModel
from vision_agent.chat_format import choose_template, render_prompt
from vision_agent.config import MIB, ModelSettings
from vision_agent.errors import BackendError, ContextOverflowError, ModelFileError, ModelMismatchError
from vision_agent.gguf_info import check_pair, read_summary
from vision_agent.messages import ImagePart


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


class LlamaCppBackend:
    def __init__(self, model: ResolvedModel, settings: ModelSettings, embedding_cache: ByteBoundedLRU | None = None):
        """`embedding_cache` may be shared between backends: its keys name the projector file."""
        text_info = read_summary(model.text)
        if model.mmproj is None:
            raise ModelFileError(f"no projector for {model.text}: pass --mmproj PATH")
        mmproj_info = read_summary(model.mmproj)
        check_pair(text_info, mmproj_info)

        llama_log.install()
        import llama_cpp

        self.label = model.label
        self.text_info, self.mmproj_info = text_info, mmproj_info
        n_gpu_layers = settings.n_gpu_layers
        if n_gpu_layers is None:
            n_gpu_layers = -1 if gpu_offload_supported() else 0
        self.n_gpu_layers = n_gpu_layers
        self._lock = threading.Lock()
        self.last_completion_tokens: list[int] = []
        try:
            self.llama = llama_cpp.Llama(
                model_path=str(model.text),
                n_ctx=settings.n_ctx,
                n_batch=settings.n_batch,
                n_threads=settings.n_threads,
                n_gpu_layers=n_gpu_layers,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"llama.cpp could not load {model.text}: {llama_log.last_error(str(exc))}") from None
        self._mtmd = self._init_mtmd(str(model.mmproj), settings)
        self._evaluator = PromptEvaluator(
            self.llama,
            self._mtmd,
            _file_identity(model.mmproj),
            reuse_prompt=settings.kv_reuse,
            embeddings=ByteBoundedLRU(settings.image_cache_mb * MIB) if embedding_cache is None else embedding_cache,
            snapshots=SnapshotStore(settings.state_cache_mb * MIB),
        )
        self.template = choose_template(model.chat_format, text_info.chat_template)
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
        ctx = mtmd_cpp.mtmd_init_from_file(mmproj_path.encode(), self.llama.model, params)
        if not ctx:
            self.llama.close()
            raise ModelMismatchError(
                f"llama.cpp could not use projector {mmproj_path} with this model: "
                f"{llama_log.last_error('unknown error')}"
            )
        if not mtmd_cpp.mtmd_support_vision(ctx):
            mtmd_cpp.mtmd_free(ctx)
            self.llama.close()
            raise ModelMismatchError(f"projector {mmproj_path} has no vision support")
        self.media_marker = mtmd_cpp.mtmd_default_marker().decode("utf-8")
        return ctx

    # -- generation -------------------------------------------------------------------------------

    def render(self, request: GenerationRequest) -> str:
        llama = self.llama
        try:
            return render_prompt(
                request.messages,
                self.template,
                media_marker=self.media_marker,
                bos_token=_piece(llama.detokenize([llama.token_bos()])),
                eos_token=_piece(llama.detokenize([llama.token_eos()])),
            )
        except Exception as exc:  # a template may raise anything
            raise BackendError(f"the chat template failed: {exc}") from None

    def generate(self, request: GenerationRequest) -> Iterator[Chunk]:
        with self._lock:
            yield from self._generate_locked(request)

    def _generate_locked(self, request: GenerationRequest) -> Iterator[Chunk]:
        import llama_cpp

        llama = self.llama
        images = [part for message in request.messages for part in message.images]
        prompt_text = self.render(request)
        stats = self._evaluate_prompt(prompt_text, images, request.reserve)
        prompt = llama.input_ids[: llama.n_tokens].tolist()
        prompt_len = len(prompt)
        limit = prompt_len + request.max_tokens
        # llama-cpp-python skips its own max_tokens check while a multi-byte character is incomplete
        # (byte-fallback tokens), so we enforce the cap as a stopping criterion; the criterion sees the
        # tokens evaluated so far, which trail the tokens sampled by one.
        cap = llama_cpp.StoppingCriteriaList([lambda ids, _logits: len(ids) >= limit])

        stream = llama.create_completion(
            prompt=prompt,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
            seed=request.seed,
            stop=list(request.stop),
            # The rest as llama-cpp-python's create_chat_completion passes them to its handlers.
            top_k=40,
            min_p=0.05,
            typical_p=1.0,
            repeat_penalty=1.0,
            stopping_criteria=cap,
            grammar=self._grammar(request.grammar),
            stream=True,
        )
        reason = "length"
        pieces = []
        try:
            for piece in stream:
                choice = piece["choices"][0]
                if choice["text"]:
                    pieces.append(choice["text"])
                    yield TextDelta(choice["text"])
                if choice.get("finish_reason"):
                    reason = choice["finish_reason"]
        finally:
            stream.close()
            self._evaluator.sync_after_generation(prompt_len)
            # The sampled tokens that were evaluated (all but the last): for equality tests and debugging.
            self.last_completion_tokens = llama.input_ids[prompt_len : llama.n_tokens].tolist()
        if llama.n_tokens >= limit:
            reason = "length"
        if self.keep_answer_tokens:
            self._record_answer(prompt_text, prompt_len, "".join(pieces))
        usage = Usage(
            prompt_tokens=prompt_len,
            # Tokens sampled: the last one is never evaluated, hence the + 1.
            completion_tokens=min(request.max_tokens, max(0, llama.n_tokens - prompt_len + 1)),
            cached_tokens=stats.reused,
            images_encoded=stats.images_encoded,
            images_cached=stats.images_from_cache,
        )
        yield Finished(reason="stop" if reason == "stop" else "length", usage=usage)

    def _grammar(self, text: str | None):
        if text is None:
            return None
        import llama_cpp

        return llama_cpp.LlamaGrammar.from_string(text, verbose=False)

    @property
    def context_size(self) -> int:
        # llama.cpp may round n_ctx up (384 becomes 512); llama-cpp-python's token buffer keeps the
        # size asked for, and writing past it fails, so the smaller of the two is the real bound.
        return min(self.llama.n_ctx(), len(self.llama.input_ids))

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """The KV positions the request's prompt needs (tokenised exactly as generate would)."""
        with self._lock:
            images = [part for message in request.messages for part in message.images]
            with self._tokenize(self.render(request), images) as prompt:
                return prompt.n_pos

    def _tokenize(self, text: str, images: list[ImagePart]):
        pieces = self._answers.split(text) if self.keep_answer_tokens else [text]
        return self._evaluator.tokenize(pieces, images)

    def _evaluate_prompt(self, text: str, images: list[ImagePart], reserve: int) -> EvalStats:
        with self._tokenize(text, images) as prompt:
            if prompt.n_pos + max(reserve, 1) >= self.context_size:
                raise ContextOverflowError(self._overflow_message(prompt.n_pos, len(images), reserve))
            try:
                return self._evaluator.evaluate(prompt)
            except BaseException:
                self._evaluator.forget()
                raise

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


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _piece(piece) -> str:
    return piece.decode("utf-8", errors="ignore") if isinstance(piece, bytes) else str(piece)
