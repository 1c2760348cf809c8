"""Every event type round-trips through JSON, and the JSON-lines writer emits exactly one object per line,
whatever the text holds (newlines, U+2028/2029, NEL, control characters, lone surrogates)."""

from __future__ import annotations

import io
import json
import typing

import pytest

from vision_agent.core.events import (
    Answer,
    Done,
    ErrorInfo,
    Event,
    ImageRef,
    Notice,
    RunStarted,
    Token,
    ToolCall,
    ToolResult,
    UsageInfo,
    from_json,
    to_json,
)
from vision_agent.frontends.render import JsonLinesRenderer
from vision_agent.text import valid_text

HOSTILE = [
    "plain",
    "two\nlines\r\nand a return\r",
    "line\u2028separator\u2029paragraph",
    "next line\x85and vertical tab\x0bform feed\x0cfile sep\x1cgroup\x1drecord\x1e",
    "nul\x00 bell\x07 escape\x1b[31m red del\x7f c1\x9b",
    "lone \ud800 surrogate and \udfff another",
    "bidi \u202e override \u2066 isolate, zero width \u200b",
    '{"type": "done"}\n{"type": "done"}',
    "",
]


def events_with(text: str) -> list:
    usage = UsageInfo(prompt_tokens=1, completion_tokens=2, cached_tokens=3, images_encoded=4, images_cached=5)
    stamp = {"run_id": "r" + text[:5], "conversation_id": text}
    return [
        RunStarted(
            model=text, prompt=text, images=[ImageRef(sha256="0" * 64, width=1, height=2, source=text)], **stamp
        ),
        Token(text=text, part="thought", **stamp),
        ToolCall(step=1, tool=text, arguments={text: [text, {"k": text}], "n": 1.5}, **stamp),
        ToolResult(step=1, tool=text, ok=False, output=text, truncated=True, seconds=0.25, refused=text, **stamp),
        Notice(message=text, **stamp),
        Answer(text=text, finish_reason="length", **stamp),
        Done(status="error", steps=3, usage=usage, error=ErrorInfo(kind=text, message=text, exit_code=13), **stamp),
    ]


def test_the_hostile_events_cover_every_event_type():
    union = typing.get_args(typing.get_args(Event)[0])
    kinds = {cls.model_fields["type"].default for cls in union}
    assert {e.type for e in events_with("x")} == kinds


def _cleaned(value):
    """What an event's text becomes through JSON: a lone surrogate cannot be encoded and becomes U+FFFD."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, dict):
        return {_cleaned(k): _cleaned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cleaned(v) for v in value]
    return value


@pytest.mark.parametrize("text", HOSTILE)
def test_every_event_round_trips(text):
    for event in events_with(text):
        line = to_json(event)
        assert line.splitlines() == [line] and "\n" not in line
        back = from_json(line)
        assert type(back) is type(event)
        assert back.model_dump() == _cleaned(event.model_dump())
        if "\ud800" not in text and "\udfff" not in text:
            assert back == event


def test_the_json_lines_writer_emits_one_object_per_line():
    events = [event for text in HOSTILE for event in events_with(text)]
    out = io.StringIO()
    renderer = JsonLinesRenderer(out)
    for event in events:
        renderer.show(event)
    written = out.getvalue()
    assert written.endswith("\n")
    for lines in (written.splitlines(), written.split("\n")[:-1], io.StringIO(written).readlines()):
        assert len(lines) == len(events)
        assert [from_json(line).type for line in lines] == [e.type for e in events]
    for line in written.splitlines():
        assert isinstance(json.loads(line), dict)
        assert not any(ch in line for ch in "\x1b\x7f\x85\x9b\u2028\u2029\u202e")  # escaped, never raw
