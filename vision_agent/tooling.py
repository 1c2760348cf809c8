"""The Tool protocol, tools built from plain typed functions, and the registry loaded from tools/ folders.

A plugin is a Python file in a tools folder. It names its tools in a `TOOLS` list; without one, every
public function defined in the file is a tool: the name is the function's, the description its
docstring, and the argument schema comes from its type annotations. A parameter named `context`
receives the ToolContext (images of the conversation, settings, the cancel event) and is not shown
to the model.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, get_type_hints

from pydantic import ConfigDict, Field, ValidationError, create_model

from vision_agent.config import Settings, ToolPolicy, ToolsSettings
from vision_agent.errors import ConfigError, ToolError
from vision_agent.messages import ImagePart

log = logging.getLogger(__name__)


@dataclass
class ToolContext:
    images: list[ImagePart] = field(default_factory=list)  # the conversation's images, the current one last
    settings: ToolsSettings = field(default_factory=ToolsSettings)
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def image(self) -> ImagePart | None:
        return self.images[-1] if self.images else None


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


# -- loading ------------------------------------------------------------------------------------


def tool_dirs(settings: Settings) -> list[Path]:
    """Built-in tools, then the user's (config dir), then any configured folders: later ones override."""
    from platformdirs import user_config_dir

    from vision_agent.resources import data_path

    return [data_path("tools"), Path(user_config_dir("vision-agent")) / "tools", *settings.tools.dirs]


def load_tools(dirs: list[Path]) -> dict[str, Tool]:
    tools: dict[str, Tool] = {}
    for directory in dirs:
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith("_"):
                continue
            try:
                found = tools_in_module(_import_file(path))
            except (Exception, SystemExit) as exc:  # a broken plugin (even one calling exit()) must not end the app
                log.warning("tool plugin %s was not loaded: %s: %s", path, type(exc).__name__, exc)
                continue
            for tool in found:
                if tool.name in tools:
                    log.debug("tool %s from %s replaces an earlier one", tool.name, path)
                tools[tool.name] = tool
    return tools


def tools_in_module(module) -> list[Tool]:
    declared = getattr(module, "TOOLS", None)
    if declared is None:
        declared = [
            value
            for name, value in vars(module).items()
            if inspect.isfunction(value) and not name.startswith("_") and value.__module__ == module.__name__
        ]
    return [item if hasattr(item, "run") else FunctionTool(item) for item in declared]


def _import_file(path: Path):
    name = "vision_agent_tool_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


# -- the registry -------------------------------------------------------------------------------


class ToolRegistry:
    """The loaded tools and the policy for each: auto (run), ask (confirm first) or off (hidden)."""

    def __init__(self, tools: dict[str, Tool], settings: ToolsSettings):
        unknown = sorted(set(settings.policy) - set(tools))
        if unknown:
            raise ConfigError(
                f"unknown tool {unknown[0]!r} in the tool settings; available: {', '.join(sorted(tools))}"
            )
        self.tools = tools
        self.settings = settings

    def policy(self, name: str) -> ToolPolicy:
        """The user's choice for the tool; without one, the default, raised to the tool's floor if it has one."""
        policy = self.settings.policy_for(name)
        floor = getattr(self.tools.get(name), "policy_floor", None)
        if name not in self.settings.policy and policy == "auto" and floor is not None and floor() == "ask":
            return "ask"
        return policy

    def enabled(self) -> list[Tool]:
        # A floor only ever turns auto into ask, so it is not consulted here (it may cost a probe).
        return [tool for name, tool in sorted(self.tools.items()) if self.settings.policy_for(name) != "off"]

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)


def build_registry(settings: Settings) -> ToolRegistry:
    return ToolRegistry(load_tools(tool_dirs(settings)), settings.tools)


def apply_tool_flags(tools: ToolsSettings, only: str | None, none: bool, policies: list[str]) -> ToolsSettings:
    """--tools a,b (just these), --no-tools (none), --tool-policy NAME=POLICY (repeatable)."""
    policy = dict(tools.policy)
    default = tools.default_policy
    if none:
        default, policy = "off", {}
    elif only is not None:
        chosen = [n.strip() for n in only.split(",") if n.strip()]
        policy = {n: (policy.get(n, default) if policy.get(n, default) != "off" else "auto") for n in chosen}
        default = "off"
    for item in policies:
        name, sep, value = item.partition("=")
        if not sep or value not in ("auto", "ask", "off"):
            raise ConfigError(f"--tool-policy {item}: expected NAME=auto|ask|off")
        policy[name.strip()] = value
    return tools.model_copy(update={"policy": policy, "default_policy": default})
