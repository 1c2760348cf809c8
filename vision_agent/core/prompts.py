"""Loads prompt templates from the prompts/ folder (prompts are data, not string literals)."""

from __future__ import annotations

from functools import cache

from vision_agent.paths import data_path


@cache
def load_prompt(name: str) -> str:
    """Return prompts/NAME as text, without a single trailing newline."""
    text = data_path(f"prompts/{name}").read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


def chat_template(family: str) -> str:
    return load_prompt(f"chat/{family}.jinja")
