"""`vision-agent jsonl` as a real process over pipes: the demo model (real llama.cpp) for images, follow-ups,
two conversations and cancel mid-generation; the replay backend for approvals, queueing and busy. Every stdout
line must be one protocol JSON object (the reader checks each), whatever reaches stderr."""

from __future__ import annotations

import base64
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import png_bytes, replay_model, run_cli

pytestmark = pytest.mark.subprocess

CALC = 'Thought: add\nAction: calculator\nInput: {"expression": "12 + 30"}'
LINE_TYPES = {"ready", "error", "approval_request", "status", "ack"}
EVENT_TYPES = {"run_started", "token", "tool_call", "tool_result", "notice", "answer", "done"}


class Server:
    """A `vision-agent jsonl` process: lines sent as JSON or raw bytes; every stdout line parsed by a reader thread
    (a line that is not a protocol JSON object fails the test)."""

    def __init__(self, args: list[str], env: dict, cwd: Path | None = None):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vision_agent", "jsonl", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        self.bad: list[bytes] = []
        self.stderr = b""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _read(self):
        for raw in self.process.stdout:
            try:
                line = json.loads(raw)
                assert isinstance(line, dict) and line.get("type") in LINE_TYPES | EVENT_TYPES
                assert raw.endswith(b"\n") and raw.count(b"\n") == 1
            except (ValueError, AssertionError):
                self.bad.append(raw)
                continue
            self.seen.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def _drain_stderr(self):
        for raw in self.process.stderr:
            self.stderr += raw

    def send(self, request) -> None:
        data = request if isinstance(request, bytes) else json.dumps(request).encode()
        self.process.stdin.write(data + b"\n")
        self.process.stdin.flush()

    def next(self, limit: float = 60) -> dict:
        line = self.lines.get(timeout=limit)
        assert line is not None, f"the server ended: {self.stderr[-3000:]!r}"
        return line

    def until(self, test, limit: float = 60) -> list[dict]:
        """Lines up to and including the first that passes `test`."""
        got = []
        deadline = time.monotonic() + limit
        while True:
            line = self.next(max(0.1, deadline - time.monotonic()))
            got.append(line)
            if test(line):
                return got

    def done_of(self, request_id, limit: float = 60) -> list[dict]:
        """Lines up to the done (or the refusing error) of `request_id`; other requests' lines too."""
        return self.until(lambda x: x.get("id") == request_id and x["type"] in ("done", "error"), limit)

    def ask(self, request: dict, limit: float = 60) -> list[dict]:
        self.send(request)
        return [x for x in self.done_of(request["id"], limit) if x.get("id") == request["id"]]

    def finish(self, limit: float = 60) -> int:
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        code = self.process.wait(limit)
        time.sleep(0.1)
        assert self.bad == [], f"non-protocol bytes on stdout: {self.bad[:3]}"
        return code

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def env(cli_env, tmp_path):
    env = dict(cli_env)
    env["TMPDIR"] = str(tmp_path)
    return env


@pytest.fixture
def start(env, tmp_path):
    started = []

    def make(*args: str, ready: bool = True, cwd: Path | None = None) -> Server:
        server = Server(list(args), env, cwd=cwd or tmp_path)
        started.append(server)
        if ready:
            first = server.next(120)
            assert first["type"] == "ready", first
            server.ready = first
        return server

    yield make
    for server in started:
        server.kill()


def demo_args(demo_pair, *extra: str) -> list[str]:
    text, mmproj = demo_pair
    return ["-m", str(text), "--mmproj", str(mmproj), "--no-tools", "--temperature", "0", *extra]


def stored(env, conversation: str) -> dict:
    result = run_cli("conversations", "show", conversation, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.llama
def test_images_follow_ups_and_two_conversations_on_the_real_model(start, demo_pair, env, tmp_path):
    (tmp_path / "red.png").write_bytes(png_bytes())
    blue = "data:image/png;base64," + base64.b64encode(png_bytes(color=(0, 0, 250))).decode()
    server = start(*demo_args(demo_pair, "--max-tokens", "8", "-v"))
    assert server.ready["protocol"] == 1 and server.ready["model"] and server.ready["mmproj"]

    first = server.ask({"id": "r1", "prompt": "What is this?", "images": ["red.png"]})
    kinds = [x["type"] for x in first]
    assert kinds[0] == "run_started" and kinds[-1] == "done" and kinds.count("done") == 1 and "token" in kinds
    red_conversation = first[-1]["conversation_id"]
    assert first[0]["conversation_id"] == red_conversation and first[-1]["status"] == "ok"
    assert first[-1]["usage"]["images_encoded"] == 1

    other = server.ask({"id": "r2", "prompt": "And this one?", "images": [blue]})
    assert other[-1]["status"] == "ok" and other[-1]["conversation_id"] != red_conversation

    # Back to the first conversation, the same image again: never encoded twice, the prefix not evaluated again.
    follow = server.ask({"id": 3, "prompt": "Its colour?", "images": ["red.png"], "conversation": red_conversation})
    assert follow[-1]["status"] == "ok" and follow[-1]["conversation_id"] == red_conversation
    usage = follow[-1]["usage"]
    assert usage["images_encoded"] == 0 and usage["images_cached"] >= 1
    again = server.ask({"id": 4, "prompt": "Anything else?", "conversation": red_conversation})
    assert again[-1]["usage"]["cached_tokens"] > 0 and again[-1]["usage"]["images_encoded"] == 0

    assert server.finish() == 0
    assert b"llama" in server.stderr.lower() or b"load" in server.stderr.lower()  # -v: its logs went to stderr
    turns = stored(env, red_conversation)["turns"]
    assert [t["prompt"] for t in turns] == ["What is this?", "Its colour?", "Anything else?"]
    assert all(t["status"] == "ok" for t in turns)


@pytest.mark.llama
def test_cancel_mid_generation_is_recorded_and_the_next_prompt_works(start, demo_pair, env):
    server = start(*demo_args(demo_pair, "--max-tokens", "3000", "--ctx", "4096"))
    server.send({"id": "long", "prompt": "Tell me everything."})
    server.until(lambda x: x["type"] == "token" and x["id"] == "long")
    server.send({"id": "c", "cancel": "long"})
    lines = server.done_of("long")
    assert {"type": "ack", "id": "c"} in lines
    done = lines[-1]
    assert done["type"] == "done" and done["status"] == "cancelled"
    assert 0 < done["usage"]["completion_tokens"] < 3000
    turn = stored(env, done["conversation_id"])["turns"][0]
    assert turn["status"] == "cancelled"
    after = server.ask({"id": "next", "prompt": "Short?", "max_tokens": 4})
    assert after[-1]["status"] == "ok"
    assert server.finish() == 0


def test_approval_granted_refused_and_timed_out(start, tmp_path):
    model = replay_model(tmp_path, CALC, "Answer: 42", CALC, "Answer: refused", CALC, "Answer: late")
    server = start("-m", model, "--tool-policy", "calculator=ask", "--approval-timeout", "1")
    outcomes = []
    for number, allow in enumerate([True, False, None]):
        server.send({"id": number, "prompt": "add"})
        request = server.until(lambda x: x["type"] == "approval_request")[-1]
        assert request["id"] == number and request["tool"] == "calculator"
        assert request["arguments"] == {"expression": "12 + 30"}
        if allow is not None:
            server.send({"id": f"a{number}", "approve": request["call_id"], "allow": allow})
        lines = server.done_of(number)
        result = next(x for x in lines if x["type"] == "tool_result")
        outcomes.append((result["ok"], result["refused"] is not None))
        assert lines[-1]["status"] == "ok"
        if allow is None:  # too late now: nobody waits for it
            server.send({"id": "late", "approve": request["call_id"], "allow": True})
            error = server.until(lambda x: x.get("id") == "late")[-1]
            assert error["type"] == "error" and error["code"] == "unknown_id"
    assert outcomes == [(True, False), (False, True), (False, True)]
    assert server.finish() == 0


def test_queue_busy_duplicate_ids_cancel_and_status(start, tmp_path):
    words = "Answer: " + " ".join(["word"] * 300)
    model = replay_model(tmp_path, words, "Answer: two", "Answer: three", token_delay_s=0.02)
    server = start("-m", model, "--queue", "1")
    server.send({"id": "one", "prompt": "first"})
    server.until(lambda x: x["type"] == "token")
    server.send({"id": "two", "prompt": "second"})
    server.send({"id": "three", "prompt": "third"})
    busy = server.until(lambda x: x.get("id") == "three")[-1]
    assert busy["type"] == "error" and busy["code"] == "busy"
    server.send({"id": "one", "prompt": "again"})
    duplicate = server.until(lambda x: x["type"] == "error" and x.get("id") == "one")[-1]
    assert duplicate["code"] == "duplicate_id"
    server.send({"id": "s", "status": True})
    status = server.until(lambda x: x["type"] == "status")[-1]
    assert status["running"] == "one" and status["queued"] == ["two"]
    server.send({"id": "c2", "cancel": "two"})  # a queued prompt: only its done, cancelled
    lines = server.done_of("two")
    assert [x["type"] for x in lines if x.get("id") == "two"] == ["done"] and lines[-1]["status"] == "cancelled"
    server.send({"id": "c9", "cancel": "nothing"})
    assert server.until(lambda x: x.get("id") == "c9")[-1]["code"] == "unknown_id"
    server.send({"id": "c1", "cancel": "one"})
    assert server.done_of("one")[-1]["status"] == "cancelled"
    assert server.finish() == 0


def test_bad_images_and_conversations_are_errors_with_the_cli_meanings(start, tmp_path, env):
    from PIL import Image

    env["VISION_AGENT_IMAGES__MAX_BYTES"] = "1000000"
    Image.new("1", (9000, 9000)).save(tmp_path / "bomb.png")  # 81 MP: refused from the header
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(png_bytes(size=(300, 300))[:200])
    os.mkfifo(tmp_path / "fifo.png")
    model = replay_model(tmp_path, "Answer: fine")
    server = start("-m", model)
    cases = {
        "missing.png": "image_not_found",
        "fifo.png": "image_not_found",
        "text.png": "image_corrupt",
        "cut.png": "image_corrupt",
        "bomb.png": "image_too_large",
        "data:image/png;base64,!!!!": "image_corrupt",
        "data:image/png;base64," + "A" * 3_000_000: "image_too_large",  # over images.max_bytes (1 MB here)
    }
    for number, (image, code) in enumerate(cases.items()):
        lines = server.ask({"id": number, "prompt": "look", "images": [image]})
        assert [(x["type"], x["code"]) for x in lines] == [("error", code)], image[:40]
    lines = server.ask({"id": "c", "prompt": "more", "conversation": "no-such-thing"})
    assert lines[-1]["code"] == "not_found"
    lines = server.ask({"id": "t", "prompt": "more", "tools": ["rm_rf"]})
    assert lines[-1]["code"] == "config"
    assert server.ask({"id": "ok", "prompt": "fine?"})[-1]["status"] == "ok"
    assert server.finish() == 0


def mutations(rng: random.Random, valid: list[bytes]) -> bytes:
    """One hostile line: garbage, a mutated valid request, or a crafted one."""
    choice = rng.randrange(10)
    if choice == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))).replace(b"\n", b"")
    if choice == 1:
        line = bytearray(rng.choice(valid))
        for _ in range(rng.randrange(1, 6)):
            line[rng.randrange(len(line))] = rng.randrange(256)
        return bytes(line).replace(b"\n", b"")
    if choice == 2:
        line = rng.choice(valid)
        return line[: rng.randrange(len(line))]
    if choice == 3:
        return b"[" * rng.randrange(1, 100_000)
    if choice == 4:
        value = rng.choice([None, True, 1.5, -1, 10**400, "x", [], {}, [1], {"a": 1}, "\ud800", "\u202e\x1b[2J"])
        key = rng.choice(["id", "prompt", "images", "conversation", "cancel", "approve", "allow", "status", "tools"])
        request = json.loads(rng.choice(valid))
        request[key] = value
        try:
            return json.dumps(request).encode()
        except ValueError:
            return b'{"id": 1, "prompt": NaN}'
    if choice == 5:
        return rng.choice([b"NaN", b"Infinity", b'"string"', b"12", b"null", b"{}", b'{"id":{}}', b"\xff\xfe", b" "])
    if choice == 6:
        return b"x" * rng.randrange(5000, 20000)  # over the test's cap of 4096 bytes
    if choice == 7:
        return json.dumps({"id": rng.randrange(5), "approve": "zz", "allow": rng.choice([True, 1, "yes"])}).encode()
    if choice == 8:
        return json.dumps({"id": 1, "prompt": "a", "shutdown": True}).encode()
    return rng.choice(valid)


def test_ten_thousand_hostile_lines_then_a_real_prompt(start, tmp_path):
    model = replay_model(tmp_path, *["Answer: fuzz"] * 2000)
    server = start("-m", model, "--max-line-bytes", "4096", "--queue", "2")
    valid = [
        b'{"id": "v1", "prompt": "hello"}',
        b'{"id": "v2", "status": true}',
        b'{"id": 7, "cancel": "v1"}',
        b'{"id": "a", "approve": "nope", "allow": false}',
        b'{"id": "p", "prompt": "look", "images": ["missing.png"], "max_tokens": 5}',
    ]
    rng = random.Random(12)
    sent = 0
    payload = bytearray()
    for _ in range(10_000):
        payload += mutations(rng, valid) + b"\n"
        sent += 1
        if len(payload) > 1 << 16:
            server.process.stdin.write(payload)
            payload.clear()
    server.process.stdin.write(payload + b"\n")
    server.process.stdin.flush()
    final = server.ask({"id": "final-check", "prompt": "still there?"}, limit=300)
    assert final[-1]["type"] == "done" and final[-1]["status"] == "ok", final[-1]
    assert server.process.poll() is None
    codes = {x.get("code") for x in server.seen if x["type"] == "error"}
    assert {"parse_error", "invalid_request", "line_too_long"} <= codes
    assert "internal" not in codes, [x for x in server.seen if x.get("code") == "internal"][:3]
    assert server.finish(120) == 0


def test_eof_finishes_the_queue_and_exits_zero(start, tmp_path, env):
    model = replay_model(tmp_path, "Answer: one two three", "Answer: four", token_delay_s=0.01)
    server = start("-m", model)
    server.send({"id": 1, "prompt": "first"})
    server.send({"id": 2, "prompt": "second"})
    assert server.finish() == 0
    dones = [x for x in server.seen if x["type"] == "done"]
    assert [(x["id"], x["status"]) for x in dones] == [(1, "ok"), (2, "ok")]


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_cancels_the_run_flushes_and_exits(start, tmp_path, number):
    model = replay_model(tmp_path, "Answer: " + " ".join(["slow"] * 500), "Answer: queued", token_delay_s=0.02)
    server = start("-m", model)
    server.send({"id": "run", "prompt": "go"})
    server.send({"id": "wait", "prompt": "later"})
    server.until(lambda x: x["type"] == "token")
    server.process.send_signal(number)
    code = server.process.wait(20)
    assert code == 128 + number
    time.sleep(0.2)
    dones = {x["id"]: x["status"] for x in server.seen if x["type"] == "done"}
    assert dones == {"run": "cancelled", "wait": "cancelled"}
    assert server.bad == []


def test_shutdown_cancels_and_exits_zero(start, tmp_path):
    model = replay_model(tmp_path, "Answer: " + " ".join(["slow"] * 500), token_delay_s=0.02)
    server = start("-m", model)
    server.send({"id": "run", "prompt": "go"})
    server.until(lambda x: x["type"] == "token")
    server.send({"id": "bye", "shutdown": True})
    assert server.process.wait(20) == 0
    time.sleep(0.2)
    assert [x["type"] for x in server.seen][-2:] in (["ack", "done"], ["done", "ack"])


def test_a_model_that_cannot_load_is_one_error_line_and_its_exit_code(start, tmp_path):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 10)
    server = start("-m", str(tmp_path / "bad.gguf"), ready=False)
    line = server.next()
    assert line["type"] == "error" and line["id"] is None and line["code"] == "model_file"
    assert server.finish() == 4


def test_schema_describes_every_line_without_a_model(env):
    result = run_cli("jsonl", "--schema", "-m", "no-such-model", env=env)
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert set(schema["requests"]) == {"prompt", "cancel", "approve", "status", "shutdown"}
    assert schema["requests"]["prompt"]["additionalProperties"] is False
    assert set(schema["lines"]) == LINE_TYPES
    assert "done" in json.dumps(schema["events"]) and "busy" in schema["error_codes"]


def test_eof_while_an_approval_waits_refuses_it_at_once(start, tmp_path):
    model = replay_model(tmp_path, CALC, "Answer: refused then")
    server = start("-m", model, "--tool-policy", "calculator=ask", "--approval-timeout", "600")
    server.send({"id": "p", "prompt": "add"})
    server.until(lambda x: x["type"] == "approval_request")
    started = time.monotonic()
    assert server.finish(60) == 0  # EOF: nobody can answer any more
    assert time.monotonic() - started < 30  # not the 600 s of the approval timeout
    result = next(x for x in server.seen if x["type"] == "tool_result")
    assert result["ok"] is False and result["refused"]
    assert server.seen[-1]["type"] == "done" and server.seen[-1]["status"] == "ok"
