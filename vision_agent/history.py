"""The last conversation, kept in the user data dir so that `ask -c` can continue it.

Messages go to last.json; images go once each to images/<sha256>.png (lossless), so a conversation
about the same screenshot does not store it twice.

What is stored is input like any other: the file may be damaged, edited or planted. Loading validates
every turn (its shape, and each image against its PNG: size, pixel budget and hash). A damaged turn is
left out with a note and the rest of the conversation is kept; only a file that cannot be read at all
is an error.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vision_agent.config import ImageSettings
from vision_agent.core.images import decode_image, encode_png, header_pixels, read_image_bytes
from vision_agent.core.messages import Conversation, ImagePart, Message, TextPart
from vision_agent.errors import ConfigError, ImageTooLargeError, StoreError, VisionAgentError
from vision_agent.files import read_regular
from vision_agent.paths import history_dir

FORMAT_VERSION = 1
MAX_FILE_BYTES = 32 * 1024 * 1024  # text only (images are files of their own): millions of tokens
# Parsed JSON takes up to ~50 times its size in memory when it is made of tiny values ({}, [], 1.5, "ab"):
# their number is bounded before parsing (commas and openers, an upper bound on the values).
MAX_JSON_VALUES = 2_000_000


@dataclass
class Loaded:
    conversation: Conversation
    problems: list[str] = field(default_factory=list)  # what was left out, one line each


def save_last(conversation: Conversation, directory: Path | None = None) -> Path:
    directory = directory or history_dir()
    images = directory / "images"
    data = {
        "version": FORMAT_VERSION,
        "messages": [m.model_dump(mode="json") for m in conversation.messages],
        "turn_starts": conversation.turn_starts,
        "hidden_before": conversation.hidden_before,
        "images_hidden_before": conversation.images_hidden_before,
    }
    target = directory / "last.json"
    try:
        images.mkdir(parents=True, exist_ok=True)
        for image in conversation.images:
            path = images / f"{image.sha256}.png"
            if not path.exists():
                write_atomic(path, encode_png(image))
        write_atomic(target, json.dumps(data, ensure_ascii=False).encode("utf-8", errors="replace"))
    except OSError as exc:
        raise StoreError(f"the conversation could not be saved in {directory}: {exc.strerror or exc}") from None
    return target


def load_last(directory: Path | None = None, *, limits: ImageSettings | None = None) -> Loaded:
    """The last conversation; its images within `limits` (bytes and pixels per image, and the request's total
    pixel budget for all of them together, the newest kept first)."""
    directory = directory or history_dir()
    path = directory / "last.json"
    raw = _read_stored(path)
    if raw.count(b",") + raw.count(b"{") + raw.count(b"[") > MAX_JSON_VALUES:
        raise StoreError(f"the saved conversation {path} holds too many values to load; ask without -c")
    try:
        stored = _Stored.model_validate_json(raw)
    except ValidationError as exc:
        raise StoreError(
            f"the saved conversation {path} is damaged ({first_problem(exc)}); ask without -c to start anew"
        ) from None
    if stored.version != FORMAT_VERSION:
        raise StoreError(f"the saved conversation {path} has an unknown format; ask without -c to start anew")
    return _rebuild(stored, directory / "images", limits or ImageSettings())


def _read_stored(path: Path) -> bytes:
    missing = ConfigError("no previous conversation to continue (-c): ask something without -c first")
    try:
        return read_regular(path, MAX_FILE_BYTES, what="the saved conversation", error=StoreError, missing=missing)
    except StoreError as exc:
        raise StoreError(f"{exc}; ask without -c to start anew") from None


# -- the stored shape -----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Stored(_Strict):
    version: int
    # Messages are checked one by one below, so one damaged message costs its turn, not the file.
    messages: list[object] = Field(max_length=100_000)
    turn_starts: object = []
    hidden_before: object = 0
    images_hidden_before: object = 0


class _StoredText(_Strict):
    type: str = "text"
    text: str


class _StoredImage(_Strict):
    type: str = "image"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    source: str = Field("", max_length=4096)


class _StoredMessage(_Strict):
    role: str = Field(pattern=r"^(system|user|assistant)$")
    parts: list[dict] = Field(max_length=1000)


@dataclass
class ImageBudget:
    """What the stored images may take together: each distinct image's pixels count once."""

    limits: ImageSettings
    used: int = 0


def _rebuild(stored: _Stored, images: Path, limits: ImageSettings) -> Loaded:
    messages: list[Message | None] = [None] * len(stored.messages)
    problems: dict[int, str] = {}
    cache: dict[str, ImagePart | str] = {}
    budget = ImageBudget(limits)
    # Newest first: when the stored images exceed the pixel budget, the oldest turns are the ones left out.
    for index in reversed(range(len(stored.messages))):
        try:
            messages[index] = stored_message(stored.messages[index], images, budget, cache)
        except (ValidationError, ValueError, VisionAgentError) as exc:
            problems[index] = f"message {index + 1}: {first_problem(exc)}"
    starts = _turn_starts(stored.turn_starts, len(messages), messages)
    conversation = Conversation()
    dropped = 0
    ends = [*starts[1:], len(messages)] if starts else []  # an empty conversation has no turns
    for begin, end in zip(starts, ends, strict=True):
        turn = [m for m in messages[begin:end] if m is not None]
        if not turn or len(turn) != end - begin:  # empty, or a message could not be rebuilt
            dropped += 1
            continue
        conversation.add_turn(turn)
    notes = []
    if dropped:
        first = problems[min(problems)] if problems else "empty turns"
        notes.append(f"the saved conversation had {dropped} damaged turn(s); they were left out ({first})")
    if not dropped:
        # The view is only meaningful for the conversation as it was stored.
        hidden = stored.hidden_before
        images_hidden = stored.images_hidden_before
        if _index(hidden, len(conversation.messages)) and _index(images_hidden, len(conversation.messages)):
            conversation.hidden_before, conversation.images_hidden_before = hidden, images_hidden
    return Loaded(conversation, notes)


def stored_message(raw: object, images: Path, budget: ImageBudget, cache: dict) -> Message:
    message = _StoredMessage.model_validate(raw)
    parts: list[TextPart | ImagePart] = []
    for part in message.parts:
        if part.get("type") == "image":
            image = _StoredImage.model_validate(part)
            parts.append(_image(image, images, budget, cache))
        else:
            parts.append(TextPart(text=_StoredText.model_validate(part).text))
    if not parts:
        raise ValueError("a message without content")
    return Message(role=message.role, parts=parts)


def _image(stored: _StoredImage, images: Path, budget: ImageBudget, cache: dict) -> ImagePart:
    """The image from its PNG, checked against what the conversation says it is, within the budget."""
    if stored.sha256 not in cache:
        limits = budget.limits
        # Our own PNGs of at most max_kept_pixels take under 4 bytes a pixel, whatever max_bytes says.
        max_bytes = max(limits.max_bytes, 4 * limits.max_kept_pixels)
        try:
            # A regular file within the byte limit (a FIFO or /dev/zero in its place is refused, not read).
            data = read_image_bytes(images / f"{stored.sha256}.png", max_bytes=max_bytes)
            pixels = header_pixels(data, stored.sha256)
            if budget.used + pixels > limits.max_total_pixels:
                raise ImageTooLargeError(
                    f"image {stored.sha256[:12]}: the saved images together exceed the limit of "
                    f"{limits.max_total_pixels:,} pixels"
                )
            cache[stored.sha256] = decode_image(
                data, source=stored.sha256[:12], max_bytes=max_bytes, max_pixels=limits.max_pixels
            )
            budget.used += pixels
        except VisionAgentError as exc:
            cache[stored.sha256] = str(exc)
    found = cache[stored.sha256]
    if isinstance(found, str):
        raise ValueError(found)
    if found.sha256 != stored.sha256 or (found.width, found.height) != (stored.width, stored.height):
        raise ValueError(f"image {stored.sha256[:12]} does not match its stored file")
    return found.model_copy(update={"source": stored.source})


def _turn_starts(raw: object, n_messages: int, messages: list) -> list[int]:
    raw = raw if isinstance(raw, list) else []
    starts = [s for s in raw if isinstance(s, int) and not isinstance(s, bool)]
    valid = starts and starts == sorted(set(starts)) and starts[0] == 0 and starts[-1] < n_messages
    if valid and len(starts) == len(raw):
        return starts
    # Saved before turns were recorded, or damaged: every user message starts one.
    found = [i for i, m in enumerate(messages) if m is not None and m.role == "user"]
    if n_messages and (not found or found[0] != 0):
        found.insert(0, 0)
    return found


def _index(value: object, length: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= length


def first_problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        return f"{where}: {error['msg']}" if where else error["msg"]
    return str(exc)


def write_atomic(path: Path, data: bytes) -> None:
    # A name of its own per writer: two processes saving at once never share a temporary file.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
