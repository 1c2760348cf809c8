"""`vision-agent jsonl`: its flags; the server is frontends.jsonl."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vision_agent.config import Settings

DESCRIPTION = """Serve prompts as JSON lines: one request per line on stdin, events as JSON lines on stdout.
The model loads once; the first line out is {"type":"ready",...}. Requests:
  {"id":"r1","prompt":"...","images":["shot.png"],"conversation":"<id>"}   run a prompt (ends with one done)
  {"id":"c1","cancel":"r1"}   {"id":"a1","approve":"<call_id>","allow":true}   {"id":"s1","status":true}
  {"id":"q","shutdown":true}
EOF on stdin finishes the queued prompts and exits 0. `--schema` prints the JSON Schema of every line."""


def register(commands, common: argparse.ArgumentParser, model: argparse.ArgumentParser) -> None:
    from vision_agent.frontends.cli.ask import add_run_flags
    from vision_agent.frontends.cli.main import EXIT_CODES_HELP

    parser = commands.add_parser(
        "jsonl",
        parents=[common, model],
        help="serve prompts as JSON lines on stdin/stdout (for scripts)",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_flags(parser)
    parser.add_argument("--schema", action="store_true", help="print the JSON Schema of every line and exit")
    add_server_flags(parser, approval_timeout=60.0)
    parser.set_defaults(handler=run)


def add_server_flags(parser: argparse.ArgumentParser, *, approval_timeout: float) -> None:
    """The queue, approval and line flags both servers (jsonl, acp) take."""
    server = parser.add_argument_group("server")
    server.add_argument("--queue", type=_positive, default=4, metavar="N", help="prompts that may wait (default: 4)")
    server.add_argument(
        "--approval-timeout",
        type=float,
        default=approval_timeout,
        metavar="S",
        help="seconds a tool approval waits for the client's answer before the call is refused (default: %(default)s)",
    )
    server.add_argument(
        "--max-line-bytes",
        type=_positive,
        default=64 * 2**20,
        metavar="N",
        help="longer input lines are skipped with an error (default: 64 MiB)",
    )


def check_server_flags(args: argparse.Namespace) -> None:
    if not 0 < args.approval_timeout <= 86_400:
        from vision_agent.errors import ConfigError

        raise ConfigError("--approval-timeout: give seconds between 0 and 86400")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from vision_agent.frontends.cli.ask import apply_run_flags

    if args.schema:
        from vision_agent.frontends.jsonl.schema import print_schema

        return print_schema()
    check_server_flags(args)
    apply_run_flags(args, settings)
    from vision_agent.frontends.jsonl.server import serve

    return serve(args, settings)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value
