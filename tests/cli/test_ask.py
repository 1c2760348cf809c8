"""`vision-agent ask` through a real subprocess: streaming, JSON events, and every error path."""

from __future__ import annotations

import pytest

from tests.helpers import data_url, json_events, mtmd_handler_answer, png_bytes, run_cli
from vision_agent.core.images import read_image_file


def test_ask_streams_answer_to_stdout_and_nothing_else(demo_pair, red_png, cli_env):
    text, mmproj = demo_pair
    result = run_cli(
        "ask",
        "--no-tools",
        "-m",
        str(text),
        "--mmproj",
        str(mmproj),
        "-a",
        str(red_png),
        "--temperature",
        "0",
        "--max-tokens",
        "16",
        "Describe it.",
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert result.stderr == b""  # llama.cpp's logs stay quiet without -v


def test_verbose_shows_llama_cpp_logs_on_stderr(demo_pair, red_png, cli_env):
    text, mmproj = demo_pair
    result = run_cli(
        "ask",
        "--no-tools",
        "-v",
        "-m",
        str(text),
        "--mmproj",
        str(mmproj),
        "-a",
        str(red_png),
        "--max-tokens",
        "2",
        "hi",
        env=cli_env,
    )
    assert result.returncode == 0
    assert b"clip" in result.stderr or b"load" in result.stderr


def test_json_event_stream(demo_pair, red_png, blue_png, cli_env):
    text, mmproj = demo_pair
    result = run_cli(
        "ask",
        "--json",
        "--no-tools",
        "-m",
        str(text),
        "--mmproj",
        str(mmproj),
        "-a",
        str(red_png),
        "-a",
        str(blue_png),
        "--max-tokens",
        "8",
        "Compare.",
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    events = json_events(result)
    types = [e["type"] for e in events]
    assert types[0] == "run_started" and types[-2:] == ["answer", "done"]
    assert set(types[1:-2]) <= {"token"}
    assert len(events[0]["images"]) == 2
    assert events[-2]["text"] == "".join(e["text"] for e in events if e["type"] == "token")
    assert events[-1]["status"] == "ok" and events[-1]["usage"]["images_encoded"] == 2


def test_plain_turn_equals_mtmd_chat_handler(demo_pair, red_png, cli_env):
    """--no-tools --system "" is exactly the model's chat format: greedy output equals llama-cpp-python's."""
    text, mmproj = demo_pair
    prompt = "What do you see?"
    image = read_image_file(red_png, max_bytes=10**8, max_pixels=10**8)
    theirs, n_tokens = mtmd_handler_answer(
        demo_pair, [{"role": "user", "content": [data_url(image), {"type": "text", "text": prompt}]}], 40
    )
    result = run_cli(
        "ask",
        "--json",
        "--no-tools",
        "--system",
        "",
        "--temperature",
        "0",
        "--max-tokens",
        str(n_tokens),
        "-m",
        str(text),
        "--mmproj",
        str(mmproj),
        "-a",
        str(red_png),
        prompt,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    answer = [e for e in json_events(result) if e["type"] == "answer"][0]["text"]
    assert answer == theirs


def test_image_from_stdin_and_prompt_from_stdin(demo_pair, red_png, cli_env):
    text, mmproj = demo_pair
    model = ["-m", str(text), "--mmproj", str(mmproj), "--json", "--no-tools", "--max-tokens", "4"]
    from_stdin = run_cli("ask", *model, "-a", "-", "Describe.", env=cli_env, stdin=red_png.read_bytes())
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert json_events(from_stdin)[0]["images"][0]["source"] == "<stdin>"
    prompt_stdin = run_cli("ask", *model, "-a", str(red_png), env=cli_env, stdin=b"What is this?\n")
    assert prompt_stdin.returncode == 0
    assert json_events(prompt_stdin)[0]["prompt"] == "What is this?"


def test_demo_catalog_model_is_generated_on_first_use(cli_env):
    result = run_cli("ask", "-m", "demo", "--no-tools", "--max-tokens", "4", "hello", env=cli_env)
    assert result.returncode == 0, result.stderr
    result = run_cli("models", "list", env=cli_env)
    assert any(line.startswith("demo") and "ready" in line for line in result.stdout.decode().splitlines())


@pytest.mark.parametrize(
    "case, code, message",
    [
        ("no_model", 3, b"models pull"),
        ("unknown_model", 3, b"not in the catalog"),
        ("missing_model_file", 4, b"no such file"),
        ("corrupt_model", 4, b"not a GGUF file"),
        ("mismatched", 5, b"mismatched pair"),
        ("missing_image", 6, b"no such file"),
        ("corrupt_image", 7, b"corrupt or truncated"),
        ("not_an_image", 7, b"not a supported image"),
        ("huge_image", 8, b"pixels, over the limit"),
        ("overflow", 9, b"prompt too long"),
        ("bad_config", 2, b"unknown key 'model.nctx'"),
        ("no_prompt", 2, b"no prompt"),
    ],
)
def test_errors_are_one_line_with_distinct_exit_codes(
    case, code, message, demo_pair, mismatched_pair, red_png, tmp_path, cli_env
):
    text, mmproj = demo_pair
    pair = ["-m", str(text), "--mmproj", str(mmproj)]
    args = {
        "no_model": ["hi"],
        "unknown_model": ["-m", "no-such-model", "hi"],
        "missing_model_file": ["-m", str(tmp_path / "absent.gguf"), "hi"],
        "corrupt_model": ["-m", str(red_png), "--mmproj", str(mmproj), "hi"],
        "mismatched": ["-m", str(mismatched_pair[0]), "--mmproj", str(mismatched_pair[1]), "hi"],
        "missing_image": [*pair, "-a", str(tmp_path / "absent.png"), "hi"],
        "corrupt_image": [*pair, "-a", str(_write(tmp_path / "cut.png", png_bytes()[:70])), "hi"],
        "not_an_image": [*pair, "-a", str(_write(tmp_path / "notes.txt", b"hello")), "hi"],
        "huge_image": [*pair, "-a", str(_write(tmp_path / "huge.png", png_bytes(size=(8000, 6000)))), "hi"],
        "overflow": [*pair, "--ctx", "256", "-a", str(red_png), "word " * 400],
        "bad_config": ["--config", str(_write(tmp_path / "c.toml", b"[model]\nnctx = 5\n")), *pair, "hi"],
        "no_prompt": [*pair],
    }[case]
    result = run_cli("ask", *args, env=cli_env)
    stderr = result.stderr.strip()
    assert result.returncode == code, stderr
    assert message in stderr
    assert len(stderr.splitlines()) == 1 and b"Traceback" not in stderr
    assert result.stdout == b""


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
