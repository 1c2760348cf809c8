"""The command-line parser, in process: each command runs the handler it registered, and --help states the
defaults Settings really has (the flags themselves default to None so that absent flags leave the config
file and the environment in force)."""

from __future__ import annotations

import argparse

import pytest

from vision_agent.config import Settings
from vision_agent.frontends.cli.main import EXIT_CODES_HELP, build_parser


def command(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = subparsers.choices[name]
    return parser


def option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def default_of(section: str, *path: str):
    value = Settings.model_fields[section].default  # the class default: no config file, no environment
    for name in path:
        value = getattr(value, name)
    return value


@pytest.mark.parametrize(
    "argv, handler",
    [
        (["ask", "hi"], "ask.run"),
        (["tool", "calc", "1+1"], "tool.run"),
        (["tool", "python", "print(1)"], "tool.run"),
        (["tool", "search", "q"], "tool.run"),
        (["tool", "run", "calculator"], "tool.run"),
        (["tool", "list"], "tool.list_tools"),
        (["doctor"], "doctor.run"),
        (["models", "list"], "models.list_models"),
        (["models", "pull", "demo"], "models.pull"),
        (["models", "info", "demo"], "models.info"),
        (["models", "demo"], "models.demo"),
    ],
)
def test_each_command_runs_the_handler_it_registered(argv, handler):
    args = build_parser().parse_args(argv)
    assert f"{args.handler.__module__}.{args.handler.__name__}" == f"vision_agent.frontends.cli.{handler}"


def test_no_command_has_no_handler():
    assert build_parser().parse_args([]).handler is None


@pytest.mark.parametrize(
    "names, flag, default",
    [
        (["ask"], "--ctx", default_of("model", "n_ctx")),
        (["ask"], "--chat-format", default_of("model", "chat_format")),
        (["ask"], "--max-steps", default_of("agent", "max_steps")),
        (["ask"], "--temperature", default_of("generation", "temperature")),
        (["ask"], "--top-p", default_of("generation", "top_p")),
        (["ask"], "--max-tokens", default_of("generation", "max_tokens")),
        (["doctor"], "--ctx", default_of("model", "n_ctx")),
        (["tool", "search"], "--max-results", default_of("tools", "web_search", "max_results")),
    ],
)
def test_help_states_the_settings_default(names, flag, default):
    assert f"(default: {default}" in option(command(build_parser(), *names), flag).help


@pytest.mark.parametrize("names", [["ask"], ["doctor"], ["tool", "search"], ["tool", "python"], ["models", "demo"]])
def test_every_option_that_takes_a_value_says_its_default(names):
    # Options whose absence means "none": nothing to state.
    no_default = {"--attach", "--tools", "--tool-policy", "--stop"}
    parser = command(build_parser(), *names)
    for action in parser._actions:
        optional = action.option_strings or action.nargs in ("?", "*")  # a required argument has no default
        takes_value = action.nargs != 0 and not isinstance(action, argparse._HelpAction)
        if optional and takes_value and not set(action.option_strings) & no_default:
            assert "(default: " in (action.help or ""), f"{names} {action.option_strings or action.dest}"


def test_the_exit_codes_epilog_keeps_its_lines():
    parser = build_parser()
    for help_text in (parser.format_help(), command(parser, "ask").format_help()):
        assert EXIT_CODES_HELP in help_text
