"""Text that reaches a terminal is shown, never obeyed: control characters become visible escapes."""

from __future__ import annotations

import json

import pytest

from vision_agent.frontends.terminal import safe, safe_json, safe_line

ATTACKS = {
    "clipboard_write": "\x1b]52;c;cm0gLXJmIH4=\x07",
    "clear_screen": "\x1b[2J\x1b[H",
    "set_title": "\x1b]0;owned\x07",
    "c1_csi": "\x9b2J",
    "c1_osc": "\x9d0;title\x9c",
    "carriage_return_overwrite": "rm -rf ~\rls",
    "backspace": "safe\x08\x08\x08\x08evil",
    "bidi_override": "invoice\u202egnp.exe",
    "bidi_isolate": "\u2066hidden\u2069",
    "nul_and_del": "a\x00b\x7f",
    "form_feed_vertical_tab": "a\x0cb\x0bc",
    "bell": "\x07",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_control_characters_are_made_visible(name):
    text = f"before {ATTACKS[name]} after"
    shown = safe(text)
    assert not any(ord(c) < 0x20 and c not in "\n\t" for c in shown)
    assert not any(0x7F <= ord(c) <= 0x9F for c in shown)
    assert not any(c in shown for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
    assert shown.startswith("before ") and shown.endswith(" after")


def test_visible_forms_are_python_escapes():
    assert safe("\x1b[31mred") == "\\x1b[31mred"
    assert safe("a\rb") == "a\\rb"
    assert safe("\u202e") == "\\u202e"
    assert safe("\x9b") == "\\x9b"


def test_ordinary_text_is_unchanged():
    text = "Line one\n\tindented — ünïcödé, 日本語, emoji 👩‍👩‍👧 (ZWJ kept)\n"
    assert safe(text) == text


def test_safe_line_keeps_one_line():
    assert safe_line("a\nb\tc\x1b") == "a\\nb\\tc\\x1b"


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_json_lines_carry_the_exact_text_with_nothing_raw(name):
    text = ATTACKS[name]
    line = safe_json(json.dumps({"text": text}, ensure_ascii=False))
    assert json.loads(line)["text"] == text  # same value
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in line)
    assert not any(c in line for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
