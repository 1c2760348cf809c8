"""Runs model-written Python in a fresh, resource-limited child process (see child.py for the layers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vision_agent.config import PythonToolSettings
from vision_agent.messages import ImagePart

CHILD = Path(__file__).with_name("child.py")
# The child sees none of the user's variables: only what Python and numpy need to start.
_CHILD_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


@dataclass
class SandboxResult:
    ok: bool
    output: str = ""
    value: str | None = None
    error: str | None = None
    seconds: float = 0.0


def run_python(
    code: str,
    settings: PythonToolSettings,
    image: ImagePart | None = None,
    cancel: threading.Event | None = None,
) -> SandboxResult:
    header = {
        "code": code,
        "width": image.width if image else 0,
        "height": image.height if image else 0,
        "image_bytes": len(image.rgb) if image else 0,
        "cpu_s": settings.cpu_s,
        "memory_bytes": settings.memory_mb * 1024 * 1024,
        "max_output_chars": settings.max_output_chars,
    }
    payload = json.dumps(header).encode() + b"\n" + (image.rgb if image else b"")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vision-agent-py-") as workdir:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=_CHILD_ENV,
            start_new_session=True,  # its own process group, killed as a whole
        )
        stopped = None
        pending: bytes | None = payload
        while True:
            try:
                out, err = proc.communicate(pending, timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                pending = None
                if cancel is not None and cancel.is_set():
                    stopped = "cancelled"
                elif time.monotonic() - started > settings.timeout_s:
                    stopped = f"timed out after {settings.timeout_s:g} s (wall clock); the process was killed"
                if stopped:
                    _kill_group(proc)
                    out, err = proc.communicate()
                    break
    seconds = time.monotonic() - started
    if stopped:
        return SandboxResult(ok=False, error=stopped, seconds=seconds)
    return _parse(out, err, proc.returncode, settings, seconds)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _parse(out: bytes, err: bytes, returncode: int, settings: PythonToolSettings, seconds: float) -> SandboxResult:
    line = out.decode("utf-8", errors="replace").strip().splitlines()
    if returncode == 0 and line:
        try:
            data = json.loads(line[-1])
            return SandboxResult(
                ok=data["ok"],
                output=data.get("output") or "",
                value=data.get("value"),
                error=data.get("error"),
                seconds=seconds,
            )
        except (ValueError, KeyError):
            pass
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return SandboxResult(ok=False, error=f"CPU time limit exceeded ({settings.cpu_s} s)", seconds=seconds)
    if returncode < 0:
        reason = f"killed by signal {signal.Signals(-returncode).name}"
    else:
        reason = f"exit status {returncode}"
    detail = err.decode("utf-8", errors="replace").strip().splitlines()[-1:] or [""]
    return SandboxResult(
        ok=False, error=f"the sandbox process failed ({reason}) {detail[0][:200]}".strip(), seconds=seconds
    )
