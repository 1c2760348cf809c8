"""Red team: hostile programs of kinds the other sandbox tests do not try, each refused or contained.

Found and fixed while writing these (each family below names its finding):
- `@functools.wraps(str)` copied the class dict of `str` onto a function, so `f.format('{0.__globals__[sys]}', …)`
  walked into `sys` (and `@wraps(np.generic)` handed over `dump`/`dumps`); `functools.lru_cache(str)` did the same
  through the real `update_wrapper`. The replacement copies `__dict__` only from the program's own functions, and
  every value read by attribute or subscript is checked whatever holds it.
- a 6 MB program made the child compile for 15 s in 2.8 GB before any rlimit was set: the CPU and memory budget now
  starts before parsing, and a program over 100,000 characters is refused by the parent.
- a program that reads its own memory (the OS-wall tests hand it `sys`) could crash the parent with a result frame
  nested 5,000 deep (RecursionError) or with `"layers": 5` (TypeError): exit 1 from the app.
- benign programs lost what functions print, failed on `print(..., flush=True)`, on `date.strftime` and on `next`.
"""

from __future__ import annotations

import errno
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass

import pytest

from tests.helpers import image_part
from vision_agent.config import PythonToolSettings
from vision_agent.tooling.sandbox import MAX_CODE_CHARS, os_wall_active, run_python
from vision_agent.tooling.sandbox.runner import CHILD

LIMITS = PythonToolSettings(timeout_s=15, cpu_s=2, memory_mb=512, max_output_chars=5000)
LEAKS = ("__builtins__", "<module '", "built-in function open", "posix", "s3cret", "/proc/", "<frame", "<code ",
         "numpy._core", "\\x80\\x02c")  # fmt: skip
LINUX = sys.platform.startswith("linux")
WALL = LINUX and os_wall_active()


@dataclass
class Hostile:
    code: str
    error: str | None = None  # a regex the error must match (then the run must have failed)
    absent: tuple[str, ...] = LEAKS  # texts that must not come back
    value: str | None = None  # the exact value, where the program is contained rather than refused


# -- finding 1: helpers that copy attributes hand over what the guards refuse on its owner -------------------

ATTRIBUTE_COPYING = {
    "wraps_str_class_dict_format": Hostile(
        "import functools, statistics\n@functools.wraps(str)\ndef f(): pass\n"
        "f.format('{0.__globals__[sys]}', statistics.mean)",
        error="has no attribute 'format'",
    ),
    "wraps_str_subclass_format_map": Hostile(
        "import functools\nclass S(str):\n    pass\n@functools.wraps(S.mro()[1])\ndef f(): pass\n"
        "f.format_map('{x.__class__.__mro__}', {'x': 1})",
        error="has no attribute 'format_map'",
    ),
    "wraps_numpy_generic_dumps": Hostile(
        "import numpy as np, functools\n@functools.wraps(np.float64.mro()[4])\ndef f(): pass\nf.dumps(np.float64(1))",
        error="has no attribute 'dumps'",
    ),
    "wraps_numpy_generic_tofile": Hostile(
        "import numpy as np, functools\n@functools.wraps(image.dtype.type.mro()[4])\ndef f(): pass\n"
        "f.tofile(np.uint8(1), 'pwned')",
        error="has no attribute 'tofile'",
    ),
    "wraps_library_instance_dict": Hostile(
        "import functools, json\n@functools.wraps(json.JSONDecoder())\ndef f(): pass\nf.scan_once",
        error="has no attribute 'scan_once'",
    ),
    "update_wrapper_type_mro_dict": Hostile(
        "import functools\ndef f(): pass\nfunctools.update_wrapper(f, int.mro()[-1])\nf.mro",
        error="has no attribute 'mro'",
    ),
    # the real update_wrapper, called by lru_cache on whatever callable it is given: closed by the value check
    "lru_cache_copies_the_str_class_dict": Hostile(
        "import functools\nf = functools.lru_cache(str)\nf.format('{0.__class__.__mro__}', 1)",
        error="format methods of str are not available",
    ),
    "cache_copies_the_numpy_generic_dict": Hostile(
        "import functools, numpy as np\nf = functools.cache(np.float64.mro()[4])\nf.dumps(np.float64(1))",
        error="'dumps' is not available",
    ),
    "bound_getitem_of_library_dict": Hostile(
        "import json\njson.JSONDecoder().parse_constant('NaN')", error="'__getitem__' is not available"
    ),
}

# -- str formatting reached through another holder or a lying str subclass ----------------------------------

FORMATTERS = {
    "str_subclass_lying_startswith": Hostile(
        "class S(str):\n    def startswith(self, prefix):\n        return False\nS('{0.__class__}').format(1)",
        error="format",
    ),
    "sorted_key_str_format": Hostile("sorted(['{0.__class__}'], key=str.format)", error="format"),
    "bound_format_map_in_list": Hostile("fs = ['{x.__class__}'.format_map]\nfs[0]({'x': 1})", error="format"),
    "partial_of_format": Hostile("import functools\nfunctools.partial(str.format, '{0.__class__}')(1)", error="format"),
    "percent_format_mapping_dunder_key": Hostile(
        "class D(dict):\n    pass\n'%(__class__)s %(x)s' % D(__class__=1, x=2)", value="'1 2'"
    ),
}

# -- internals reached through exceptions, async generators, descriptors, ABCs --------------------------------

INTERNALS = {
    "attribute_error_obj_of_view": Hostile(
        "import math\ntry:\n    math.nothing\nexcept AttributeError as e:\n    r = (e.obj, e.name)\nr",
        value="(<module math>, 'nothing')",
    ),
    "async_genexp_frame": Hostile("def f():\n    return (x async for x in [])\nf().ag_frame", error="ag_frame"),
    "async_genexp_driven_by_asend": Hostile(
        "def f():\n    return (x async for x in [])\nf().asend(None).send(None)", error="TypeError|StopIteration"
    ),
    "exception_cause_chain": Hostile(
        "try:\n    raise ValueError(1) from KeyError(2)\nexcept ValueError as e:\n    e.__cause__",
        error='"__cause__" is an invalid',
    ),
    "cached_property_subclass_underscore_attrname": Hostile(
        "import functools\nclass C(functools.cached_property):\n    pass\ndef f(self):\n    return 1\nc = C(f)\n"
        "class A:\n    x = c\nc.attrname = '__class__'\na = A()\n[a.x, a.x]",
        value="[1, 1]",
    ),
    "abc_register_on_numbers_rational": Hostile(
        "import fractions\nR = fractions.Fraction.mro()[1]\nclass N:\n    numerator = 1\n    denominator = 0\n"
        "R.register(N)\nfractions.Fraction(N())",
    ),
    "class_keyword_expansion_metaclass": Hostile(
        "class A(**{'metaclass': len}):\n    pass\nA.mro()[0] is A", value="True"
    ),
    "generic_alias_base_class": Hostile(
        "import collections\nclass D(collections.deque[int]):\n    pass\nD([1]).maxlen is None", value="True"
    ),
    "defaultdict_factory_write": Hostile(
        "import collections\nd = collections.defaultdict(list)\nd.default_factory = len", error="cannot set attributes"
    ),
    "import_of_a_loaded_module": Hostile("import time\ntime.sleep", error="not allowed"),
    "from_import_of_a_loaded_module": Hostile("from ctypes import CDLL", error="not allowed"),
    "lambda_default_module_view": Hostile("(lambda m=math: (m, m.sqrt(4)))()", value="(<module math>, 2.0)"),
}

# -- module views handed to library code that introspects what it is given ------------------------------------

VIEWS_IN_LIBRARY_CODE = {
    "numpy_asarray_probes_array_interface": Hostile(
        "import numpy as np, math\nnp.asarray(math).tolist()", value="<module math>"
    ),
    "userdict_data_is_a_view": Hostile(
        "import collections, json\nclass U(collections.UserDict):\n    pass\nu = U()\nu.data = json\nu['dumps']",
        error="TypeError",
    ),
    "chainmap_over_a_view": Hostile("import collections, math\ncollections.ChainMap(math)['pi']", error="TypeError"),
    "shuffle_a_view": Hostile("import random, math\nrandom.shuffle(math)", error="TypeError"),
    "json_default_sees_a_view": Hostile(
        "import json, math\nseen = []\njson.dumps(math, default=lambda o: seen.append(o) or 'x')\nseen",
        value="[<module math>]",
    ),
    "exception_carries_a_view": Hostile(
        "import math\ntry:\n    raise ValueError(math)\nexcept ValueError as e:\n    r = e.args[0].sqrt(9)\nr",
        value="3.0",
    ),
    "print_to_a_program_object_with_a_bound_write": Hostile(
        "out = []\nclass F:\n    pass\nf = F()\nf.write = out.append\nprint('x', file=f)\nout", value="['x', '\\n']"
    ),
    "image_flat_shuffled_in_place": Hostile("import random\nrandom.shuffle(image.flat)", error="read-only"),
}

# -- output and the final value --------------------------------------------------------------------------------

OUTPUT = {
    "print_flood_inside_a_function": Hostile(
        "def f():\n    while True:\n        print('x' * 1000)\nf()", error="output limit"
    ),
    "output_limit_caught_and_ignored": Hostile(
        "for i in range(100):\n    try:\n        print('y' * 10**6)\n    except Exception:\n        pass\n'done'",
        value="'done'",
        absent=("y" * 6000,),
    ),
    "printed_name_bomb": Hostile(
        "print('a' * 1000)\nprinted * 10**6", error="MemoryError|CPU time limit|cannot be shown"
    ),
    "final_value_deque_recursion": Hostile(
        "import collections\nx = collections.deque()\nfor i in range(100000):\n    x = collections.deque([x])\nx",
        error="cannot be shown|RecursionError",
    ),
    "final_value_int_too_long": Hostile("10 ** 5000", error="cannot be shown: ValueError"),
    "terminal_escapes_and_surrogates_in_error": Hostile(
        "raise ValueError('\\x1b]52;c;aGk=\\x07' + chr(0xdc80) + 'z' * 10**6)", error="ValueError"
    ),
    "surrogate_in_source": Hostile("x = '\ud800'\nx", error="SyntaxError"),
    "nested_map_overflows_the_c_stack": Hostile(
        "x = [1]\nfor i in range(10**6):\n    x = map(abs, x)\nlist(x)", error="SIGSEGV|RecursionError|CPU time"
    ),
}

# -- finding 2: work before the budget ------------------------------------------------------------------------

BUDGET = {
    "six_megabyte_program": Hostile("x = [" + "1," * 3_000_000 + "]\nlen(x)", error="too long"),
    "decimal_ln_at_huge_precision": Hostile(
        "import decimal\ndecimal.Context(prec=10**6).ln(decimal.Decimal(2))", error="CPU time limit|timed out"
    ),
    "strftime_million_fields": Hostile(
        "import datetime\nlen(datetime.date(2020, 1, 1).strftime('%Y' * 10**6))", value="4000000"
    ),
}

FAMILIES = {
    "attribute_copying": ATTRIBUTE_COPYING,
    "formatters": FORMATTERS,
    "internals": INTERNALS,
    "views_in_library_code": VIEWS_IN_LIBRARY_CODE,
    "output": OUTPUT,
    "budget": BUDGET,
}
CASES = [(family, name) for family, cases in FAMILIES.items() for name in sorted(cases)]


@pytest.fixture(scope="module")
def image():
    return image_part(size=(32, 24), color=(10, 200, 30), source="t")


def check(case: Hostile, image, tmp_path, monkeypatch, limits=LIMITS, **options):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISION_AGENT_TEST_SECRET", "s3cret")
    before = dict(os.environ)
    started = time.monotonic()
    result = run_python(case.code, limits, image=image, **options)
    seen = f"{result.output}\n{result.value}\n{result.error}"
    if case.error is not None:
        assert not result.ok, result
        assert re.search(case.error, result.error or ""), result.error
    if case.value is not None:
        assert result.ok and result.value == case.value, result
    for text in (*case.absent, "s3cret"):
        assert text not in seen, seen[:500]
    seen.encode("utf-8")  # no lone surrogate reaches the app
    assert len(seen) < 3 * limits.max_output_chars + 5000
    assert time.monotonic() - started < limits.timeout_s + 3
    assert list(tmp_path.iterdir()) == []
    assert math.pi == 3.141592653589793
    assert dict(os.environ) == before
    return result


@pytest.mark.parametrize(("family", "name"), CASES, ids=[f"{f}:{n}" for f, n in CASES])
def test_hostile_program(family, name, image, tmp_path, monkeypatch):
    check(FAMILIES[family][name], image, tmp_path, monkeypatch)


def test_a_huge_program_is_refused_by_the_parent_at_once(image, tmp_path, monkeypatch):
    started = time.monotonic()
    result = check(BUDGET["six_megabyte_program"], image, tmp_path, monkeypatch)
    assert time.monotonic() - started < 1 and result.layers == []  # no child was started
    assert run_python("x = 1\n" * (MAX_CODE_CHARS // 6 - 1) + "x", LIMITS).ok  # just under the cap still runs


def test_compiling_is_inside_the_memory_budget(image, tmp_path, monkeypatch):
    """A program under the size cap whose syntax tree (~60 MB) outgrows the budget: refused, not compiled outside
    it. (A budget below the settings' floor, so that compiling is what exceeds it.)"""
    small = PythonToolSettings.model_construct(timeout_s=15, cpu_s=2, memory_mb=16, max_output_chars=1000)
    case = Hostile("\n".join(["a=b"] * 24_000), error="MemoryError")
    check(case, None, tmp_path, monkeypatch, limits=small)


# -- what the fixes must keep working ----------------------------------------------------------------------------

BENIGN = {
    "print_inside_functions_is_kept": ("def f(x):\n    print('in f', x)\nf(1)\nprint('top')", "in f 1\ntop\n", None),
    "printed_sees_every_scope": ("def f():\n    print('a')\nf()\nprinted", "a\n", "'a\\n'"),
    "print_flush_and_sep": ("print('a', 'b', sep='-', end='!', flush=True)", "a-b!", None),
    "strftime": ("import datetime\ndatetime.date(2024, 5, 17).strftime('%Y-%m-%d %A')", "", "'2024-05-17 Friday'"),
    "next_iter_bin": (
        "it = iter([1, 2])\n(next(it), next(it, 'end'), next(it, 'end'), bin(5))",
        "",
        "(1, 2, 'end', '0b101')",
    ),  # fmt: skip
    "wraps_of_a_program_function": (
        "import functools\ndef deco(f):\n    @functools.wraps(f)\n    def g(*a):\n        return f(*a)\n    return g\n"
        "@deco\ndef area(w, h):\n    '''w times h'''\n    return w * h\narea(2, 3)",
        "",
        "6",
    ),
    "bound_methods_of_str_other_than_format": ("list(map(str.upper, ['a'])) + ['x'.join('ab')]", "", "['A', 'axb']"),
    "numpy_methods_other_than_the_denied": (
        "import numpy as np\na = np.arange(6).reshape(2, 3)\n(a.sum(), a.tolist(), a.T.shape, a.dtype.name)",
        "",
        "(np.int64(15), [[0, 1, 2], [3, 4, 5]], (3, 2), 'int64')",
    ),
}


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_benign_programs_still_work(name, image):
    code, output, value = BENIGN[name]
    result = run_python(code, LIMITS, image=image)
    assert result.ok, result.error
    assert result.output == output
    if value is not None:
        assert result.value == value


def test_the_value_guard_in_the_child():
    """`refusal` sees what the names never show: internals, the real modules and their namespaces, str's format
    methods and numpy's file and memory methods, whatever holds them."""
    import builtins
    import importlib.util
    import json
    import types

    import numpy as np

    spec = importlib.util.spec_from_file_location("py_wall_under_test", CHILD.with_name("py_wall.py"))
    py_wall = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(py_wall)
    refused = [json, sys._getframe(), (lambda: 0).__code__, json.__dict__, builtins.__dict__, str.format,
               "x".format_map, open, getattr, type, np.ndarray.tofile, np.generic.dumps, np.zeros(1).dump,
               object.__getattribute__, {}.__getitem__, types.FunctionType.__dict__["__globals__"]]  # fmt: skip
    for value in refused:
        assert py_wall.refusal(value, np), value
    allowed = [1, "x", [json], {"__name__": "json"}, str.upper, "x".join, np.zeros(1).sum, math.sqrt, len, format]
    for value in allowed:
        assert py_wall.refusal(value, np) is None, value


# -- the OS wall: system calls a filter could forget (RestrictedPython off, `ctypes` handed over) ----------------

SYSCALL = """
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
buf = ctypes.create_string_buffer(4096)
ctypes.set_errno(0)
r = libc.syscall({nr}, {args})
(r, ctypes.get_errno())
"""
# x86_64 numbers: each would reach outside, hide from the supervisor, or widen what the program can do.
SYSCALLS = {
    "io_uring_setup": (425, "8, buf"),
    "userfaultfd": (323, "0"),
    "memfd_create": (319, "b'x', 0"),
    "execveat_memfd": (322, "1, b'', 0, 0, 0x1000"),
    "process_vm_readv_parent": (310, "{ppid}, buf, 1, buf, 1, 0"),
    "pidfd_open_parent": (434, "{ppid}, 0"),
    "pidfd_getfd": (438, "0, 1, 0"),
    "perf_event_open": (298, "buf, 0, -1, -1, 0"),
    "bpf": (321, "0, buf, 64"),
    "keyctl": (250, "0, 0, 0, 0, 0"),
    "add_key": (248, "b'user', b'k', b'v', 1, -2"),
    "name_to_handle_at": (303, "-100, b'/', buf, buf, 0"),
    "open_by_handle_at": (304, "1, buf, 0"),
    "openat2": (437, "-100, b'/etc/passwd', buf, 24"),
    "splice_to_result_pipe": (275, "1, 0, 2, 0, 10, 0"),
    "tee": (276, "1, 2, 10, 0"),
    "vmsplice": (278, "1, buf, 1, 0"),
    "sendfile": (40, "1, 2, 0, 10"),
    "timerfd_create": (283, "1, 0"),
    "eventfd2": (290, "0, 0"),
    "signalfd4": (289, "-1, buf, 8, 0"),
    "inotify_init1": (294, "0"),
    "fanotify_init": (300, "0, 0"),
    "seccomp_loosen": (317, "1, 0, buf"),
    "prctl_drop_death_signal": (157, "1, 0, 0, 0, 0"),
    "personality_read_implies_exec": (135, "0x0400000"),
    "ioctl_tiocsti": (16, "2, 0x5412, buf"),
    "mprotect_exec": (10, "ctypes.addressof(buf) & ~4095, 4096, 7"),
    "clone3": (435, "buf, 88"),
    "clone": (56, "17, 0, 0, 0, 0"),
    "vfork": (58, ""),
    "rseq": (334, "buf, 32, 0, 0"),
    "mlockall": (151, "3"),
    "sched_setaffinity": (203, "0, 8, buf"),
    "setpriority": (141, "0, 0, -20"),
    "setpgid": (109, "0, 0"),
    "setsid": (112, ""),
    "setns": (308, "1, 0"),
    "kill_pid_zero": (62, "0, 9"),
    "kill_everyone": (62, "-1, 9"),
    "ptrace_traceme": (101, "0, 0, 0, 0"),
    "dup": (32, "1"),
    "fcntl_dupfd": (72, "1, 0, 10"),
    "fchdir": (81, "1"),
    "chroot_again": (161, "b'/'"),
    "pipe2": (293, "buf, 0"),
    "socket": (41, "2, 1, 0"),
    "mount_tmpfs": (165, "b'none', b'/', b'tmpfs', 0, 0"),
    "kcmp": (312, "1, 1, 0, 0, 0"),
    "modify_ldt": (154, "0, buf, 16"),
    "iopl": (172, "3"),
    "mincore_side_channel": (27, "ctypes.addressof(buf) & ~4095, 4096, buf"),
    "getcwd": (79, "buf, 4096"),
    "uname": (63, "buf"),
    "sysinfo": (99, "buf"),
    "futex_waitv": (449, "buf, 0, 0, 0, 0"),
    "move_pages": (279, "0, 0, 0, 0, 0, 0"),
}
SYSCALL_CONFIGS = {"full": frozenset(), "seccomp alone": frozenset({"namespaces", "chroot"})}
ON_X86_64 = platform.machine() == "x86_64"


@pytest.mark.skipif(not (WALL and ON_X86_64), reason="the OS wall is not active here, or not x86_64 numbers")
@pytest.mark.parametrize("config", sorted(SYSCALL_CONFIGS))
@pytest.mark.parametrize("call", sorted(SYSCALLS))
def test_the_filter_refuses(call, config, tmp_path):
    number, args = SYSCALLS[call]
    code = SYSCALL.format(nr=number, args=args.format(ppid=os.getpid()))
    result = run_python(code, LIMITS, restricted=False, disable=SYSCALL_CONFIGS[config])
    assert result.ok, result.error
    assert result.value == f"(-1, {errno.EPERM})", result.value
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not (WALL and ON_X86_64), reason="the OS wall is not active here, or not x86_64 numbers")
@pytest.mark.parametrize("nr", [2, 257, 39], ids=["x32 open", "x32 openat", "x32 getpid"])
def test_the_x32_abi_is_not_a_way_around_the_filter(nr):
    """The same numbers with the x32 bit set are another table of system calls: the filter kills, not allows."""
    code = SYSCALL.format(nr=0x40000000 + nr, args="-100, b'/etc/passwd', 0" if nr != 39 else "")
    result = run_python(code, LIMITS, restricted=False)
    assert not result.ok and "SIGSYS" in result.error, result


@pytest.mark.skipif(not (WALL and ON_X86_64), reason="the OS wall is not active here, or not x86_64 numbers")
def test_a_signal_to_another_thread_group_is_refused():
    """kill/tkill/tgkill are allowed for the program's own pid only; tgkill with its pid and another tid fails."""
    result = run_python(SYSCALL.format(nr=234, args=f"os.getpid(), {os.getpid()}, 9"), LIMITS, restricted=False)
    assert result.ok and result.value.startswith("(-1,"), result
    assert run_python("1", LIMITS).ok  # and this process is alive to run another


@pytest.mark.skipif(not WALL, reason="the OS wall is not active on this machine")
@pytest.mark.parametrize("config", sorted(SYSCALL_CONFIGS))
def test_a_program_that_stops_itself_ends_at_the_deadline(config):
    settings = PythonToolSettings(timeout_s=2, cpu_s=2)
    started = time.monotonic()
    result = run_python("os.kill(os.getpid(), signal.SIGSTOP)\n'resumed'", settings, restricted=False,
                        disable=SYSCALL_CONFIGS[config])  # fmt: skip
    assert time.monotonic() - started < settings.timeout_s + 2
    # in a pid namespace the program is its init, which a signal from inside does not stop
    assert result.value == "'resumed'" if config == "full" else "timed out" in result.error


@pytest.mark.skipif(not WALL, reason="the OS wall is not active on this machine")
def test_a_program_that_ignores_every_stop_signal_is_still_killed():
    code = "for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGXCPU):\n"
    code += "    signal.signal(s, signal.SIG_IGN)\n"
    started = time.monotonic()
    result = run_python(code + "while True:\n    pass", PythonToolSettings(timeout_s=2, cpu_s=30), restricted=False)
    assert "timed out" in result.error and time.monotonic() - started < 4


# -- finding 3: the parent trusts nothing in the result, even behind the secret ------------------------------------

# A program that got past the first wall can read its own memory (here: `sys` is handed over) and so the secret.
# It can then say anything a print could; it must not be able to crash, stall or bloat the parent.
STEAL = """
f = sys._getframe()
while f is not None and 'request' not in f.f_locals:
    f = f.f_back
request = f.f_locals['request']
fd, secret = request['result_fd'], request['secret'].encode()
def frame(body):
    os.write(fd, secret + b' ' + body + b'\\n')
"""
FORGED = {
    "layers_not_a_list": (
        'frame(b\'{"kind": "result", "ok": true, "value": "v", "layers": 5}\')\nos._exit(0)',
        True,
    ),  # fmt: skip
    "layers_of_wrong_types": (
        'frame(b\'{"kind": "result", "ok": true, "layers": [{"name": [1], "active": "yes", "detail": {}}, 7]}\')\n'
        "os._exit(0)",
        True,
    ),
    "result_nested_5000_deep": (
        "frame(b'{\"kind\": \"result\", \"ok\": true, \"value\": ' + b'[' * 5000 + b']' * 5000 + b'}')\nos._exit(0)",
        False,
    ),
    "exit_report_nested_5000_deep": (
        "frame(b'{\"kind\": \"exit\", \"signal\": ' + b'[' * 5000 + b']' * 5000 + b'}')\nos._exit(0)",
        False,
    ),
    "fields_of_wrong_types": (
        'frame(b\'{"kind": "result", "ok": 1, "output": 5, "value": [1], "error": {}}\')\nos._exit(0)',
        False,
    ),  # fmt: skip
    "invalid_utf8": ('frame(b\'{"kind": "result", "ok": true, "value": "\\xff\\xfe"}\')\nos._exit(0)', False),
    "a_frame_cut_in_the_middle": ('os.write(fd, secret + b\' {"kind": "result", "ok": tr\')\nos._exit(0)', False),
    "a_number_of_5000_digits": ("frame(b'{\"kind\": \"exit\", \"code\": ' + b'9' * 5000 + b'}')\nos._exit(0)", False),
    "frames_that_are_not_objects": ("frame(b'[1, 2]')\nframe(b'null')\nframe(b'\"x\"')\nos._exit(0)", False),
    "flood_of_valid_frames": (
        'line = b\'{"kind": "result", "ok": true, "value": "\' + b\'x\' * 60000 + b\'"}\'\n'
        "for i in range(300):\n    try:\n        frame(line)\n    except OSError:\n        break\nos._exit(0)",
        False,
    ),
}


@pytest.mark.skipif(not LINUX, reason="reads /proc")
@pytest.mark.parametrize("name", sorted(FORGED))
def test_a_forged_result_cannot_hurt_the_parent(name):
    import tracemalloc

    code, accepted = FORGED[name]
    tracemalloc.start()
    result = run_python(STEAL + code, LIMITS, restricted=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.ok is accepted, result
    for text in (result.output, result.value, result.error):
        assert text is None or isinstance(text, str)
    assert all(isinstance(layer["name"], str) and isinstance(layer["active"], bool) and isinstance(layer["detail"], str)
               for layer in result.layers)  # fmt: skip
    assert not any(layer["active"] for layer in result.layers if layer["name"] == "?")
    assert peak < 16 * 1024 * 1024, peak


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_a_forged_exit_report_is_overruled_by_the_supervisors():
    """The supervisor reports after the program's process is dead: its report is the last, and the one used."""
    code = STEAL + 'frame(b\'{"kind": "exit", "code": null, "signal": 9, "cpu_s": 99}\')\nos._exit(3)'
    result = run_python(code, LIMITS, restricted=False)
    assert not result.ok and "exit status 3" in result.error and "CPU" not in result.error, result.error


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_a_forged_result_followed_by_the_real_one_loses():
    result = run_python(STEAL + "frame(b'{\"kind\": \"result\", \"ok\": true, \"value\": \"FORGED\"}')\n'real'", LIMITS,
                        restricted=False)  # fmt: skip
    assert result.ok and result.value == "'real'", result


def test_there_are_at_least_forty_new_hostile_programs():
    assert len(CASES) + len(SYSCALLS) + len(FORGED) >= 40
