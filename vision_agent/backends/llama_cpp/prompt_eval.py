"""Prompt evaluation through libmtmd that keeps what llama.cpp already holds.

The KV cache of sequence 0 holds one prompt (plus the tokens generated after it). For a new prompt we
keep the longest common prefix, remove the rest from the KV cache, and evaluate only the new chunks at
their positions. Image chunks are decoded from embeddings that are cached by image hash, so an image is
encoded once. When a prompt would throw away much of what is held (another conversation, an edited
turn), the held state is first saved as a snapshot in host memory; a later prompt that shares more with
a snapshot than with the live state restores it instead of evaluating again.

Two tiers on disk outlive the process: image embeddings (disk_embeddings, after the in-memory cache and
before encoding) and, opt-in, each conversation's KV state (disk_states: written by save_state when a turn
ends, restored in evaluate when it holds more of the prompt than the live state and the snapshots).
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass, field

from vision_agent.backends.llama_cpp import log as llama_log
from vision_agent.backends.llama_cpp.answer_tokens import Piece
from vision_agent.backends.llama_cpp.caches import ByteBoundedLRU, PositionKeys, Snapshot, SnapshotStore, common_prefix
from vision_agent.backends.llama_cpp.disk_embeddings import DiskEmbeddings
from vision_agent.backends.llama_cpp.disk_states import DiskStates
from vision_agent.backends.llama_cpp.special_text import TextGuard, has_placeholder
from vision_agent.core.messages import ImagePart
from vision_agent.errors import BackendError

log = logging.getLogger(__name__)

# Positions a prompt must throw away before the held state is worth a snapshot, and how many more
# positions a snapshot must share with a prompt than the live state before restoring it pays off.
SNAPSHOT_MIN_DISCARD = 64
RESTORE_MIN_GAIN = 16


@dataclass
class PromptChunk:
    pointer: object  # mtmd_input_chunk_p, owned by TokenizedPrompt (None for spliced answer tokens)
    start: int  # first KV position
    n_pos: int
    tokens: list[int] | None  # text chunks
    image_id: str | None  # image chunks
    keys: list[int]


@dataclass
class TokenizedPrompt:
    """The chunks of one prompt; owns the libmtmd chunk lists behind them (use it as a context manager)."""

    chunks: list[PromptChunk] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)
    handles: list = field(default_factory=list)

    @property
    def n_pos(self) -> int:
        return len(self.keys)

    def add(self, chunk: PromptChunk) -> None:
        self.chunks.append(chunk)
        self.keys.extend(chunk.keys)

    def chunk_start_at(self, position: int) -> int:
        """`position`, moved back to its chunk's start when it falls inside an image."""
        for chunk in self.chunks:
            if chunk.start <= position < chunk.start + chunk.n_pos and chunk.image_id is not None:
                return chunk.start
        return position

    def __enter__(self) -> TokenizedPrompt:
        return self

    def __exit__(self, *_exc) -> None:
        import llama_cpp.mtmd_cpp as mtmd_cpp

        for handle in self.handles:
            mtmd_cpp.mtmd_input_chunks_free(handle)
        self.handles.clear()


@dataclass
class GuardedText:
    """A rendered prompt's placeholders and the guard that made them (see special_text)."""

    guard: TextGuard
    table: list[str]


@dataclass
class EvalStats:
    reused: int = 0  # positions kept from the KV cache or restored from a snapshot
    evaluated: int = 0
    images_encoded: int = 0
    images_from_cache: int = 0
    restored: bool = False  # from a snapshot in memory or a state file
    restored_from_disk: bool = False


class PromptEvaluator:
    def __init__(
        self,
        llama,
        mtmd_ctx,
        projector_id: str,
        *,
        reuse_prompt: bool,
        embeddings: ByteBoundedLRU,
        snapshots: SnapshotStore,
        disk: DiskEmbeddings | None = None,
        states: DiskStates | None = None,
    ):
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd_cpp

        self.llama = llama
        self.mtmd = mtmd_ctx
        self.projector_id = projector_id
        self.reuse_prompt = reuse_prompt
        self.embeddings = embeddings
        self.disk = disk  # the on-disk tier, after the in-memory one
        self.snapshots = snapshots
        self.states = states  # conversation states on disk (opt-in)
        self.n_embd = llama_cpp.llama_model_n_embd_inp(llama.model)
        self.media_marker = mtmd_cpp.mtmd_default_marker().decode("utf-8")
        self.held: list[int] = []  # PositionKeys of what sequence 0 holds
        self._position_keys = PositionKeys()

    # -- tokenisation -------------------------------------------------------------------------------

    def tokenize(
        self, pieces: list[Piece], images: list[ImagePart], guard: GuardedText | None = None
    ) -> TokenizedPrompt:
        """Text pieces through libmtmd (the images go with the markers in them); token spans as they are.

        With `guard`, text pieces that hold placeholders are cut at the structure's special tokens and
        markers, and the text between them is tokenised with special-token parsing off (see special_text).
        """
        prompt = TokenizedPrompt()
        remaining = list(images)
        try:
            for index, piece in enumerate(pieces):
                if isinstance(piece, str):
                    add_special = index == 0
                    if guard is not None and has_placeholder(piece):
                        parts = guard.guard.split(piece, guard.table)
                        count = sum(kind == "media" for kind, _ in parts)
                        self._tokenize_parts(prompt, parts, remaining[:count], add_special)
                    else:
                        count = piece.count(self.media_marker)
                        self._tokenize_text(prompt, piece, remaining[:count], add_special)
                    remaining = remaining[count:]
                else:
                    tokens = list(piece)
                    prompt.add(PromptChunk(None, prompt.n_pos, len(tokens), tokens, None, tokens))
            if remaining:  # the model would answer blind, as if it saw them
                raise BackendError(
                    f"the chat template left {len(remaining)} image(s) out of the prompt; "
                    "try another --chat-format (vicuna, mistral, chatml)"
                )
        except BaseException:
            prompt.__exit__(None, None, None)
            raise
        return prompt

    def _tokenize_text(self, prompt: TokenizedPrompt, text: str, images: list[ImagePart], add_special: bool) -> None:
        import llama_cpp.mtmd_cpp as mtmd_cpp

        input_text = _input_text(text, add_special=add_special, parse_special=True)
        bitmaps = [_bitmap(image) for image in images]
        try:
            array = (mtmd_cpp.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            handle = self._new_chunks(prompt)
            status = mtmd_cpp.mtmd_tokenize(self.mtmd, handle, ctypes.byref(input_text), array, len(bitmaps))
            self._check_tokenized(status)
        finally:
            for bitmap in bitmaps:
                mtmd_cpp.mtmd_bitmap_free(bitmap)
        self._add_chunks(prompt, handle)

    def _tokenize_parts(
        self, prompt: TokenizedPrompt, parts: list[tuple[str, str]], images: list[ImagePart], add_special: bool
    ) -> None:
        """Each part on its own: text with special-token parsing off, the structure's specials on, images."""
        import llama_cpp.mtmd_cpp as mtmd_cpp

        bitmaps = [_bitmap(image) for image in images]
        try:
            keep = []  # the ctypes objects the parts point to stay alive until libmtmd has read them
            inputs = []
            images_left = iter(bitmaps)
            for kind, text in parts:
                part = mtmd_cpp.mtmd_input_part()
                if kind == "media":
                    part.bitmap = next(images_left)
                else:
                    input_text = _input_text(text, add_special=False, parse_special=kind == "special")
                    keep.append(input_text)
                    part.text = ctypes.pointer(input_text)
                keep.append(part)
                inputs.append(ctypes.pointer(part))
            array = (ctypes.POINTER(mtmd_cpp.mtmd_input_part) * len(inputs))(*inputs)
            handle = self._new_chunks(prompt)
            status = mtmd_cpp.mtmd_tokenize_from_parts(self.mtmd, handle, array, len(inputs), add_special)
            self._check_tokenized(status)
        finally:
            for bitmap in bitmaps:
                mtmd_cpp.mtmd_bitmap_free(bitmap)
        self._add_chunks(prompt, handle)

    @staticmethod
    def _new_chunks(prompt: TokenizedPrompt):
        import llama_cpp.mtmd_cpp as mtmd_cpp

        handle = mtmd_cpp.mtmd_input_chunks_init()
        prompt.handles.append(handle)
        return handle

    @staticmethod
    def _check_tokenized(status: int) -> None:
        if status != 0:
            raise BackendError(
                f"libmtmd could not tokenise the prompt (code {status}): "
                f"{llama_log.last_error('image/marker mismatch or image preprocessing error')}"
            )

    def _add_chunks(self, prompt: TokenizedPrompt, handle) -> None:
        import llama_cpp.mtmd_cpp as mtmd_cpp

        for index in range(mtmd_cpp.mtmd_input_chunks_size(handle)):
            pointer = mtmd_cpp.mtmd_input_chunks_get(handle, index)
            start = prompt.n_pos
            if mtmd_cpp.mtmd_input_chunk_get_type(pointer) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                array = mtmd_cpp.mtmd_input_chunk_get_tokens_text(pointer, ctypes.byref(count))
                tokens = [array[i] for i in range(count.value)]
                prompt.add(PromptChunk(pointer, start, len(tokens), tokens, None, tokens))
            else:
                n_pos = mtmd_cpp.mtmd_input_chunk_get_n_pos(pointer)
                image_id = (mtmd_cpp.mtmd_input_chunk_get_id(pointer) or b"").decode()
                keys = self._position_keys.image(f"{image_id}:{n_pos}", n_pos)
                prompt.add(PromptChunk(pointer, start, n_pos, None, image_id, keys))

    # -- evaluation ---------------------------------------------------------------------------------

    def evaluate(self, prompt: TokenizedPrompt, conversation_id: str | None = None) -> EvalStats:
        """Leave sequence 0 holding exactly `prompt`, with logits for its last position. A state saved on
        disk for `conversation_id` is restored when it holds more of the prompt than anything else."""
        stats = EvalStats()
        start = self._keep_prefix(prompt, stats, conversation_id) if self.reuse_prompt else self._clear()
        stats.reused = start
        stats.evaluated = prompt.n_pos - start
        for chunk in prompt.chunks:
            if chunk.start + chunk.n_pos <= start:
                continue
            if chunk.tokens is not None:
                skip = max(0, start - chunk.start)
                self.llama.eval(chunk.tokens[skip:])
                self.held.extend(chunk.keys[skip:])
            else:
                self._decode_image(chunk, stats)
                self.held.extend(chunk.keys)
        return stats

    def sync_after_generation(self, prompt_len: int) -> None:
        """Generation appended sampled tokens to the KV cache; record them as held."""
        n = self.llama.n_tokens
        if n >= prompt_len:
            self.held = self.held[:prompt_len] + self.llama.input_ids[prompt_len:n].tolist()
        else:
            self.held = self.held[:n]

    def forget(self) -> None:
        """After a failure the KV cache may hold anything: start clean next time."""
        self._clear()

    def _clear(self) -> int:
        self.llama.reset()
        self.llama._ctx.kv_cache_clear()
        self.held = []
        return 0

    def _keep_prefix(self, prompt: TokenizedPrompt, stats: EvalStats, conversation_id: str | None) -> int:
        keep = common_prefix(self.held, prompt.keys)
        snapshot, snapshot_keep = self.snapshots.best(prompt.keys)
        candidate = None  # (keys, positions shared with the prompt, its state file or None for memory)
        if snapshot is not None and snapshot_keep >= keep + RESTORE_MIN_GAIN:
            candidate = (snapshot, snapshot_keep, None)
        saved, saved_keys, saved_keep = self._saved_state(conversation_id, prompt)
        if saved is not None and saved_keep >= max(keep, candidate[1] if candidate else 0) + RESTORE_MIN_GAIN:
            candidate = (Snapshot(tuple(saved_keys), None), saved_keep, saved)
        if candidate is not None or len(self.held) - keep >= SNAPSHOT_MIN_DISCARD:
            self._save_snapshot()
        if candidate is not None:
            chosen, shared, saved = candidate
            data = chosen.data if saved is None else self._load_state(saved)
            if data is None:
                pass  # the file could not be read: the live state is untouched
            elif self._restore(Snapshot(chosen.keys, data)):
                keep = shared
                stats.restored = True
                stats.restored_from_disk = saved is not None
            else:  # the KV cache is empty now
                keep = 0
                if saved is not None:  # another cache type or layout, or a context too small
                    self.states.discard(saved, "llama.cpp refused it")
        # The last position is always evaluated again: sampling needs its logits.
        keep = prompt.chunk_start_at(min(keep, prompt.n_pos - 1))
        self.llama._ctx.kv_cache_seq_rm(0, keep, -1)
        self.llama.n_tokens = keep
        self.held = self.held[:keep]
        return keep

    def _saved_state(self, conversation_id: str | None, prompt: TokenizedPrompt):
        """(SavedState, its keys in this process's terms, positions it shares with `prompt`), or Nones."""
        if self.states is None or conversation_id is None:
            return None, None, 0
        try:
            saved = self.states.peek(conversation_id)
        except OSError as exc:  # the model files could not be hashed: no saved state, not a failed request
            log.debug("KV states on disk unusable: %s", exc)
            self.states = None
            return None, None, 0
        if saved is None or len(saved.keys) >= len(self.llama.input_ids):
            return None, None, 0
        keys = self._position_keys.from_portable(saved.names, saved.keys)
        return saved, keys, common_prefix(keys, prompt.keys)

    def _load_state(self, saved):
        payload = self.states.load(saved)
        if payload is None:
            return None
        return (ctypes.c_uint8 * len(payload)).from_buffer(payload)  # no copy

    def save_state(self, conversation_id: str) -> bool:
        """Write what sequence 0 holds to disk for `conversation_id` (see disk_states)."""
        import llama_cpp

        if self.states is None or not self.held or len(self.held) != self.llama.n_tokens:
            return False
        ctx = self.llama._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0)
        if not written:
            return False
        names, keys = self._position_keys.to_portable(self.held)
        try:
            return self.states.save(conversation_id, names, keys, buffer, written)
        except OSError as exc:
            log.debug("KV state not saved: %s", exc)
            return False

    def _save_snapshot(self) -> None:
        import llama_cpp

        if not self.held or self.snapshots.covers(self.held):
            return
        ctx = self.llama._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        if size > self.snapshots.max_bytes:
            return
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0)
        if written:
            self.snapshots.add(Snapshot(tuple(self.held), buffer), written)

    def _restore(self, snapshot: Snapshot) -> bool:
        import llama_cpp

        self.llama._ctx.kv_cache_seq_rm(0, 0, -1)
        data = snapshot.data
        if not llama_cpp.llama_state_seq_set_data(self.llama._ctx.ctx, data, len(data), 0):
            log.debug("restoring a snapshot failed; evaluating from scratch")
            self._clear()
            return False
        n = len(snapshot.keys)
        # Image positions get a placeholder id: llama-cpp-python only compares ids it evaluated itself.
        self.llama.input_ids[:n] = [key if key >= 0 else 0 for key in snapshot.keys]
        self.llama.n_tokens = n
        self.held = list(snapshot.keys)
        return True

    def _decode_image(self, chunk: PromptChunk, stats: EvalStats) -> None:
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd_cpp

        embedding = self._embedding(chunk, stats)
        new_n_past = llama_cpp.llama_pos(0)
        status = mtmd_cpp.mtmd_helper_decode_image_chunk(
            self.mtmd,
            self.llama._ctx.ctx,
            chunk.pointer,
            embedding.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            llama_cpp.llama_pos(self.llama.n_tokens),
            llama_cpp.llama_seq_id(0),
            self.llama.n_batch,
            ctypes.byref(new_n_past),
            mtmd_cpp.mtmd_helper_post_decode_callback(),  # NULL: no callback
            None,
        )
        if status != 0:
            raise BackendError(f"llama.cpp failed to evaluate an image (code {status}): {llama_log.last_error()}")
        self.llama.n_tokens = new_n_past.value

    def _embedding(self, chunk: PromptChunk, stats: EvalStats):
        import llama_cpp.mtmd_cpp as mtmd_cpp
        import numpy as np

        key = (self.projector_id, chunk.image_id, chunk.n_pos)
        cached = self.embeddings.get(key)
        if cached is not None:
            stats.images_from_cache += 1
            return cached
        n_tokens = mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk.pointer)
        if self.disk is not None:  # encoded by an earlier process
            stored = self.disk.get(chunk.image_id or "", chunk.n_pos, n_tokens, self.n_embd)
            if stored is not None:
                stats.images_from_cache += 1
                self.embeddings.put(key, stored, stored.nbytes)
                return stored
        status = mtmd_cpp.mtmd_encode_chunk(self.mtmd, chunk.pointer)
        if status != 0:
            raise BackendError(f"libmtmd failed to encode an image (code {status}): {llama_log.last_error()}")
        stats.images_encoded += 1
        output = mtmd_cpp.mtmd_get_output_embd(self.mtmd)
        embedding = np.ctypeslib.as_array(output, shape=(n_tokens * self.n_embd,)).copy()
        self.embeddings.put(key, embedding, embedding.nbytes)
        if self.disk is not None:
            self.disk.put(chunk.image_id or "", chunk.n_pos, n_tokens, self.n_embd, embedding)
        return embedding


def _input_text(text: str, *, add_special: bool, parse_special: bool):
    import llama_cpp.mtmd_cpp as mtmd_cpp

    encoded = text.encode("utf-8")
    input_text = mtmd_cpp.mtmd_input_text()
    input_text.text = encoded
    input_text.text_len = len(encoded)
    input_text.add_special = add_special
    input_text.parse_special = parse_special
    return input_text


def _bitmap(image: ImagePart):
    import llama_cpp.mtmd_cpp as mtmd_cpp

    if len(image.rgb) != image.width * image.height * 3:  # libmtmd reads width * height * 3 bytes
        raise BackendError(f"image {image.source or image.sha256[:12]}: pixel data does not match its size")
    data = (ctypes.c_uint8 * len(image.rgb)).from_buffer_copy(image.rgb)
    bitmap = mtmd_cpp.mtmd_bitmap_init(image.width, image.height, data)
    if not bitmap:
        raise BackendError(f"libmtmd refused image {image.source or image.sha256[:12]}")
    mtmd_cpp.mtmd_bitmap_set_id(bitmap, image.sha256.encode())
    return bitmap
