"""Core events as ACP `session/update` payloads, and stored turns replayed as updates for `session/load`."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vision_agent.core.events import Event
    from vision_agent.sessions.records import TurnRecord
    from vision_agent.sessions.store import Store

# ACP's tool kinds: how a client shows a call (an icon, a label).
TOOL_KINDS = {"web_search": "search", "python": "execute", "calculator": "think"}
MAX_REPLAYED_IMAGE_BYTES = 8 * 2**20  # larger stored images are replayed as a text mention


def text_block(text: str) -> dict:
    return {"type": "text", "text": text}


def chunk(kind: str, text: str) -> dict:
    return {"sessionUpdate": kind, "content": text_block(text)}


def tool_call_id(run_id: str | None, step: int) -> str:
    return f"{run_id or 'run'}-{step}"


def tool_call(call_id: str, tool: str, arguments: dict, status: str) -> dict:
    return {
        "sessionUpdate": "tool_call",
        "toolCallId": call_id,
        "title": tool,
        "kind": TOOL_KINDS.get(tool, "other"),
        "status": status,
        "rawInput": arguments,
    }


def tool_result(call_id: str, ok: bool, output: str, refused: str | None = None) -> dict:
    shown = output if not refused else f"not run: {refused}"
    return {
        "sessionUpdate": "tool_call_update",
        "toolCallId": call_id,
        "status": "completed" if ok else "failed",
        "content": [{"type": "content", "content": text_block(shown)}],
        "rawOutput": {"ok": ok, "output": output, "refused": refused},
    }


def for_event(event: Event) -> dict | None:
    """The update that shows `event` (None: nothing to show, e.g. run_started, done, the final answer whose tokens
    were already streamed)."""
    from vision_agent.core.events import Notice, Token, ToolCall, ToolResult

    if isinstance(event, Token):
        return chunk("agent_message_chunk" if event.part == "answer" else "agent_thought_chunk", event.text)
    if isinstance(event, ToolCall):
        return tool_call(tool_call_id(event.run_id, event.step), event.tool, event.arguments, "in_progress")
    if isinstance(event, ToolResult):
        return tool_result(tool_call_id(event.run_id, event.step), event.ok, event.output, event.refused)
    if isinstance(event, Notice):
        return chunk("agent_thought_chunk", f"[vision-agent] {event.message}\n")
    return None


def replay(turn: TurnRecord, store: Store) -> list[dict]:
    """A stored turn as the updates a client shows: the prompt and its images, the tool steps, the answer."""
    updates = [chunk("user_message_chunk", turn.prompt)]
    for sha256 in turn.images:
        updates.append({"sessionUpdate": "user_message_chunk", "content": _image_block(store, sha256)})
    for number, step in enumerate(turn.steps, 1):
        call_id = tool_call_id(turn.run_id, number)
        updates.append(tool_call(call_id, step.tool, step.arguments, "pending"))
        updates.append(tool_result(call_id, bool(step.ok), step.output))
    if turn.answer:
        updates.append(chunk("agent_message_chunk", turn.answer))
    if turn.status not in ("ok", "max_steps"):
        updates.append(chunk("agent_thought_chunk", f"[vision-agent] this turn ended: {turn.status}\n"))
    return updates


def _image_block(store: Store, sha256: str) -> dict[str, Any]:
    from vision_agent.errors import StoreError

    try:
        path = store.image_path(sha256)
        if path.stat().st_size <= MAX_REPLAYED_IMAGE_BYTES:
            data = base64.b64encode(path.read_bytes()).decode()
            return {"type": "image", "mimeType": "image/png", "data": data}
    except (OSError, ValueError, StoreError):  # a damaged store: the turn is still shown
        pass
    return text_block(f"[image {sha256[:12]}]")
