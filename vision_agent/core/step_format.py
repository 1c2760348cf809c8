"""The agent's step format: a grammar that constrains decoding to it, a parser, and a streaming splitter.

A step is

    Thought: one line of reasoning
    Action: tool_name
    Input: {"json": "object"}

or

    Thought: one line of reasoning
    Answer: the final answer, as long as it needs to be

On llama.cpp every step is decoded under the grammar from `step_grammar`, so it always parses; the
parser is lenient anyway, for backends without grammars (replay) and for models that drift.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from vision_agent.errors import StepFormatError
from vision_agent.text import valid_values

HEADERS = ("thought", "action", "input", "answer")
_HEADER_LINE = re.compile(r"^[ \t]*(thought|action|input|answer)[ \t]*:[ \t]?", re.I | re.M)


@dataclass(frozen=True)
class ToolStep:
    thought: str
    tool: str
    arguments: object  # usually a dict; the agent checks it against the tool


@dataclass(frozen=True)
class AnswerStep:
    thought: str
    answer: str


Step = ToolStep | AnswerStep


def parse_step(text: str) -> Step:
    headers = list(_HEADER_LINE.finditer(text))
    sections: dict[str, str] = {}
    for index, match in enumerate(headers):
        name = match.group(1).lower()
        end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
        if name == "answer":  # the answer runs to the end, whatever it contains
            sections.setdefault(name, text[match.end() :])
            break
        sections.setdefault(name, text[match.end() : end])
    thought = sections.get("thought", "").strip()
    order = [m.group(1).lower() for m in headers]
    action_first = "action" in order and ("answer" not in order or order.index("action") < order.index("answer"))
    if action_first:
        tool = sections["action"].strip().strip("`'\"").strip()
        if not re.fullmatch(r"[A-Za-z_][\w.-]*", tool):
            raise StepFormatError(f"'Action:' must name one tool, got {tool[:60]!r}")
        if "input" not in sections:
            raise StepFormatError(f"'Action: {tool}' needs an 'Input:' line with the arguments as JSON")
        return ToolStep(thought, tool, _parse_arguments(sections["input"]))
    if "answer" in sections:
        answer = sections["answer"].strip()
        if not answer:
            raise StepFormatError("the 'Answer:' is empty")
        return AnswerStep(thought, answer)
    raise StepFormatError("no 'Action:' or 'Answer:' line")


def _parse_arguments(raw: str) -> object:
    text = raw.strip()
    fenced = re.match(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fenced:
        text = fenced.group(1).strip()
    try:
        value, _ = json.JSONDecoder(strict=False).raw_decode(text)  # the grammar lets raw newlines into strings
        return valid_values(value)  # a JSON \ud800 escape decodes to a lone surrogate, which nothing can encode
    except json.JSONDecodeError as exc:
        raise StepFormatError(f"the 'Input:' is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise StepFormatError("the 'Input:' is nested too deeply") from None


class StepStreamer:
    """Splits a step's text, as it streams, into thought and answer pieces; Action/Input lines stay hidden.

    Text at the start of a line is held back until it is clearly a header or clearly not one.
    """

    def __init__(self) -> None:
        self.section = "thought"  # text before any header counts as thought
        self.pending = ""
        self.at_line_start = True
        self.newline_owed = False
        self.skip_space = False

    def feed(self, text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for char in text:
            self._char(char, out)
        return _merge(out)

    def finish(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.pending:
            self._content(self.pending, out)
            self.pending = ""
        return _merge(out)

    def _char(self, char: str, out: list) -> None:
        if self.section == "answer":
            if self.skip_space and char == " ":
                self.skip_space = False
                return
            self.skip_space = False
            out.append(("answer", char))
            return
        if self.at_line_start:
            if char == "\n":
                self._content(self.pending, out)
                self.pending = ""
                self.newline_owed = True
                return
            self.pending += char
            word = self.pending.lstrip().lower()
            for header in HEADERS:
                if re.fullmatch(rf"{header}[ \t]*:", word):
                    self.section, self.pending, self.at_line_start = header, "", False
                    self.newline_owed, self.skip_space = False, True
                    return
            if not word or any(h.startswith(word.rstrip(": \t")) and ":" not in word for h in HEADERS):
                return  # could still become a header
            self.at_line_start = False
            text, self.pending = self.pending, ""
            self._content(text, out)
            return
        if char == "\n":
            self.at_line_start, self.newline_owed = True, True
            return
        if self.skip_space and char == " ":
            self.skip_space = False
            return
        self.skip_space = False
        self._content(char, out)

    def _content(self, text: str, out: list) -> None:
        if not text:
            return
        if self.section in ("thought", "answer"):
            if self.newline_owed:
                out.append((self.section, "\n"))
            out.append((self.section, text))
        self.newline_owed = False


def _merge(pieces: list[tuple[str, str]]) -> list[tuple[str, str]]:
    merged: list[tuple[str, str]] = []
    for part, text in pieces:
        if merged and merged[-1][0] == part:
            merged[-1] = (part, merged[-1][1] + text)
        else:
            merged.append((part, text))
    return merged


# -- grammar ------------------------------------------------------------------------------------


def step_grammar(tools: list, *, max_thought_chars: int = 300, max_argument_chars: int = 4000) -> str:
    """GBNF for one step: a one-line thought, then one of the tools with schema-valid JSON, or the answer.

    With no tools it only admits a final answer (the step cap's last turn). The length bounds keep
    a rambling model inside its token budget, where the step can still be completed.
    """
    from llama_cpp.llama_grammar import SchemaConverter

    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    choices = []
    for tool in tools:
        schema = converter.resolve_refs(tool.parameters, tool.name)
        rule = converter.visit(schema, f"args-{tool.name}")
        choices.append(f'"{tool.name}" "\\nInput: " {rule}')
    lines = [
        'root ::= "Thought: " thought "\\n" ' + ("(action | answer)" if choices else "answer"),
        f"thought ::= [^\\n]{{1,{max_thought_chars}}}",
        'answer ::= "Answer: " [^\\x00]+',
    ]
    if choices:
        lines.append('action ::= "Action: " (' + " | ".join(choices) + ")")
    rules = converter.format_grammar()
    # Bound every JSON string with GBNF's own repetition; a schema maxLength would expand into
    # thousands of nested rules.
    rules = rules.replace('string ::= "\\"" char* "\\""', f'string ::= "\\"" char{{0,{max_argument_chars}}} "\\""')
    return "\n".join(lines) + "\n" + rules + "\n"
