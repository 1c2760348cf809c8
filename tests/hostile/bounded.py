"""Helpers for hostile-input tests: the CLI as a real subprocess under an address-space limit, timed, with
its peak resident memory; and an assertion for "refused properly"."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# What a refusal may take, start-up included. The target is 2 s; this bound only says "it did not hang".
REFUSAL_BOUND_S = 15.0
MEMORY_LIMIT = 1 << 30  # RLIMIT_AS of the child: a refusal must not need more
REFUSAL_RSS_MB = 300  # and its peak resident memory stays small (measured: 33-81 MB)

_LAUNCHER = """
import os, resource, runpy, sys
limit = int(os.environ.pop("VA_TEST_AS_LIMIT"))
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
rss_file = os.environ.pop("VA_TEST_RSS")
sys.argv = ["vision_agent", *sys.argv[1:]]
try:
    runpy.run_module("vision_agent", run_name="__main__", alter_sys=True)
finally:
    # VmHWM: the peak of this process's own memory. ru_maxrss would include the parent's peak, which Linux
    # records across the exec of a vfork()ed child.
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(rss_file, "w") as handle:
        handle.write(peak)
"""


@dataclass
class Run:
    args: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float
    peak_rss_mb: float | None


def run_bounded(*args: str, env: dict[str, str], tmp_path: Path, timeout: float = 60, limit: int = MEMORY_LIMIT) -> Run:
    """`python -m vision_agent ARGS` with RLIMIT_AS set, its wall time and its peak RSS."""
    rss_file = tmp_path / f"rss-{time.monotonic_ns()}"
    child_env = {**env, "VA_TEST_AS_LIMIT": str(limit), "VA_TEST_RSS": str(rss_file)}
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *args], input=b"", capture_output=True, env=child_env, timeout=timeout
    )
    seconds = time.monotonic() - start
    rss = int(rss_file.read_text()) / 1024 if rss_file.exists() else None
    run = Run(args, result.returncode, result.stdout, result.stderr, seconds, rss)
    _record(run)
    return run


def _record(run: Run) -> None:
    """With VA_HOSTILE_TIMINGS=FILE, append one line per run (for reports)."""
    path = os.environ.get("VA_HOSTILE_TIMINGS")
    if path:
        with open(path, "a") as handle:
            label = " ".join(a if len(a) < 40 else "..." + a[-30:] for a in run.args)
            handle.write(f"{run.returncode}\t{run.seconds:.2f}s\t{run.peak_rss_mb or 0:.0f}MB\t{label}\n")


def assert_refused(run: Run, exit_code: int, *needles: str) -> str:
    """Refused properly: the documented exit code (no signal), one line on stderr naming the problem, in time."""
    message = run.stderr.decode("utf-8", "replace")
    assert run.returncode >= 0, f"killed by signal {-run.returncode}: {message[-2000:]}"
    assert run.returncode == exit_code, message[-2000:]
    assert message.startswith("vision-agent: ") and message.count("\n") == 1, message[-2000:]
    assert "Traceback" not in message and "internal error" not in message
    for needle in needles:
        assert needle in message, message
    assert run.seconds < REFUSAL_BOUND_S, f"took {run.seconds:.1f} s"
    assert run.peak_rss_mb is None or run.peak_rss_mb < REFUSAL_RSS_MB, f"peak RSS {run.peak_rss_mb:.0f} MB"
    return message
