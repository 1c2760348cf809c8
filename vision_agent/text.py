"""Text that can always be encoded: where outside text enters (tool results, a model's JSON, flags).

Python strings may hold lone surrogates (a `\\ud800` JSON escape, a plugin's output, bytes from argv or the
environment decoded with surrogateescape). UTF-8 cannot encode them, so every later step that writes the
text (the prompt, a JSON line, the terminal, the saved conversation) would fail on them.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def valid_values(value: object) -> object:
    """A JSON-like value (str, list, dict, scalars) with `valid_text` applied to every string, keys included."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, list):
        return [valid_values(item) for item in value]
    if isinstance(value, dict):
        return {valid_values(key): valid_values(item) for key, item in value.items()}
    return value
