"""The one stream of typed events that every front end renders or serialises."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class ImageRef(BaseModel):
    sha256: str
    width: int
    height: int
    source: str = ""


class UsageInfo(BaseModel):
    """Token and image counts: of one generation (a backend's Finished.usage), or of a whole run (Done.usage).

    Over a run, prompt_tokens is the last step's prompt (how full the context got); every other count is the
    sum over the run's steps.
    """

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt positions llama.cpp already held, not evaluated again
    images_encoded: int = 0
    images_cached: int = 0  # image embeddings taken from a cache (memory or disk) instead of encoded

    def then(self, step: UsageInfo) -> UsageInfo:
        """This run's usage followed by one more step's."""
        return UsageInfo(
            prompt_tokens=step.prompt_tokens,
            completion_tokens=self.completion_tokens + step.completion_tokens,
            cached_tokens=self.cached_tokens + step.cached_tokens,
            images_encoded=self.images_encoded + step.images_encoded,
            images_cached=self.images_cached + step.images_cached,
        )


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
    refused: str | None = None  # why the call was not run (policy, approval); None when the tool ran


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


# Characters that str.splitlines() breaks lines at but JSON leaves raw inside strings (the ASCII ones JSON
# escapes itself): escaped, a JSON-lines reader sees exactly one object per line.
_LINE_BREAKS = re.compile("[\x85\u2028\u2029]")


def to_json(event: Event) -> str:
    """One line of JSON: no character in it ends a line, a lone surrogate is written as U+FFFD."""
    from pydantic_core import PydanticSerializationError

    try:
        line = event.model_dump_json()
    except (PydanticSerializationError, UnicodeEncodeError):  # a lone surrogate (in a key too): U+FFFD
        import json

        from vision_agent.text import valid_values

        # Cleaned before pydantic's JSON mode, which fails on a surrogate in a dict key too.
        clean = type(event).model_validate(valid_values(event.model_dump()))
        line = json.dumps(clean.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"))
    return _LINE_BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


def from_json(line: str) -> Event:
    return _adapter.validate_json(line)
