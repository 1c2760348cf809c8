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

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vision_agent.errors import ConfigError, StoreError, VisionAgentError
from vision_agent.images import decode_image, encode_png
from vision_agent.messages import Conversation, ImagePart, Message, TextPart

FORMAT_VERSION = 1
MAX_FILE_BYTES = 256 * 1024 * 1024


def history_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("vision-agent")) / "history"


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
                _write_atomic(path, encode_png(image))
        _write_atomic(target, json.dumps(data, ensure_ascii=False).encode("utf-8", errors="replace"))
    except OSError as exc:
        raise StoreError(f"the conversation could not be saved in {directory}: {exc.strerror or exc}") from None
    return target


def load_last(directory: Path | None = None, *, max_pixels: int = 40_000_000) -> Loaded:
    directory = directory or history_dir()
    path = directory / "last.json"
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("no previous conversation to continue (-c): ask something without -c first") from None
    except OSError as exc:
        raise StoreError(f"the saved conversation {path} cannot be read ({exc.strerror or exc})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise StoreError(f"the saved conversation {path} is over {MAX_FILE_BYTES // 2**20} MiB; ask without -c")
    try:
        stored = _Stored.model_validate_json(raw)
    except ValidationError as exc:
        raise StoreError(
            f"the saved conversation {path} is damaged ({_first_problem(exc)}); ask without -c to start anew"
        ) from None
    if stored.version != FORMAT_VERSION:
        raise StoreError(f"the saved conversation {path} has an unknown format; ask without -c to start anew")
    return _rebuild(stored, directory / "images", max_pixels)


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


def _rebuild(stored: _Stored, images: Path, max_pixels: int) -> Loaded:
    messages: list[Message | None] = []
    problems: list[str] = []
    cache: dict[str, ImagePart | str] = {}
    for index, raw in enumerate(stored.messages):
        try:
            messages.append(_message(raw, images, max_pixels, cache))
        except (ValidationError, ValueError, VisionAgentError) as exc:
            messages.append(None)
            problems.append(f"message {index + 1}: {_first_problem(exc)}")
    starts = _turn_starts(stored.turn_starts, len(messages), messages)
    conversation = Conversation()
    dropped = 0
    for begin, end in zip(starts, [*starts[1:], len(messages)], strict=True):
        turn = messages[begin:end]
        if not turn or any(m is None for m in turn):
            dropped += 1
            continue
        conversation.add_turn(turn)
    notes = []
    if dropped:
        notes.append(f"the saved conversation had {dropped} damaged turn(s); they were left out ({problems[0]})")
    if not dropped:
        # The view is only meaningful for the conversation as it was stored.
        hidden = stored.hidden_before
        images_hidden = stored.images_hidden_before
        if _index(hidden, len(conversation.messages)) and _index(images_hidden, len(conversation.messages)):
            conversation.hidden_before, conversation.images_hidden_before = hidden, images_hidden
    return Loaded(conversation, notes)


def _message(raw: object, images: Path, max_pixels: int, cache: dict) -> Message:
    message = _StoredMessage.model_validate(raw)
    parts = []
    for part in message.parts:
        if part.get("type") == "image":
            image = _StoredImage.model_validate(part)
            parts.append(_image(image, images, max_pixels, cache))
        else:
            parts.append(TextPart(text=_StoredText.model_validate(part).text))
    if not parts:
        raise ValueError("a message without content")
    return Message(role=message.role, parts=parts)


def _image(stored: _StoredImage, images: Path, max_pixels: int, cache: dict) -> ImagePart:
    """The image from its PNG, checked against what the conversation says it is."""
    if stored.sha256 not in cache:
        path = images / f"{stored.sha256}.png"
        try:
            with path.open("rb") as handle:
                data = handle.read(256 * 1024 * 1024 + 1)
            cache[stored.sha256] = decode_image(
                data, source=str(path), max_bytes=256 * 1024 * 1024, max_pixels=max_pixels
            )
        except OSError as exc:
            cache[stored.sha256] = f"image {stored.sha256[:12]} cannot be read ({exc.strerror or exc})"
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


def _index(value: object, length: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= length


def _first_problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        return f"{where}: {error['msg']}" if where else error["msg"]
    return str(exc)


def _write_atomic(path: Path, data: bytes) -> None:
    # A name of its own per writer: two processes saving at once never share a temporary file.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
