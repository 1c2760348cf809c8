"""The Backend protocol: one generation at a time, streamed as text deltas then a final summary."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from vision_agent.core.messages import Message


@dataclass
class GenerationRequest:
    messages: list[Message]
    temperature: float = 0.2
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None  # GBNF the output must match; backends without grammar support ignore it
    reserve: int = 0  # positions that must stay free after the prompt, or ContextOverflowError
    # Set by another thread to stop: the stream then ends with Finished("cancelled") and the usage so far.
    cancel: threading.Event | None = field(default=None, compare=False)
    # The stored conversation this request continues, if any: a backend may key saved state by it.
    conversation_id: str | None = None


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt positions llama.cpp already held (not evaluated again)
    images_encoded: int = 0
    images_cached: int = 0  # image embeddings taken from the cache instead of encoded


@dataclass(frozen=True)
class Finished:
    reason: Literal["stop", "length", "cancelled"]  # "stop": end of sequence or a stop string
    usage: Usage


Chunk = TextDelta | Finished


class Backend(Protocol):
    """Turns messages into a token stream. Implementations serialise calls with a lock.

    A backend with a bounded context also offers `context_size` (positions) and
    `count_prompt_tokens(request)`, and raises ContextOverflowError before the first chunk when the
    prompt does not fit; the agent then hides older turns (context_window) and tries again.
    """

    label: str

    def generate(self, request: GenerationRequest) -> Iterator[Chunk]: ...

    def close(self) -> None: ...
