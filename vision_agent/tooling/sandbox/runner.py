"""The parent side of the sandbox: start the child, talk to it over bounded pipes, and leave nothing behind.

Every exit path (the program ends, the wall-clock deadline, `cancel`, an exception such as
KeyboardInterrupt in the calling thread, `kill_all()` from a signal handler or atexit) ends the same way:
SIGTERM to the supervisor (which SIGKILLs the program's process and, without a pid namespace, whatever
it left), at most half a second later SIGKILL to the whole process group, reaping, and removal of the
temporary directory. What is read from the child is capped while it is read, so a flood of output costs
the parent a few hundred KB at most: past the cap the pipe is closed and the child gets EPIPE.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CHILD = Path(__file__).with_name("child.py")
# The child sees none of the user's variables: only what Python and numpy need to start.
CHILD_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
CAPTURE_LIMIT = 256 * 1024  # bytes kept of the child's stdout and of its stderr: untrusted text
POLL_S = 0.05  # how often cancel and the deadline are looked at
STOP_GRACE_S = 0.5  # from SIGTERM to the supervisor to SIGKILL of the group

# Every run's temporary directory, with its child once started: what kill_all must end and remove.
_live: dict[str, subprocess.Popen | None] = {}
_live_lock = threading.Lock()


@dataclass
class ChildOutcome:
    result: dict | None  # the program process's answer, if a genuine one came
    exit: dict | None  # the supervisor's report on how the program's process ended
    returncode: int | None
    stderr: bytes
    stdout: bytes
    stopped: str | None  # "cancelled" or "timeout" when we ended it
    foreign_lines: int  # lines on the result pipe without the run's secret (a forgery attempt)


def run_child(request: dict, payload: bytes, timeout_s: float, cancel: threading.Event | None,
              result_limit: int, executable: str | None = None) -> ChildOutcome:  # fmt: skip
    secret = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="vision-agent-py-")
    with _live_lock:
        _live[workdir] = None
    read_fd, write_fd = os.pipe()
    header = json.dumps({**request, "secret": secret, "result_fd": write_fd}).encode() + b"\n"
    proc = None
    pipes = None
    try:
        proc = subprocess.Popen(
            _command(executable),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(write_fd,),
            cwd=workdir,
            env=CHILD_ENV,
            start_new_session=True,  # its own process group, killed as a whole
        )
        with _live_lock:
            _live[workdir] = proc
        os.close(write_fd)
        write_fd = -1
        pipes = _Pipes(proc, read_fd, result_limit)
        stopped = pipes.exchange(header + payload, time.monotonic() + timeout_s, cancel)
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        if pipes is None:
            os.close(read_fd)
        else:
            pipes.close()
        if proc is not None:
            _end(proc)
        shutil.rmtree(workdir, ignore_errors=True)
        with _live_lock:  # only now: until the directory is gone, kill_all at exit must still see it
            _live.pop(workdir, None)
    result, exit_report, foreign = _frames(bytes(pipes.result), secret)
    return ChildOutcome(result, exit_report, proc.returncode, bytes(pipes.stderr), bytes(pipes.stdout), stopped,
                        foreign)  # fmt: skip


@functools.lru_cache(maxsize=4)
def _command(executable: str | None) -> list[str]:
    interpreter, paths = _interpreter(executable)
    return [*interpreter, str(CHILD), str(os.getpid()), paths]


@functools.lru_cache(maxsize=4)
def _interpreter(executable: str | None) -> tuple[tuple[str, ...], str]:
    """`python -I -B -S`: no site, so no .pth file runs in the child and it starts faster; the directories
    of RestrictedPython and numpy are handed to it instead. Another interpreter keeps its own site."""
    if executable is not None:
        return (executable, "-I", "-B"), ""
    roots = []
    for name in ("RestrictedPython", "numpy"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            return (sys.executable, "-I", "-B"), ""
        root = str(Path(spec.origin).parent.parent)
        if root not in roots:
            roots.append(root)
    return (sys.executable, "-I", "-B", "-S"), os.pathsep.join(roots)


class _Pipes:
    """stdin written, stdout/stderr/result read, all non-blocking, each read side capped."""

    def __init__(self, proc: subprocess.Popen, result_fd: int, result_limit: int):
        self.proc = proc
        self.stdout, self.stderr, self.result = bytearray(), bytearray(), bytearray()
        out, err = proc.stdout, proc.stderr
        assert out is not None and err is not None, "the supervisor is started with pipes"
        self.readers = {
            out.fileno(): (self.stdout, CAPTURE_LIMIT, out),
            err.fileno(): (self.stderr, CAPTURE_LIMIT, err),
            result_fd: (self.result, result_limit, None),
        }
        self.result_fd = result_fd
        self.open = set(self.readers)
        self.selector = selectors.DefaultSelector()
        for fd in self.readers:
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ)
        self.pidfd = -1
        try:  # readable when the supervisor ends (Linux 5.3+): no polling delay at the end of a run
            self.pidfd = os.pidfd_open(proc.pid)
            self.selector.register(self.pidfd, selectors.EVENT_READ)
        except (AttributeError, OSError):
            pass

    def exchange(self, data: bytes, deadline: float, cancel: threading.Event | None) -> str | None:
        stdin = self.proc.stdin
        assert stdin is not None, "the supervisor is started with pipes"
        stdin_fd = stdin.fileno()
        view, sent = memoryview(data), 0
        os.set_blocking(stdin_fd, False)
        self.selector.register(stdin_fd, selectors.EVENT_WRITE)
        exited_at = None
        while True:
            if cancel is not None and cancel.is_set():
                return "cancelled"
            now = time.monotonic()
            if exited_at is None and _exited(self.proc):
                exited_at = now
            if exited_at is not None and (not self.open or now - exited_at > STOP_GRACE_S):
                return None  # done (a descendant still holding a pipe is not waited for)
            if now >= deadline:
                return "timeout"
            wait = POLL_S if self.open or self.pidfd >= 0 else 0.005
            for key, _ in self.selector.select(timeout=min(wait, deadline - now)):
                if key.fd == self.pidfd:
                    self.selector.unregister(self.pidfd)
                elif key.fd == stdin_fd:
                    try:
                        sent += os.write(key.fd, view[sent : sent + 65536])
                    except BlockingIOError:
                        continue
                    except OSError:  # the child is gone or closed its stdin
                        sent = len(data)
                    if sent >= len(data):
                        self.selector.unregister(key.fd)
                        stdin.close()
                else:
                    self._read(key.fd)

    def _read(self, fd: int) -> None:
        buffer, limit, stream = self.readers[fd]
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        room = limit - len(buffer)
        buffer += chunk[: max(room, 0)]
        if not chunk or len(chunk) > room:  # EOF, or past the cap: stop reading, the writer gets EPIPE
            self.selector.unregister(fd)
            self.open.discard(fd)
            if stream is not None:
                stream.close()
            elif chunk:
                os.close(fd)
                self.result_fd = -1
                buffer.clear()  # more than a genuine result can be: worthless

    def close(self) -> None:
        self.selector.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is None:
                continue
            try:
                stream.close()
            except OSError:
                pass
        if self.result_fd >= 0:
            os.close(self.result_fd)
            self.result_fd = -1


def _exited(proc: subprocess.Popen) -> bool:
    """Whether the supervisor has ended, without reaping it (its pid and group id stay reserved)."""
    if proc.returncode is not None:
        return True
    if hasattr(os, "waitid"):
        try:
            return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True
    return proc.poll() is not None


def _end(proc: subprocess.Popen) -> None:
    """SIGTERM to the supervisor (it kills the program and what it left), then SIGKILL to the group; reap."""
    if not _exited(proc):
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except OSError:
            pass
        deadline = time.monotonic() + STOP_GRACE_S
        while not _exited(proc) and time.monotonic() < deadline:
            time.sleep(0.005)
    _kill_group(proc.pid)
    proc.wait()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def kill_all() -> None:
    """Stop every live sandbox child at once and remove their temporary directories.

    Safe to call from a signal handler or atexit, from any thread, any number of times. The threads that
    started the children see them end and return an error.
    """
    runs = list(_live.items())
    for _, proc in runs:
        if proc is None:
            continue
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + STOP_GRACE_S
    for _, proc in runs:
        while proc is not None and not _exited(proc) and time.monotonic() < deadline:
            time.sleep(0.005)
    for workdir, proc in runs:
        if proc is not None:
            _kill_group(proc.pid)
        shutil.rmtree(workdir, ignore_errors=True)


atexit.register(kill_all)


def _frames(data: bytes, secret: str) -> tuple[dict | None, dict | None, int]:
    """The genuine frames (after the secret) on the result pipe, and how many lines were something else."""
    marker = secret.encode() + b" "
    result = exit_report = None
    foreign = 0
    for line in data.split(b"\n"):
        at = line.find(marker)
        if at < 0:
            foreign += bool(line.strip())
            continue
        foreign += at > 0
        try:
            body = json.loads(line[at + len(marker) :])
        except (ValueError, RecursionError):  # nested 1,000 deep: the decoder's recursion limit
            foreign += 1
            continue
        # The last of each kind: the supervisor writes its exit report after the program's process is dead,
        # and the program's answer comes after anything the program itself could have sent.
        if isinstance(body, dict) and body.get("kind") == "result":
            result = body
        elif isinstance(body, dict) and body.get("kind") == "exit":
            exit_report = body
    return result, exit_report, foreign
