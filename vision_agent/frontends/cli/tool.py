"""`vision-agent tool ...`: run one tool directly; the result goes to stdout, a tool error exits 12."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vision_agent.config import Settings

_SHORT_NAMES = {"calc": "calculator", "search": "web_search", "python": "python"}


def register(commands, common: argparse.ArgumentParser, model: argparse.ArgumentParser) -> None:
    tool = commands.add_parser("tool", help="run one tool directly and print its result")
    tool_commands = tool.add_subparsers(dest="tool_command", metavar="TOOL", required=True)
    calc = tool_commands.add_parser("calc", parents=[common], help="evaluate an arithmetic expression")
    calc.add_argument("expression", metavar="EXPR")
    calc.set_defaults(handler=run, call=_calc_call)
    python = tool_commands.add_parser("python", parents=[common], help="run Python in the sandbox")
    python.add_argument("code", nargs="?", default="-", metavar="CODE", help="the program (default: read stdin)")
    python.add_argument("-a", "--attach", action="append", default=[], metavar="IMAGE", help="the image as `image`")
    python.set_defaults(handler=run, call=_python_call)
    search = tool_commands.add_parser("search", parents=[common], help="search the web")
    search.add_argument("query", metavar="QUERY")
    search.add_argument("--max-results", type=int, metavar="N", help="(default: 5, the web_search setting)")
    search.set_defaults(handler=run, call=_search_call)
    listing = tool_commands.add_parser("list", parents=[common], help="the tools found, with their policy")
    listing.add_argument("--json", action="store_true", help="print the tools (with argument schemas) as JSON")
    listing.set_defaults(handler=list_tools)
    any_tool = tool_commands.add_parser("run", parents=[common], help="run any tool (plugins too) with JSON arguments")
    any_tool.add_argument("name", metavar="NAME")
    any_tool.add_argument("arguments", nargs="?", default="{}", metavar="JSON", help="the arguments (default: {})")
    any_tool.add_argument("-a", "--attach", action="append", default=[], metavar="IMAGE")
    any_tool.set_defaults(handler=run, call=_json_call)


def list_tools(args: argparse.Namespace, settings: Settings) -> int:
    from vision_agent.frontends.terminal import safe_line
    from vision_agent.tooling import build_registry

    registry = build_registry(settings)
    tools = sorted(registry.tools.values(), key=lambda t: t.name)
    if args.json:
        from vision_agent.frontends.terminal import json_text

        records = []
        for tool in tools:
            policy, schema = registry.policy(tool.name), tool.parameters
            records.append({"name": tool.name, "policy": policy, "description": tool.description, "parameters": schema})
        print(json_text(records))
        return 0
    for tool in tools:
        print(safe_line(f"{tool.name:<14} {registry.policy(tool.name):<5} {tool.description}"))
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    from vision_agent.errors import ConfigError, ToolError
    from vision_agent.frontends.console import load_attachments
    from vision_agent.frontends.terminal import safe, safe_line
    from vision_agent.tooling import ToolContext, build_registry
    from vision_agent.tooling.runner import MAX_RESULT_CAPTURE, run_tool

    registry = build_registry(settings)
    name, arguments = args.call(args)
    tool = registry.get(name)
    if tool is None:
        raise ConfigError(f"unknown tool {name!r}; available: {', '.join(sorted(registry.tools))}")
    images = load_attachments(getattr(args, "attach", []), settings)
    # The same call as the agent's: under tools.timeout_s, a plugin's exception or exit() is a tool failure.
    context = ToolContext(images=images, settings=settings.tools)
    outcome = run_tool(tool, arguments, context, settings.tools.timeout_s, max_chars=MAX_RESULT_CAPTURE)
    if not outcome.ok:
        print(f"vision-agent: {name}: {safe_line(outcome.output)}", file=sys.stderr)
        return ToolError.exit_code
    print(safe(outcome.output))
    return 0


# -- each subcommand's call: (tool name, arguments) -------------------------------------------------------


def _calc_call(args: argparse.Namespace) -> tuple[str, dict]:
    return "calculator", {"expression": args.expression}


def _python_call(args: argparse.Namespace) -> tuple[str, dict]:
    code = sys.stdin.read() if args.code == "-" else args.code
    return "python", {"code": code}


def _search_call(args: argparse.Namespace) -> tuple[str, dict]:
    arguments = {"query": args.query}
    if args.max_results is not None:
        arguments["max_results"] = args.max_results
    return "web_search", arguments


def _json_call(args: argparse.Namespace) -> tuple[str, dict]:
    from vision_agent.errors import ConfigError

    try:
        arguments = json.loads(args.arguments)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"tool arguments: invalid JSON ({exc})") from None
    except RecursionError:
        raise ConfigError("tool arguments: invalid JSON (nested too deeply)") from None
    if not isinstance(arguments, dict):
        raise ConfigError("tool arguments: expected a JSON object")
    return _SHORT_NAMES.get(args.name, args.name), arguments
