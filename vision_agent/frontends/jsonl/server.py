"""`vision-agent jsonl`: one request per input line, JSON lines out, over one PromptService.

The main thread reads stdin and answers cancel, status and approve at once; prompts run one at a time in the
service's worker, and their events are written as they happen, each with the request's id. Nothing a client
sends can stop the server: every bad line gets one `error` line. EOF lets the queued prompts finish, then
exits 0; `shutdown`, SIGINT, SIGTERM and SIGHUP cancel every prompt, let each end with its done, and exit.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from vision_agent.errors import ConfigError, VisionAgentError
from vision_agent.frontends.jsonl.messages import (
    REQUESTS,
    Ack,
    ApprovalRequest,
    ApproveRequest,
    CancelRequest,
    ErrorLine,
    PromptRequest,
    RequestId,
    Status,
    StatusRequest,
)
from vision_agent.frontends.protocol_io import BadLine, Oversized, ProtocolOut, loads_line

if TYPE_CHECKING:
    from vision_agent.core.events import Event, ToolCall
    from vision_agent.sessions.service import Job, PromptService, Replies

log = logging.getLogger(__name__)


class JsonlServer:
    def __init__(self, out: ProtocolOut, service: PromptService, replies: Replies, approval_timeout_s: float):
        self.out, self.service, self.replies = out, service, replies
        self.approval_timeout_s = approval_timeout_s
        self.ids: dict[str, RequestId] = {}  # service key -> the client's id (str or int, as sent)
        self.stopping = False

    # -- input --------------------------------------------------------------------------------------------

    def handle(self, line: bytes | Oversized) -> None:
        """One input line; whatever it holds, it gets its answer and the server goes on."""
        if isinstance(line, Oversized):
            return self.error(None, "line_too_long", f"a line of {line.size:,} bytes is over the cap; skipped")
        if not line.strip():
            return None  # blank lines are allowed between requests
        data = self._parse(line)
        if data is None:
            return None
        request_id = data.get("id")
        if not isinstance(request_id, str | int) or isinstance(request_id, bool):
            request_id = None
        kinds = [key for key in REQUESTS if key in data]
        if len(kinds) != 1:
            found = "none" if not kinds else " and ".join(kinds)
            return self.error(request_id, "invalid_request", f"a request holds one of {', '.join(REQUESTS)}: {found}")
        try:
            request = REQUESTS[kinds[0]].model_validate(data)
        except ValidationError as exc:
            return self.error(request_id, "invalid_request", _first_problem(exc))
        try:
            getattr(self, f"_{kinds[0]}")(request)
        except VisionAgentError as exc:
            self.error(request.id, exc.kind, str(exc))
        except Exception as exc:  # a bug; the server goes on
            log.debug("a request failed", exc_info=True)
            self.error(request.id, "internal", f"internal error: {type(exc).__name__}: {exc}")

    def _parse(self, line: bytes) -> dict | None:
        try:
            data = loads_line(line)
        except BadLine as exc:
            self.error(None, "parse_error", str(exc))
            return None
        if not isinstance(data, dict):
            self.error(None, "parse_error", f"a request is a JSON object, not {type(data).__name__}")
            return None
        return data

    # -- requests -----------------------------------------------------------------------------------------

    def _prompt(self, request: PromptRequest) -> None:
        from vision_agent.sessions.service import Job

        key = _key(request.id)
        if self.stopping:
            raise _Refusal("shutting_down", "the server is shutting down: no new prompts")
        if self.service.running(key):
            raise _Refusal("duplicate_id", f"a prompt with id {json.dumps(request.id)} is queued or running")
        if request.preset is not None:
            raise ConfigError(f"unknown preset {request.preset!r}: no presets exist yet")
        job = Job(
            key=key,
            prompt=request.prompt,
            emit=lambda event: self.event(request.id, event),
            fail=lambda exc: self._failed(request.id, exc),
            images=list(request.images),
            conversation=request.conversation,
            overrides=self._overrides(request),
        )
        job.approver = self._approver(request.id, job)
        self.ids[key] = request.id
        try:
            self.service.submit(job)
        except BaseException:
            self.ids.pop(key, None)
            raise

    def _failed(self, request_id: RequestId, exc: VisionAgentError) -> None:
        self.ids.pop(_key(request_id), None)
        self.error(request_id, exc.kind, str(exc))

    def _overrides(self, request: PromptRequest) -> dict:
        overrides: dict[str, dict] = {}
        generation = {"max_tokens": request.max_tokens, "temperature": request.temperature, "seed": request.seed}
        if any(value is not None for value in generation.values()):
            overrides["generation"] = {k: v for k, v in generation.items() if v is not None}
        agent = {"max_steps": request.max_steps, "system_prompt": request.system}
        if any(value is not None for value in agent.values()):
            overrides["agent"] = {k: v for k, v in agent.items() if v is not None}
        if request.tools is not None:
            from vision_agent.tooling import apply_tool_flags

            known = set(self.service.session.registry.tools)
            unknown = sorted(set(request.tools) - known)
            if unknown:
                raise ConfigError(f"unknown tool {unknown[0]!r} (tools: {', '.join(sorted(known))})")
            tools = self.service.session.settings.tools
            chosen = apply_tool_flags(tools, ",".join(request.tools), not request.tools, [])
            overrides["tools"] = {"policy": chosen.policy, "default_policy": chosen.default_policy}
        return overrides

    def _approver(self, request_id: RequestId, job: Job):
        def approve(call: ToolCall) -> bool:
            call_id = uuid.uuid4().hex[:16]
            self.replies.expect(call_id)
            self.write(
                ApprovalRequest(
                    id=request_id,
                    call_id=call_id,
                    tool=call.tool,
                    arguments=call.arguments,
                    timeout_s=self.approval_timeout_s,
                )
            )
            return self.replies.wait(call_id, self.approval_timeout_s, job.cancel) is True

        return approve

    def _cancel(self, request: CancelRequest) -> None:
        if not self.service.cancel(_key(request.cancel)):
            raise _Refusal("unknown_id", f"no queued or running prompt has the id {json.dumps(request.cancel)}")
        self.write(Ack(id=request.id))

    def _approve(self, request: ApproveRequest) -> None:
        if not self.replies.answer(request.approve, request.allow):
            raise _Refusal("unknown_id", f"no approval waits for the call_id {json.dumps(request.approve)}")
        self.write(Ack(id=request.id))

    def _status(self, request: StatusRequest) -> None:
        now = self.service.status()
        self.write(
            Status(
                id=request.id,
                running=self.ids.get(now["running"]) if now["running"] else None,
                queued=[self.ids.get(key, key) for key in now["queued"]],
                completed=now["completed"],
                pending_approvals=self.replies.pending(),
                model=now["model"],
                mmproj=now["mmproj"],
                uptime_s=now["uptime_s"],
            )
        )

    def _shutdown(self, request) -> None:
        self.stopping = True
        self.service.cancel_all()
        self.write(Ack(id=request.id))

    # -- output -------------------------------------------------------------------------------------------

    def event(self, request_id: RequestId, event: Event) -> None:
        from vision_agent.core.events import Done

        line = event.model_dump(mode="json")
        self.write({"type": line.pop("type"), "id": request_id, **line})
        if isinstance(event, Done):
            self.ids.pop(_key(request_id), None)

    def error(self, request_id: RequestId | None, code: str, message: str) -> None:
        self.write(ErrorLine(id=request_id, code=code, message=message))

    def write(self, line: Any) -> None:
        self.out.write_json(line)


class _Refusal(VisionAgentError):
    """A request the protocol itself refuses; its kind is the error code."""

    exit_code = 2

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _key(request_id: RequestId) -> str:
    return json.dumps(request_id)  # 1 and "1" are different ids


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "the request"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{where}: {message}"[:300]


def serve(args, settings) -> int:
    """The command: claim stdout, load the model, answer lines until EOF, shutdown or a signal."""
    from vision_agent import __version__
    from vision_agent.frontends.jsonl.messages import Ready
    from vision_agent.frontends.serving import serve_lines
    from vision_agent.sessions.service import PromptService, Replies
    from vision_agent.sessions.session import Session

    out = ProtocolOut.claim()  # first: llama.cpp and logging may write to fd 1 from here on
    try:
        session = Session.open(settings)
    except VisionAgentError as exc:
        out.write_json(ErrorLine(id=None, code=exc.kind, message=str(exc)))
        return exc.exit_code
    service = PromptService(session, max_queued=args.queue)
    server = JsonlServer(out, service, Replies(), args.approval_timeout)
    tools = [tool.name for tool in session.registry.enabled()]
    out.write_json(
        Ready(
            version=__version__,
            model=session.model,
            mmproj=session.mmproj,
            tools=tools,
            max_queued=args.queue,
            approval_timeout_s=args.approval_timeout,
            max_line_bytes=args.max_line_bytes,
        )
    )
    return serve_lines(
        service,
        server.handle,
        max_line_bytes=args.max_line_bytes,
        replies=server.replies,
        stopping=lambda: server.stopping,
    )
