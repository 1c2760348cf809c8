"""A saved conversation is input: planted or damaged files cannot hang `ask -c`, take gigabytes, fail every
later `-c`, or end in exit 1 (the real CLI, the real llama.cpp path on the demo pair). Conversations live in the
SQLite store (sessions/store.py) and its image folder; the last.json of earlier versions is imported once, on the
store's first use, and is as untrusted as the store."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time

import pytest

from tests.helpers import run_cli

NO_TOOLS = ["--no-tools", "--max-tokens", "2", "--json"]


@pytest.fixture
def history(cli_env, tmp_path):
    directory = tmp_path / "data" / "vision-agent" / "history"
    (directory / "images").mkdir(parents=True)
    return directory


def model(demo_pair) -> list[str]:
    text, mmproj = demo_pair
    return ["-m", str(text), "--mmproj", str(mmproj)]


def ask_c(demo_pair, cli_env, *extra, timeout=120):
    return run_cli("ask", "-c", *model(demo_pair), *NO_TOOLS, *extra, "and now?", env=cli_env, timeout=timeout)


def write(history, messages, **fields):
    data = {"version": 1, "messages": messages, **fields}
    (history / "last.json").write_text(json.dumps(data))


def turn(text: str, *images: dict) -> list[dict]:
    return [
        {"role": "user", "parts": [*images, {"type": "text", "text": text}]},
        {"role": "assistant", "parts": [{"type": "text", "text": f"answer to {text[:20]}"}]},
    ]


def stored_png(history, side: int, shade: int) -> dict:
    """A solid PNG of side × side pixels in the image store: a few KB on disk, side² × 3 bytes decoded."""
    from PIL import Image

    image = Image.new("RGB", (side, side), (shade, 0, 0))
    digest = hashlib.sha256(f"{side}x{side}:".encode() + image.tobytes()).hexdigest()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    (history / "images" / f"{digest}.png").write_bytes(buffer.getvalue())
    return {"type": "image", "sha256": digest, "width": side, "height": side}


def done(result) -> dict:
    lines = result.stdout.decode().splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON
    assert events and events[-1]["type"] == "done", result.stderr
    return events[-1]


@pytest.fixture
def store(cli_env, tmp_path):
    """The store `ask` uses in cli_env, opened in this process (real SQLite); the history it would import is empty."""
    from vision_agent.config import ImageSettings
    from vision_agent.sessions.store import Store

    path = tmp_path / "data" / "vision-agent" / "vision-agent.db"
    with Store.open(path, limits=ImageSettings(max_total_pixels=10**12), history=tmp_path / "no-history") as opened:
        yield opened


def store_turns(store, *turns: tuple[str, list]) -> str:
    """A conversation of answered turns (prompt, images) committed to the store; its id."""
    from vision_agent.core.messages import Message
    from vision_agent.sessions.store import TurnRecord

    conversation = store.new_conversation(turns[0][0] if turns else "empty", "test", None)
    for prompt, images in turns:
        record = TurnRecord(run_id="0" * 32, prompt=prompt, images=[i.sha256 for i in images], answer="a",
                            status="ok", steps=[], usage={})  # fmt: skip
        store.commit_turn(
            conversation, record, [Message.user(prompt, images), Message.assistant(f"answer to {prompt}")]
        )
    return conversation


def solid(side: int, shade: int):
    from tests.helpers import image_part

    return image_part(size=(side, side), color=(shade, 0, 0), limit=10**8)


def notices(result) -> list[str]:
    return [json.loads(line)["message"] for line in result.stdout.splitlines() if b'"notice"' in line]


def test_a_fifo_in_place_of_the_store_is_refused_not_waited_on(demo_pair, cli_env, tmp_path):
    path = tmp_path / "data" / "vision-agent" / "vision-agent.db"
    path.parent.mkdir(parents=True)
    os.mkfifo(path)  # a FIFO blocks open() forever
    result = ask_c(demo_pair, cli_env, timeout=60)
    assert result.returncode == 14, result.stderr
    assert b"not a regular file" in result.stderr and result.stderr.count(b"\n") == 1


def test_a_fifo_in_place_of_the_old_history_is_not_waited_on(demo_pair, cli_env, history):
    os.mkfifo(history / "last.json")  # the import on the store's first use used to block in open()
    result = run_cli("ask", *model(demo_pair), *NO_TOOLS, "hi", env=cli_env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert done(result)["status"] == "ok"


@pytest.mark.parametrize("plant", ["fifo", "dev_zero"])
def test_a_planted_image_file_costs_its_turn_only(demo_pair, cli_env, store, plant):
    image = solid(8, 1)
    store_turns(store, ("with the image", [image]), ("plain text", []))
    path = store.image_path(image.sha256)
    path.unlink()
    if plant == "fifo":
        os.mkfifo(path)  # hung in open()
    else:
        path.symlink_to("/dev/zero")  # read 256 MB before it was refused
    result = ask_c(demo_pair, cli_env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert done(result)["status"] == "ok"
    assert any("1 damaged turn" in n and "not a regular file" in n for n in notices(result)), notices(result)


def test_stored_images_are_bounded_by_the_pixel_budget_newest_kept(demo_pair, cli_env, store):
    # Four 1500x1500 images (2.25 M pixels each, a few KB each on disk): with a 5 M budget the two newest are
    # kept and the oldest turns are left out. Unbounded, 1.4 MB of such files took 2.8 GB and 12 s.
    conversation = store_turns(store, *((f"turn {n}", [solid(1500, n)]) for n in range(4)))
    env = {**cli_env, "VISION_AGENT_IMAGES__MAX_TOTAL_PIXELS": "5000000"}
    result = ask_c(demo_pair, env)
    assert result.returncode == 0, result.stderr
    assert any("2 damaged turn(s)" in n and "exceed the limit of 5,000,000 pixels" in n for n in notices(result))
    assert done(result)["usage"]["images_encoded"] == 2  # only the two newest images reached the model
    kept = [turn.prompt for turn in store.turns(conversation)]  # the store keeps every turn, and the new one
    assert kept == ["turn 0", "turn 1", "turn 2", "turn 3", "and now?"]


def test_an_empty_conversation_continues(demo_pair, cli_env, store):
    store_turns(store)  # no turns (exit 1, ValueError in zip, with the old history file)
    result = ask_c(demo_pair, cli_env)
    assert result.returncode == 0, result.stderr
    assert done(result)["status"] == "ok"


def test_an_old_history_of_countless_tiny_values_is_refused_before_parsing(demo_pair, cli_env, history):
    # 15 MB of {} parse into 5 M dicts (~760 MB); a 238 MB file of tiny parts took 13 GB and 122 s.
    (history / "last.json").write_text('{"version": 1, "messages": [' + "{}," * 5_000_000 + "{}]}")
    # The CLI's peak memory, measured by a parent of its own (this process's children include other tests').
    measure = "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; " \
        "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"  # fmt: skip
    ask = [sys.executable, "-m", "vision_agent", "ask", *model(demo_pair), *NO_TOOLS, "hi"]
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", measure, *ask], capture_output=True, env=cli_env, timeout=60)
    code, peak_kib = map(int, result.stdout.splitlines()[-1].split())
    assert code == 0, result.stderr  # nothing imported; the new conversation is answered
    assert time.monotonic() - started < 30 and peak_kib < 500_000  # far from the 760 MB parsing would take
    again = ask_c(demo_pair, cli_env)  # the import is not tried again: -c continues what was just answered
    assert again.returncode == 0, again.stderr


def test_many_saved_turns_continue_in_linear_time(demo_pair, cli_env, history):
    # 20,000 one-word turns: the cut that brings them into the context was quadratic (25,000 took 244 s).
    turns = 20_000
    messages = [m for n in range(turns) for m in turn(f"q{n}")]
    write(history, messages, turn_starts=list(range(0, 2 * turns, 2)))
    started = time.monotonic()
    result = ask_c(demo_pair, cli_env)
    assert result.returncode == 0, result.stderr
    assert done(result)["status"] == "ok"
    assert time.monotonic() - started < 60  # seconds now; minutes before


@pytest.mark.parametrize("shape", ["long_texts", "countless_turns"])
def test_a_conversation_too_long_to_render_leaves_old_turns_out_of_view(demo_pair, cli_env, history, shape):
    # Rendering all of it broke the template's caps (4 M characters, 1 s): every later `-c` was exit 11.
    if shape == "long_texts":
        messages = [m for n in range(3) for m in turn(f"{n} " + "word " * 1_000_000)]
    else:
        messages = [m for n in range(49_999) for m in turn("u")]
    write(history, messages, turn_starts=list(range(0, len(messages), 2)))
    result = ask_c(demo_pair, cli_env)
    assert result.returncode == 0, result.stderr
    assert done(result)["status"] == "ok"
    notices = [json.loads(line)["message"] for line in result.stdout.splitlines() if b'"notice"' in line]
    assert any("left out of view" in notice for notice in notices)
