"""SIGINT, SIGTERM and SIGHUP at the worst moments: the run ends within a second with a `done` event,
the exit code names the signal, and no process or temporary directory of ours survives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import replay_model

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
SPIN = 'Thought: spin\nAction: python\nInput: {"code": "while True:\\n    pass"}'


def start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vision_agent", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def read_until(proc: subprocess.Popen, wanted: str, limit: float = 60) -> list[dict]:
    """JSON events from stdout until one of type `wanted` has arrived."""
    events = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        events.append(json.loads(line))
        if events[-1]["type"] == wanted:
            return events
    raise AssertionError(f"no {wanted} event; got {[e['type'] for e in events]}: {proc.stderr.read()[-2000:]}")


def stop(proc: subprocess.Popen, number: int) -> tuple[float, list[dict], bytes]:
    started = time.monotonic()
    proc.send_signal(number)
    out, err = proc.communicate(timeout=20)
    elapsed = time.monotonic() - started
    return elapsed, [json.loads(line) for line in out.splitlines()], err


def our_processes(marker: str) -> list[int]:
    """Live processes of this test: the app (its environment names the marker) and its children (their
    working directory is under the test's TMPDIR, whose path holds the marker too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            cwd = ""
        if state != "Z" and (marker.encode() in environ or marker in cwd):
            found.append(int(entry.name))
    return found


@pytest.fixture
def env(cli_env, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # TMPDIR: where the sandbox makes its working directories; the marker finds our processes.
    return {**cli_env, "TMPDIR": str(scratch), "VA_TEST_MARKER": tmp_path.name}


@pytest.mark.parametrize("number", SIGNALS, ids=lambda n: signal.Signals(n).name)
def test_a_signal_during_a_python_tool_run(tmp_path, env, number):
    slow = {**env, "VISION_AGENT_TOOLS__PYTHON__TIMEOUT_S": "60", "VISION_AGENT_TOOLS__PYTHON__CPU_S": "60"}
    proc = start(["ask", "--json", "-m", replay_model(tmp_path, SPIN, "Thought: t\nAnswer: a"), "spin"], slow)
    read_until(proc, "tool_call")
    time.sleep(0.5)  # the child is running the loop
    elapsed, events, err = stop(proc, number)
    assert proc.returncode == EXIT[number], err
    assert elapsed < 2, elapsed
    assert events[-1]["type"] == "done" and events[-1]["status"] == "cancelled"
    time.sleep(0.3)
    assert our_processes(tmp_path.name) == []
    assert list((tmp_path / "scratch").iterdir()) == []


@pytest.mark.parametrize("number", SIGNALS, ids=lambda n: signal.Signals(n).name)
def test_a_signal_during_generation(demo_pair, tmp_path, env, number):
    text, mmproj = demo_pair
    args = ["ask", "--json", "--no-tools", "-m", str(text), "--mmproj", str(mmproj), "--ctx", "8192",
            "--max-tokens", "8000", "--temperature", "0", "write a long story"]  # fmt: skip
    proc = start(args, env)
    read_until(proc, "token")
    elapsed, events, err = stop(proc, number)
    assert proc.returncode == EXIT[number], err
    assert elapsed < 2, elapsed
    done = events[-1]
    assert done["type"] == "done" and done["status"] == "cancelled"
    assert done["usage"]["prompt_tokens"] > 0 and done["usage"]["completion_tokens"] > 0  # real usage so far
    assert our_processes(tmp_path.name) == []


def test_a_second_signal_quits_at_once(tmp_path, env):
    slow = {**env, "VISION_AGENT_TOOLS__PYTHON__TIMEOUT_S": "60", "VISION_AGENT_TOOLS__PYTHON__CPU_S": "60"}
    proc = start(["ask", "--json", "-m", replay_model(tmp_path, SPIN, "Thought: t\nAnswer: a"), "spin"], slow)
    read_until(proc, "tool_call")
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)
    assert proc.returncode in (143, -signal.SIGTERM)
    time.sleep(0.3)
    assert our_processes(tmp_path.name) == []


def test_a_tool_timeout_shorter_than_the_sandbox_leaves_nothing_running(tmp_path, env):
    short = {**env, "VISION_AGENT_TOOLS__TIMEOUT_S": "1", "VISION_AGENT_TOOLS__PYTHON__TIMEOUT_S": "60",
             "VISION_AGENT_TOOLS__PYTHON__CPU_S": "60"}  # fmt: skip
    proc = start(["ask", "--json", "-m", replay_model(tmp_path, SPIN, "Thought: t\nAnswer: gave up"), "spin"], short)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    result = next(e for e in events if e["type"] == "tool_result")
    assert not result["ok"] and "did not finish within 1 s" in result["output"]
    time.sleep(0.5)
    assert our_processes(tmp_path.name) == []
    assert list((tmp_path / "scratch").iterdir()) == []


def test_sigterm_while_the_model_loads(demo_pair, tmp_path, env):
    text, mmproj = demo_pair
    proc = start(["ask", "--json", "--no-tools", "-m", str(text), "--mmproj", str(mmproj), "hi"], env)
    time.sleep(0.3)  # importing or loading
    elapsed, events, err = stop(proc, signal.SIGTERM)
    assert proc.returncode in (143, -signal.SIGTERM), err  # before the run starts, the default action is fine
    assert elapsed < 2
    if events:
        assert events[-1]["type"] == "done" and events[-1]["status"] == "cancelled"
    assert os.path.exists(text)
