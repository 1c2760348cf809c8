"""The Tool protocol, tools built from plain typed functions, and the registry loaded from tools/ folders.

A plugin is a Python file in a tools folder. It names its tools in a `TOOLS` list; without one, every
public function defined in the file is a tool: the name is the function's, the description its
docstring, and the argument schema comes from its type annotations. A parameter named `context`
receives the ToolContext (images of the conversation, settings, the cancel event) and is not shown
to the model.

The names below are the plugin API: a tool file imports them from `vision_agent.tooling` (never from the
modules inside, which may move). tests/unit/test_plugin_api.py pins them.

They are imported on first use: the sandbox (tooling.sandbox) is imported without pydantic and the rest, so
its parent side runs on the standard library alone (tests/sandbox/test_os_wall.py runs it with a bare python).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vision_agent.tooling.plugins import load_tools, tool_dirs, tools_in_module
    from vision_agent.tooling.registry import ToolRegistry, apply_tool_flags, build_registry
    from vision_agent.tooling.runner import call_with_deadline, run_tool
    from vision_agent.tooling.types import FunctionTool, Tool, ToolContext, ToolOutcome

_HOMES = {
    "Tool": "types",
    "ToolContext": "types",
    "FunctionTool": "types",
    "ToolOutcome": "types",
    "call_with_deadline": "runner",
    "run_tool": "runner",
    "ToolRegistry": "registry",
    "build_registry": "registry",
    "apply_tool_flags": "registry",
    "load_tools": "plugins",
    "tools_in_module": "plugins",
    "tool_dirs": "plugins",
}
__all__ = [
    "Tool",
    "ToolContext",
    "FunctionTool",
    "ToolOutcome",
    "call_with_deadline",
    "run_tool",
    "ToolRegistry",
    "build_registry",
    "apply_tool_flags",
    "load_tools",
    "tools_in_module",
    "tool_dirs",
]


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
