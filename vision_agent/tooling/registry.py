"""The registry: the loaded tools and the policy of each (auto, ask or off), and the flags that set it."""

from __future__ import annotations

from vision_agent.config import Settings, ToolPolicy, ToolsSettings
from vision_agent.errors import ConfigError
from vision_agent.tooling.plugins import load_tools, tool_dirs
from vision_agent.tooling.types import Tool


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


_POLICIES: dict[str, ToolPolicy] = {"auto": "auto", "ask": "ask", "off": "off"}


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
        chosen_policy = _POLICIES.get(value)
        if not sep or chosen_policy is None:
            raise ConfigError(f"--tool-policy {item}: expected NAME=auto|ask|off")
        policy[name.strip()] = chosen_policy
    return tools.model_copy(update={"policy": policy, "default_policy": default})
