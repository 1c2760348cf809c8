"""Hostile input through the real command line: the terminal, text encodings, paths, budgets, the store.

Each case must end with its documented exit code and a one-line message, never exit 1 (a bug).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import pytest

from tests.helpers import png_bytes, replay_model, run_cli

ESCAPES = "\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\x1b]0;owned\x07\x9b2J\u202e\r"


def raw_controls(data: bytes) -> list[str]:
    text = data.decode("utf-8")
    return [c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F or c == "\u202e"]


# -- the terminal ---------------------------------------------------------------------------------


def test_model_output_cannot_drive_the_terminal(tmp_path, cli_env):
    answer = f"Thought: {ESCAPES}\nAnswer: hello {ESCAPES} world"
    result = run_cli("ask", "--no-tools", "-m", replay_model(tmp_path, answer), "x", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert raw_controls(result.stdout) == [] and raw_controls(result.stderr) == []
    assert "\\x1b]52;c;" in result.stdout.decode()  # shown, not obeyed


def test_tool_output_and_thoughts_cannot_drive_the_terminal(tmp_path, cli_env):
    code = "print('\\x1b]52;c;cGF5bG9hZA==\\x07\\x1b[2J\\x9b\\u202e\\rdone')"
    step = f"Thought: t{ESCAPES}\nAction: python\nInput: {json.dumps({'code': code})}"
    result = run_cli("ask", "-m", replay_model(tmp_path, step, "Thought: ok\nAnswer: ok"), "x", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert raw_controls(result.stderr) == [] and "\\x1b]52" in result.stderr.decode()


def test_json_lines_escape_everything_and_keep_the_exact_text(tmp_path, cli_env):
    answer = f"Thought: t\nAnswer: a{ESCAPES}b"
    result = run_cli("ask", "--json", "--no-tools", "-m", replay_model(tmp_path, answer), "x", env=cli_env)
    assert result.returncode == 0
    assert raw_controls(result.stdout) == []
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert next(e for e in events if e["type"] == "answer")["text"].endswith(f"a{ESCAPES}b".rstrip("\r").strip())


def test_a_file_name_cannot_drive_the_terminal(tmp_path, cli_env):
    result = run_cli("ask", "-m", replay_model(tmp_path, "Answer: x"), "-a", f"{tmp_path}/\x1b]0;owned\x07.png", "x",
                     env=cli_env)  # fmt: skip
    assert result.returncode == 6
    assert raw_controls(result.stderr) == [] and len(result.stderr.splitlines()) == 1


# -- text that is not valid UTF-8 -----------------------------------------------------------------


def test_invalid_utf8_prompt_argument_is_replaced_with_a_note(tmp_path, cli_env):
    proc = subprocess.run(
        [sys.executable, "-m", "vision_agent", "ask", "--no-tools", "-m", replay_model(tmp_path, "fine"),
         b"caf\xe9 \xff?"],
        capture_output=True, env=cli_env, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"fine\n"
    assert b"not valid UTF-8" in proc.stderr
    follow = run_cli("ask", "-c", "--json", "--no-tools", "-m", replay_model(tmp_path, "again", name="b.json"),
                     "and?", env=cli_env)  # fmt: skip
    assert follow.returncode == 0, follow.stderr  # the turn was saved


def test_invalid_utf8_prompt_on_stdin(tmp_path, cli_env):
    result = run_cli("ask", "--no-tools", "-m", replay_model(tmp_path, "ok"), env=cli_env, stdin=b"\xc3\x28 what?")
    assert result.returncode == 0 and result.stdout == b"ok\n" and b"not valid UTF-8" in result.stderr


def test_invalid_utf8_file_name_is_kept_and_saved(tmp_path, cli_env):
    name = os.fsencode(tmp_path) + b"/caf\xe9.png"
    with open(name, "wb") as handle:
        handle.write(png_bytes())
    model = replay_model(tmp_path, "Answer: ok")
    proc = subprocess.run(
        [sys.executable, "-m", "vision_agent", "ask", "--json", "--no-tools", "-m", model, "-a", name, "what?"],
        capture_output=True, env=cli_env, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    started = json.loads(proc.stdout.splitlines()[0])
    assert started["images"][0]["source"].endswith("caf\ufffd.png")


def test_a_huge_prompt_on_stdin_is_refused_without_reading_it_all(tmp_path, cli_env):
    result = run_cli("ask", "-m", replay_model(tmp_path, "Answer: x"), env=cli_env, stdin=b"a" * (9 * 1024 * 1024))
    assert result.returncode == 9 and b"over 8 MiB" in result.stderr


# -- paths ----------------------------------------------------------------------------------------


def test_unreadable_image_paths_have_their_code(tmp_path, cli_env):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    cases = [loop, fifo, tmp_path / ("n" * 300 + ".png"), tmp_path / "missing.png" / "x.png", "/proc/self/mem"]
    for path in cases:
        started = time.monotonic()
        result = run_cli(
            "ask", "-m", replay_model(tmp_path, "Answer: x"), "-a", str(path), "x", env=cli_env, timeout=30
        )
        assert result.returncode == 6, (path, result.stderr)
        assert len(result.stderr.splitlines()) == 1 and time.monotonic() - started < 20


def test_an_image_that_is_not_one(tmp_path, cli_env):
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(500))
    result = run_cli("ask", "-m", replay_model(tmp_path, "Answer: x"), "-a", str(fake), "x", env=cli_env)
    assert result.returncode == 7 and len(result.stderr.splitlines()) == 1


# -- budgets --------------------------------------------------------------------------------------


def test_many_huge_images_are_refused_from_their_headers(tmp_path, cli_env):
    big = tmp_path / "big.png"
    from PIL import Image

    Image.new("RGB", (8000, 5000), (9, 9, 9)).save(big)  # 40 megapixels, a small file
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    attach = [arg for _ in range(50) for arg in ("-a", str(big))]
    result = run_cli("ask", "-m", replay_model(tmp_path, "Answer: x"), *attach, "x", env=cli_env)
    assert result.returncode == 8, result.stderr
    assert b"per request" in result.stderr
    assert time.monotonic() - started < 20
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert max(peak_kib, before) < 1_000_000  # well under 1 GB (it was 6.2 GB)


def test_a_large_image_is_kept_at_the_size_a_model_can_use(tmp_path, cli_env):
    big = tmp_path / "big.png"
    from PIL import Image

    Image.new("RGB", (8000, 5000), (9, 9, 9)).save(big)
    env = {**cli_env, "VISION_AGENT_IMAGES__MAX_KEPT_PIXELS": "1000000"}
    result = run_cli(
        "ask", "--json", "--no-tools", "-m", replay_model(tmp_path, "Answer: x"), "-a", str(big), "x", env=env
    )
    assert result.returncode == 0, result.stderr
    image = json.loads(result.stdout.splitlines()[0])["images"][0]
    assert image["width"] * image["height"] <= 1_000_000 and abs(image["width"] / image["height"] - 1.6) < 0.01


# -- the saved conversation -----------------------------------------------------------------------


def test_an_unwritable_data_dir_keeps_the_answer_and_exits_14(tmp_path, cli_env):
    blocker = tmp_path / "data-is-a-file"
    blocker.write_text("x")  # nothing can be created below a file, even as root
    env = {**cli_env, "XDG_DATA_HOME": str(blocker)}
    result = run_cli("ask", "--no-tools", "-m", replay_model(tmp_path, "the answer"), "x", env=env)
    assert result.returncode == 14
    assert result.stdout == b"the answer\n"
    assert b"could not be saved" in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_damaged_saved_conversation_is_reported_and_the_rest_kept(tmp_path, cli_env):
    import sqlite3

    first = run_cli("ask", "--no-tools", "-m", replay_model(tmp_path, "one", "two"), "q1", env=cli_env)
    assert first.returncode == 0
    second = run_cli("ask", "-c", "--no-tools", "-m", replay_model(tmp_path, "two", name="b.json"), "q2",
                     env=cli_env)  # fmt: skip
    assert second.returncode == 0
    saved = tmp_path / "data" / "vision-agent" / "vision-agent.db"
    with sqlite3.connect(saved) as db:  # the first turn's user message tampered with
        db.execute("UPDATE messages SET parts = ? WHERE turn = 0 AND position = 0", (json.dumps({"broken": True}),))
    db.close()
    third = run_cli("ask", "-c", "--json", "--no-tools", "-m", replay_model(tmp_path, "three", name="c.json"), "q3",
                    env=cli_env)  # fmt: skip
    assert third.returncode == 0, third.stderr
    notes = [e["message"] for e in map(json.loads, third.stdout.splitlines()) if e["type"] == "notice"]
    assert any("1 damaged turn" in note for note in notes), notes
    for journal in saved.parent.glob("vision-agent.db-*"):
        journal.unlink()
    saved.write_bytes(b"\x00\xff garbage")
    broken = run_cli("ask", "-c", "-m", replay_model(tmp_path, "Answer: x", name="d.json"), "q", env=cli_env)
    assert broken.returncode == 14 and len(broken.stderr.splitlines()) == 1


@pytest.mark.parametrize("value", ["[oops", '{"a": 1}', "\x01"])
def test_malformed_environment_values_are_usage_errors(tmp_path, cli_env, value):
    env = {**cli_env, "VISION_AGENT_GENERATION__STOP": value}
    result = run_cli("ask", "-m", replay_model(tmp_path, "Answer: x"), "x", env=env)
    assert result.returncode == 2, result.stderr
    assert b"VISION_AGENT_GENERATION__STOP" in result.stderr.upper() or b"generation" in result.stderr


def test_a_model_whose_path_is_not_utf8_still_loads(demo_pair, tmp_path, cli_env):
    import shutil

    text, mmproj = demo_pair
    folder = os.fsencode(tmp_path) + b"/mod\xe8les"
    os.mkdir(folder)
    shutil.copy(text, folder + b"/demo\xff.gguf")
    shutil.copy(mmproj, folder + b"/mmproj-demo.gguf")
    proc = subprocess.run(
        [sys.executable, "-m", "vision_agent", "ask", "--no-tools", "--max-tokens", "2", "-m",
         folder + b"/demo\xff.gguf", "hi"],
        capture_output=True, env=cli_env, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
