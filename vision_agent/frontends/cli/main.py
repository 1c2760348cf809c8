"""Command-line entry point: parses arguments, builds Settings once, runs the command's handler.

Each command module registers its parser and sets `handler` on it (a table, not an if chain). Only argparse
and those small modules are imported at start-up; everything heavy is imported by the handler that needs it.
"""

from __future__ import annotations

import argparse
import signal
import sys

from vision_agent.frontends.cli import acp, ask, conversations, doctor, jsonl, models, tool

EXIT_CODES_HELP = """exit codes:
  0 ok   1 internal error (a bug)   2 usage or config   3 no model   4 bad model file   5 mismatched model pair
  6 image not found   7 corrupt image   8 image too large   9 context overflow   10 download failed
  11 llama.cpp failure   12 tool error   13 the model broke the step format   14 saved conversation unusable
  130 interrupted (SIGINT)   129 hang-up (SIGHUP)   143 terminated (SIGTERM)"""

# The command modules, in the order --help lists them; each has `register(commands, common, model)`.
COMMANDS = (ask, jsonl, acp, conversations, tool, doctor, models)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="PATH", help="config file (default: vision-agent.toml in the user config dir)"
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=None, help="show llama.cpp logs and debug output on stderr"
    )

    # The defaults shown are Settings' (tests/unit/test_cli_parser.py keeps them equal); the flags themselves
    # default to None, so that an absent flag leaves the config file and the environment in force.
    model = argparse.ArgumentParser(add_help=False)
    group = model.add_argument_group("model")
    group.add_argument(
        "-m",
        "--model",
        metavar="MODEL",
        help="catalog name, path to a text GGUF, or replay:FILE (default: the first downloaded catalog model)",
    )
    group.add_argument("--mmproj", metavar="PATH", help="projector GGUF (default: mmproj*.gguf beside the model)")
    group.add_argument(
        "--chat-format", choices=["auto", "gguf", "vicuna", "mistral", "chatml"], help="prompt format (default: auto)"
    )
    group.add_argument("--ctx", type=int, metavar="N", help="context size in tokens (default: 4096)")
    group.add_argument(
        "--n-gpu-layers",
        type=int,
        metavar="N",
        help="layers to offload to the GPU, -1 for all (default: all when the build can offload, else 0)",
    )
    group.add_argument("--no-mmproj-offload", action="store_true", default=None, help="keep the projector on the CPU")
    group.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: half the CPU cores)")

    parser = argparse.ArgumentParser(
        prog="vision-agent",
        description="A local, private, agentic vision assistant for the terminal.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.set_defaults(handler=None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands, common, model)
    return parser


def settings_overrides(args: argparse.Namespace) -> dict:
    """Flags the user actually gave, shaped like Settings; absent flags leave lower layers in force."""
    pick = {
        "model": {
            "name": "model",
            "mmproj": "mmproj",
            "chat_format": "chat_format",
            "n_ctx": "ctx",
            "n_gpu_layers": "n_gpu_layers",
            "n_threads": "threads",
        },
        "generation": {
            "temperature": "temperature",
            "top_p": "top_p",
            "max_tokens": "max_tokens",
            "seed": "seed",
            "stop": "stop",
        },
        "agent": {"system_prompt": "system", "max_steps": "max_steps"},
    }
    overrides: dict = {}
    for section, fields in pick.items():
        values = {key: getattr(args, flag) for key, flag in fields.items() if getattr(args, flag, None) is not None}
        if values:
            overrides[section] = values
    if getattr(args, "no_mmproj_offload", None):
        overrides.setdefault("model", {})["mmproj_offload"] = False
    if getattr(args, "verbose", None):
        overrides["verbose"] = True
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.handler is None:
        parser.print_help(sys.stderr)
        return 2

    from vision_agent.errors import EXIT_INTERRUPTED, VisionAgentError
    from vision_agent.frontends.terminal import safe_line

    _interrupt_on("SIGTERM", "SIGHUP")
    try:
        from vision_agent.config import load_settings
        from vision_agent.frontends.logging_setup import configure_logging

        settings = load_settings(args.config, settings_overrides(args))
        configure_logging(settings.verbose)
        return args.handler(args, settings)
    except VisionAgentError as exc:
        print(f"vision-agent: {safe_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        if not isinstance(exc, Interrupted):
            print("vision-agent: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        name, number = exc.args
        print(f"vision-agent: {_SIGNAL_WORDS[name]}", file=sys.stderr)
        return 128 + number
    except BrokenPipeError:  # e.g. piped into `head`
        return 0
    except Exception as exc:  # a bug: one line by default, the traceback with -v
        import logging

        logging.getLogger(__name__).debug("unexpected failure", exc_info=True)
        message = safe_line(f"{type(exc).__name__}: {exc}")
        print(f"vision-agent: internal error: {message} (run with -v for details)", file=sys.stderr)
        return 1


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP outside a run (`ask` cancels its run itself): the command ends as on Ctrl-C, its
    clean-up done (children killed, temporary files removed), with the exit code that names the signal."""


_SIGNAL_WORDS = {"SIGTERM": "terminated", "SIGHUP": "hang-up"}


def _interrupt_on(*names: str) -> None:
    def handle(number, _frame):
        raise Interrupted(signal.Signals(number).name, number)

    for name in names:
        number = getattr(signal, name, None)  # no SIGHUP on Windows
        if number is not None and signal.getsignal(number) is signal.SIG_DFL:  # ignored (nohup) stays ignored
            signal.signal(number, handle)


def _version() -> str:
    from vision_agent import __version__

    return __version__


if __name__ == "__main__":
    raise SystemExit(main())
