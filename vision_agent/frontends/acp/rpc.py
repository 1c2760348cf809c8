"""JSON-RPC 2.0 over newline-delimited JSON, both ways: the client's requests and notifications in, our responses,
notifications and requests (permission questions) out. Every malformed message gets its standard error; none stops
the connection."""

from __future__ import annotations

import itertools
import threading
from typing import Any

from vision_agent.frontends.protocol_io import BadLine, ProtocolOut, loads_line
from vision_agent.sessions.service import Replies

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_BUSY = -32000  # implementation-defined: the prompt queue is full
RUN_FAILED = -32001  # implementation-defined: the model run failed (data: kind, exit_code)
RESOURCE_NOT_FOUND = -32002  # as ACP uses it: no such session

RequestId = str | int


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class Message:
    """One parsed incoming message: a request (id and method), a notification (method), or a response (id)."""

    def __init__(self, data: dict):
        self.id: RequestId | None = data.get("id")
        self.method: str | None = data.get("method")
        self.params: Any = data.get("params", {})
        self.result, self.error = data.get("result"), data.get("error")
        self.is_response = self.method is None and ("result" in data or "error" in data)


def parse(line: bytes) -> Message:
    """A message, or RpcError (with the id when it could be read) for a line that is not a valid one."""
    try:
        data = loads_line(line)
    except BadLine as exc:
        raise RpcError(PARSE_ERROR, f"parse error: {exc}") from None
    if not isinstance(data, dict):
        raise RpcError(INVALID_REQUEST, "a message is a JSON object (batches are not supported)")
    message = Message(data)
    if not _valid_id(message.id) or (message.id is None and "id" in data and message.method is None):
        message.id = None
        raise _with_id(RpcError(INVALID_REQUEST, "id must be a string or an integer"), None)
    if data.get("jsonrpc") != "2.0":
        raise _with_id(RpcError(INVALID_REQUEST, 'jsonrpc must be "2.0"'), message.id)
    if message.method is not None and not isinstance(message.method, str):
        raise _with_id(RpcError(INVALID_REQUEST, "method must be a string"), message.id)
    if message.method is None and not message.is_response:
        raise _with_id(RpcError(INVALID_REQUEST, "neither a request, a notification nor a response"), message.id)
    if message.method is not None and not isinstance(message.params, dict):
        raise _with_id(RpcError(INVALID_PARAMS, "params must be an object"), message.id)
    return message


def error_id(exc: RpcError) -> RequestId | None:
    return getattr(exc, "request_id", None)


class Connection:
    """Our side of the wire: responses, notifications, and requests whose responses a thread waits for."""

    def __init__(self, out: ProtocolOut):
        self.out = out
        self.replies = Replies()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def respond(self, request_id: RequestId | None, result: Any) -> None:
        self.out.write_json({"jsonrpc": "2.0", "id": request_id, "result": result})

    def fail(self, request_id: RequestId | None, error: RpcError) -> None:
        body: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.data is not None:
            body["data"] = error.data
        self.out.write_json({"jsonrpc": "2.0", "id": request_id, "error": body})

    def notify(self, method: str, params: dict) -> None:
        self.out.write_json({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method: str, params: dict, timeout: float, cancel: threading.Event | None = None) -> Any:
        """Send a request and wait for its response: the result, or None (an error response, no answer in time, a
        cancel)."""
        with self._lock:
            request_id = f"va-{next(self._ids)}"
        self.replies.expect(request_id)
        self.out.write_json({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        response = self.replies.wait(request_id, timeout, cancel)
        if not isinstance(response, Message) or response.error is not None:
            return None
        return response.result

    def received(self, message: Message) -> bool:
        """A response to one of our requests; False when nobody waits for it (ignored, as JSON-RPC says)."""
        return isinstance(message.id, str) and self.replies.answer(message.id, message)


def _valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _with_id(error: RpcError, request_id: RequestId | None) -> RpcError:
    error.request_id = request_id  # type: ignore[attr-defined]
    return error
