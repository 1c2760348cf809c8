"""Command-line entry point: parses arguments, builds Settings once, dispatches to a command.

Only argparse is imported at start-up; everything heavy is imported by the command that needs it.
"""

from __future__ import annotations

import argparse
import signal
import sys

EXIT_CODES_HELP = """exit codes:
  0 ok   1 internal error (a bug)   2 usage or config   3 no model   4 bad model file   5 mismatched model pair
  6 image not found   7 corrupt image   8 image too large   9 context overflow   10 download failed
  11 llama.cpp failure   12 tool error   13 the model broke the step format   14 saved conversation unusable
  130 interrupted (SIGINT)   129 hang-up (SIGHUP)   143 terminated (SIGTERM)"""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="PATH", help="config file (default: vision-agent.toml in the user config dir)"
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=None, help="show llama.cpp logs and debug output on stderr"
    )

    model = argparse.ArgumentParser(add_help=False)
    group = model.add_argument_group("model")
    group.add_argument("-m", "--model", metavar="MODEL", help="catalog name, path to a text GGUF, or replay:FILE")
    group.add_argument("--mmproj", metavar="PATH", help="projector GGUF (default: mmproj*.gguf beside the model)")
    group.add_argument(
        "--chat-format", choices=["auto", "gguf", "vicuna", "mistral", "chatml"], help="prompt format (default: auto)"
    )
    group.add_argument("--ctx", type=int, metavar="N", help="context size in tokens (default 4096)")
    group.add_argument(
        "--n-gpu-layers",
        type=int,
        metavar="N",
        help="layers to offload to the GPU (-1 all; default: all when the build supports it)",
    )
    group.add_argument("--no-mmproj-offload", action="store_true", default=None, help="keep the projector on the CPU")
    group.add_argument("--threads", type=int, metavar="N", help="CPU threads")

    parser = argparse.ArgumentParser(
        prog="vision-agent",
        description="A local, private, agentic vision assistant for the terminal.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    ask = commands.add_parser(
        "ask",
        parents=[common, model],
        help="ask one question about images; the answer streams to stdout",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ask.add_argument("prompt", nargs="?", metavar="PROMPT", help="the question (read from stdin when omitted)")
    ask.add_argument(
        "-a", "--attach", action="append", default=[], metavar="IMAGE", help="image file, or - for stdin; repeatable"
    )
    ask.add_argument("--system", metavar="TEXT", help='system prompt ("" for none; default: prompts/system.txt)')
    ask.add_argument(
        "-c", "--continue", dest="continue_conversation", action="store_true", help="continue the last conversation"
    )
    tools = ask.add_argument_group("tools")
    tools.add_argument("--tools", metavar="LIST", help="only these tools, comma-separated (e.g. calculator,web_search)")
    tools.add_argument("--no-tools", action="store_true", help="plain chat turn: no tool use")
    tools.add_argument(
        "--tool-policy", action="append", metavar="NAME=POLICY", help="auto, ask (confirm first) or off; repeatable"
    )
    tools.add_argument("--max-steps", type=int, metavar="N", help="tool steps before a final answer (default 5)")
    ask.add_argument("--temperature", type=float, metavar="T")
    ask.add_argument("--top-p", type=float, metavar="P")
    ask.add_argument("--max-tokens", type=int, metavar="N")
    ask.add_argument("--seed", type=int, metavar="S")
    ask.add_argument("--stop", action="append", metavar="TEXT", help="stop string; repeatable")
    ask.add_argument("--json", action="store_true", help="write the event stream as JSON lines instead of text")

    tool = commands.add_parser("tool", help="run one tool directly and print its result")
    tool_commands = tool.add_subparsers(dest="tool_command", metavar="TOOL", required=True)
    calc = tool_commands.add_parser("calc", parents=[common], help="evaluate an arithmetic expression")
    calc.add_argument("expression", metavar="EXPR")
    python = tool_commands.add_parser("python", parents=[common], help="run Python in the sandbox")
    python.add_argument("code", nargs="?", default="-", metavar="CODE", help="the program (default: read stdin)")
    python.add_argument("-a", "--attach", action="append", default=[], metavar="IMAGE", help="the image as `image`")
    search = tool_commands.add_parser("search", parents=[common], help="search the web")
    search.add_argument("query", metavar="QUERY")
    search.add_argument("--max-results", type=int, metavar="N")
    tool_commands.add_parser("list", parents=[common], help="the tools found, with their policy")
    run = tool_commands.add_parser("run", parents=[common], help="run any tool (plugins too) with JSON arguments")
    run.add_argument("name", metavar="NAME")
    run.add_argument("arguments", nargs="?", default="{}", metavar="JSON")
    run.add_argument("-a", "--attach", action="append", default=[], metavar="IMAGE")

    commands.add_parser(
        "doctor", parents=[common, model], help="show the llama.cpp build, the model found and the settings"
    )

    models = commands.add_parser("models", help="list, download, inspect or generate models")
    models_commands = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    models_commands.add_parser("list", parents=[common], help="the catalog and what is downloaded")
    pull = models_commands.add_parser("pull", parents=[common], help="download a catalog model (resumable)")
    pull.add_argument("name", metavar="NAME")
    info = models_commands.add_parser("info", parents=[common], help="summarise a GGUF file's metadata")
    info.add_argument("path", metavar="PATH")
    demo = models_commands.add_parser("demo", parents=[common], help="write the tiny random-weight demo pair")
    demo.add_argument("directory", nargs="?", metavar="DIR", help="where to write it (default: the models dir's demo/)")
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
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2

    from vision_agent.errors import EXIT_INTERRUPTED, VisionAgentError
    from vision_agent.terminal import safe_line

    _interrupt_on("SIGTERM", "SIGHUP")
    try:
        from vision_agent.config import load_settings
        from vision_agent.logging_setup import configure_logging

        settings = load_settings(args.config, settings_overrides(args))
        configure_logging(settings.verbose)
        return _dispatch(args, settings)
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


def _dispatch(args: argparse.Namespace, settings) -> int:
    if args.command == "ask":
        from vision_agent.frontends.console import ask

        return ask(args, settings)
    if args.command == "tool":
        from vision_agent.tool_command import run_tool_command

        return run_tool_command(args, settings)
    if args.command == "doctor":
        from vision_agent.doctor import doctor

        return doctor(settings)
    from vision_agent import model_commands

    return model_commands.run(args, settings)


def _version() -> str:
    from vision_agent import __version__

    return __version__


if __name__ == "__main__":
    raise SystemExit(main())
