"""What a new user meets first, through the real command line: --help with defaults and exit codes, `models
info` on a catalog name, `doctor` without a model, and start-up that imports nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import replay_model, run_cli

pytestmark = pytest.mark.subprocess

# Imported only by the command that needs them: never by --help, and never by the replay backend.
HEAVY = ("llama_cpp", "pydantic", "PIL", "numpy", "jinja2", "huggingface_hub", "ddgs", "gguf", "textual")


def imported(stderr: bytes) -> set[str]:
    """The top-level packages a `python -X importtime` run imported."""
    names = set()
    for line in stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_help_lists_the_commands_and_the_exit_codes(cli_env):
    result = run_cli("--help", env=cli_env)
    assert result.returncode == 0
    out = result.stdout.decode()
    for name in ("ask", "tool", "doctor", "models"):
        assert f"\n    {name} " in out
    assert "exit codes:\n  0 ok   1 internal error (a bug)   2 usage or config" in out


def test_ask_help_shows_defaults(cli_env):
    out = run_cli("ask", "--help", env={**cli_env, "COLUMNS": "200"}).stdout.decode()
    assert "--max-steps N" in out and "tool steps before a final answer (default: 5)" in out
    assert "context size in tokens (default: 4096)" in out and "(default: 0.2)" in out
    assert "130 interrupted (SIGINT)" in out


def test_no_command_prints_the_help_and_exits_2(cli_env):
    result = run_cli(env=cli_env)
    assert result.returncode == 2 and result.stdout == b""
    assert result.stderr.startswith(b"usage: vision-agent")


def test_models_info_takes_a_catalog_name(cli_env):
    result = run_cli("models", "info", "demo", env=cli_env)  # generated on first use, as `-m demo` is
    assert result.returncode == 0, result.stderr
    text, projector = result.stdout.decode().split("\n\n")
    assert "role             text model" in text and "demo-text.gguf" in text
    assert "role               projector (mmproj)" in projector and "mmproj-demo.gguf" in projector


def test_models_info_on_a_catalog_model_not_downloaded_says_how_to_get_it(cli_env):
    result = run_cli("models", "info", "llava-1.5-7b", env=cli_env)
    assert result.returncode == 3
    expected = b"vision-agent: model llava-1.5-7b is not downloaded: run `vision-agent models pull llava-1.5-7b`\n"
    assert result.stderr == expected


@pytest.mark.llama  # doctor reports the llama.cpp build
def test_doctor_without_a_model_says_what_to_do_first(cli_env):
    result = run_cli("doctor", env=cli_env)
    assert result.returncode == 3
    first = result.stdout.decode().splitlines()[0]
    assert first.startswith("problem: no model: pass -m NAME_OR_PATH, or download one with `vision-agent models pull")


def test_help_imports_nothing_heavy(cli_env):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "vision_agent", "--help"], capture_output=True, env=cli_env
    )
    assert result.returncode == 0
    assert not imported(result.stderr) & set(HEAVY)


def test_the_replay_backend_does_not_load_llama_cpp(tmp_path, cli_env):
    model = replay_model(tmp_path, "hello")  # --no-tools: a plain chat turn, the model's text is the answer
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "vision_agent", "ask", "-m", model, "--no-tools", "x"],
        capture_output=True,
        env=cli_env,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == b"hello\n"
    found = imported(result.stderr)
    assert "vision_agent" in found and "llama_cpp" not in found and "jinja2" not in found


def test_the_sandbox_imports_without_pydantic(cli_env):
    # Its parent side runs on the standard library alone (test_os_wall runs it with a bare system python).
    code = "import sys, vision_agent.tooling.sandbox; print(sorted(m for m in sys.modules if m.startswith('pydantic')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"[]\n"


def test_data_commands_print_json(tmp_path, cli_env):
    listed = run_cli("models", "list", "--json", env=cli_env)
    assert listed.returncode == 0, listed.stderr
    models = json.loads(listed.stdout)
    names = [m["name"] for m in models]
    assert "llava-1.5-7b" in names and "demo" in names
    assert all(m["status"] in ("ready", "not downloaded", "generated on first use") for m in models)
    assert next(m for m in models if m["name"] == "llava-1.5-7b")["files"] == []

    info = run_cli("models", "info", "demo", "--json", env=cli_env)
    assert info.returncode == 0, info.stderr
    text, projector = json.loads(info.stdout)
    assert text["architecture"] == "llama" and text["projector_type"] is None
    assert projector["has_vision"] and projector["projection_dim"] == text["embedding_length"]
    assert text["path"].endswith(".gguf") and projector["path"].endswith(".gguf")

    tools = run_cli("tool", "list", "--json", env=cli_env)
    assert tools.returncode == 0, tools.stderr
    by_name = {t["name"]: t for t in json.loads(tools.stdout)}
    assert {"calculator", "python", "web_search"} <= set(by_name)
    assert by_name["calculator"]["parameters"]["required"] == ["expression"]
    assert by_name["python"]["policy"] in ("auto", "ask")


def test_json_from_a_hostile_file_name_keeps_the_text_and_nothing_a_terminal_acts_on(demo_pair, tmp_path, cli_env):
    import shutil

    text, _ = demo_pair
    hostile = tmp_path / "evil\u202e\x1b]52;c;aGk=\x07.gguf"
    shutil.copy(text, hostile)
    result = run_cli("models", "info", str(hostile), "--json", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert b"\x1b" not in result.stdout and "\u202e".encode() not in result.stdout
    assert json.loads(result.stdout)[0]["path"] == str(hostile)
