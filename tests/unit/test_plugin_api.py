"""The plugin API, pinned: a tool file in a tools folder is written against `vision_agent.tooling` and
nothing else, in the three shapes the README documents. They load and run through `build_registry`, and
through the real command line with an attached image. Internal modules may move; these files must not break.
"""

from __future__ import annotations

import json

import pytest

import vision_agent.tooling
from tests.helpers import png_bytes, run_cli
from vision_agent.config import Settings
from vision_agent.tooling import ToolContext, build_registry

# Uses the context: the conversation's images (the current one last), the tool settings and the cancel event.
WITH_CONTEXT = '''
from vision_agent.tooling import ToolContext


def image_size(scale: int = 1, context: ToolContext = None) -> str:
    """The current image's size in pixels, scaled.

    Args:
        scale: multiply both sides by this
    """
    if context.cancel.is_set():
        return "cancelled"
    image = context.image
    if image is None:
        return f"no image (of {len(context.images)}); python timeout {context.settings.python.timeout_s}"
    return f"{image.width * scale}x{image.height * scale}"
'''

# A plain typed function: every public function of the file is a tool; `_` names are not.
PLAIN = '''
def add(a: int, b: int = 2) -> int:
    """Add two integers."""
    return _twice(a + b) // 2


def _twice(x: int) -> int:
    return 2 * x
'''

# TOOLS names the tools: a function, and an object with name/description/parameters/run.
DECLARED = '''
from vision_agent.tooling import FunctionTool


class Echo:
    name = "echo"
    description = "Repeat the text."
    parameters = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}

    def run(self, arguments, context):
        return arguments["text"] * 2


def shout(text: str) -> str:
    """Upper-case the text."""
    return text.upper()


def not_listed(text: str) -> str:
    """Left out: TOOLS decides."""
    return text


TOOLS = [Echo(), shout, FunctionTool(not_listed, name="renamed")]
'''

PUBLIC_NAMES = [
    "Tool",
    "ToolContext",
    "FunctionTool",
    "ToolRegistry",
    "build_registry",
    "apply_tool_flags",
    "load_tools",
    "tools_in_module",
    "tool_dirs",
]


@pytest.fixture
def registry(tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "with_context.py").write_text(WITH_CONTEXT)
    (plugins / "plain.py").write_text(PLAIN)
    (plugins / "declared.py").write_text(DECLARED)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no user tools folder
    return build_registry(Settings(tools={"dirs": [plugins], "policy": {"shout": "ask"}}))


def test_the_plugin_api_names_are_importable_from_vision_agent_tooling():
    missing = [name for name in PUBLIC_NAMES if not hasattr(vision_agent.tooling, name)]
    assert not missing


def test_the_three_plugin_shapes_load_beside_the_built_in_tools(registry):
    assert {"image_size", "add", "echo", "shout", "renamed"} <= set(registry.tools)
    assert {"calculator", "python", "web_search"} <= set(registry.tools)  # the built-in folder comes first
    assert "not_listed" not in registry.tools and "_twice" not in registry.tools
    assert registry.policy("shout") == "ask" and registry.policy("add") == "auto"
    assert {t.name for t in registry.enabled()} >= {"image_size", "add", "echo", "shout"}


def test_a_context_parameter_gets_the_context_and_is_hidden_from_the_model(registry):
    tool = registry.get("image_size")
    assert tool.description == "The current image's size in pixels, scaled."
    assert tool.parameters["properties"] == {
        "scale": {"type": "integer", "default": 1, "description": "multiply both sides by this"}
    }
    assert tool.run({"scale": 3}, ToolContext()) == "no image (of 0); python timeout 10.0"
    context = ToolContext()
    context.cancel.set()
    assert tool.run({}, context) == "cancelled"


def test_plain_and_declared_tools_run(registry):
    assert registry.get("add").run({"a": 40}, ToolContext()) == "42"
    assert registry.get("add").parameters["required"] == ["a"]
    assert registry.get("echo").run({"text": "ab"}, ToolContext()) == "abab"
    assert registry.get("shout").run({"text": "hi"}, ToolContext()) == "HI"
    assert registry.get("renamed").run({"text": "same"}, ToolContext()) == "same"


def test_a_plugin_in_the_user_tools_folder_sees_the_attached_image(tmp_path, cli_env):
    folder = tmp_path / "config" / "vision-agent" / "tools"  # cli_env points XDG_CONFIG_HOME at tmp_path/config
    folder.mkdir(parents=True)
    (folder / "with_context.py").write_text(WITH_CONTEXT)
    image = tmp_path / "wide.png"
    image.write_bytes(png_bytes(size=(30, 20)))
    result = run_cli("tool", "run", "image_size", json.dumps({"scale": 2}), "-a", str(image), env=cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"60x40\n"
