"""What reaches a terminal: text from the model, a tool, a file or a file name is shown, never obeyed.

A terminal acts on control characters: `ESC ] 52` writes the clipboard, `ESC [ 2J` clears the screen,
`ESC ] 0` sets the title, a carriage return overwrites what was shown, C1 codes (U+0080-U+009F) are
escape sequences on some terminals, and bidirectional overrides reorder what the reader sees. Every
such character is made visible as a Python-style escape (`\\x1b`, `\\r`, `\\u202e`); newlines and tabs
stay. Only our own styling (added after this, and only when the stream is a terminal) reaches it.
"""

from __future__ import annotations

import re

# C0 controls except \t and \n, DEL, C1 controls, the bidirectional embeddings, overrides and isolates, and
# lone surrogates (from argv, a file name or a plugin: UTF-8 cannot write them, so printing would fail).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# The same set in JSON text, where \t and \n are already escaped by the encoder.
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    if code == 0x0D:
        return "\\r"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def safe(text: str) -> str:
    """`text` with every control character a terminal would act on made visible."""
    return _UNSAFE.sub(_escape, text)


def safe_line(text: str) -> str:
    """Like `safe`, and on one line: newlines and tabs become visible too (file names, one-line messages)."""
    return safe(text).replace("\n", "\\n").replace("\t", "\\t")


def safe_json(line: str) -> str:
    """A JSON text with the characters JSON encoders leave raw (DEL, C1, bidi controls) escaped as \\uXXXX.

    They can only occur inside strings, where the escape means the same character: the value is unchanged.
    """
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


def json_text(value: object) -> str:
    """Data as indented JSON for stdout (`--json`): exact values, with nothing a terminal would act on."""
    import json

    from vision_agent.text import valid_values

    # JSON escapes control characters; safe_json the few it leaves raw (C1, bidi): the values are unchanged.
    return safe_json(json.dumps(valid_values(value), ensure_ascii=False, indent=2))
