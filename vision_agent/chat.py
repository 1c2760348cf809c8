"""One plain chat turn as an event stream (no tools): the core the front ends listen to."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from vision_agent.backends.base import Backend, Finished, GenerationRequest, TextDelta
from vision_agent.config import GenerationSettings
from vision_agent.errors import VisionAgentError
from vision_agent.events import Answer, Done, ErrorInfo, Event, ImageRef, RunStarted, Token, UsageInfo
from vision_agent.messages import Conversation, ImagePart, Message
from vision_agent.prompts import load_prompt

log = logging.getLogger(__name__)


def system_message(system_prompt: str | None) -> Message | None:
    """None means the default prompt from prompts/system.txt; an empty string means no system message."""
    text = load_prompt("system.txt") if system_prompt is None else system_prompt
    return Message.system(text) if text else None


def run_turn(
    backend: Backend,
    conversation: Conversation,
    prompt: str,
    images: list[ImagePart],
    generation: GenerationSettings,
) -> Iterator[Event]:
    """Stream one user turn. The conversation gains the user and assistant messages on success."""
    yield RunStarted(
        model=backend.label,
        prompt=prompt,
        images=[ImageRef(sha256=i.sha256, width=i.width, height=i.height, source=i.source) for i in images],
    )
    user = Message.user(prompt, images)
    request = GenerationRequest(
        messages=[*conversation.messages, user],
        temperature=generation.temperature,
        top_p=generation.top_p,
        max_tokens=generation.max_tokens,
        seed=generation.seed,
        stop=list(generation.stop),
    )
    pieces: list[str] = []
    try:
        for chunk in backend.generate(request):
            if isinstance(chunk, TextDelta):
                pieces.append(chunk.text)
                yield Token(text=chunk.text)
            elif isinstance(chunk, Finished):
                finished = chunk
    except VisionAgentError as exc:
        yield _failed(exc.kind, str(exc), exc.exit_code)
        return
    except Exception as exc:  # a bug or an unexpected llama.cpp failure: still end the stream properly
        log.debug("generation failed", exc_info=True)
        yield _failed("internal", f"{type(exc).__name__}: {exc}", 1)
        return

    answer = "".join(pieces)
    conversation.add(user)
    conversation.add(Message.assistant(answer))
    yield Answer(text=answer, finish_reason=finished.reason)
    usage = finished.usage
    yield Done(
        status="ok",
        steps=1,
        usage=UsageInfo(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            images_encoded=usage.images_encoded,
        ),
    )


def _failed(kind: str, message: str, exit_code: int) -> Done:
    return Done(status="error", steps=1, error=ErrorInfo(kind=kind, message=message, exit_code=exit_code))
