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
from typing import Literal

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
Part = Literal["thought", "answer"]


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

    def feed(self, text: str) -> list[tuple[Part, str]]:
        out: list[tuple[str, str]] = []
        for char in text:
            self._char(char, out)
        return _merge(out)

    def finish(self) -> list[tuple[Part, str]]:
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


def _merge(pieces: list) -> list[tuple[Part, str]]:
    merged: list[tuple[Part, str]] = []
    for part, text in pieces:
        if merged and merged[-1][0] == part:
            merged[-1] = (part, merged[-1][1] + text)
        else:
            merged.append((part, text))
    return merged


# -- grammar ------------------------------------------------------------------------------------


def step_grammar(tools: list, *, max_thought_chars: int = 300, max_argument_chars: int = 4000) -> str:
    """GBNF for one step: a one-line thought, then one of the tools with schema-valid JSON, or the answer.

    With no tools it only admits a final answer (the step cap's last turn). The length bounds keep every
    tool step finite, so that `step_token_budget` can give it the tokens to finish. An answer starts with
    a visible character (a model that rambles in blanks cannot end with an empty answer).
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
        'answer ::= "Answer: " [^\\x00 \\t\\n\\r] [^\\x00]*',
    ]
    if choices:
        lines.append('action ::= "Action: " (' + " | ".join(choices) + ")")
    rules = converter.format_grammar()
    # Bound every JSON string with GBNF's own repetition (a schema maxLength would expand into thousands of
    # nested rules), and leave out \\uXXXX escapes: a character is then at most two, which step_token_budget
    # counts on. Characters that need no escape are still written as themselves.
    rules = rules.replace(_CHAR_RULE, 'char ::= [^"\\\\] | "\\\\" ["\\\\/bfnrt]')
    rules = rules.replace('string ::= "\\"" char* "\\""', f'string ::= "\\"" char{{0,{max_argument_chars}}} "\\""')
    return "\n".join(lines) + "\n" + rules + "\n"


_CHAR_RULE = 'char ::= [^"\\\\] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
# The most UTF-8 bytes of one character: a token adds at least one byte under the grammar, so a step of
# B bytes needs at most B tokens.
_BYTES_PER_CHAR = 4
_NUMBER_CHARS = 40  # "-", 16 digits, ".", 16 digits, an exponent: what SchemaConverter's number rule allows


def step_token_budget(tools: list, max_tokens: int, *, max_thought_chars: int, max_argument_chars: int) -> int:
    """The tokens one step may take so that a step under `step_grammar` always parses when it ends.

    The grammar bounds the thought and a tool call in characters; under a grammar a token adds at least one
    byte, so the worst case in bytes is a bound in tokens. An answer parses once its first character is
    written, and runs on to the budget like any answer. With no tools (the step cap's last step) only the
    thought and that first character count. When a tool's arguments are unbounded (arrays, free-form
    objects) no budget can promise a complete call: then only the answer branch is covered.
    """
    prefix = len("Thought: \n") + _BYTES_PER_CHAR * max_thought_chars
    branch = len("Answer: ") + _BYTES_PER_CHAR
    for tool in tools:
        arguments = _json_chars(tool.parameters, max_argument_chars, depth=0)
        if arguments is None:
            continue
        branch = max(branch, len("Action: \nInput: ") + len(tool.name.encode()) + arguments)
    return max(max_tokens, prefix + branch)


def _json_chars(schema: object, string_chars: int, depth: int) -> int | None:
    """The most bytes a JSON value of `schema` can take under the grammar (spaces are one " " at most)."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    space = 1
    if "const" in schema or "enum" in schema:
        values = schema.get("enum", [schema.get("const")])
        return max((len(json.dumps(v).encode()) for v in values), default=0) + space
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return _largest([_json_chars(s, string_chars, depth + 1) for s in schema[key]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return _largest([_json_chars({**schema, "type": k}, string_chars, depth + 1) for k in kind])
    if kind == "string":
        return 2 + _BYTES_PER_CHAR * string_chars + space  # a character, or an escape of two bytes
    if kind in ("integer", "number"):
        return _NUMBER_CHARS + space
    if kind == "boolean":
        return len("false") + space
    if kind == "null":
        return len("null") + space
    if kind == "object" and schema.get("additionalProperties") is False:
        total = 2 + 2 * space
        for name, value in (schema.get("properties") or {}).items():
            size = _json_chars(value, string_chars, depth + 1)
            if size is None:
                return None
            total += len(json.dumps(name).encode()) + 2 * space + 2 + size
        return total
    return None


def _largest(sizes: list[int | None]) -> int | None:
    """The largest of the alternatives' bounds; None when any of them is unbounded."""
    bounded = [s for s in sizes if s is not None]
    return None if len(bounded) < len(sizes) else max(bounded, default=0)
