"""Conversation value types: messages made of text and image parts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class TextPart(BaseModel):
    model_config = ConfigDict(frozen=True)
    type: Literal["text"] = "text"
    text: str


class ImagePart(BaseModel):
    """A decoded, normalised image: RGB pixels plus the hash that identifies them."""

    model_config = ConfigDict(frozen=True)
    type: Literal["image"] = "image"
    sha256: str
    width: int
    height: int
    rgb: bytes = Field(repr=False, exclude=True)  # width * height * 3 bytes, row-major
    source: str = ""


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]
Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    role: Role
    parts: list[Part]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def images(self) -> list[ImagePart]:
        return [p for p in self.parts if isinstance(p, ImagePart)]

    @classmethod
    def user(cls, text: str, images: Sequence[ImagePart] = ()) -> Message:
        # Images go before the text: LLaVA-style models are trained that way.
        return cls(role="user", parts=[*images, TextPart(text=text)])

    @classmethod
    def system(cls, text: str) -> Message:
        return cls(role="system", parts=[TextPart(text=text)])

    @classmethod
    def assistant(cls, text: str) -> Message:
        return cls(role="assistant", parts=[TextPart(text=text)])


class Conversation(BaseModel):
    messages: list[Message] = []
    turn_starts: list[int] = []  # index of each turn's first message (a turn may hold several agent steps)
    # What the model no longer sees once the conversation outgrew the context (see context_window):
    hidden_before: int = 0  # messages before this index
    images_hidden_before: int = 0  # images in messages before this index (a placeholder stands in)

    def add(self, message: Message) -> None:
        self.add_turn([message])

    def add_turn(self, messages: list[Message]) -> None:
        self.turn_starts.append(len(self.messages))
        self.messages.extend(messages)

    def turn_boundaries(self) -> list[int]:
        if self.turn_starts:
            return list(self.turn_starts)
        # Saved before turns were recorded: every user message starts one.
        return [i for i, m in enumerate(self.messages) if m.role == "user"]

    @property
    def images(self) -> list[ImagePart]:
        return [image for message in self.messages for image in message.images]
