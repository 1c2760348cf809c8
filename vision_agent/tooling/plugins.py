"""Loading plugin tools: every `*.py` file of the tools folders (not `_*.py`), imported by path.

A file names its tools in a `TOOLS` list; without one, every public function defined in it is a tool.
A broken plugin is logged and left out: it never ends the app.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import re
import sys
from pathlib import Path

from vision_agent.config import Settings
from vision_agent.tooling.types import FunctionTool, Tool

log = logging.getLogger(__name__)


def tool_dirs(settings: Settings) -> list[Path]:
    """Built-in tools, then the user's (config dir), then any configured folders: later ones override."""
    from vision_agent.paths import data_path, user_tools_dir

    return [data_path("tools"), user_tools_dir(), *settings.tools.dirs]


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
    assert spec is not None and spec.loader is not None, "a *.py path always gets a source loader"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
