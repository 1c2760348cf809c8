"""Exit 1 is for bugs only: settings, arguments, plugins and model output that used to end in exit 1, a
crash or a plugin's own exit code, each through the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import json_events, replay_model, run_cli


def one_line(result, code: int, *needles: bytes) -> None:
    assert result.returncode == code, result.stderr
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and message[0].startswith(b"vision-agent: "), result.stderr
    assert b"internal error" not in result.stderr and b"Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


# -- settings that reached llama.cpp or the clock unchecked ----------------------------------------------


def test_more_threads_than_ggml_supports_is_a_usage_error(demo_pair, cli_env):
    text, mmproj = demo_pair  # --threads 100000 was a SIGSEGV inside llama.cpp
    result = run_cli("ask", "-m", str(text), "--mmproj", str(mmproj), "--threads", "100000", "hi", env=cli_env)
    one_line(result, 2, b"model.n_threads")


def test_a_huge_batch_size_is_capped_at_the_context(demo_pair, cli_env, tmp_path):
    text, mmproj = demo_pair  # n_batch = 10^11 was exit 1 (MemoryError: a 124 TiB logits array)
    config = tmp_path / "big-batch.toml"
    config.write_text("[model]\nn_batch = 99999999999\n")
    args = ["--config", str(config), "-m", str(text), "--mmproj", str(mmproj), "--no-tools", "--max-tokens", "2"]
    result = run_cli("ask", *args, "hi", env=cli_env)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "setting",
    ["[tools.web_search]\ntimeout_s = inf", "[tools.web_search]\ntimeout_s = 1e300", "[tools]\ntimeout_s = inf",
     "[tools.python]\ntimeout_s = inf", "[tools.python]\nmemory_mb = 99999999999999"],
)  # fmt: skip
def test_unbounded_tool_limits_are_usage_errors(cli_env, tmp_path, setting):
    config = tmp_path / "limits.toml"  # timeout_s = inf was exit 1 (a time_t overflow); memory_mb an OverflowError
    config.write_text(setting + "\n")
    result = run_cli("tool", "calc", "--config", str(config), "1+1", env=cli_env)
    one_line(result, 2, b"less than or equal to")


def test_text_settings_that_are_not_utf8_are_kept_as_text(demo_pair, cli_env):
    text, mmproj = demo_pair  # --system $'\xff' was exit 1 (a lone surrogate cannot be encoded for llama.cpp)
    args = ["-m", str(text), "--mmproj", str(mmproj), "--no-tools", "--max-tokens", "2", "--json"]
    bad = os.fsdecode(b"be brief \xff")
    result = run_cli("ask", *args, "--system", bad, "--stop", os.fsdecode(b"\xfe"), "hi", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert json_events(result)[-1]["status"] == "ok"
    env = {**cli_env, "VISION_AGENT_AGENT__SYSTEM_PROMPT": bad}
    assert run_cli("ask", *args, "hi", env=env).returncode == 0


def test_deeply_nested_tool_arguments_are_a_usage_error(cli_env):
    result = run_cli("tool", "run", "calculator", "[" * 60_000 + "]" * 60_000, env=cli_env)  # was RecursionError
    one_line(result, 2, b"nested too deeply")


@pytest.mark.parametrize("directory", ["/dev/null/demo", "/proc/no-such-dir"])
def test_a_demo_pair_that_cannot_be_written_is_a_usage_error(cli_env, directory):
    one_line(run_cli("models", "demo", directory, env=cli_env), 2, b"cannot be written")
    env = {**cli_env, "VISION_AGENT_MODEL__MODELS_DIR": directory}  # `ask -m demo` writes it on first use
    one_line(run_cli("ask", "-m", "demo", "hi", env=env), 2, b"cannot be written")


# -- model output --------------------------------------------------------------------------------------------


def test_a_surrogate_escape_in_the_models_json_keeps_every_line_json(cli_env, tmp_path):
    # `Input: {"expression": "1+\ud800"}` decoded to a lone surrogate: the tool_call line could not be written
    # and the run ended in exit 1.
    call = 'Thought: t\nAction: calculator\nInput: {"expression": "1+\\ud800", "\\udcff": 1}'
    result = run_cli("ask", "--json", "-m", replay_model(tmp_path, call, "Thought: t\nAnswer: ok"), "go", env=cli_env)
    assert result.returncode == 0, result.stderr
    events = json_events(result)
    assert [e["type"] for e in events if e["type"] in ("tool_call", "tool_result", "done")] == [
        "tool_call", "tool_result", "done"
    ]  # fmt: skip
    assert events[-1]["status"] == "ok"


def test_deeply_nested_tool_input_from_the_model_is_a_format_error(cli_env, tmp_path):
    call = "Thought: t\nAction: calculator\nInput: " + "[" * 5000 + "]" * 5000  # was RecursionError: exit 1
    result = run_cli("ask", "--json", "-m", replay_model(tmp_path, call, call, call), "go", env=cli_env)
    assert result.returncode == 13, result.stderr
    assert "nested too deeply" in json_events(result)[-1]["error"]["message"]


# -- plugins ----------------------------------------------------------------------------------------------

PLUGIN = '''
import sys


def leave(code: int) -> str:
    """Calls sys.exit.

    Args:
        code: the exit status
    """
    sys.exit(code)


def broken(n: int) -> str:
    """Raises.

    Args:
        n: anything
    """
    return [][n]


def odd_text(n: int) -> str:
    """Returns text with lone surrogates (as os.listdir gives for names that are not UTF-8).

    Args:
        n: anything
    """
    return "name \\udcff\\ud800 and more"
'''


@pytest.fixture
def plugins(cli_env, tmp_path):
    directory = tmp_path / "config" / "vision-agent" / "tools"
    directory.mkdir(parents=True)
    (directory / "audit.py").write_text(PLUGIN)
    return cli_env


def test_a_plugin_that_exits_on_import_is_skipped(plugins, tmp_path):
    tools = tmp_path / "config" / "vision-agent" / "tools"
    (tools / "exits_on_import.py").write_text("import sys\nsys.exit(0)\n")  # ended every command with exit 0
    result = run_cli("tool", "calc", "6*7", env=plugins)
    assert result.returncode == 0 and result.stdout.strip() == b"42", result.stderr
    assert b"exits_on_import.py was not loaded: SystemExit" in result.stderr


@pytest.mark.parametrize("tool, arguments", [("leave", '{"code": 3}'), ("broken", '{"n": 1}')])
def test_a_plugin_that_raises_or_exits_is_a_tool_error(plugins, tool, arguments):
    result = run_cli("tool", "run", tool, arguments, env=plugins)  # exit 3 and exit 1 before
    one_line(result, 12, b"the tool failed")


def test_a_plugin_that_exits_inside_ask_is_an_observation(plugins, tmp_path):
    call = 'Thought: t\nAction: leave\nInput: {"code": 3}'
    result = run_cli("ask", "--json", "-m", replay_model(tmp_path, call, "Thought: t\nAnswer: ok"), "go", env=plugins)
    assert result.returncode == 0, result.stderr  # exit 1 before (KeyError in the tool runner)
    events = json_events(result)
    outcome = next(e for e in events if e["type"] == "tool_result")
    assert not outcome["ok"] and "SystemExit" in outcome["output"]
    assert events[-1]["status"] == "ok"


def test_a_plugins_lone_surrogates_reach_neither_stdout_nor_the_prompt_as_such(plugins, tmp_path):
    assert run_cli("tool", "run", "odd_text", '{"n": 1}', env=plugins).returncode == 0  # exit 1 before
    call = 'Thought: t\nAction: odd_text\nInput: {"n": 1}'
    result = run_cli("ask", "--json", "-m", replay_model(tmp_path, call, "Thought: t\nAnswer: ok"), "go", env=plugins)
    assert result.returncode == 0, result.stderr
    outcome = next(e for e in json_events(result) if e["type"] == "tool_result")
    assert outcome["output"] == "name \ufffd\ufffd and more"


# -- the offline search provider -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "deep"])
def test_a_hostile_results_file_is_a_tool_error(cli_env, tmp_path, kind):
    results = tmp_path / "results.json"
    if kind == "fifo":
        os.mkfifo(results)  # hung in open()
    else:
        results.write_text("[" * 100_000 + "]" * 100_000)  # RecursionError: exit 1
    env = {**cli_env, "VISION_AGENT_TOOLS__WEB_SEARCH__PROVIDER": f"file:{results}"}
    one_line(run_cli("tool", "search", "x", env=env, timeout=30), 12, b"results file")


# -- signals outside a run -------------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP], ids=lambda n: signal.Signals(n).name)
def test_sigterm_and_sighup_outside_a_run_give_their_exit_codes(cli_env, tmp_path, number):
    # A `tool python` run, or `ask` still decoding its attachments: the default action used to kill the process
    # (a signal, not the documented 143/129, and no message); now it ends like Ctrl-C, cleaned up.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**cli_env, "TMPDIR": str(scratch)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vision_agent", "tool", "python", "while True:\n    pass"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not list(scratch.iterdir()) and time.monotonic() < deadline:  # the sandbox child has started
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(number)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 128 + number, err
    word = b"terminated" if number == signal.SIGTERM else b"hang-up"
    assert err.strip().splitlines() == [b"vision-agent: " + word]
    time.sleep(0.3)
    assert list(scratch.iterdir()) == []
