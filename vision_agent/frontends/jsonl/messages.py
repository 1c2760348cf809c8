"""The lines of `vision-agent jsonl`: every request a client sends (strict: unknown keys and wrong types are
refused) and every line the server writes that is not a core event. `vision-agent jsonl --schema` prints them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL = 1
MAX_IMAGES = 32  # per prompt; the pixel budget (images.max_total_pixels) bounds them too

RequestId = str | int  # chosen by the client, echoed on every line about the request


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: RequestId = Field(description="the client's id for this request, echoed on every line about it")


class PromptRequest(_Request):
    """Run one user turn. Ends with exactly one `done` line, or is refused with exactly one `error` line."""

    prompt: str = Field(min_length=1)
    images: list[str] = Field([], max_length=MAX_IMAGES, description="file paths or data:image/...;base64 URIs")
    conversation: str | None = Field(None, description="continue this stored conversation (id, id prefix, title)")
    preset: str | None = Field(None, description="a task preset (none exist yet: any name is refused)")
    tools: list[str] | None = Field(None, description="only these tools for this prompt; [] for none")
    max_steps: int | None = Field(None, ge=1, le=50)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    seed: int | None = None
    system: str | None = Field(None, description='the system prompt for this prompt; "" for none')


class CancelRequest(_Request):
    cancel: RequestId = Field(description="the id of a queued or running prompt")


class ApproveRequest(_Request):
    approve: str = Field(description="the call_id of an approval_request")
    allow: bool


class StatusRequest(_Request):
    status: Literal[True]


class ShutdownRequest(_Request):
    """Cancel every prompt (each still ends with its done), then exit 0."""

    shutdown: Literal[True]


# The key that names each kind of request; a line must hold exactly one of them.
REQUESTS: dict[str, type[_Request]] = {
    "prompt": PromptRequest,
    "cancel": CancelRequest,
    "approve": ApproveRequest,
    "status": StatusRequest,
    "shutdown": ShutdownRequest,
}


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ready(_Line):
    type: Literal["ready"] = "ready"
    protocol: int = PROTOCOL
    version: str
    model: str
    mmproj: str | None
    tools: list[str]
    max_queued: int
    approval_timeout_s: float
    max_line_bytes: int


class ErrorLine(_Line):
    type: Literal["error"] = "error"
    id: RequestId | None
    code: str = Field(description="see ERROR_CODES")
    message: str


class ApprovalRequest(_Line):
    type: Literal["approval_request"] = "approval_request"
    id: RequestId = Field(description="the prompt whose tool call waits")
    call_id: str
    tool: str
    arguments: dict[str, Any]
    timeout_s: float


class Status(_Line):
    type: Literal["status"] = "status"
    id: RequestId
    running: RequestId | None
    queued: list[RequestId]
    completed: int
    pending_approvals: list[str]
    model: str
    mmproj: str | None
    uptime_s: float


class Ack(_Line):
    """A cancel, approve or shutdown request was carried out."""

    type: Literal["ack"] = "ack"
    id: RequestId


ERROR_CODES = {
    "parse_error": "the line is not valid UTF-8 JSON, or not a JSON object",
    "invalid_request": "no request key, several, an unknown or missing field, or a value of the wrong type or range",
    "line_too_long": "the line is over the cap (--max-line-bytes); it was skipped whole",
    "busy": "the queue is full (--queue): send the prompt again after a done",
    "duplicate_id": "a prompt with this id is queued or running",
    "unknown_id": "cancel: no such queued or running prompt; approve: no such pending approval",
    "shutting_down": "a prompt sent after shutdown",
    "image_not_found": "an image file is missing or unreadable (exit code 6 in the CLI)",
    "image_corrupt": "an image is corrupt or not an image, or a data URI is malformed (7)",
    "image_too_large": "an image or all of them together are over the byte or pixel limits (8)",
    "not_found": "no stored conversation matches `conversation`, or several do",
    "config": "a setting given in the prompt is invalid (an unknown tool, a preset)",
    "store": "the conversation store cannot be read or written (14)",
    "internal": "a bug: the server goes on; please report it with the output of -v",
}
