"""The OS wall holds alone: RestrictedPython switched off, the program handed the real os, socket, subprocess,
ctypes, mmap and threading. Each capability is tried by a program and checked from outside (files, listeners,
processes), under the full wall and under each half of it (seccomp alone; namespaces + chroot alone)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vision_agent.config import PythonToolSettings
from vision_agent.tooling.sandbox import layers, os_wall_active, run_python
from vision_agent.tooling.sandbox.runner import CHILD

LINUX = sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(not (LINUX and os_wall_active()), reason="the OS wall is not active on this machine")

LIMITS = PythonToolSettings(timeout_s=10, cpu_s=5, memory_mb=512, max_output_chars=5000)
SECRET_ENV = "VISION_AGENT_WALL_SECRET"
SECRET = "env-s3cret-7431"
FILE_SECRET = "file-s3cret-9052"

# The program reports each attempt as "DONE" or "refused: <errno or exception>".
PRELUDE = """
def attempt(action):
    try:
        action()
        return "DONE"
    except OSError as exc:
        return "refused: " + os.strerror(exc.errno) if exc.errno else "refused: " + repr(exc)
    except Exception as exc:
        return "refused: " + type(exc).__name__
"""

CAPABILITIES = {
    # reading what is not its own
    "parent_environ": "attempt(lambda: print(open('/proc/{ppid}/environ', 'rb').read()))",
    "parent_environ_os_open": "attempt(lambda: print(os.read(os.open('/proc/{ppid}/environ', os.O_RDONLY), 99999)))",
    "own_environ_via_proc": "attempt(lambda: print(open('/proc/self/environ', 'rb').read()))",
    "secret_file": "attempt(lambda: print(open('{secret}').read()))",
    "secret_file_ctypes": (
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "fd = libc.syscall(257, -100, b'{secret}', 0)\n"  # openat(AT_FDCWD, path, O_RDONLY) on x86_64
        "buf = ctypes.create_string_buffer(100)\n"
        "n = libc.read(fd, buf, 100) if fd >= 0 else -1\n"
        "'refused' if n < 0 else buf.value.decode()"
    ),
    "list_directory": "attempt(lambda: print(os.listdir('{dir}')))",
    "stat_outside": "attempt(lambda: print(os.stat('{secret}')))",
    "parent_memory": "attempt(lambda: print(open('/proc/{ppid}/mem', 'rb').read(10)))",
    # changing what is not its own
    "write_file": "attempt(lambda: open('{victim}', 'w').write('pwned'))",
    "create_file": "attempt(lambda: open('{dir}/created.txt', 'w').write('pwned'))",
    "unlink": "attempt(lambda: os.unlink('{victim}'))",
    "rename": "attempt(lambda: os.rename('{victim}', '{victim}.moved'))",
    "mkdir": "attempt(lambda: os.mkdir('{dir}/newdir'))",
    "chmod": "attempt(lambda: os.chmod('{victim}', 0o777))",
    "symlink": "attempt(lambda: os.symlink('{victim}', '{dir}/link'))",
    "truncate": "attempt(lambda: os.truncate('{victim}', 0))",
    # network
    "tcp_connect": "attempt(lambda: socket.socket().connect(('127.0.0.1', {port})))",
    "unix_connect": "attempt(lambda: socket.socket(socket.AF_UNIX).connect('{unix}'))",
    "abstract_unix_connect": "attempt(lambda: socket.socket(socket.AF_UNIX).connect('\\0{abstract}'))",
    "udp_send": "attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {port})))",
    "socketpair": "attempt(lambda: socket.socketpair())",
    # processes
    "fork": "attempt(lambda: os.fork() == 0 and os._exit(0))",
    "posix_spawn": "attempt(lambda: os.posix_spawn('/bin/touch', ['touch', '{marker}'], {{}}))",
    "subprocess": "attempt(lambda: subprocess.run(['/bin/touch', '{marker}']))",
    "system": "'DONE' if os.system('touch {marker}') == 0 else 'refused: system() failed'",
    "execv": "attempt(lambda: os.execv('/bin/touch', ['touch', '{marker}']))",
    "thread": "attempt(lambda: threading.Thread(target=lambda: None).start())",
    "double_fork_setsid": (
        "def escape():\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "        os._exit(0)\n"
        "attempt(escape)"
    ),
    "ctypes_clone": "'refused' if ctypes.CDLL(None).syscall(57) < 0 else 'DONE'",  # fork on x86_64
    # other processes, privileges, the kernel
    "kill_victim": "attempt(lambda: os.kill({victim_pid}, signal.SIGKILL))",
    "kill_everyone": "attempt(lambda: os.kill(-1, signal.SIGKILL))",
    "kill_own_group": "attempt(lambda: os.killpg(os.getpgid(0), signal.SIGKILL))",
    "ptrace_attach": "'refused' if ctypes.CDLL(None).ptrace(16, {victim_pid}, 0, 0) != 0 else 'DONE'",
    "setuid_root": "attempt(lambda: os.setuid(0))",
    "unshare_user": "'refused' if ctypes.CDLL(None).unshare(0x10000000) != 0 else 'DONE'",
    "executable_memory": "attempt(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC))",
}
# Where the program's own report must be a refusal (the filter answers EPERM) and where only the effect counts
# (without seccomp, namespaces and chroot leave a socket() or an mmap that reaches nothing).
SYSCALL_LEVEL = {"full", "seccomp alone"}
ONLY_WITH_SECCOMP = {"executable_memory", "socketpair", "kill_own_group", "own_environ_via_proc", "unshare_user"}
# EPERM, or what a library makes of it: no thread, a failed system(), a raw -1 from ctypes.
SECCOMP_REFUSALS = ("Operation not permitted", "refused: RuntimeError", "system() failed", "'refused'")
CONFIGS = {
    "full": frozenset(),
    "seccomp alone": frozenset({"namespaces", "chroot"}),
    "namespaces and chroot alone": frozenset({"seccomp"}),
}


def sandbox_processes() -> list[int]:
    """Live processes started as sandbox children of this test process (the supervisor and the program's)."""
    needle = f"{CHILD}\0{os.getpid()}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Things the program must not reach: a secret, a victim file, listeners, a process of the same uid."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    (tmp_path / "secret.txt").write_text(FILE_SECRET)
    (tmp_path / "victim.txt").write_text("intact")
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    tcp.setblocking(False)
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "unix.sock"))
    unix.listen()
    unix.setblocking(False)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0vision-agent-test-{os.getpid()}")
    abstract.listen()
    abstract.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", tcp.getsockname()[1]))
    udp.setblocking(False)
    # a process the sandboxed program could signal if it ran unconfined as the same user
    victim = subprocess.Popen(["sleep", "60"], user=65534 if os.geteuid() == 0 else None)
    yield {
        "dir": tmp_path,
        "values": {
            "ppid": os.getpid(),
            "secret": tmp_path / "secret.txt",
            "victim": tmp_path / "victim.txt",
            "dir": tmp_path,
            "marker": tmp_path / "marker",
            "port": tcp.getsockname()[1],
            "unix": tmp_path / "unix.sock",
            "abstract": f"vision-agent-test-{os.getpid()}",
            "victim_pid": victim.pid,
        },
        "listeners": [tcp, unix, abstract],
        "udp": udp,
        "victim": victim,
    }
    victim.kill()
    victim.wait()
    for s in (tcp, unix, abstract, udp):
        s.close()


def assert_nothing_escaped(world, result):
    seen = f"{result.output}\n{result.value}\n{result.error}"
    assert SECRET not in seen and FILE_SECRET not in seen
    assert (world["dir"] / "victim.txt").read_text() == "intact"
    assert (world["dir"] / "victim.txt").stat().st_mode & 0o777 != 0o777
    assert sorted(p.name for p in world["dir"].iterdir()) == ["secret.txt", "unix.sock", "victim.txt"]
    for listener in world["listeners"]:
        with pytest.raises(BlockingIOError):
            listener.accept()
    with pytest.raises(BlockingIOError):
        world["udp"].recv(10)
    assert world["victim"].poll() is None, "a process outside the sandbox was killed"
    assert sandbox_processes() == []


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("capability", sorted(CAPABILITIES))
def test_the_os_wall_alone_holds(capability, config, world):
    if config not in SYSCALL_LEVEL and capability in ONLY_WITH_SECCOMP:
        pytest.skip("a system call the namespaces leave harmless rather than refuse")
    code = PRELUDE + CAPABILITIES[capability].format(**world["values"])
    result = run_python(code, LIMITS, restricted=False, disable=CONFIGS[config])
    active = {layer["name"] for layer in result.layers if layer["active"]}
    assert "seccomp" in active if config in SYSCALL_LEVEL else "seccomp" not in active
    assert result.ok, result.error  # the program ran, and reported what it could not do
    assert result.value is not None and "refused" in result.value, result.value
    if config in SYSCALL_LEVEL:  # refused by the filter itself, not by something further in
        assert any(reason in result.value for reason in SECCOMP_REFUSALS), result.value
    assert_nothing_escaped(world, result)


def test_a_program_that_sleeps_forever_is_killed_with_its_tree(world):
    started = time.monotonic()
    result = run_python("time.sleep(1000)", PythonToolSettings(timeout_s=1, cpu_s=5), restricted=False)
    assert not result.ok and "timed out" in result.error
    assert time.monotonic() - started < 4
    assert_nothing_escaped(world, result)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch the privilege drop off")
@pytest.mark.parametrize("ending", ["normal", "timeout"])
def test_without_seccomp_or_pid_namespace_a_double_forked_child_is_still_killed(world, ending):
    """The degraded case where fork works: the supervisor, a subreaper, kills what the program left behind."""
    code = (
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.write(w, str(os.getpid()).encode())\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "escaped = int(os.read(r, 20))\n" + ("time.sleep(60)\n" if ending == "timeout" else "") + "escaped"
    )
    settings = PythonToolSettings(timeout_s=3, cpu_s=5)
    result = run_python(code, settings, restricted=False, disable=frozenset({"seccomp", "namespaces", "privileges"}))
    if ending == "normal":
        assert result.ok, result.error
        escaped = int(result.value)
        assert escaped != os.getpid()
        assert not Path(f"/proc/{escaped}").exists() or "Z" in Path(f"/proc/{escaped}/stat").read_text()
    else:
        assert "timed out" in result.error
    assert sandbox_processes() == []


def test_the_program_cannot_forge_the_result_without_reading_memory(world):
    """It writes result-shaped lines to every fd it has and leaves at once: the parent is not fooled."""
    forged = '{"kind": "result", "ok": true, "output": "", "value": "FORGED", "error": null, "layers": []}'
    code = (
        f"line = {forged!r}\n"
        "for fd in range(0, 64):\n"
        "    for text in (line, 'x ' + line):\n"
        "        try:\n"
        "            os.write(fd, (text + '\\n').encode())\n"
        "        except OSError:\n"
        "            pass\n"
        "os._exit(0)"
    )
    result = run_python(code, LIMITS, restricted=False)
    assert not result.ok
    assert "FORGED" not in f"{result.value}{result.output}"
    assert "forged line" in result.error and "without a result" in result.error


def test_layers_are_reported_and_all_active_here():
    found = {layer["name"]: layer for layer in layers()}
    for name in ("RestrictedPython", "namespaces", "parent-death signal", "rlimits", "filesystem", "privileges",
                 "no_new_privs", "seccomp"):  # fmt: skip
        assert found[name]["active"], found[name]
    assert layers() == layers()  # cached


NOBODY_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from vision_agent.tooling.sandbox.runner import run_child
probe = run_child({"probe": True, "cpu_s": 5, "memory_bytes": 1 << 30, "max_output_chars": 100}, b"", 30, None,
                  1 << 20, executable=sys.executable)
request = {"code": sys.argv[2], "restricted": False, "cpu_s": 5, "memory_bytes": 1 << 30, "max_output_chars": 1000,
           "width": 0, "height": 0, "image_bytes": 0}
run = run_child(request, b"", 30, None, 1 << 20, executable=sys.executable)
bare = run_child({**request, "disabled": ["namespaces"]}, b"", 30, None, 1 << 20, executable=sys.executable)
print(json.dumps({"uid": os.getuid(), "probe": probe.result, "run": run.result, "bare": bare.result}))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK), reason="needs root and a system python"
)
def test_as_a_normal_user_the_wall_uses_a_user_namespace(tmp_path):
    """What an ordinary user gets: run the parent side as uid 65534 with the system interpreter."""
    import json
    import shutil
    import tempfile

    shared = Path(tempfile.mkdtemp())
    shared.chmod(0o755)
    (shared / "readable.txt").write_text(FILE_SECRET)
    (shared / "readable.txt").chmod(0o644)
    # A copy of the package the other user can read: the checkout may sit in a directory only root can enter.
    repo = shared / "repo"
    shutil.copytree(Path(__file__).resolve().parents[2] / "vision_agent", repo / "vision_agent",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for path in [repo, *repo.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    code = PRELUDE + f"attempt(lambda: print(open('{shared}/readable.txt').read()))"
    try:
        done = subprocess.run(["/usr/bin/python3", "-c", NOBODY_SCRIPT, str(repo), code], user=65534, group=65534,
                              extra_groups=[], capture_output=True, text=True, timeout=60, cwd="/")  # fmt: skip
    finally:
        shutil.rmtree(shared)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["uid"] == 65534
    probed = {layer["name"]: layer for layer in report["probe"]["layers"]}
    assert probed["seccomp"]["active"] and probed["no_new_privs"]["active"], probed
    assert probed["privileges"]["detail"].startswith("not root")
    if probed["namespaces"]["active"]:
        assert "user" in probed["namespaces"]["detail"] and probed["filesystem"]["active"]
    assert report["run"]["ok"] and "refused" in report["run"]["value"], report["run"]
    # where user namespaces are refused (Ubuntu's AppArmor restriction, hardened kernels): no chroot either,
    # and seccomp alone still holds
    bare = {layer["name"]: layer for layer in report["bare"]["layers"]}
    assert not bare["filesystem"]["active"] and bare["seccomp"]["active"], bare
    assert report["bare"]["ok"] and "Operation not permitted" in report["bare"]["value"], report["bare"]
    assert FILE_SECRET not in json.dumps(report)


def test_the_wall_switches_are_not_reachable_from_settings_or_code():
    import inspect

    from vision_agent.config import PythonToolSettings as Settings

    assert not {"restricted", "disable"} & set(Settings.model_fields)
    source = inspect.getsource(__import__("tools.python", fromlist=["python"]))
    assert "restricted" not in source and "disable" not in source


@pytest.mark.parametrize("off", ["seccomp", "namespaces", "chroot"])
def test_a_missing_layer_is_reported_and_the_rest_still_runs(off):
    result = run_python("import numpy as np\nint(np.arange(4).sum())", LIMITS, disable=frozenset({off}))
    assert result.ok and result.value == "6", result.error
    state = {layer["name"]: layer for layer in result.layers}
    name = "filesystem" if off == "chroot" else off
    assert not state[name]["active"] and state[name]["detail"] == "switched off"
    assert all(layer["active"] for n, layer in state.items() if n != name), state
