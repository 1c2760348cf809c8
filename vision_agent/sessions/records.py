"""What the store hands out (conversations, turns, steps, search hits) and how its rows are read back.

Rows are stored text: a tampered database may hold any type in any column, so every read goes through
the converters here, never straight into a value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from vision_agent.core.messages import ImagePart
from vision_agent.errors import StoreError
from vision_agent.text import valid_text, valid_values

TITLE_CHARS = 80
STATUSES = ("ok", "max_steps", "cancelled", "error")
CONTEXT_STATUSES = ("ok", "max_steps")  # turns that become the model's context; the others are records only


class ConversationNotFound(StoreError):
    """No conversation matches the id or title given (or several do): a usage error, not a damaged store."""

    exit_code = 2
    kind = "not_found"


@dataclass(frozen=True)
class ConversationInfo:
    id: str  # uuid4 hex (32 chars)
    title: str  # from the first prompt: first line, control chars removed, <= 80 chars
    model: str  # model display name
    mmproj: str | None
    created_at: float  # unix seconds
    updated_at: float
    turns: int


@dataclass(frozen=True)
class StepRecord:
    """One tool step of a turn."""

    tool: str
    arguments: dict
    ok: bool | None  # None: the call had no result (cancelled)
    output: str


@dataclass(frozen=True)
class TurnRecord:
    run_id: str
    prompt: str
    images: list[str]  # sha256 of the turn's attached images (stored once each, by hash)
    answer: str
    status: str  # "ok" | "max_steps" | "cancelled" | "error"
    steps: list[StepRecord]
    usage: dict  # UsageInfo.model_dump()
    error: str | None = None
    created_at: float = 0.0  # set by the store on commit
    index: int = -1  # set by the store on commit (0-based, per conversation)


@dataclass(frozen=True)
class SearchHit:
    conversation_id: str
    title: str
    turn: int
    snippet: str  # matched words between [ and ]; stored text, so a front end escapes it like any other


def make_title(text: str) -> str:
    """The first line of `text` with something on it, control, format and bidi characters made spaces, spaces
    collapsed, at most TITLE_CHARS characters."""
    line = next((line for line in valid_text(text).splitlines() if line.strip()), "")
    line = " ".join("".join(ch if ch.isprintable() else " " for ch in line).split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def not_found(conversation_id: str) -> ConversationNotFound:
    return ConversationNotFound(f"no conversation {make_title(conversation_id)[:40] or repr(conversation_id)}")


INFO_QUERY = (
    "SELECT c.id, c.title, c.model, c.mmproj, c.created_at, c.updated_at, "
    "(SELECT COUNT(*) FROM turns t WHERE t.conversation_id = c.id) FROM conversations c"
)


def info_from_row(row: tuple) -> ConversationInfo:
    cid, title, model, mmproj, created, updated, turns = row
    return ConversationInfo(
        id=column_text(cid),
        title=make_title(column_text(title)),  # stored text: cleaned again on the way out
        model=column_text(model),
        mmproj=None if mmproj is None else column_text(mmproj),
        created_at=float(created) if isinstance(created, float | int) else 0.0,
        updated_at=float(updated) if isinstance(updated, float | int) else 0.0,
        turns=turns,
    )


def stored_part(part) -> dict:
    if isinstance(part, ImagePart):
        return {
            "type": "image",
            "sha256": part.sha256,
            "width": part.width,
            "height": part.height,
            "source": valid_text(part.source)[:1024],
        }
    return {"type": "text", "text": valid_text(part.text)}


def dump_json(value: object) -> str:
    return json.dumps(valid_values(value), ensure_ascii=False, default=str)


def load_json(value: object) -> object:
    """A stored JSON value; None when it is not JSON (a tampered row)."""
    if not isinstance(value, str | bytes):
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return None


def column_text(value: object) -> str:
    """A stored text column as text (SQLite keeps whatever type was written: a tampered row may hold a blob)."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None else str(value)


def optional_text(value: str | None) -> str | None:
    return None if value is None else valid_text(value)
