"""Every way a run can end leaves no process and no temporary directory; what is read from the child is capped."""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from vision_agent.config import PythonToolSettings
from vision_agent.tooling.sandbox import kill_all, run_python, runner
from vision_agent.tooling.sandbox.runner import CHILD

SPIN = "while True:\n    pass"
SLOW = PythonToolSettings(timeout_s=30, cpu_s=30)
REPO = Path(__file__).resolve().parents[2]


def sandbox_processes(parent: int | None = None) -> list[int]:
    needle = f"{CHILD}\0{parent or os.getpid()}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if needle in cmdline and state != "Z":
                found.append(int(entry.name))
    return found


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """Where the sandbox makes its temporary directories during the test."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


def assert_clean(scratch: Path) -> None:
    assert sandbox_processes() == []
    assert list(scratch.iterdir()) == []
    assert runner._live == {}


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_normal_exit(scratch):
    result = run_python("6 * 7", SLOW)
    assert result.ok and result.value == "42"
    assert_clean(scratch)


def test_program_error_exit(scratch):
    result = run_python("1 / 0", SLOW)
    assert not result.ok and "ZeroDivisionError" in result.error
    assert_clean(scratch)


def test_wall_clock_timeout(scratch):
    started = time.monotonic()
    result = run_python(SPIN, PythonToolSettings(timeout_s=1, cpu_s=30))
    assert "timed out after 1 s" in result.error
    assert time.monotonic() - started < 3
    assert_clean(scratch)


def test_cpu_limit(scratch):
    result = run_python(SPIN, PythonToolSettings(timeout_s=30, cpu_s=1))
    assert "CPU time limit exceeded (1 s)" in result.error
    assert_clean(scratch)


def test_cancel_stops_the_child_promptly(scratch):
    assert runner.POLL_S <= 0.1
    cancel, set_at = threading.Event(), []

    def fire():
        set_at.append(time.monotonic())
        cancel.set()

    timer = threading.Timer(0.5, fire)
    timer.start()
    result = run_python(SPIN, SLOW, cancel=cancel)
    latency = time.monotonic() - set_at[0]
    assert result.error == "cancelled"
    assert latency < 1, latency  # generous: it polls every 50 ms and the child dies at once
    assert_clean(scratch)


def test_a_cancel_already_set_runs_nothing(scratch):
    cancel = threading.Event()
    cancel.set()
    assert run_python("1", SLOW, cancel=cancel).error == "cancelled"
    assert_clean(scratch)


def test_ctrl_c_in_the_calling_thread(scratch):
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        run_python(SPIN, SLOW)
    timer.join()
    assert_clean(scratch)


def test_an_abandoned_call_stops_when_its_cancel_is_set(scratch):
    """tooling.runner.call_with_deadline leaves the tool thread behind and sets the call's cancel event."""
    cancel, outcome = threading.Event(), {}
    worker = threading.Thread(target=lambda: outcome.update(r=run_python(SPIN, SLOW, cancel=cancel)), daemon=True)
    worker.start()
    time.sleep(0.5)
    assert sandbox_processes()  # running
    cancel.set()
    worker.join(2)
    assert not worker.is_alive() and outcome["r"].error == "cancelled"
    assert_clean(scratch)


def test_kill_all_from_another_thread(scratch):
    outcome = {}
    workers = [threading.Thread(target=lambda i=i: outcome.update({i: run_python(SPIN, SLOW)})) for i in range(2)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 10
    while sum(p is not None for p in runner._live.values()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    started = time.monotonic()
    kill_all()
    for worker in workers:
        worker.join(3)
    assert time.monotonic() - started < 3
    assert all(not r.ok for r in outcome.values()) and len(outcome) == 2
    assert_clean(scratch)


APP = """
import os, signal, sys, threading, time
sys.path.insert(0, {repo!r})
from vision_agent.config import PythonToolSettings
from vision_agent.tooling.sandbox import run_python, runner
threading.Thread(target=run_python, args=("while True:\\n    pass", PythonToolSettings(timeout_s=60, cpu_s=60)),
                 daemon=True).start()
while not any(runner._live.values()):
    time.sleep(0.01)
time.sleep(0.5)
print("running", flush=True)
sys.stdin.readline()
{then}
"""


@pytest.mark.parametrize(
    "then",
    [
        "time.sleep(60)",
        "sys.exit(0)",
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); print('ready', flush=True); time.sleep(60)",
    ],
    ids=["app SIGKILLed", "app exits (atexit)", "app SIGTERMed (its handler exits)"],
)
def test_nothing_outlives_the_app(then, tmp_path):
    app = subprocess.Popen([sys.executable, "-c", APP.format(repo=str(REPO), then=then)], stdout=subprocess.PIPE,
                           stdin=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp_path)})  # fmt: skip
    assert app.stdout.readline() == b"running\n"
    assert sandbox_processes(app.pid), "the sandbox child did not start"
    app.stdin.write(b"go\n")  # only now does the app go on to `then`
    app.stdin.flush()
    if "SIGTERM" in then:
        assert app.stdout.readline() == b"ready\n"
        app.send_signal(signal.SIGTERM)
    elif "sleep" in then:
        app.kill()  # no handler, no atexit: only the parent-death signal is left
    app.wait(10)
    deadline = time.monotonic() + 3
    while sandbox_processes(app.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes(app.pid) == []
    while list(tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.iterdir()) == []  # a SIGKILLed app's directory is removed by the supervisor


FLOOD = """
chunk = b'x' * (1 << 20)
for fd in {fds}:
    sent = 0
    try:
        while sent < 300 * (1 << 20):
            sent += os.write(fd, chunk)
    except OSError:
        pass
'flooded'
"""


@pytest.mark.parametrize("fds", ["(1,)", "(2,)", "tuple(range(3, 64))"], ids=["stdout", "stderr", "result pipe"])
def test_a_300_mb_flood_does_not_grow_the_parent(fds, scratch):
    tracemalloc.start()
    started = time.monotonic()
    result = run_python(FLOOD.format(fds=fds), PythonToolSettings(timeout_s=30, cpu_s=30), restricted=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 * runner.CAPTURE_LIMIT, peak
    assert time.monotonic() - started < 20
    if fds == "tuple(range(3, 64))":  # flooding the result pipe costs the program its own result
        assert not result.ok and "without a result" in result.error
    else:
        assert result.ok and result.value == "'flooded'", result.error
    assert_clean(scratch)


def test_print_flood_is_capped_in_the_child(scratch):
    result = run_python("while True:\n    print('x' * 1000)", PythonToolSettings(max_output_chars=1000))
    assert "output limit" in result.error and len(result.output) <= 1000
    assert_clean(scratch)


def test_large_image_round_trip(scratch):
    """The payload is written without blocking the reader loop (a 12 MB image)."""
    from vision_agent.core.messages import ImagePart

    width, height = 2000, 2000
    rgb = bytes(range(256)) * (width * height * 3 // 256)
    image = ImagePart.model_construct(type="image", sha256="0" * 64, width=width, height=height, rgb=rgb, source="t")
    result = run_python("int(image[1000, 1999, 2])", SLOW, image=image)
    assert result.ok, result.error
    assert result.value == str(rgb[(1000 * width + 1999) * 3 + 2])
    assert_clean(scratch)


def test_the_child_imports_nothing_from_the_app():
    import ast

    for path in (CHILD, CHILD.with_name("os_wall.py"), CHILD.with_name("py_wall.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("vision_agent"), path
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("vision_agent") for alias in node.names), path
