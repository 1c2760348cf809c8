"""`vision-agent acp`: an Agent Client Protocol agent over stdio, so that editors (Zed, toad, …) use vision-agent.

A session is a stored conversation: `session/new` gives a new id that the conversation takes on its first prompt,
and `session/load` replays a stored one. `session/prompt` becomes a PromptService job (images from image blocks,
file links and embedded blobs); its events stream as `session/update` notifications and its `done` answers the
request with a stop reason. Tools whose policy is `ask` ask the client with `session/request_permission`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from vision_agent.errors import VisionAgentError
from vision_agent.frontends.acp import updates
from vision_agent.frontends.acp.rpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    RESOURCE_NOT_FOUND,
    RUN_FAILED,
    SERVER_BUSY,
    Connection,
    RpcError,
    error_id,
    parse,
)
from vision_agent.frontends.protocol_io import Oversized

if TYPE_CHECKING:
    from vision_agent.core.events import Event, ToolCall
    from vision_agent.sessions.service import Job, PromptService

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_BLOCKS = 256  # content blocks per prompt
PERMISSION_OPTIONS = [
    {"optionId": "allow_once", "name": "Allow once", "kind": "allow_once"},
    {"optionId": "allow_always", "name": "Always allow in this session", "kind": "allow_always"},
    {"optionId": "reject_once", "name": "Deny", "kind": "reject_once"},
]


@dataclass
class AcpSession:
    id: str
    stored: bool  # the conversation exists in the store (loaded, or its first prompt ran)
    prompt_request: Any = None  # the id of the session/prompt request running, if any
    always: set[str] = field(default_factory=set)  # tools the user allowed for the whole session


class AcpAgent:
    def __init__(self, connection: Connection, service: PromptService, approval_timeout_s: float):
        self.rpc, self.service = connection, service
        self.approval_timeout_s = approval_timeout_s
        self.sessions: dict[str, AcpSession] = {}
        self._lock = threading.Lock()
        self.methods: dict[str, Callable[[dict], Any]] = {  # session/prompt answers later: see prompt()
            "initialize": self.initialize,
            "authenticate": lambda params: {},
            "session/new": self.new_session,
            "session/load": self.load_session,
        }

    # -- the wire -----------------------------------------------------------------------------------------

    def handle(self, line: bytes | Oversized) -> None:
        if isinstance(line, Oversized):
            return self.rpc.fail(None, RpcError(INVALID_REQUEST, f"a message of {line.size:,} bytes is over the cap"))
        if not line.strip():
            return None
        try:
            message = parse(line)
        except RpcError as exc:
            return self.rpc.fail(error_id(exc), exc)
        if message.is_response:
            self.rpc.received(message)
            return None
        if message.id is None:  # a notification: never answered, even when unknown
            if message.method == "session/cancel":
                self.cancel(message.params)
            return None
        method = self.methods.get(message.method or "")
        if method is None and message.method != "session/prompt":
            return self.rpc.fail(message.id, RpcError(METHOD_NOT_FOUND, f"unknown method {message.method!r:.80}"))
        try:
            result = method(message.params) if method is not None else self.prompt(message.params, message.id)
        except RpcError as exc:
            return self.rpc.fail(message.id, exc)
        except VisionAgentError as exc:
            return self.rpc.fail(message.id, _run_error(exc))
        except Exception as exc:  # a bug: reported, and the agent goes on
            log.debug("a request failed", exc_info=True)
            return self.rpc.fail(message.id, RpcError(INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}"))
        if result is not _LATER:
            self.rpc.respond(message.id, result)
        return None

    # -- methods ------------------------------------------------------------------------------------------

    def initialize(self, params: dict) -> dict:
        from vision_agent import __version__

        _require(params, "protocolVersion", int)
        return {
            "protocolVersion": PROTOCOL_VERSION,
            "agentCapabilities": {
                "loadSession": True,
                "promptCapabilities": {"image": True, "audio": False, "embeddedContext": True},
            },
            "authMethods": [],
            "agentInfo": {"name": "vision-agent", "title": "vision-agent", "version": __version__},
        }

    def new_session(self, params: dict) -> dict:
        _require(params, "cwd", str)
        session = AcpSession(id=uuid.uuid4().hex, stored=False)
        with self._lock:
            self.sessions[session.id] = session
        return {"sessionId": session.id}

    def load_session(self, params: dict) -> dict:
        session_id = _require(params, "sessionId", str)
        store = self.service.session.store
        if len(session_id) != 32 or not all(c in "0123456789abcdef" for c in session_id):
            raise RpcError(RESOURCE_NOT_FOUND, "no such session")
        try:
            store.info(session_id)
        except VisionAgentError:
            raise RpcError(RESOURCE_NOT_FOUND, f"no stored conversation {session_id}") from None
        for turn in store.turns(session_id):
            for update in updates.replay(turn, store):
                self._update(session_id, update)
        with self._lock:
            self.sessions[session_id] = self.sessions.get(session_id) or AcpSession(id=session_id, stored=True)
        return {}

    def prompt(self, params: dict, request_id: Any) -> object:
        from vision_agent.sessions.service import Job

        session = self._session(_require(params, "sessionId", str))
        text, images = _content(_require(params, "prompt", list))
        with self._lock:
            if session.prompt_request is not None:
                raise RpcError(INVALID_REQUEST, "a prompt is already running in this session")
            session.prompt_request = request_id
        run = _Run(self, session, request_id)
        job = Job(
            key=session.id,
            prompt=text,
            emit=run.emit,
            fail=run.fail,
            images=images,
            conversation=session.id if session.stored else None,
            new_id=None if session.stored else session.id,
        )
        job.approver = run.approver(job)
        try:
            self.service.submit(job)
        except BaseException:
            with self._lock:
                session.prompt_request = None
            raise
        return _LATER

    def cancel(self, params: Any) -> None:
        session_id = params.get("sessionId") if isinstance(params, dict) else None
        if isinstance(session_id, str):
            self.service.cancel(session_id)  # its prompt answers `cancelled`; a pending permission is refused

    # -- helpers ------------------------------------------------------------------------------------------

    def _session(self, session_id: str) -> AcpSession:
        with self._lock:
            session = self.sessions.get(session_id)
        if session is None:
            raise RpcError(RESOURCE_NOT_FOUND, "no such session: create it with session/new or session/load")
        return session

    def _update(self, session_id: str, update: dict) -> None:
        self.rpc.notify("session/update", {"sessionId": session_id, "update": update})

    def _finish(self, session: AcpSession) -> None:
        with self._lock:
            session.prompt_request = None


_LATER = object()  # the response is sent when the run ends


class _Run:
    """One session/prompt: its events as updates, its end as the response."""

    def __init__(self, agent: AcpAgent, session: AcpSession, request_id: Any):
        self.agent, self.session, self.request_id = agent, session, request_id
        self.streamed_answer = False
        self.finish_reason = "stop"
        self.current_call: str | None = None

    def emit(self, event: Event) -> None:
        from vision_agent.core.events import Answer, Done, RunStarted, Token, ToolCall

        if isinstance(event, RunStarted) and event.conversation_id == self.session.id:
            self.session.stored = True
        if isinstance(event, Token) and event.part == "answer":
            self.streamed_answer = True
        if isinstance(event, ToolCall):
            self.current_call = updates.tool_call_id(event.run_id, event.step)
        if isinstance(event, Answer):
            self.finish_reason = event.finish_reason
            if not self.streamed_answer and event.text:
                self.agent._update(self.session.id, updates.chunk("agent_message_chunk", event.text))
            return
        if isinstance(event, Done):
            return self._done(event)
        update = updates.for_event(event)
        if update is not None:
            self.agent._update(self.session.id, update)
        return None

    def _done(self, done) -> None:
        self.agent._finish(self.session)
        if done.status == "error" and done.error is not None:
            data = {"kind": done.error.kind, "exit_code": done.error.exit_code}
            return self.agent.rpc.fail(self.request_id, RpcError(RUN_FAILED, done.error.message, data))
        reason = {"ok": "end_turn", "max_steps": "max_turn_requests", "cancelled": "cancelled"}[done.status]
        if reason == "end_turn" and self.finish_reason == "length":
            reason = "max_tokens"
        usage = done.usage
        result = {
            "stopReason": reason,
            "usage": {
                "inputTokens": usage.prompt_tokens,
                "outputTokens": usage.completion_tokens,
                "totalTokens": usage.prompt_tokens + usage.completion_tokens,
                "cachedReadTokens": usage.cached_tokens,
            },
        }
        self.agent.rpc.respond(self.request_id, result)
        return None

    def fail(self, exc: VisionAgentError) -> None:
        self.agent._finish(self.session)
        self.agent.rpc.fail(self.request_id, _run_error(exc))

    def approver(self, job: Job):
        def approve(call: ToolCall) -> bool:
            if call.tool in self.session.always:
                return True
            call_id = self.current_call or updates.tool_call_id(None, call.step)
            tool_call = updates.tool_call(call_id, call.tool, call.arguments, "pending")
            tool_call.pop("sessionUpdate")
            params = {"sessionId": self.session.id, "toolCall": tool_call, "options": PERMISSION_OPTIONS}
            result = self.agent.rpc.request(
                "session/request_permission", params, self.agent.approval_timeout_s, job.cancel
            )
            outcome = result.get("outcome") if isinstance(result, dict) else None
            selected = isinstance(outcome, dict) and outcome.get("outcome") == "selected"
            chosen = outcome.get("optionId") if selected else None  # type: ignore[union-attr]
            if chosen == "allow_always":
                self.session.always.add(call.tool)
            return chosen in ("allow_once", "allow_always")

        return approve


def _require(params: dict, key: str, kind: type) -> Any:
    value = params.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise RpcError(INVALID_PARAMS, f"params.{key}: expected {kind.__name__}")
    return value


def _content(blocks: list) -> tuple[str, list]:
    """The prompt's text and images from ACP content blocks (text, image, resource_link, resource)."""
    if len(blocks) > MAX_BLOCKS:
        raise RpcError(INVALID_PARAMS, f"a prompt holds at most {MAX_BLOCKS} content blocks")
    texts: list[str] = []
    images: list = []
    for number, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        where = f"params.prompt[{number}]"
        if kind == "text":
            texts.append(_field(block, "text", where))
        elif kind == "image":
            mime = _field(block, "mimeType", where)
            images.append(f"data:{mime};base64,{_field(block, 'data', where)}")
        elif kind == "resource_link":
            uri = _field(block, "uri", where)
            path = _image_file(uri, block.get("mimeType"))
            if path is not None:
                images.append(path)
            else:
                texts.append(f"[{block.get('name') or 'link'}: {uri}]")
        elif kind == "resource":
            resource = block.get("resource")
            if not isinstance(resource, dict):
                raise RpcError(INVALID_PARAMS, f"{where}.resource: expected an object")
            if isinstance(resource.get("text"), str):
                texts.append(f"[{resource.get('uri', 'resource')}]\n{resource['text']}")
            elif str(resource.get("mimeType", "")).startswith("image/") and isinstance(resource.get("blob"), str):
                images.append(f"data:{resource['mimeType']};base64,{resource['blob']}")
            else:
                raise RpcError(INVALID_PARAMS, f"{where}: only text resources and images are supported")
        else:
            raise RpcError(INVALID_PARAMS, f"{where}: unsupported content block type {kind!r:.40}")
    text = "\n".join(t for t in texts if t.strip())
    if not text.strip():
        raise RpcError(INVALID_PARAMS, "the prompt holds no text")
    return text, images


def _field(block: dict, key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, f"{where}.{key}: expected a string")
    return value


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def _image_file(uri: str, mime: Any) -> str | None:
    """The local path of a file:// link to an image (by its MIME type or suffix), else None."""
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return None
    path = unquote(parsed.path)
    if (isinstance(mime, str) and mime.startswith("image/")) or path.lower().endswith(IMAGE_SUFFIXES):
        return path
    return None


def _run_error(exc: VisionAgentError) -> RpcError:
    """A prompt that could not start, as a JSON-RPC error whose data names the kind (the CLI's exit code too)."""
    data = {"kind": exc.kind, "exit_code": exc.exit_code}
    if exc.kind == "busy":
        return RpcError(SERVER_BUSY, str(exc), data)
    if exc.kind == "internal":
        return RpcError(INTERNAL_ERROR, str(exc), data)
    return RpcError(INVALID_PARAMS, str(exc), data)
