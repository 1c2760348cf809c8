"""The step format (parser, streaming splitter, grammar) and tools built from typed functions."""

from __future__ import annotations

import re
from typing import Literal

import pytest

from vision_agent.config import ToolsSettings, load_settings
from vision_agent.core.step_format import AnswerStep, StepStreamer, ToolStep, parse_step, step_grammar
from vision_agent.errors import ConfigError, StepFormatError, ToolError
from vision_agent.tooling import FunctionTool, ToolContext, ToolRegistry, apply_tool_flags, load_tools


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            'Thought: add\nAction: calculator\nInput: {"expression": "1+1"}',
            ToolStep("add", "calculator", {"expression": "1+1"}),
        ),
        ('Thought: x\nAction: `python`\nInput: ```json\n{"code": "1"}\n```', ToolStep("x", "python", {"code": "1"})),
        (
            'thought: lower case\naction: calculator\ninput: {"expression": "2"}',
            ToolStep("lower case", "calculator", {"expression": "2"}),
        ),
        (
            'Action: calculator\nInput: {"expression": "3"} trailing words',
            ToolStep("", "calculator", {"expression": "3"}),
        ),
        (
            'Thought: raw newline\nAction: python\nInput: {"code": "a = 1\nprint(a)"}',
            ToolStep("raw newline", "python", {"code": "a = 1\nprint(a)"}),
        ),
        ("Thought: done\nAnswer: It is 4.\nSecond line.", AnswerStep("done", "It is 4.\nSecond line.")),
        ("Answer: Action: not a call", AnswerStep("", "Action: not a call")),
        (
            "Thought: t\nAnswer: first\nAction: calculator\nInput: {}",
            AnswerStep("t", "first\nAction: calculator\nInput: {}"),
        ),
    ],
)
def test_parse_step(text, expected):
    assert parse_step(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("just prose", "no 'Action:' or 'Answer:' line"),
        ("Thought: t\nAction: calculator", "needs an 'Input:' line"),
        ("Thought: t\nAction: rm -rf /\nInput: {}", "must name one tool"),
        ("Thought: t\nAction: calculator\nInput: {oops", "not valid JSON"),
        ("Thought: t\nAnswer:   ", "empty"),
    ],
)
def test_parse_step_errors(text, message):
    with pytest.raises(StepFormatError, match=re.escape(message)):
        parse_step(text)


def split(text: str, size: int) -> list[tuple[str, str]]:
    streamer = StepStreamer()
    pieces = []
    for start in range(0, len(text), size):
        pieces += streamer.feed(text[start : start + size])
    pieces += streamer.finish()
    merged: dict[str, str] = {}
    for part, piece in pieces:
        merged[part] = merged.get(part, "") + piece
    return merged


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_streamer_splits_thought_and_answer_whatever_the_token_boundaries(size):
    tool = 'Thought: I need to add.\nAction: calculator\nInput: {"expression": "2+2"}'
    assert split(tool, size) == {"thought": "I need to add."}
    final = "Thought: seen it\nAnswer: Four.\nThought: stays in the answer"
    assert split(final, size) == {"thought": "seen it", "answer": "Four.\nThought: stays in the answer"}
    assert split("no headers at all\nsecond", size) == {"thought": "no headers at all\nsecond"}


def test_grammar_lists_enabled_tools_and_bounds_lengths():
    tools = load_tools_from_repo()
    grammar = step_grammar(list(tools.values()), max_thought_chars=50, max_argument_chars=70)
    assert '"calculator" "\\nInput: "' in grammar and '"web_search" "\\nInput: "' in grammar
    assert "[^\\n]{1,50}" in grammar and "char{0,70}" in grammar
    final = step_grammar([])
    assert "action" not in final and 'answer ::= "Answer: "' in final


def load_tools_from_repo():
    from vision_agent.paths import data_path

    return load_tools([data_path("tools")])


def test_function_tool_schema_and_validation():
    def measure(label: str, count: int = 3, unit: Literal["px", "cm"] = "px", context: ToolContext = None) -> dict:
        """Measure something.

        Args:
            label: what to measure
            count: how many times
        """
        return {"label": label, "count": count, "unit": unit, "has_context": context is not None}

    tool = FunctionTool(measure)
    assert tool.name == "measure" and tool.description == "Measure something."
    schema = tool.parameters
    assert schema["required"] == ["label"] and "context" not in schema["properties"]
    assert schema["properties"]["label"] == {"type": "string", "description": "what to measure"}
    assert schema["properties"]["unit"]["enum"] == ["px", "cm"]
    assert (
        tool.run({"label": "bar"}, ToolContext()) == '{"label": "bar", "count": 3, "unit": "px", "has_context": true}'
    )
    with pytest.raises(ToolError, match="bad arguments for measure: unit"):
        tool.run({"label": "bar", "unit": "mile"}, ToolContext())
    with pytest.raises(ToolError, match="colour: Extra inputs"):
        tool.run({"label": "bar", "colour": 1}, ToolContext())


def test_function_tool_needs_docstring_and_annotations():
    def undocumented(x: int) -> int:
        return x

    def untyped(x):
        """Doc."""

    with pytest.raises(TypeError, match="docstring"):
        FunctionTool(undocumented)
    with pytest.raises(TypeError, match="type annotation"):
        FunctionTool(untyped)


def test_plugins_from_a_folder(tmp_path, caplog):
    (tmp_path / "units.py").write_text(
        'def inches_to_cm(inches: float) -> float:\n    """Convert inches to centimetres."""\n'
        "    return inches * 2.54\n\n\ndef _helper():\n    pass\n"
    )
    (tmp_path / "broken.py").write_text("raise RuntimeError('bad plugin')\n")
    (tmp_path / "_private.py").write_text("raise SystemExit\n")
    tools = load_tools([tmp_path])
    assert list(tools) == ["inches_to_cm"]
    assert tools["inches_to_cm"].run({"inches": 2}, ToolContext()) == "5.08"
    assert "broken.py was not loaded: RuntimeError: bad plugin" in caplog.text


def test_tool_flags():
    base = ToolsSettings(policy={"python": "ask"})
    only = apply_tool_flags(base, "calculator,python", False, [])
    assert only.policy_for("calculator") == "auto" and only.policy_for("python") == "ask"
    assert only.policy_for("web_search") == "off"
    none = apply_tool_flags(base, None, True, [])
    assert all(none.policy_for(n) == "off" for n in ("calculator", "python", "web_search"))
    set_one = apply_tool_flags(base, None, False, ["web_search=ask"])
    assert set_one.policy_for("web_search") == "ask" and set_one.policy_for("calculator") == "auto"
    with pytest.raises(ConfigError, match="NAME=auto"):
        apply_tool_flags(base, None, False, ["python=maybe"])


def test_unknown_tool_in_settings_is_named():
    with pytest.raises(ConfigError, match="unknown tool 'pyhton'"):
        ToolRegistry(load_tools_from_repo(), load_settings(None, {"tools": {"policy": {"pyhton": "off"}}}).tools)
