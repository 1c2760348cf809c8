"""Replays scripted assistant turns through the real Backend interface (tests, demos, UI work).

Script file: JSON (a list of strings, or {"turns": [...], "token_delay_s": 0.05}) or plain text with turns
separated by a line holding only `---`. Each turn streams word by word (each word after `token_delay_s`, for
tests of what happens while an answer streams); stop strings and max_tokens are honoured.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Literal

from vision_agent.backends.base import Chunk, Finished, GenerationRequest, TextDelta, Usage
from vision_agent.errors import BackendError, ContextOverflowError, ModelFileError

_PIECES = re.compile(r"\s*\S+|\s+")
IMAGE_TOKENS = 16


MAX_SCRIPT_BYTES = 16 * 1024 * 1024


def parse_script(path: Path) -> list[str]:
    """The turns of a replay script (see read_script)."""
    return read_script(path)[0]


def read_script(path: Path) -> tuple[list[str], float]:
    """The turns of a replay script and its delay per word; a file that is not one (binary, too large, the wrong
    JSON shape, not a regular file) is a bad model file (exit 4) with the reason."""
    from vision_agent.config import read_text_file

    text = read_text_file(path, MAX_SCRIPT_BYTES, what="replay script", error=ModelFileError)
    if "\0" in text:
        raise ModelFileError(f"replay script {path}: binary data (NUL bytes), not text")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"replay script {path}: invalid JSON ({exc})") from None
        except RecursionError:
            raise ModelFileError(f"replay script {path}: invalid JSON (nested too deeply)") from None
        turns = data.get("turns") if isinstance(data, dict) else data
        delay = data.get("token_delay_s", 0.0) if isinstance(data, dict) else 0.0
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise ModelFileError(f'replay script {path}: expected a list of strings or {{"turns": [...]}}')
        if type(delay) not in (int, float) or not 0 <= delay <= 10:
            raise ModelFileError(f"replay script {path}: token_delay_s must be a number of seconds from 0 to 10")
        return turns, float(delay)
    return [turn.strip("\n") for turn in re.split(r"^---[ \t]*$", text, flags=re.MULTILINE)], 0.0


class ReplayBackend:
    """`context_size`, when given, bounds the prompt as a real model would: a word is a token and an image
    IMAGE_TOKENS tokens (agent tests of context overflow use it).

    With `cache=True` the usage reports what a KV cache would have kept, as llama.cpp does: the words the
    prompt shares with the previous request's prompt and answer are `cached_tokens`, and an image seen in an
    earlier request is `images_cached` instead of `images_encoded`. Without it every image counts as encoded.
    """

    max_prompt_bytes: int | None = None  # words have no byte bound

    def __init__(
        self,
        turns: list[str],
        label: str = "replay",
        context_size: int | None = None,
        *,
        cache: bool = False,
        token_delay_s: float = 0.0,
    ):
        self.label = label
        self.token_delay_s = token_delay_s
        self.turns = list(turns)
        self.context_size = context_size
        self.cache = cache
        self.requests: list[GenerationRequest] = []
        self.finished_conversations: list[str] = []
        self._held: list[str] = []  # the words the "KV cache" holds after the last request
        self._seen_images: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path) -> ReplayBackend:
        turns, delay = read_script(path)
        return cls(turns, label=f"replay:{path}", token_delay_s=delay)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        words = sum(len(m.text.split()) for m in request.messages)
        return words + IMAGE_TOKENS * sum(len(m.images) for m in request.messages)

    def generate(self, request: GenerationRequest) -> Generator[Chunk, None, None]:
        with self._lock:
            if self.context_size:
                needed = self.count_prompt_tokens(request)
                if needed + max(request.reserve, 1) >= self.context_size:
                    raise ContextOverflowError(f"prompt too long: {needed} tokens for {self.context_size}")
            index = len(self.requests)
            self.requests.append(request)
            if index >= len(self.turns):
                raise BackendError(f"replay script exhausted: it has {len(self.turns)} turn(s)")
            text, reason = _apply_stop(self.turns[index], request.stop)
            pieces = _PIECES.findall(text)
            if len(pieces) > request.max_tokens:
                pieces, reason = pieces[: request.max_tokens], "length"
            cancel = request.cancel or threading.Event()
            for number, piece in enumerate(pieces):
                if self.token_delay_s:
                    cancel.wait(self.token_delay_s)
                if cancel.is_set():  # as llama.cpp's loop does: the stream ends at the next token
                    yield Finished(reason="cancelled", usage=self._usage(request, pieces[:number]))
                    return
                yield TextDelta(piece)
            yield Finished(reason=reason, usage=self._usage(request, pieces))

    def _usage(self, request: GenerationRequest, pieces: list[str]) -> Usage:
        images = [i.sha256 for m in request.messages for i in m.images]
        usage = Usage(prompt_tokens=self.count_prompt_tokens(request), completion_tokens=len(pieces))
        if not self.cache:
            return usage.model_copy(update={"images_encoded": len(images)})
        words = [w for m in request.messages for w in m.text.split()]
        shared = next(
            (i for i, (a, b) in enumerate(zip(words, self._held, strict=False)) if a != b),
            min(len(words), len(self._held)),
        )
        cached = sum(1 for sha in images if sha in self._seen_images)
        self._held = words + "".join(pieces).split()
        self._seen_images.update(images)
        return usage.model_copy(
            update={"cached_tokens": shared, "images_cached": cached, "images_encoded": len(images) - cached}
        )

    def finish_conversation(self, conversation_id: str) -> None:
        self.finished_conversations.append(conversation_id)

    def close(self) -> None:
        pass


def _apply_stop(text: str, stops: list[str]) -> tuple[str, Literal["stop", "length"]]:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], "stop") if cut >= 0 else (text, "stop")
