"""`vision-agent ask`: its flags; the run goes through a Session (sessions/), its terminal side is frontends.console."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vision_agent.config import Settings


def register(commands, common: argparse.ArgumentParser, model: argparse.ArgumentParser) -> None:
    from vision_agent.frontends.cli.main import EXIT_CODES_HELP

    ask = commands.add_parser(
        "ask",
        parents=[common, model],
        help="ask one question about images; the answer streams to stdout",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ask.add_argument("prompt", nargs="?", metavar="PROMPT", help="the question (default: read from stdin)")
    ask.add_argument(
        "-a", "--attach", action="append", default=[], metavar="IMAGE", help="image file, or - for stdin; repeatable"
    )
    which = ask.add_mutually_exclusive_group()
    which.add_argument(
        "-c",
        "--continue",
        dest="continue_conversation",
        action="store_true",
        help="continue the latest conversation (default: start a new one)",
    )
    which.add_argument(
        "--cid",
        metavar="ID",
        help="continue this conversation: its id, an id prefix or a unique title prefix (default: a new one)",
    )
    add_run_flags(ask)
    ask.add_argument("--json", action="store_true", help="write the event stream as JSON lines instead of text")
    ask.set_defaults(handler=run)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """--system, the tools group and the sampling group: what every command running prompts takes (ask, jsonl, acp)."""
    parser.add_argument("--system", metavar="TEXT", help='system prompt, "" for none (default: prompts/system.txt)')
    tools = parser.add_argument_group("tools")
    tools.add_argument("--tools", metavar="LIST", help="only these tools, comma-separated (e.g. calculator,web_search)")
    tools.add_argument("--no-tools", action="store_true", help="plain chat turn: no tool use")
    tools.add_argument(
        "--tool-policy", action="append", metavar="NAME=POLICY", help="auto, ask (confirm first) or off; repeatable"
    )
    tools.add_argument("--max-steps", type=int, metavar="N", help="tool steps before a final answer (default: 5)")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--temperature", type=float, metavar="T", help="0 for greedy decoding (default: 0.2)")
    sampling.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling (default: 0.95)")
    sampling.add_argument("--max-tokens", type=int, metavar="N", help="tokens per model step (default: 512)")
    sampling.add_argument("--seed", type=int, metavar="S", help="sampling seed, for repeatable output (default: none)")
    sampling.add_argument("--stop", action="append", metavar="TEXT", help="stop string; repeatable")


def apply_run_flags(args: argparse.Namespace, settings: Settings) -> None:
    """The tool flags (the other run flags reach Settings through main.settings_overrides)."""
    from vision_agent.tooling import apply_tool_flags

    settings.tools = apply_tool_flags(settings.tools, args.tools, args.no_tools, args.tool_policy or [])


def run(args: argparse.Namespace, settings: Settings) -> int:
    from vision_agent.frontends.console import ask

    return ask(args, settings)
