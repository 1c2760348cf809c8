"""`vision-agent tool ...`: run one tool directly; the result goes to stdout, a tool error exits 12."""

from __future__ import annotations

import argparse
import json
import sys

from vision_agent.config import Settings
from vision_agent.errors import ConfigError, ToolError
from vision_agent.terminal import safe, safe_line
from vision_agent.text import valid_text

_SHORT_NAMES = {"calc": "calculator", "search": "web_search", "python": "python"}


def run_tool_command(args: argparse.Namespace, settings: Settings) -> int:
    from vision_agent.tooling import ToolContext, build_registry

    registry = build_registry(settings)
    if args.tool_command == "list":
        for tool in sorted(registry.tools.values(), key=lambda t: t.name):
            print(safe_line(f"{tool.name:<14} {registry.policy(tool.name):<5} {tool.description}"))
        return 0
    name, arguments = _call(args)
    tool = registry.get(name)
    if tool is None:
        raise ConfigError(f"unknown tool {name!r}; available: {', '.join(sorted(registry.tools))}")
    from vision_agent.frontends.console import load_attachments

    images = load_attachments(getattr(args, "attach", []), settings)
    try:
        result = tool.run(arguments, ToolContext(images=images, settings=settings.tools))
    except ToolError as exc:
        print(f"vision-agent: {name}: {safe_line(str(exc))}", file=sys.stderr)
        return ToolError.exit_code
    except (Exception, SystemExit) as exc:  # a plugin that raises (or exits) failed as a tool: exit 12, not 1
        print(f"vision-agent: {name}: the tool failed: {safe_line(f'{type(exc).__name__}: {exc}')}", file=sys.stderr)
        return ToolError.exit_code
    print(safe(valid_text(result if isinstance(result, str) else str(result))))
    return 0


def _call(args: argparse.Namespace) -> tuple[str, dict]:
    command = args.tool_command
    if command == "calc":
        return "calculator", {"expression": args.expression}
    if command == "python":
        code = sys.stdin.read() if args.code == "-" else args.code
        return "python", {"code": code}
    if command == "search":
        arguments = {"query": args.query}
        if args.max_results is not None:
            arguments["max_results"] = args.max_results
        return "web_search", arguments
    try:
        arguments = json.loads(args.arguments)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"tool arguments: invalid JSON ({exc})") from None
    except RecursionError:
        raise ConfigError("tool arguments: invalid JSON (nested too deeply)") from None
    if not isinstance(arguments, dict):
        raise ConfigError("tool arguments: expected a JSON object")
    return _SHORT_NAMES.get(args.name, args.name), arguments
