"""Conversation value types: messages made of text and image parts."""

from __future__ import annotations

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
    def user(cls, text: str, images: list[ImagePart] = ()) -> Message:
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

    def add(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def images(self) -> list[ImagePart]:
        return [image for message in self.messages for image in message.images]
