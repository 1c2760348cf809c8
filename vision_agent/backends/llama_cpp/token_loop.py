"""The token loop: sample, turn token bytes into text, stop, and look at the cancel event after every token.

llama-cpp-python's create_completion re-detokenises the whole output on every token while the bytes are not
yet valid UTF-8, and when streaming detokenises the prompt and the completion again per token: the cost of a
token grows with the answer. Here a token costs the same whatever came before it: its bytes go through an
incremental UTF-8 decoder, and only text that may still become a stop string is held back.

Sampling is llama-cpp-python's own sampler chain with the settings its chat handlers pass, so a seed or
greedy decoding gives the same tokens as create_completion on the same evaluated prompt.
"""

from __future__ import annotations

import codecs
import ctypes
import random
import threading
from collections.abc import Generator
from dataclasses import dataclass

from vision_agent.backends.base import TextDelta
from vision_agent.backends.llama_cpp import log as llama_log
from vision_agent.errors import BackendError

# What llama-cpp-python's create_chat_completion passes to its handlers besides temperature and top_p.
TOP_K = 40
MIN_P = 0.05
TYPICAL_P = 1.0
REPEAT_PENALTY = 1.0


class TextStream:
    """Bytes of sampled tokens in, text out.

    Invalid bytes are dropped (llama-cpp-python decodes with errors="ignore"); a character split across
    tokens comes out whole once its last byte arrives. Text that could be the start of a stop string is
    held back until it cannot be; the earliest complete stop string ends the stream and is not released.
    """

    def __init__(self, stops: list[str]):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._stops = [stop for stop in dict.fromkeys(stops) if stop]  # an empty stop string would match at once
        self._held = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """The text that is now safe to show."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(data)
        if not self._stops:
            return text
        cut = first_stop(text, self._stops)
        if cut is not None:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = partial_stop(text, self._stops)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """At the end of generation: held text was not a stop string after all; an unfinished character is dropped."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text


def first_stop(text: str, stops: list[str]) -> int | None:
    """Where the earliest complete stop string in `text` begins."""
    found = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    return min(found) if found else None


def partial_stop(text: str, stops: list[str]) -> int:
    """The length of the longest end of `text` that is the beginning of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class Pieces:
    """Token id -> the bytes it stands for (special tokens as empty, as llama-cpp-python detokenises), or
    None for a token that ends generation. Looked up once per token id."""

    def __init__(self, vocab):
        self._vocab = vocab
        self._cache: dict[int, bytes | None] = {}
        self._buffer = ctypes.create_string_buffer(64)

    def __call__(self, token: int) -> bytes | None:
        try:
            return self._cache[token]
        except KeyError:
            piece = self._cache[token] = self._lookup(token)
            return piece

    def _lookup(self, token: int) -> bytes | None:
        import llama_cpp

        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            return None
        size = llama_cpp.llama_token_to_piece(self._vocab, token, self._buffer, len(self._buffer), 0, False)
        if size < 0:  # the buffer is too small; -size is what it needs
            self._buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self._vocab, token, self._buffer, len(self._buffer), 0, False)
        return self._buffer.raw[: max(size, 0)]


@dataclass
class LoopEnd:
    reason: str  # "stop" | "length" | "cancelled"
    sampled: int  # tokens sampled, an end-of-generation token included; the last one is never evaluated
    text: str  # the deltas yielded, joined


def make_sampler(llama, *, temperature: float, top_p: float, seed: int | None, grammar):
    """llama-cpp-python's sampler chain, seeded exactly as its create_completion seeds it.
    `grammar`: a LlamaGrammar from checked_grammar, or None."""
    if seed is not None:
        llama.set_seed(seed)
    else:  # create_completion derives the next seed from the last one; so do we, to sample the same
        llama.set_seed(random.Random(llama._seed).randint(0, 2**32))
    return llama._init_sampler(
        top_k=TOP_K,
        top_p=top_p,
        min_p=MIN_P,
        typical_p=TYPICAL_P,
        temp=temperature,
        repeat_penalty=REPEAT_PENALTY,
        grammar=grammar,
    )


def checked_grammar(llama, text: str | None):
    """A LlamaGrammar, after making sure llama.cpp parses it: a grammar it refuses would be added to the
    sampler chain as a null pointer and crash the process on the first token."""
    if text is None:
        return None
    import llama_cpp

    grammar = llama_cpp.LlamaGrammar.from_string(text, verbose=False)
    point = llama_log.mark()
    probe = llama_cpp.llama_sampler_init_grammar(
        llama._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
    )
    if not probe:
        raise BackendError(f"llama.cpp refused the grammar: {llama_log.describe_since(point, 'parse error')}")
    llama_cpp.llama_sampler_free(probe)
    return grammar


def sample(
    llama,
    sampler,
    pieces: Pieces,
    *,
    stops: list[str],
    max_tokens: int,
    cancel: threading.Event | None,
) -> Generator[TextDelta, None, LoopEnd]:
    """Sample up to `max_tokens` tokens after the evaluated prompt (sequence 0, logits for its last position).

    Each sampled token is evaluated only when the next one is needed, so the KV cache ends holding the
    prompt and all sampled tokens but the last, and llama.input_ids/n_tokens say so.
    """
    ctx = llama._ctx
    stream = TextStream(stops)
    shown: list[str] = []
    sampled = 0
    reason = "length"
    while True:
        if cancel is not None and cancel.is_set():
            reason = "cancelled"
            break
        token = sampler.sample(ctx, -1)
        sampled += 1
        piece = pieces(token)
        if piece is None:  # end of generation
            reason = "stop"
            break
        text = stream.feed(piece)
        if text:
            shown.append(text)
            yield TextDelta(text)
        if stream.stopped:
            reason = "stop"
            break
        if sampled >= max_tokens:
            break
        if cancel is not None and cancel.is_set():
            reason = "cancelled"
            break
        if not _evaluate(llama, token, cancel):
            reason = "cancelled"
            break
    rest = stream.flush()
    if rest:
        shown.append(rest)
        yield TextDelta(rest)
    return LoopEnd(reason, sampled, "".join(shown))


def _evaluate(llama, token: int, cancel: threading.Event | None) -> bool:
    """Append `token` to the KV cache; False when the cancel event aborted llama_decode."""
    point = llama_log.mark()
    try:
        llama.eval([token])
    except RuntimeError as exc:  # llama_decode returned non-zero (2: aborted by the abort callback)
        # llama.cpp drops the positions of an aborted batch; make sure nothing past n_tokens is held.
        llama._ctx.kv_cache_seq_rm(0, llama.n_tokens, -1)
        if cancel is not None and cancel.is_set():
            return False
        details = llama_log.describe_since(point, "no details logged")
        raise BackendError(f"llama.cpp failed to decode a token ({exc}): {details}") from None
    return True
