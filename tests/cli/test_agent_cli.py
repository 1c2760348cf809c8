"""The agent and the tools through the real command line (subprocesses, the replay backend)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from tests.helpers import replay_model, run_cli

CALC_STEP = 'Thought: The bars are 12 and 30; I add them.\nAction: calculator\nInput: {"expression": "12 + 30"}'
ANSWER = "Thought: I have the total.\nAnswer: The bars add up to 42."


def test_ask_shows_tool_calls_on_stderr_then_streams_the_answer(tmp_path, red_png, cli_env):
    result = run_cli("ask", "-m", replay_model(tmp_path, CALC_STEP, ANSWER), "-a", str(red_png), "Total?", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "The bars add up to 42.\n"
    err = result.stderr.decode()
    assert "thought: The bars are 12 and 30; I add them." in err
    assert '→ calculator {"expression": "12 + 30"}' in err
    assert "← calculator ok" in err and ": 42" in err
    assert err.index("→ calculator") < err.index("← calculator") < err.index("thought: I have the total.")


def test_json_lines_carry_every_event(tmp_path, red_png, cli_env):
    result = run_cli(
        "ask", "--json", "-m", replay_model(tmp_path, CALC_STEP, ANSWER), "-a", str(red_png), "x", env=cli_env
    )
    assert result.returncode == 0
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    kinds = [e["type"] for e in events if e["type"] != "token"]
    assert kinds == ["run_started", "tool_call", "tool_result", "answer", "done"]
    assert events[-1]["steps"] == 2 and result.stderr == b""


def test_continue_the_last_conversation_about_its_image(tmp_path, red_png, cli_env):
    first = run_cli("ask", "-m", replay_model(tmp_path, "Thought: red\nAnswer: A red square.", name="a.txt"),
                    "-a", str(red_png), "What is it?", env=cli_env)  # fmt: skip
    assert first.returncode == 0, first.stderr
    step = 'Thought: check a pixel\nAction: python\nInput: {"code": "image[0, 0].tolist()"}'
    replay = replay_model(tmp_path, step, "Thought: ok\nAnswer: 200, 30, 30", name="b.txt")
    follow = run_cli("ask", "-c", "--json", "-m", replay, "And its exact colour?", env=cli_env)
    assert follow.returncode == 0, follow.stderr
    events = [json.loads(line) for line in follow.stdout.decode().splitlines()]
    assert events[0]["images"] == []  # nothing attached this time
    result = next(e for e in events if e["type"] == "tool_result")
    assert result["ok"] and result["output"] == "[200, 30, 30]"
    assert events[-1]["usage"]["images_encoded"] == 2  # the earlier image is in both steps' prompts


def test_continue_without_history_is_a_clear_error(tmp_path, cli_env):
    result = run_cli("ask", "-c", "-m", replay_model(tmp_path, ANSWER), "x", env=cli_env)
    assert result.returncode == 2
    assert b"no previous conversation to continue" in result.stderr and result.stdout == b""


def test_step_cap_from_the_command_line(tmp_path, cli_env):
    result = run_cli("ask", "--max-steps", "1", "-m", replay_model(tmp_path, CALC_STEP, ANSWER), "x", env=cli_env)
    assert result.returncode == 0
    assert result.stdout.decode() == "The bars add up to 42.\n"
    assert b"step limit was reached after 1 steps" in result.stderr


def test_ask_policy_without_a_terminal_refuses(tmp_path, cli_env):
    result = run_cli("ask", "--tool-policy", "calculator=ask", "-m", replay_model(tmp_path, CALC_STEP, ANSWER), "x",
                     env=cli_env)  # fmt: skip
    assert result.returncode == 0
    assert b"nobody is available to approve it" in result.stderr


def test_malformed_steps_exit_13(tmp_path, cli_env):
    result = run_cli("ask", "-m", replay_model(tmp_path, "prose", "prose", "prose"), "x", env=cli_env)
    assert result.returncode == 13
    assert b"did not follow the step format" in result.stderr and result.stdout == b""


def test_ctrl_c_cancels_a_running_tool_and_exits_130(tmp_path, cli_env):
    spin = 'Thought: spin\nAction: python\nInput: {"code": "while True:\\n    pass"}'
    env = {**cli_env, "VISION_AGENT_TOOLS__PYTHON__TIMEOUT_S": "60", "VISION_AGENT_TOOLS__PYTHON__CPU_S": "60"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vision_agent", "ask", "-m", replay_model(tmp_path, spin, ANSWER), "spin"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    time.sleep(1.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert time.monotonic() - started < 3
    assert b"cancelled" in err and out == b""


def test_tool_calc(cli_env):
    ok = run_cli("tool", "calc", "2^10 * 15%", env=cli_env)
    assert ok.returncode == 0 and ok.stdout == b"153.6\n"
    refused = run_cli("tool", "calc", "4000000**4000000", env=cli_env)
    assert refused.returncode == 12 and refused.stdout == b""
    assert b"refused: the result would have about" in refused.stderr


def test_tool_python_with_an_image_and_a_hostile_program(red_png, cli_env):
    ok = run_cli("tool", "python", "print(width, height)\nimage.mean(axis=(0, 1)).round().tolist()",
                 "-a", str(red_png), env=cli_env)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == b"64 48\n[200.0, 30.0, 30.0]\n"
    from_stdin = run_cli("tool", "python", env=cli_env, stdin=b"sum(range(5))")
    assert from_stdin.stdout == b"10\n"
    hostile = run_cli("tool", "python", "import os\nos.system('touch pwned')", env=cli_env)
    assert hostile.returncode == 12 and b"not allowed in the sandbox" in hostile.stderr


def test_tool_search_with_a_results_file(tmp_path, cli_env):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"*": [{"title": "Eiffel Tower", "url": "https://e.test", "snippet": "330\x07 m"}]}))
    env = {**cli_env, "VISION_AGENT_TOOLS__WEB_SEARCH__PROVIDER": f"file:{results}"}
    result = run_cli("tool", "search", "eiffel tower height", env=env)
    assert result.returncode == 0
    assert result.stdout.decode() == "[1] Eiffel Tower\n    https://e.test\n    330 m\n"


def test_tool_search_with_the_real_provider_unreachable_is_exit_12(cli_env):
    # The real ddgs provider, the engine unreachable (cli_env points it at a closed port): one line, exit 12.
    env = {**cli_env, "VISION_AGENT_TOOLS__WEB_SEARCH__TIMEOUT_S": "5"}
    result = run_cli("tool", "search", "llama.cpp", "--max-results", "2", env=env)
    assert result.returncode == 12, result.stderr
    assert result.stderr.startswith(b"vision-agent: web_search: ") and len(result.stderr.splitlines()) == 1
    assert result.stdout == b""


def test_plugin_tool_in_the_user_tools_folder(tmp_path, cli_env):
    folder = tmp_path / "config" / "vision-agent" / "tools"
    folder.mkdir(parents=True)
    (folder / "units.py").write_text(
        "def inches_to_cm(inches: float) -> float:\n"
        '    """Convert inches to centimetres."""\n'
        "    return inches * 2.54\n"
    )
    listed = run_cli("tool", "list", env=cli_env)
    assert b"inches_to_cm   auto  Convert inches to centimetres." in listed.stdout
    assert run_cli("tool", "run", "inches_to_cm", '{"inches": 10}', env=cli_env).stdout == b"25.4\n"
    step = 'Thought: convert\nAction: inches_to_cm\nInput: {"inches": 2}'
    agent = run_cli(
        "ask", "--json", "--tools", "inches_to_cm", "-m", replay_model(tmp_path, step, ANSWER), "x", env=cli_env
    )
    result = next(json.loads(line) for line in agent.stdout.decode().splitlines() if '"tool_result"' in line)
    assert result["ok"] and result["output"] == "5.08"
