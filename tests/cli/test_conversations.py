"""`ask -c`, `ask --cid` and `conversations ...` through the real CLI (subprocesses) over the real SQLite store:
replay scripts for the agent, the demo pair for the real llama.cpp path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import json_events, replay_model, run_cli

pytestmark = pytest.mark.subprocess

SPIN = 'Thought: spin\nAction: python\nInput: {"code": "while True:\\n    pass"}'
CALC = 'Thought: add\nAction: calculator\nInput: {"expression": "12 + 30"}'


def ask(tmp_path, cli_env, *args: str, answer: str = "fine", name: str = "r.json"):
    """`ask --json --no-tools ARGS` answered by a one-turn replay script; the parsed events."""
    result = run_cli("ask", "--json", "--no-tools", "-m", replay_model(tmp_path, answer, name=name), *args, env=cli_env)
    assert result.returncode == 0, result.stderr
    return json_events(result)


def conv(cli_env, *args: str):
    return run_cli("conversations", *args, env=cli_env)


def conv_json(cli_env, *args: str):
    result = conv(cli_env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_ask_c_continues_the_first_turn_and_done_names_the_conversation(tmp_path, cli_env):
    first = ask(tmp_path, cli_env, "What colour is the square?", answer="It is red.")
    conversation = first[-1]["conversation_id"]
    assert len(conversation) == 32 and all(e["conversation_id"] == conversation for e in first)
    alone = ask(tmp_path, cli_env, "And its shape?", name="b.json")
    follow = ask(tmp_path, cli_env, "--cid", conversation, "And its shape?", name="c.json")
    assert follow[-1]["conversation_id"] == conversation and alone[-1]["conversation_id"] != conversation
    # The replay model counts a word a token: the follow-up's prompt held the first turn, the new one did not.
    words = len("What colour is the square? It is red.".split())
    assert follow[-1]["usage"]["prompt_tokens"] == alone[-1]["usage"]["prompt_tokens"] + words
    again = ask(tmp_path, cli_env, "-c", "Anything else?", name="d.json")
    assert again[-1]["conversation_id"] == conversation  # -c: the latest updated one
    record = conv_json(cli_env, "show", conversation[:8])
    assert [t["prompt"] for t in record["turns"]] == ["What colour is the square?", "And its shape?", "Anything else?"]
    assert [t["answer"] for t in record["turns"]] == ["It is red.", "fine", "fine"]
    assert {e["run_id"] for e in follow} != {e["run_id"] for e in again}


def test_cid_takes_an_id_prefix_or_a_unique_title_prefix_and_refuses_the_rest(tmp_path, cli_env):
    one = ask(tmp_path, cli_env, "Bananas in the picture?")[-1]["conversation_id"]
    two = ask(tmp_path, cli_env, "Bicycles in the picture?", name="b.json")[-1]["conversation_id"]
    assert ask(tmp_path, cli_env, "--cid", one[:6], "more", name="c.json")[-1]["conversation_id"] == one
    assert ask(tmp_path, cli_env, "--cid", "Bic", "more", name="d.json")[-1]["conversation_id"] == two
    model = ["-m", replay_model(tmp_path, "x", name="e.json"), "--no-tools"]
    for ref, words in (("B", b"Bananas"), ("zzzz", b"zzzz")):  # ambiguous (lists both) / unknown
        result = run_cli("ask", *model, "--cid", ref, "q", env=cli_env)
        assert result.returncode == 2, result.stderr
        assert words in result.stderr and len(result.stderr.splitlines()) == 1 and result.stdout == b""
    both = run_cli("ask", *model, "-c", "--cid", one, "q", env=cli_env)
    assert both.returncode == 2 and b"not allowed with" in both.stderr


def test_list_show_search_rename_rm_in_text_and_json(tmp_path, red_png, cli_env):
    script = replay_model(tmp_path, CALC, "Thought: ok\nAnswer: The total is 42.", name="calc.json")
    result = run_cli("ask", "-m", script, "-a", str(red_png), "Add the bars\x1b[2J", env=cli_env)
    assert result.returncode == 0, result.stderr
    other = ask(tmp_path, cli_env, "Something else entirely", answer="zebra crossing")[-1]["conversation_id"]

    listed = conv_json(cli_env, "list")
    assert [c["title"] for c in listed] == ["Something else entirely", "Add the bars [2J"]  # no control characters
    assert listed[0]["id"] == other and listed[1]["turns"] == 1 and listed[1]["model"].startswith("replay:")
    assert conv_json(cli_env, "list", "--limit", "1") == listed[:1]
    text = conv(cli_env, "list")
    assert text.returncode == 0 and b"\x1b" not in text.stdout
    assert text.stdout.splitlines()[0].startswith(other[:12].encode()) and b"Something else entirely" in text.stdout

    calc = listed[1]["id"]
    record = conv_json(cli_env, "show", calc)
    [turn] = record["turns"]
    assert turn["prompt"] == "Add the bars\x1b[2J" and turn["status"] == "ok" and turn["answer"] == "The total is 42."
    assert turn["steps"] == [{"tool": "calculator", "arguments": {"expression": "12 + 30"}, "ok": True, "output": "42"}]
    [image] = turn["image_paths"]
    assert open(image, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    shown = conv(cli_env, "show", calc[:5])
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout.decode()
    assert "\x1b" not in out and "Add the bars\\x1b[2J" in out  # made visible, never obeyed
    assert '→ calculator {"expression": "12 + 30"}' in out and "← ok: 42" in out and image in out
    assert "answer: The total is 42." in out and "turn 1 · ok" in out

    hits = conv_json(cli_env, "search", "zebra")
    assert [(h["conversation_id"], h["turn"]) for h in hits] == [(other, 0)] and "zebra" in hits[0]["snippet"]
    found = conv(cli_env, "search", "zebra")
    assert found.returncode == 0 and found.stdout.startswith(other[:12].encode())

    renamed = conv(cli_env, "rename", other[:8], "New \x07title")
    assert renamed.returncode == 0 and b"\x07" not in renamed.stderr
    assert conv_json(cli_env, "show", other)["title"] in ("New \x07title", "New title")  # stored safely

    removed = conv(cli_env, "rm", other)
    assert removed.returncode == 0 and other.encode() in removed.stderr and removed.stdout == b""
    assert [c["id"] for c in conv_json(cli_env, "list")] == [calc]
    gone = conv(cli_env, "show", other)
    assert gone.returncode == 2 and len(gone.stderr.splitlines()) == 1
    alias = run_cli("conv", "list", "--json", env=cli_env)
    assert alias.returncode == 0 and json.loads(alias.stdout)[0]["id"] == calc


@pytest.mark.parametrize("query", ['"', "*", "a AND", "(", "NEAR(", "-x", "title:x", "'; DROP TABLE", "é*", "\x1b[2J"])
def test_search_with_fts_syntax_characters_never_fails(tmp_path, cli_env, query):
    ask(tmp_path, cli_env, 'the "quoted" (text) AND -minus *star*', answer="ok")
    for mode in ([], ["--json"]):
        result = conv(cli_env, "search", *mode, "--", query)
        assert result.returncode == 0, result.stderr  # words are searched for, never obeyed as FTS syntax
        assert len(result.stderr.splitlines()) <= 1
    assert conv_json(cli_env, "search", '"quoted"')[0]["turn"] == 0  # the quote is text, not syntax


def test_export_markdown_with_images_beside_it_and_json(tmp_path, red_png, blue_png, cli_env):
    first = ask(tmp_path, cli_env, "-a", str(red_png), "-a", str(blue_png), "Two squares?", answer="Red and ```blue```")
    conversation = first[-1]["conversation_id"]
    ask(tmp_path, cli_env, "-c", "-a", str(red_png), "The red one again", name="b.json")
    target = tmp_path / "out" / "talk.md"
    target.parent.mkdir()
    result = conv(cli_env, "export", conversation, "--format", "md", "-o", str(target))
    assert result.returncode == 0, result.stderr
    markdown = target.read_text()
    links = [line[line.index("(") + 1 : -1] for line in markdown.splitlines() if line.startswith("![")]
    assert len(links) == 3 and len(set(links)) == 2  # the red image once on disk, linked twice
    for link in links:
        assert not link.startswith("/") and (target.parent / link).read_bytes()[:4] == b"\x89PNG"
    assert "Two squares?" in markdown and "The red one again" in markdown and "Red and ```blue```" in markdown

    exported = conv(cli_env, "export", conversation[:6], "--format", "json")
    assert exported.returncode == 0, exported.stderr
    record = json.loads(exported.stdout)
    assert record == conv_json(cli_env, "show", conversation)
    assert record["id"] == conversation and len(record["turns"]) == 2 and len(record["turns"][0]["images"]) == 2
    to_file = conv(cli_env, "export", conversation, "--format", "json", "-o", str(tmp_path / "t.json"))
    assert to_file.returncode == 0 and json.loads((tmp_path / "t.json").read_text()) == record


def test_a_cancelled_run_is_recorded_as_cancelled(tmp_path, cli_env):
    env = {**cli_env, "VISION_AGENT_TOOLS__PYTHON__TIMEOUT_S": "60", "VISION_AGENT_TOOLS__PYTHON__CPU_S": "60"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vision_agent",
            "ask",
            "--json",
            "-m",
            replay_model(tmp_path, SPIN, "Answer: a"),
            "spin",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    for line in proc.stdout:
        if json.loads(line)["type"] == "tool_call":
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    done = json.loads(out.splitlines()[-1])
    assert done["type"] == "done" and done["status"] == "cancelled" and done["conversation_id"]
    [turn] = conv_json(cli_env, "show", done["conversation_id"])["turns"]
    assert turn["status"] == "cancelled" and turn["prompt"] == "spin"
    assert [(s["tool"], s["ok"]) for s in turn["steps"]] == [("python", None)]  # called, no result


def test_twenty_concurrent_ask_c_lose_no_turn(tmp_path, cli_env):
    conversation = ask(tmp_path, cli_env, "the start")[-1]["conversation_id"]
    model = replay_model(tmp_path, "ok", name="many.json")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "vision_agent", "ask", "-c", "--json", "--no-tools", "-m", model, f"turn {n}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=cli_env,
        )
        for n in range(20)
    ]
    results = [(proc, *proc.communicate(timeout=240)) for proc in procs]
    for proc, _out, err in results:
        assert proc.returncode == 0, err
    assert {json.loads(out.splitlines()[-1])["conversation_id"] for _, out, _ in results} == {conversation}
    record = conv_json(cli_env, "show", conversation)
    prompts = [t["prompt"] for t in record["turns"]]
    assert prompts[0] == "the start" and sorted(prompts[1:]) == sorted(f"turn {n}" for n in range(20))
    assert [t["index"] for t in record["turns"]] == list(range(21)) and record["turns"] and record["turns"][-1]
    assert conv_json(cli_env, "list")[0]["turns"] == 21


@pytest.mark.llama
def test_ask_c_on_the_real_model_path(demo_pair, red_png, cli_env):
    text, mmproj = demo_pair
    model = ["-m", str(text), "--mmproj", str(mmproj), "--json", "--no-tools", "--max-tokens", "3"]
    first = run_cli("ask", *model, "-a", str(red_png), "What is it?", env=cli_env)
    assert first.returncode == 0, first.stderr
    follow = run_cli("ask", *model, "-c", "And now?", env=cli_env)
    assert follow.returncode == 0, follow.stderr
    done = json_events(follow)[-1]
    assert done["status"] == "ok" and done["conversation_id"] == json_events(first)[-1]["conversation_id"]
    record = conv_json(cli_env, "show", done["conversation_id"])
    assert [t["prompt"] for t in record["turns"]] == ["What is it?", "And now?"]
    assert record["mmproj"] == str(mmproj)


def test_conversation_commands_on_an_empty_or_damaged_store(tmp_path, cli_env):
    assert conv_json(cli_env, "list") == []
    assert conv(cli_env, "list").returncode == 0
    missing = conv(cli_env, "show", "abcd")
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1
    store = tmp_path / "data" / "vision-agent" / "vision-agent.db"
    for path in store.parent.glob("vision-agent.db*"):
        path.unlink()
    store.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)  # a corrupt database file
    for args in (["list"], ["show", "abcd"], ["search", "x"]):
        result = conv(cli_env, *args)
        assert result.returncode == 14, (args, result.stderr)
        assert len(result.stderr.splitlines()) == 1
    result = run_cli("ask", "-c", "-m", replay_model(tmp_path, "x"), "q", env=cli_env)
    assert result.returncode == 14 and len(result.stderr.splitlines()) == 1


def test_export_reads_stored_images_as_untrusted_files(tmp_path, red_png, blue_png, cli_env):
    events = ask(tmp_path, cli_env, "-a", str(red_png), "-a", str(blue_png), "Two?")
    conversation = events[-1]["conversation_id"]
    red, blue = conv_json(cli_env, "show", conversation)["turns"][0]["image_paths"]
    os.unlink(red)
    os.symlink("/dev/zero", red)  # copied naively, this fills the disk
    target = tmp_path / "talk.md"
    result = run_cli("conversations", "export", conversation, "-o", str(target), env=cli_env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert b"left out" in result.stderr and b"not a regular file" in result.stderr
    copied = list((tmp_path / "talk_images").iterdir())
    assert [p.read_bytes() for p in copied] == [open(blue, "rb").read()]
    assert "](missing)" in target.read_text()
