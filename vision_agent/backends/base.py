"""The Backend protocol: one generation at a time, streamed as text deltas then a final summary."""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from vision_agent.core.events import UsageInfo
from vision_agent.core.messages import Message

# One usage type from the backend to `done`: a generation's counts are summed into the run's by the agent.
Usage = UsageInfo


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
class Finished:
    reason: Literal["stop", "length", "cancelled"]  # "stop": end of sequence or a stop string
    usage: Usage


Chunk = TextDelta | Finished


class Backend(Protocol):
    """Turns messages into a token stream. Implementations serialise calls with a lock.

    Its capabilities are part of the protocol, not probed: `context_size` is None for a backend without a
    bound (then the agent never trims); with a bound, `count_prompt_tokens(request)` gives the positions a
    request's prompt needs, and `generate` raises ContextOverflowError before the first chunk when the prompt
    and `request.reserve` do not fit; the agent then hides older turns (context_window) and tries again.
    `max_prompt_bytes`, when not None, is the longest prompt (UTF-8 bytes) that could fit at all: longer text
    is refused before it is tokenised. `finish_conversation(id)` is called after a stored conversation's turn,
    for a backend that keeps something of it (a saved KV state); it may do nothing.
    """

    label: str

    @property
    def context_size(self) -> int | None: ...

    @property
    def max_prompt_bytes(self) -> int | None: ...

    def count_prompt_tokens(self, request: GenerationRequest) -> int: ...

    # A generator: the agent closes it to stop early (a cancelled run, a step it has read enough of).
    def generate(self, request: GenerationRequest) -> Generator[Chunk, None, None]: ...

    def finish_conversation(self, conversation_id: str) -> object: ...  # what it returns is not used

    def close(self) -> None: ...
