"""`vision-agent acp`: its flags; the agent is frontends.acp."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vision_agent.config import Settings

DESCRIPTION = """Serve the Agent Client Protocol (JSON-RPC 2.0 over stdio) for editors and other ACP clients
(Zed, toad, …): sessions are stored conversations (session/new, session/load), prompts take text, images and
file links, tools whose policy is `ask` ask the client (session/request_permission)."""


def register(commands, common: argparse.ArgumentParser, model: argparse.ArgumentParser) -> None:
    from vision_agent.frontends.cli.ask import add_run_flags
    from vision_agent.frontends.cli.jsonl import add_server_flags
    from vision_agent.frontends.cli.main import EXIT_CODES_HELP

    parser = commands.add_parser(
        "acp",
        parents=[common, model],
        help="serve the Agent Client Protocol on stdin/stdout (for editors)",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_flags(parser)
    add_server_flags(parser, approval_timeout=600.0)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from vision_agent.frontends.cli.ask import apply_run_flags
    from vision_agent.frontends.cli.jsonl import check_server_flags

    check_server_flags(args)
    apply_run_flags(args, settings)
    from vision_agent.frontends.acp.server import serve

    return serve(args, settings)
