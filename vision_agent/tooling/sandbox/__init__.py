"""Runs model-written Python behind two independent walls, in a fresh child process.

Wall 1, RestrictedPython (py_wall): compile-time refusal of "_" names, frames, eval/exec; guarded attribute
reads and writes; an allow-list of modules seen through immutable views, with every helper that reads or
writes attributes by a chosen name left out or replaced.

Wall 2, the OS (os_wall, child), which holds alone (tests/sandbox/test_os_wall.py hands the program the
real `os`, `socket`, `subprocess` and `ctypes`): on Linux a seccomp-BPF allow-list (EPERM for everything a
computing CPython does not need: no open, socket, fork, exec, kill of others), no_new_privs, root dropped
to 65534 and every capability cleared, chroot into an empty directory, pid/net/ipc/mount/uts namespaces
(plus a user namespace when not root), rlimits, a parent-death signal, and the whole process tree killed
on every exit path (runner). The result comes back on its own pipe, framed with a per-run secret: a program
that can write to any fd but not read its own memory cannot forge it (one that could read its memory could
only claim an output it could have printed anyway, and the parent checks every field of it: a frame nested too
deep, of the wrong types or too long is ignored, never an exception here); fds 1 and 2 are captured, capped,
untrusted text. A program longer than MAX_CODE_CHARS is refused before a child starts; parsing and compiling
run inside the child's CPU and memory budget.

Per platform: Linux as root or with user namespaces gets every layer; Linux where user namespaces are refused
gets all but namespaces and chroot (seccomp alone holds: tested); Linux without seccomp or libseccomp.so.2
keeps namespaces, chroot, privileges and rlimits but `os_wall_active()` is False; macOS has RestrictedPython,
CPU/file rlimits and the process-group kill only.

Public API:
- `run_python(code, settings, image, cancel)` → `SandboxResult`
- `layers()` → the layers this machine gives, probed once in a child and cached:
  `[{"name", "active", "detail"}]`
- `os_wall_active()` → True when the layers the OS wall needs to hold alone are active (seccomp,
  no_new_privs, privileges, parent-death signal); otherwise the python tool should default to `ask`.
- `kill_all()` → stop every live child now (called at exit by atexit; call it from SIGTERM/SIGHUP handlers).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vision_agent.tooling.sandbox.runner import CHILD_ENV as _CHILD_ENV  # noqa: F401 (tests read it)
from vision_agent.tooling.sandbox.runner import kill_all, run_child

if TYPE_CHECKING:
    from vision_agent.config import PythonToolSettings
    from vision_agent.core.messages import ImagePart

__all__ = ["SandboxResult", "run_python", "layers", "os_wall_active", "kill_all", "REQUIRED_LAYERS"]

# Without these the OS wall does not hold alone; the others (namespaces, chroot, rlimits) add depth.
REQUIRED_LAYERS = ("seccomp", "no_new_privs", "privileges", "parent-death signal")
MAX_ERROR_CHARS = 2000
MAX_CODE_CHARS = 100_000  # a program longer than this is not a tool call; the child's budget bounds the rest


@dataclass
class SandboxResult:
    ok: bool
    output: str = ""
    value: str | None = None
    error: str | None = None
    seconds: float = 0.0
    layers: list[dict] = field(default_factory=list)  # what was active for this run


def run_python(
    code: str,
    settings: PythonToolSettings,
    image: ImagePart | None = None,
    cancel: threading.Event | None = None,
    *,
    restricted: bool = True,
    disable: frozenset[str] = frozenset(),
) -> SandboxResult:
    """Run `code` in a fresh child. `restricted=False` and `disable` exist for the tests of the OS wall
    only: nothing the model writes or the configuration says reaches them."""
    import time

    if not isinstance(code, str):
        return SandboxResult(ok=False, error=f"the program must be text, not {type(code).__name__}")
    if len(code) > MAX_CODE_CHARS:
        return SandboxResult(ok=False, error=f"the program is too long ({len(code):,} characters; at most "
                                             f"{MAX_CODE_CHARS:,})")  # fmt: skip
    request = {
        "code": code,
        "width": image.width if image else 0,
        "height": image.height if image else 0,
        "image_bytes": len(image.rgb) if image else 0,
        "cpu_s": settings.cpu_s,
        "memory_bytes": settings.memory_mb * 1024 * 1024,
        "max_output_chars": settings.max_output_chars,
        "restricted": bool(restricted),
        "disabled": sorted(disable),
    }
    started = time.monotonic()
    outcome = run_child(request, image.rgb if image else b"", settings.timeout_s, cancel,
                        _result_limit(settings.max_output_chars))  # fmt: skip
    result = _interpret(outcome, settings)
    result.seconds = time.monotonic() - started
    return result


def _result_limit(max_output_chars: int) -> int:
    # output and value at most max_output_chars each (plus a cut marker), error 2000, layers: JSON with
    # ASCII escapes takes at most 6 bytes a character (12 for a pair of surrogates, i.e. 2 characters).
    return 6 * (2 * max_output_chars + MAX_ERROR_CHARS + 400) + 16_384


def _interpret(outcome, settings: PythonToolSettings) -> SandboxResult:
    import signal

    if outcome.stopped == "cancelled":
        return SandboxResult(ok=False, error="cancelled")
    if outcome.stopped == "timeout":
        return SandboxResult(
            ok=False, error=f"timed out after {settings.timeout_s:g} s (wall clock); the process was killed"
        )
    body = outcome.result
    if body is not None:
        return SandboxResult(
            ok=body.get("ok") is True,
            output=_clean(body.get("output")) or "",
            value=_clean(body.get("value")),
            error=_clean(body.get("error")),
            layers=_layers(body.get("layers")),
        )
    report = outcome.exit or {}
    sig = report.get("signal") if isinstance(report.get("signal"), int) else None
    if sig is None and outcome.returncode is not None and outcome.returncode < 0:
        sig = -outcome.returncode
    cpu = report.get("cpu_s") if isinstance(report.get("cpu_s"), (int, float)) else None
    if sig in (signal.SIGKILL, signal.SIGXCPU) and (cpu is None or cpu >= settings.cpu_s - 0.05):
        return SandboxResult(ok=False, error=f"CPU time limit exceeded ({settings.cpu_s} s)")
    if sig is not None:
        try:
            reason = f"killed by signal {signal.Signals(sig).name}"
        except ValueError:
            reason = f"killed by signal {sig}"
    else:
        code = report.get("code") if isinstance(report.get("code"), int) else outcome.returncode
        reason = f"exit status {code}"
    notes = []
    if outcome.foreign_lines:
        notes.append(f"{outcome.foreign_lines} forged line(s) on the result channel were ignored")
    lines = outcome.stderr.decode("utf-8", errors="replace").strip().splitlines()
    if lines:
        notes.append(lines[-1][:200])
    detail = f": {'; '.join(notes)}" if notes else ""
    return SandboxResult(ok=False, error=f"the sandbox process failed ({reason}) without a result{detail}")


def _layers(value) -> list[dict]:
    """The layers a result reports, as the shape `layers()` has. The result is the child's word: a program that
    got past the first wall could send any JSON here, so nothing in it is trusted to have a type."""
    if not isinstance(value, list):
        return []
    return [
        {"name": _clean(item.get("name")) or "?", "active": item.get("active") is True,
         "detail": _clean(item.get("detail")) or ""}
        for item in value[:32]
        if isinstance(item, dict)
    ]  # fmt: skip


def _clean(value) -> str | None:
    """A string from the child as safe text (lone surrogates replaced), or None."""
    if not isinstance(value, str):
        return None
    return value.encode("utf-8", errors="replace").decode("utf-8")


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[tuple[str, bool, str], ...]:
    request = {"probe": True, "cpu_s": 5, "memory_bytes": 1 << 30, "max_output_chars": 1000}
    try:
        outcome = run_child(request, b"", 30.0, None, 1 << 20)
    except OSError as exc:
        return (("os wall", False, f"the probe could not start ({exc})"),)
    body = outcome.result or {}
    found = tuple(
        (str(item.get("name")), item.get("active") is True, str(item.get("detail")))
        for item in body.get("layers") or []
        if isinstance(item, dict)
    )
    if not found:
        reason = outcome.stderr.decode("utf-8", errors="replace").strip().splitlines()[-1:] or ["no answer"]
        return (("os wall", False, f"the probe failed: {reason[0][:200]}"),)
    return found


def layers() -> list[dict]:
    """The sandbox's layers on this machine, outermost wall first; probed once per process (~60 ms)."""
    found = [{"name": "RestrictedPython", "active": True, "detail": "compile-time and run-time guards, module views"}]
    found += [{"name": n, "active": a, "detail": d} for n, a, d in _probe()]
    return found


def os_wall_active() -> bool:
    """True when every layer the OS wall needs to hold without RestrictedPython is active here."""
    active = {item["name"] for item in layers() if item["active"]}
    return all(name in active for name in REQUIRED_LAYERS)
