"""The sandbox child: runs one program from the model behind two walls, in two processes.

Started fresh as `python -I -B -S child.py PARENT_PID PACKAGE_DIRS` (never forked from the app) with an empty
environment, its own session and an empty temporary working directory. It imports nothing from vision_agent (only its
sibling modules os_wall and py_wall, by path), so the app's state is out of reach by construction.

It reads one request from stdin (a JSON header line, then the raw RGB bytes of the current image). The
answer goes to the parent on a pipe of its own (fd given in the header), as lines that start with a
per-run secret the program never sees; fds 1 and 2 are only captured, capped, untrusted text.

1. The supervisor (this process) asks for a parent-death signal, unshares the namespaces (os_wall), and
   forks the program's process, which becomes pid 1 of the new pid namespace. It then only waits: on
   SIGTERM/SIGHUP/SIGINT or the app's death it SIGKILLs the program's process; without a pid namespace,
   as a subreaper, it also kills whatever that process left behind. When the app died, it also removes
   the temporary directory (its working directory). It reports the exit status and CPU
   time on the result pipe and exits the same way.
2. The program's process imports what the program may use, sets its CPU and memory budget, parses and
   compiles the program inside that budget (py_wall, the RestrictedPython wall), then locks itself down
   (os_wall: fds, rlimits, chroot, privileges, no_new_privs, seccomp), runs the program, writes the result
   and `_exit`s.

`restricted: false` in the header (only the Python API of the parent can set it, for the tests that
prove the OS wall alone) runs the program as plain Python with `os`, `socket`, `subprocess`, `ctypes`,
`mmap`, `threading`, `time`, `signal` and `sys` handed to it. `probe: true` runs no program and reports the layers.
"""

import json
import os
import signal
import sys

MAX_ERROR_CHARS = 2000
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if len(sys.argv) > 2 and sys.argv[2]:  # started without site: where RestrictedPython and numpy live
        sys.path += sys.argv[2].split(os.pathsep)
    import os_wall  # type: ignore[import-not-found]  # this folder, put on sys.path above (no package here)

    watched = os_wall.set_parent_death_signal(signal.SIGTERM)  # the app died: stop the program (handler below)
    if os.getppid() != int(sys.argv[1]):  # the app is already gone
        _remove_orphaned_workdir()
        os._exit(70)
    request, raw = _read_request(sys.stdin.buffer)
    disabled = set(request.get("disabled", ()))
    report = os_wall.Report()
    in_pid_namespace = os_wall.enter_namespaces(report, disabled)

    inner = []  # the program's pid, once there is one

    def stop(signum, frame):
        if inner:
            try:
                os.kill(inner[0], signal.SIGKILL)
            except OSError:
                pass

    for number in STOP_SIGNALS:
        signal.signal(number, stop)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # until `inner` is known
    pid = os.fork()
    if pid == 0:
        watched = os_wall.set_parent_death_signal(signal.SIGKILL) and watched
        detail = "SIGTERM to the supervisor when the app's thread ends, SIGKILL to the program when the supervisor ends"
        report.set("parent-death signal", watched, detail if watched else "unavailable")
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        _program_process(request, raw, report, disabled)
    inner.append(pid)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _supervise(pid, request, in_pid_namespace)


def _read_request(stdin):
    request = json.loads(stdin.readline())
    raw = stdin.read(request["image_bytes"]) if request.get("image_bytes") else b""
    return request, raw


def _supervise(pid, request, in_pid_namespace):
    import os_wall

    os_wall.become_subreaper()
    try:
        _, status, usage = os.wait4(pid, 0)
        cpu = usage.ru_utime + usage.ru_stime
    except ChildProcessError:
        status, cpu = 0, 0.0
    if not in_pid_namespace:
        os_wall.kill_descendants()
    # Always ours to remove: the app may be dying without yet showing as gone (a SIGKILLed app's thread that
    # started us can exit before its main thread, and getppid() still names the app), and nothing reads it later.
    _remove_orphaned_workdir()
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    _send(request, {"kind": "exit", "code": code, "signal": sig, "cpu_s": round(cpu, 3)})
    if sig is not None:  # leave the way the program's process left, so the parent sees the same
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    os._exit(code if code is not None else 70)


def _remove_orphaned_workdir():
    """The app died without cleaning up: its temporary directory (our working directory) is ours to remove."""
    import shutil

    workdir = os.getcwd()
    if os.path.basename(workdir).startswith("vision-agent-py-"):
        shutil.rmtree(workdir, ignore_errors=True)


def _program_process(request, raw, report, disabled):
    import os_wall

    result_fd, max_output = request["result_fd"], request.get("max_output_chars", 20_000)
    limits = {"cpu_s": request["cpu_s"], "memory_bytes": request["memory_bytes"]}
    try:
        try:
            program = _prepare(request, raw, limits)
        except MemoryError:
            program = _Failed("MemoryError: the program is too large to compile within the sandbox's memory limit")
        except Exception as exc:  # ours, not the program's (a SyntaxError of unrestricted code, a bad install)
            program = _Failed(f"the sandbox could not prepare the program: {type(exc).__name__}: {exc}")
        os_wall.lock_down(report, (1, 2, result_fd), limits, disabled)
        if request.get("probe"):
            result = {"ok": True, "output": "", "value": None}
            _verify(report)
        elif program.error:
            result = {"ok": False, "error": program.error}
        else:
            result = program.run()
    except MemoryError:
        result = {"ok": False, "error": "MemoryError: the program exceeded the sandbox's memory limit"}
    program = None  # what the program built is freed before the answer is made (memory may be short)
    try:
        result = {
            "ok": result.get("ok") is True,
            "output": _text(result.get("output"), max_output),
            "value": None if result.get("value") is None else _text(result["value"], max_output),
            "error": None if result.get("error") is None else _text(result["error"], MAX_ERROR_CHARS),
            "layers": report.as_list(),
        }
        _send(request, {"kind": "result", **result})
    except BaseException as exc:  # noqa: BLE001 (out of memory or CPU while answering: say so, briefly)
        _send(request, {"kind": "result", "ok": False, "output": "", "value": None, "layers": report.as_list(),
                        "error": f"the sandbox could not send the result ({type(exc).__name__})"})  # fmt: skip
    os._exit(0)


def _prepare(request, raw, limits):
    """Imports first, then the CPU and memory budget, then parsing and compiling: a hostile program's syntax tree
    (a few MB of source make GBs) is built inside the budget, the fixed imports outside it."""
    import os_wall

    if request.get("probe"):
        return None
    if request.get("restricted", True):
        import py_wall  # type: ignore[import-not-found]  # this folder, on sys.path (see main)

        np = py_wall.warm_up(request["code"], raw)
        os_wall.set_budget(limits)
        return py_wall.Program(request["code"], request["width"], request["height"], raw, request["max_output_chars"],
                               np)  # fmt: skip
    _Unrestricted.imports()
    os_wall.set_budget(limits)
    return _Unrestricted(request["code"])


class _Failed:
    def __init__(self, error):
        self.error = error


class _Unrestricted:
    """Plain Python with the dangerous modules handed over: what the OS wall must hold against alone."""

    @staticmethod
    def imports():
        import ast  # noqa: F401
        import ctypes  # noqa: F401
        import mmap  # noqa: F401
        import socket  # noqa: F401
        import subprocess  # noqa: F401
        import threading  # noqa: F401
        import time  # noqa: F401

    def __init__(self, code):
        import ast
        import ctypes
        import mmap
        import socket
        import subprocess
        import threading
        import time

        self.error = None
        tree = ast.parse(code, "<model code>")
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            tree.body[-1] = ast.copy_location(ast.Assign([ast.Name("result", ast.Store())], tree.body[-1].value),
                                              tree.body[-1])  # fmt: skip
            ast.fix_missing_locations(tree)
        self.code = compile(tree, "<model code>", "exec")
        self.glb = {"__name__": "sandbox", "os": os, "socket": socket, "subprocess": subprocess, "ctypes": ctypes,
                    "signal": signal, "sys": sys, "mmap": mmap, "threading": threading, "time": time,
                    "result": None}  # fmt: skip

    def run(self):
        try:
            exec(self.code, self.glb)
        except BaseException as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": True, "value": repr(self.glb["result"])}


def _verify(report):
    """Probe: check that the filter bites, not only that it loaded."""
    if report.active("seccomp"):
        try:
            os.close(os.open("/", os.O_RDONLY))
            report.set("seccomp", False, "loaded, but open() still works")
        except PermissionError:
            pass
        except OSError as exc:
            report.set("seccomp", False, f"loaded, but open() failed with {exc.errno} instead of EPERM")


def _text(value, limit):
    text = str.__str__(value) if isinstance(value, str) else ""
    if len(text) > limit:
        text = text[:limit] + f"\n[… {len(text) - limit:,} characters cut by the sandbox …]"
    return text


def _send(request, body):
    line = request["secret"] + " " + json.dumps(body) + "\n"  # ASCII: lone surrogates travel escaped
    data = line.encode("ascii")
    fd = request["result_fd"]
    while data:
        try:
            data = data[os.write(fd, data) :]
        except OSError:
            return


if __name__ == "__main__":
    main()
