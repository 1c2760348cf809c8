"""The one stream of typed events that every front end renders or serialises."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter


class ImageRef(BaseModel):
    sha256: str
    width: int
    height: int
    source: str = ""


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt positions llama.cpp already held, not evaluated again
    images_encoded: int = 0
    images_cached: int = 0  # image embeddings taken from a cache (memory or disk) instead of encoded


class ErrorInfo(BaseModel):
    kind: str
    message: str
    exit_code: int


class _Stamped(BaseModel):
    """Every event names its run and conversation once a session runs it (None when the agent runs alone)."""

    run_id: str | None = None
    conversation_id: str | None = None


class RunStarted(_Stamped):
    type: Literal["run_started"] = "run_started"
    model: str
    prompt: str
    images: list[ImageRef] = []


class Token(_Stamped):
    type: Literal["token"] = "token"
    text: str
    part: Literal["thought", "answer"] = "answer"


class ToolCall(_Stamped):
    type: Literal["tool_call"] = "tool_call"
    step: int
    tool: str
    arguments: dict


class ToolResult(_Stamped):
    type: Literal["tool_result"] = "tool_result"
    step: int
    tool: str
    ok: bool
    output: str
    truncated: bool = False
    seconds: float = 0.0


class Notice(_Stamped):
    """Something the user should know that is not an error of the run (a refused call, a retried step)."""

    type: Literal["notice"] = "notice"
    message: str


class Answer(_Stamped):
    type: Literal["answer"] = "answer"
    text: str
    finish_reason: Literal["stop", "length"] = "stop"


class Done(_Stamped):
    type: Literal["done"] = "done"
    status: Literal["ok", "max_steps", "cancelled", "error"]
    steps: int = 0
    usage: UsageInfo = UsageInfo()
    error: ErrorInfo | None = None


Event = Annotated[RunStarted | Token | ToolCall | ToolResult | Notice | Answer | Done, Field(discriminator="type")]
_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def to_json(event: Event) -> str:
    from pydantic_core import PydanticSerializationError

    try:
        return event.model_dump_json()
    except PydanticSerializationError:  # a lone surrogate in some text: shown as U+FFFD, the line still written
        import json

        from vision_agent.text import valid_values

        return json.dumps(valid_values(event.model_dump(mode="json")), ensure_ascii=False, separators=(",", ":"))


def from_json(line: str) -> Event:
    return _adapter.validate_json(line)
