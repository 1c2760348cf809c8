"""The plain chat turn (the agent with no tools) and the replay backend (scripted turns, real Backend interface)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import image_part
from vision_agent.backends.replay import ReplayBackend, parse_script
from vision_agent.config import GenerationSettings, load_settings
from vision_agent.core.agent import Agent
from vision_agent.core.events import Answer, Done, RunStarted, Token, from_json, to_json
from vision_agent.core.messages import Conversation
from vision_agent.errors import ModelFileError


def run_turn(backend, conversation, prompt, images, generation, system_prompt=""):
    settings = load_settings(None, {"tools": {"default_policy": "off"}, "agent": {"system_prompt": system_prompt}})
    settings.generation = generation
    return Agent(backend, settings).stream(prompt, images, conversation)


def image():
    return image_part(source="red.png")


def test_turn_streams_tokens_then_answer_then_done_and_records_history():
    backend = ReplayBackend(["A red square on white.", "It is red."])
    conversation = Conversation()
    events = list(run_turn(backend, conversation, "What is it?", [image()], GenerationSettings()))
    assert isinstance(events[0], RunStarted) and events[0].images[0].source == "red.png"
    tokens = [e.text for e in events if isinstance(e, Token)]
    assert tokens == ["A", " red", " square", " on", " white."]
    assert isinstance(events[-2], Answer) and events[-2].text == "A red square on white."
    assert isinstance(events[-1], Done) and events[-1].status == "ok"
    assert [m.role for m in conversation.messages] == ["user", "assistant"]

    # A follow-up sees the earlier image in the history without attaching it again.
    list(run_turn(backend, conversation, "Colour?", [], GenerationSettings()))
    second = backend.requests[1]
    assert [m.role for m in second.messages] == ["user", "assistant", "user"]
    assert second.messages[0].images[0].sha256 == image().sha256


def test_stop_strings_and_max_tokens_are_honoured():
    backend = ReplayBackend(["one two three STOP four", "a b c d e f"])
    events = list(run_turn(backend, Conversation(), "x", [], GenerationSettings(stop=["STOP"])))
    assert events[-2].text == "one two three " and events[-2].finish_reason == "stop"
    events = list(run_turn(backend, Conversation(), "x", [], GenerationSettings(max_tokens=3)))
    assert events[-2].text == "a b c" and events[-2].finish_reason == "length"


def test_backend_failure_ends_the_stream_with_done_error():
    backend = ReplayBackend([])
    conversation = Conversation()
    events = list(run_turn(backend, conversation, "x", [], GenerationSettings()))
    assert isinstance(events[-1], Done) and events[-1].status == "error"
    assert "exhausted" in events[-1].error.message and events[-1].error.exit_code == 11
    assert conversation.messages == []  # a failed turn leaves no half-written history


def test_events_round_trip_through_json():
    backend = ReplayBackend(["hello there"])
    for event in run_turn(backend, Conversation(), "x", [image()], GenerationSettings()):
        line = to_json(event)
        assert json.loads(line)["type"] == event.type
        assert from_json(line) == event


def test_script_formats(tmp_path):
    text = tmp_path / "script.txt"
    text.write_text("first turn\nstill first\n---\nsecond turn\n")
    assert parse_script(text) == ["first turn\nstill first", "second turn"]
    as_json = tmp_path / "script.json"
    as_json.write_text(json.dumps({"turns": ["a", "b"]}))
    assert parse_script(as_json) == ["a", "b"]
    as_json.write_text("{broken")
    with pytest.raises(ModelFileError, match="invalid JSON"):
        parse_script(as_json)


@pytest.mark.parametrize(
    "system_prompt, expected", [(None, "careful visual assistant"), ("", None), ("Be brief.", "Be brief.")]
)
def test_system_prompt_default_empty_and_custom(system_prompt, expected):
    backend = ReplayBackend(["ok"])
    list(run_turn(backend, Conversation(), "x", [], GenerationSettings(), system_prompt=system_prompt))
    first = backend.requests[0].messages[0]
    if expected is None:
        assert first.role == "user"
    else:
        assert first.role == "system" and expected in first.text
