"""The OS wall: kernel layers that hold without RestrictedPython. Imported only by the sandbox child.

Standard library and ctypes only (the child must not import vision_agent). Every step records what it did in a
`Report`; a step the platform lacks is reported as inactive and the sandbox runs with the layers it has.

In the order the child applies them:
- supervisor, before forking the process that runs the program: namespaces (pid, net, ipc, mount, uts; plus
  a user namespace when not root). The program's process is pid 1 of its own pid namespace, so when it dies
  the kernel kills everything it could have started; no network devices; nothing shared.
- the program's process, after its imports and before the program: every fd closed but the three pipes to
  the parent; rlimits; chroot into the empty temporary directory; privileges dropped (root becomes
  65534 with no groups; all capabilities cleared); not dumpable; no_new_privs; then a seccomp-BPF
  allow-list that fails every other system call with EPERM (no open, socket, fork/clone, exec, kill of
  another process, ptrace, unlink, rename, mkdir, ...). The filter cannot be removed afterwards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import resource
import signal
import sys
import time

NOBODY = 65534
LINUX = sys.platform.startswith("linux")

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
PR_GET_NO_NEW_PRIVS = 39
PROT_EXEC = 0x4

# What a running CPython and numpy need once everything is imported; the rest fails with EPERM.
# No fstat/newfstatat/statx: with a path they would reveal files outside (and nothing here needs them).
SECCOMP_ALLOW = (
    "read write readv writev close "  # on the fds already open: the three pipes to the parent
    "brk munmap mremap madvise futex sched_yield "
    "clock_gettime clock_getres gettimeofday time nanosleep clock_nanosleep getrandom "
    "rt_sigreturn rt_sigaction rt_sigprocmask sigaltstack restart_syscall "
    "getpid gettid exit exit_group"
).split()
SECCOMP_NO_EXEC = ("mmap", "mprotect")  # allowed unless PROT_EXEC is asked for: no new machine code
SECCOMP_SELF_ONLY = ("kill", "tkill", "tgkill")  # signals to itself only (abort(), raise())

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ, SCMP_CMP_MASKED_EQ = 4, 7


def SCMP_ACT_ERRNO(code: int) -> int:  # noqa: N802 (libseccomp's name)
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


class Report:
    """Which layers are on, in order, with a short detail each."""

    def __init__(self):
        self.layers: dict[str, tuple[bool, str]] = {}

    def set(self, name: str, active: bool, detail: str) -> None:
        self.layers[name] = (bool(active), detail)

    def active(self, name: str) -> bool:
        return self.layers.get(name, (False, ""))[0]

    def as_list(self) -> list[dict]:
        return [{"name": n, "active": a, "detail": d} for n, (a, d) in self.layers.items()]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _why(code: int | None) -> str:
    return f"{errno.errorcode.get(code, code)}" if code else "failed"


# -- the supervisor ------------------------------------------------------------------------------------


def set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send `signum` when the parent (thread) that started us ends."""
    if not LINUX:
        return False
    return _libc().prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signum), 0, 0, 0) == 0


def become_subreaper() -> None:
    """Orphans of our descendants come to us, so that we can kill them (when there is no pid namespace)."""
    if LINUX:
        _libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def enter_namespaces(report: Report, disabled: set[str]) -> bool:
    """Unshare before forking the program's process, which becomes pid 1 of a new pid namespace.

    As root the namespaces need no user namespace (and one would not make root less powerful: its ids map
    to real root); root's privileges are dropped to 65534 later. Anyone else needs a user namespace first;
    where unprivileged user namespaces are refused (some distributions, containers), nothing is unshared.
    """
    if not LINUX:
        report.set("namespaces", False, "unavailable (not Linux)")
        return False
    if "namespaces" in disabled:
        report.set("namespaces", False, "switched off")
        return False
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWNS | CLONE_NEWUTS
    if uid != 0:
        flags |= CLONE_NEWUSER
    libc = _libc()
    if libc.unshare(ctypes.c_int(flags)) != 0:
        report.set("namespaces", False, f"unavailable ({_why(ctypes.get_errno())})")
        return False
    if uid != 0:
        try:  # the same ids inside: the process stays who it was, with no capability outside
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
        except OSError as exc:
            report.set("namespaces", False, f"user namespace without an id map ({_why(exc.errno)})")
            return False
    report.set("namespaces", True, "pid, net, ipc, mount, uts" + (", user" if uid != 0 else ""))
    return True


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def kill_descendants() -> None:
    """SIGKILL every process below us (a subreaper inherits orphans), until none is left."""
    if not LINUX:
        return
    me = os.getpid()
    for _ in range(200):
        _reap()
        children = _children(me)
        if not children:
            return
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.002)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _children(parent: int) -> list[int]:
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent and fields[0] != b"Z":
            found.append(int(entry))
    return found


# -- the program's process ---------------------------------------------------------------------------


def set_budget(limits: dict) -> None:
    """CPU seconds, and address space for parsing and compiling the program (a few MB of hostile source make GBs of
    syntax tree): the memory budget on top of what the imports already hold. `lock_down` then sets the limits of
    the run."""
    cpu, memory = limits["cpu_s"], limits["memory_bytes"]
    try:
        with open("/proc/self/statm") as f:
            memory += int(f.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        pass
    for kind, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, memory)):
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):
            pass  # reported by lock_down, which sets them again


def lock_down(report: Report, keep_fds: tuple[int, ...], limits: dict, disabled: set[str]) -> None:
    """Everything after the imports and before the program, in an order where each step can still run."""
    if LINUX and "seccomp" not in disabled:
        _load_libseccomp()  # while its file can be opened; the loader keeps it
    _close_fds(keep_fds)
    _set_rlimits(report, limits)
    _chroot(report, disabled)
    if "privileges" in disabled:  # tests of the process-tree kill only
        report.set("privileges", False, "switched off")
    else:
        _drop_privileges(report)
    if LINUX:
        libc = _libc()
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no ptrace of us, /proc/<pid> owned by root
        ok = libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 and libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1
        report.set("no_new_privs", ok, "set" if ok else f"refused ({_why(ctypes.get_errno())})")
    else:
        report.set("no_new_privs", False, "unavailable (not Linux)")
    _install_seccomp(report, disabled)


def _close_fds(keep: tuple[int, ...]) -> None:
    try:
        open_fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd" if LINUX else "/dev/fd"))
    except OSError:
        open_fds = list(range(256))
    for fd in open_fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _set_rlimits(report: Report, limits: dict) -> None:
    cpu, memory = limits["cpu_s"], limits["memory_bytes"]
    wanted = [
        # soft == hard: the kernel sends SIGKILL at the limit (pid 1 of a namespace ignores SIGXCPU)
        ("CPU", resource.RLIMIT_CPU, (cpu, cpu)),
        ("FSIZE", resource.RLIMIT_FSIZE, (0, 0)),  # no file grows
        ("CORE", resource.RLIMIT_CORE, (0, 0)),
        ("NPROC", resource.RLIMIT_NPROC, (0, 0)),  # no new process or thread (not for root: see privileges)
        ("AS", resource.RLIMIT_AS, (memory, memory)),  # not enforced on macOS
    ]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    missing = []
    for label, kind, value in wanted:
        try:
            resource.setrlimit(kind, value)
        except (ValueError, OSError):
            missing.append(label)
    try:  # no new file descriptors: what is open now is all there is
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd" if LINUX else "/dev/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, highest + 1))
    except (ValueError, OSError):
        missing.append("NOFILE")
    detail = "CPU seconds, address space, no file growth, no new fds or processes (NPROC binds once not root)"
    report.set("rlimits", not missing, detail + (f" (not set: {', '.join(missing)})" if missing else ""))


def _chroot(report: Report, disabled: set[str]) -> None:
    """The empty temporary directory (the working directory) becomes `/`: no other file has a name."""
    if "chroot" in disabled:
        report.set("filesystem", False, "switched off")
        return
    try:
        os.chroot(".")
        os.chdir("/")
    except (OSError, AttributeError) as exc:
        report.set("filesystem", False, f"chroot unavailable ({_why(getattr(exc, 'errno', 0))})")
        return
    report.set("filesystem", True, "chroot into the empty temporary directory")


def _drop_privileges(report: Report) -> None:
    """Root becomes 65534 with no groups; then no capability is left (in our own user namespace too)."""
    detail = "not root"
    if os.geteuid() == 0:
        try:
            os.setgroups([])
            if hasattr(os, "setresuid"):
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)
            else:  # macOS
                os.setgid(NOBODY)
                os.setuid(NOBODY)
        except OSError as exc:
            report.set("privileges", False, f"still root ({_why(exc.errno)})")
            return
        detail = f"root dropped to uid/gid {NOBODY}, no groups"
    if LINUX and not _clear_capabilities():
        report.set("privileges", False, f"{detail}; capabilities not cleared ({_why(ctypes.get_errno())})")
        return
    ids = os.getresuid() if hasattr(os, "getresuid") else (os.getuid(), os.geteuid())
    report.set("privileges", 0 not in ids, detail + ("; no capabilities" if LINUX else ""))


def _clear_capabilities() -> bool:
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()
    return _libc().capset(ctypes.byref(header), data) == 0


def _load_libseccomp():
    """Loaded before the chroot (it is a file); `find_library` runs ldconfig, so only as a fallback."""
    try:
        return ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        pass
    name = ctypes.util.find_library("seccomp")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None


def _install_seccomp(report: Report, disabled: set[str]) -> None:
    if not LINUX:
        report.set("seccomp", False, "unavailable (not Linux)")
        return
    if "seccomp" in disabled:
        report.set("seccomp", False, "switched off")
        return
    lib = _load_libseccomp()
    if lib is None:
        report.set("seccomp", False, "unavailable (libseccomp not found)")
        return
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]  # fmt: skip
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ERRNO(errno.EPERM))
    if not ctx:
        report.set("seccomp", False, "unavailable (seccomp_init failed)")
        return
    me = os.getpid()
    rules: list[tuple[str, _ArgCmp | None]] = [(n, None) for n in SECCOMP_ALLOW]
    rules += [(n, _ArgCmp(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)) for n in SECCOMP_NO_EXEC]
    rules += [(n, _ArgCmp(0, SCMP_CMP_EQ, me, 0)) for n in SECCOMP_SELF_ONLY]
    try:
        for syscall, condition in rules:
            number = lib.seccomp_syscall_resolve_name(syscall.encode())
            if number < 0:
                continue  # not on this architecture
            args = ctypes.byref(condition) if condition is not None else None
            if lib.seccomp_rule_add_array(ctypes.c_void_p(ctx), SCMP_ACT_ALLOW, number, 1 if condition else 0, args):
                report.set("seccomp", False, f"unavailable (rule for {syscall} refused)")
                return
        code = lib.seccomp_load(ctypes.c_void_p(ctx))
    finally:
        lib.seccomp_release(ctypes.c_void_p(ctx))
    if code != 0:
        report.set("seccomp", False, f"unavailable ({_why(-code)})")
        return
    report.set("seccomp", True, "allow-list; everything else fails with EPERM")
