"""`vision-agent acp` (placeholder: its helper replaces this file)."""

from __future__ import annotations

import argparse


def register(commands, common: argparse.ArgumentParser, model: argparse.ArgumentParser) -> None:
    from vision_agent.frontends.cli.ask import add_run_flags

    parser = commands.add_parser("acp", parents=[common, model], help="(to come)")
    add_run_flags(parser)
    parser.set_defaults(handler=lambda args, settings: 2)
