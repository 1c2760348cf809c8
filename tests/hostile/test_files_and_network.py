"""Hostile config files, replay scripts, metadata shown by `models info`, and an unreachable hub, through
the real CLI. Config problems are exit 2, replay scripts are model files (exit 4), downloads exit 10;
each with one line (one per retry for downloads), never a hang, never exit 1."""

from __future__ import annotations

import json
import os

import pytest

from tests.hostile import gguf_craft as gc
from tests.hostile.bounded import assert_refused, run_bounded

# -- config (finding: `--config /dev/zero` read 5 GB and hung) ---------------------------------------------


def _config_path(kind: str, tmp_path) -> str:
    if kind == "dev_zero":
        return "/dev/zero"
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo.toml")
        return str(tmp_path / "fifo.toml")
    if kind == "symlink_loop":
        (tmp_path / "a.toml").symlink_to(tmp_path / "b.toml")
        (tmp_path / "b.toml").symlink_to(tmp_path / "a.toml")
        return str(tmp_path / "a.toml")
    if kind == "not_a_directory":
        (tmp_path / "file").write_text("")
        return str(tmp_path / "file" / "vision-agent.toml")
    if kind == "name_too_long":
        return str(tmp_path / ("n" * 4096))
    if kind == "binary":
        (tmp_path / "bin.toml").write_bytes(bytes(range(256)) * 10)
        return str(tmp_path / "bin.toml")
    if kind == "huge":
        (tmp_path / "huge.toml").write_bytes(b"# " + b"x" * (3 << 20))
        return str(tmp_path / "huge.toml")
    raise AssertionError(kind)


CONFIG_CASES = {
    "dev_zero": "not a regular file",
    "fifo": "not a regular file",
    "symlink_loop": "symbolic links",
    "not_a_directory": "Not a directory",
    "name_too_long": "too long",
    "binary": "not UTF-8",
    "huge": "larger than",
}


@pytest.mark.parametrize("kind", sorted(CONFIG_CASES))
def test_hostile_config_path_is_exit_2(kind, tmp_path, cli_env):
    path = _config_path(kind, tmp_path)
    run = run_bounded("models", "list", "--config", path, env=cli_env, tmp_path=tmp_path)
    assert_refused(run, 2, "config file", CONFIG_CASES[kind])


def test_malformed_json_in_environment_is_exit_2(tmp_path, cli_env, demo_pair):
    env = {**cli_env, "VISION_AGENT_GENERATION__STOP": "[oops"}
    run = run_bounded("ask", "-m", str(demo_pair[0]), "hi", env=env, tmp_path=tmp_path)
    assert_refused(run, 2, "VISION_AGENT_GENERATION__STOP", "invalid JSON")


# -- replay scripts (finding: a binary replay file was exit 1) --------------------------------------------------


def _replay(kind: str, tmp_path) -> str:
    if kind == "binary":
        data, name = bytes(range(128, 256)) * 4, "bin.txt"
    elif kind == "nul_bytes":
        data, name = b"turn\x00one", "nul.txt"
    elif kind == "huge":
        data, name = b"x" * (17 << 20), "huge.txt"
    elif kind == "json_number":
        data, name = b"5", "n.json"
    elif kind == "json_turns_not_strings":
        data, name = json.dumps({"turns": [1, {"a": 2}]}).encode(), "t.json"
    elif kind == "json_nested_deeply":
        data, name = b"[" * 100_000 + b"]" * 100_000, "deep.json"
    elif kind == "json_broken":
        data, name = b'["unterminated', "broken.json"
    elif kind == "directory":
        (tmp_path / "dir.txt").mkdir()
        return str(tmp_path / "dir.txt")
    elif kind == "fifo":
        os.mkfifo(tmp_path / "fifo.txt")
        return str(tmp_path / "fifo.txt")
    elif kind == "symlink_loop":
        (tmp_path / "l1").symlink_to(tmp_path / "l2")
        (tmp_path / "l2").symlink_to(tmp_path / "l1")
        return str(tmp_path / "l1")
    elif kind == "name_too_long":
        return str(tmp_path / ("r" * 4096))
    else:
        raise AssertionError(kind)
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


REPLAY_CASES = {
    "binary": "not UTF-8",
    "nul_bytes": "binary",
    "huge": "larger than",
    "json_number": "expected a list",
    "json_turns_not_strings": "expected a list",
    "json_nested_deeply": "nested too deeply",
    "json_broken": "invalid JSON",
    "directory": "not a regular file",
    "fifo": "not a regular file",
    "symlink_loop": "symbolic links",
    "name_too_long": "too long",
}


@pytest.mark.parametrize("kind", sorted(REPLAY_CASES))
def test_hostile_replay_script_is_exit_4(kind, tmp_path, cli_env):
    path = _replay(kind, tmp_path)
    run = run_bounded("ask", "-m", f"replay:{path}", "--no-tools", "hi", env=cli_env, tmp_path=tmp_path)
    assert_refused(run, 4, "replay script", REPLAY_CASES[kind])


# -- `models info` shows file metadata: attacker text, never obeyed by the terminal -----------------------------


def test_models_info_shows_control_characters_visibly(demo_pair, tmp_path, cli_env):
    evil = "demo\x1b]52;c;cHduZWQ=\x07\x1b[2J\r\nname: trusted\u202e"
    text = gc.rewrite(demo_pair[0], tmp_path / "evil\x1b[31m.gguf", {"general.name": gc.s(evil)})
    mmproj = gc.rewrite(demo_pair[1], tmp_path / "evil-mmproj.gguf", {"general.name": gc.s(evil)})
    for path in (text, mmproj):
        run = run_bounded("models", "info", str(path), env=cli_env, tmp_path=tmp_path)
        assert run.returncode == 0, run.stderr
        out = run.stdout.decode()
        assert not any(ch in out for ch in "\x1b\x07\r\u202e"), ascii(out)
        name_line = next(line for line in out.splitlines() if line.startswith("name"))
        assert "\\x1b]52;c;cHduZWQ=\\x07\\x1b[2J\\r\\nname: trusted\\u202e" in name_line
        assert len([line for line in out.splitlines() if "trusted" in line]) == 1  # no forged extra line


# -- downloads (finding: offline `models pull` printed every retry twice) ----------------------------------------


def test_pull_of_an_exact_file_offline_is_one_line(tmp_path, cli_env):
    env = {**cli_env, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2"}
    run = run_bounded("models", "pull", "llava-1.5-7b", env=env, tmp_path=tmp_path)
    lines = run.stderr.decode().splitlines()
    assert run.returncode == 10
    assert [line for line in lines if line.startswith("vision-agent:")] == [lines[-1]]
    assert "127.0.0.1:9" in lines[-1] and "Traceback" not in run.stderr.decode()


def test_pull_with_retries_offline_says_each_retry_once(tmp_path, cli_env):
    """A glob in the catalog needs the repository listing, which huggingface-hub retries 5 times (~23 s)."""
    env = {**cli_env, "HF_ENDPOINT": "http://127.0.0.1:9"}
    run = run_bounded("models", "pull", "smolvlm-500m", env=env, tmp_path=tmp_path, timeout=120)
    lines = run.stderr.decode().splitlines()
    assert run.returncode == 10, lines
    assert len(lines) == len(set(lines)) == 6, lines  # five retries and the final failure, each once
    assert all(line.startswith("vision-agent: ") for line in lines)
    assert [f"retry {n}/5" in line for n, line in enumerate(lines[:5], 1)] == [True] * 5
    assert "cannot reach http://127.0.0.1:9" in lines[-1]
