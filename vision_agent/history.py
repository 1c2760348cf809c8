"""The last conversation, kept in the user data dir so that `ask -c` can continue it.

Messages go to last.json; images go once each to images/<sha256>.png (lossless), so a conversation
about the same screenshot does not store it twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vision_agent.errors import ConfigError
from vision_agent.images import encode_png
from vision_agent.messages import Conversation, ImagePart, Message, TextPart

FORMAT_VERSION = 1


def history_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("vision-agent")) / "history"


def save_last(conversation: Conversation, directory: Path | None = None) -> Path:
    directory = directory or history_dir()
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    for image in conversation.images:
        path = images / f"{image.sha256}.png"
        if not path.exists():
            _write_atomic(path, encode_png(image))
    data = {
        "version": FORMAT_VERSION,
        "messages": [m.model_dump(mode="json") for m in conversation.messages],
        "turn_starts": conversation.turn_starts,
        "hidden_before": conversation.hidden_before,
        "images_hidden_before": conversation.images_hidden_before,
    }
    target = directory / "last.json"
    _write_atomic(target, json.dumps(data, ensure_ascii=False).encode("utf-8"))
    return target


def load_last(directory: Path | None = None) -> Conversation:
    directory = directory or history_dir()
    path = directory / "last.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("no previous conversation to continue (-c): ask something without -c first") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"the saved conversation {path} is unreadable ({exc}); ask without -c to start anew"
        ) from None
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise ConfigError(f"the saved conversation {path} has an unknown format; ask without -c to start anew")
    return Conversation(
        messages=[_message(m, directory / "images") for m in data["messages"]],
        turn_starts=data.get("turn_starts", []),
        hidden_before=data.get("hidden_before", 0),
        images_hidden_before=data.get("images_hidden_before", 0),
    )


def _message(raw: dict, images: Path) -> Message:
    parts = []
    for part in raw["parts"]:
        if part["type"] == "text":
            parts.append(TextPart(text=part["text"]))
        else:
            parts.append(_image(part, images))
    return Message(role=raw["role"], parts=parts)


def _image(part: dict, images: Path) -> ImagePart:
    from PIL import Image

    path = images / f"{part['sha256']}.png"
    try:
        with Image.open(path) as picture:
            rgb = picture.convert("RGB").tobytes()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"an image of the saved conversation is missing or damaged ({path}: {exc})") from None
    return ImagePart(
        sha256=part["sha256"], width=part["width"], height=part["height"], rgb=rgb, source=part.get("source", "")
    )


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
