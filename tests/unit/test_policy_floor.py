"""Where the sandbox's OS wall is incomplete, model-written code runs only with the user's yes."""

from __future__ import annotations

import pytest

from vision_agent.config import load_settings
from vision_agent.tooling import build_registry


def registry(policy=None, default="auto"):
    tools = {"default_policy": default}
    if policy:
        tools["policy"] = policy
    return build_registry(load_settings(None, {"tools": tools}))


def python_module(reg):
    import sys

    return sys.modules[reg.get("python").function.__module__]


@pytest.mark.parametrize("wall, expected", [(True, "auto"), (False, "ask")])
def test_default_policy_follows_the_os_wall(monkeypatch, wall, expected):
    reg = registry()
    monkeypatch.setattr(python_module(reg), "os_wall_active", lambda: wall)
    assert reg.policy("python") == expected
    assert reg.policy("calculator") == "auto"
    assert "python" in [t.name for t in reg.enabled()]


@pytest.mark.parametrize("choice", ["auto", "off"])
def test_an_explicit_choice_stands(monkeypatch, choice):
    reg = registry({"python": choice})
    monkeypatch.setattr(python_module(reg), "os_wall_active", lambda: False)
    assert reg.policy("python") == choice


def test_a_stricter_default_stands(monkeypatch):
    reg = registry(default="off")
    monkeypatch.setattr(python_module(reg), "os_wall_active", lambda: False)
    assert reg.policy("python") == "off" and reg.enabled() == []
