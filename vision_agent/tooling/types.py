"""The tool types: the Tool protocol, the ToolContext a tool receives, ToolOutcome, and FunctionTool (a tool made from
a plain typed function: its name, its docstring as the description, its annotations as the schema)."""

from __future__ import annotations

import inspect
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, get_type_hints

from pydantic import ConfigDict, Field, ValidationError, create_model

from vision_agent.config import ToolsSettings
from vision_agent.core.messages import ImagePart
from vision_agent.errors import ToolError


@dataclass
class ToolContext:
    images: list[ImagePart] = field(default_factory=list)  # the conversation's images, the current one last
    settings: ToolsSettings = field(default_factory=ToolsSettings)
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def image(self) -> ImagePart | None:
        return self.images[-1] if self.images else None


@dataclass(frozen=True)
class ToolOutcome:
    """What became of one tool call.

    `refused` says why the call was never run (its policy, the user's approval); a tool that ran and
    failed, its own refusals included (the calculator's "refused: the result would have … digits"), is
    `ok=False` with `refused=None`: its output is the tool's error for the model to read.
    """

    ok: bool
    output: str
    refused: str | None = None
    truncated: bool = False
    seconds: float = 0.0


class Tool(Protocol):
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object

    def run(self, arguments: dict, context: ToolContext) -> str:
        """Return the result as text; raise ToolError for a failure the model should read."""
        ...


class FunctionTool:
    """A Tool made from a typed function with a docstring."""

    def __init__(self, function: Callable[..., Any], name: str | None = None):
        self.function = function
        self.name = name or function.__name__
        # Optional: a callable giving the policy this tool needs at least when the user chose none ("ask").
        self.policy_floor = getattr(function, "policy_floor", None)
        summary, param_docs = _parse_docstring(inspect.getdoc(function) or "")
        if not summary:
            raise TypeError(f"tool {self.name}: the function needs a docstring (it is the tool's description)")
        self.description = summary
        hints = get_type_hints(function, include_extras=True)
        fields: dict[str, Any] = {}
        self._wants_context = False
        for pname, param in inspect.signature(function).parameters.items():
            if pname == "context":
                self._wants_context = True
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {self.name}: *args and **kwargs are not supported")
            if pname not in hints:
                raise TypeError(f"tool {self.name}: parameter {pname!r} needs a type annotation")
            default = ... if param.default is param.empty else param.default
            fields[pname] = (hints[pname], Field(default, description=param_docs.get(pname)))
        self._arguments = create_model(f"{self.name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
        self.parameters = _clean_schema(self._arguments.model_json_schema())

    def run(self, arguments: dict, context: ToolContext) -> str:
        try:
            values = self._arguments.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()[:3]
            )
            raise ToolError(f"bad arguments for {self.name}: {problems}") from None
        kwargs = {name: getattr(values, name) for name in type(values).model_fields}
        if self._wants_context:
            kwargs["context"] = context
        result = self.function(**kwargs)
        return result if isinstance(result, str) else json.dumps(result, default=str)


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The text before an `Args:` section, and the `name: description` lines inside it."""
    parts = re.split(r"^(?:Args|Arguments|Parameters):\s*$", doc, maxsplit=1, flags=re.M)
    params = {}
    for line in (parts[1] if len(parts) > 1 else "").splitlines():
        match = re.match(r"\s*(\w+)(?:\s*\([^)]*\))?\s*:\s*(.+)", line)
        if match:
            params[match.group(1)] = match.group(2).strip()
    return " ".join(parts[0].split()), params


def _clean_schema(schema: dict) -> dict:
    """Drop pydantic's titles: they add tokens to every prompt and say nothing the names do not."""
    if isinstance(schema, dict):
        return {k: _clean_schema(v) for k, v in schema.items() if not (k == "title" and isinstance(v, str))}
    if isinstance(schema, list):
        return [_clean_schema(v) for v in schema]
    return schema
