"""The Python sandbox against hostile programs (each refused or contained, the parent unharmed) and benign ones."""

from __future__ import annotations

import math
import os
import time

import pytest

from tests.helpers import image_part
from vision_agent.config import PythonToolSettings
from vision_agent.tooling.sandbox import run_python

LIMITS = PythonToolSettings(timeout_s=5, cpu_s=1, memory_mb=512, max_output_chars=5000)

HOSTILE = {
    # dunder and subclass walks
    "subclass_walk": ("().__class__.__bases__[0].__subclasses__()", 'starts with "_"'),
    "mro_walk": ("[].__class__.__mro__[1].__subclasses__()", 'starts with "_"'),
    "getattr_dunder": ("getattr((), '__class__')", "getattr"),
    "lambda_globals": ("(lambda: 0).__globals__", 'starts with "_"'),
    "module_dict": ("import math\nmath.__dict__", 'starts with "_"'),
    "dunder_method_def": ("class A:\n    def __getattr__(self, name):\n        return 1", 'starts with "_"'),
    # format-string attribute access
    "format_attribute": ("'{0.__class__}'.format(1)", "format"),
    "format_map": ("'{x.__class__}'.format_map({'x': 1})", "format"),
    "str_format_unbound": ("str.format('{0.__class__}', 1)", "format"),
    "fstring_dunder": ("f'{(1).__class__}'", 'starts with "_"'),
    # generator, coroutine and traceback frames
    "generator_frame": ("g = (i for i in [1])\ng.gi_frame.f_back.f_globals", "gi_frame"),
    "generator_code": ("def f():\n    yield 1\nf().gi_code", "gi_code"),
    "traceback_frame": ("try:\n    1/0\nexcept Exception as e:\n    e.__traceback__.tb_frame", 'starts with "_"'),
    "frame_via_exception": (
        "try:\n    1/0\nexcept Exception as e:\n    tb = e.with_traceback(None)\n    tb.tb_frame",
        "tb_frame",
    ),
    # imports
    "import_os": ("import os\nos.system('id')", "not allowed"),
    "import_sys": ("import sys\nsys.modules", "not allowed"),
    "import_subprocess": ("import subprocess\nsubprocess.run(['id'])", "not allowed"),
    "import_ctypes": ("import ctypes\nctypes.CDLL(None)", "not allowed"),
    "import_socket": ("import socket\nsocket.socket()", "not allowed"),
    "from_os_import": ("from os import system", "not allowed"),
    "dunder_import": ("__import__('os')", 'starts with "_"'),
    "importlib": ("import importlib\nimportlib.import_module('os')", "not allowed"),
    "module_attribute_hop": ("import json\njson.codecs.open('/etc/passwd').read()", "not available"),
    "numpy_internal_import": ("import numpy.linalg", "not allowed"),
    # open, eval/exec/compile, globals/vars
    "open_read": ("open('/etc/passwd').read()", "open"),
    "eval": ("eval('1+1')", "Eval calls are not allowed"),
    "exec": ("exec('x = 1')", "Exec calls are not allowed"),
    "compile": ("compile('1', 'f', 'eval')", "compile"),
    "globals": ("globals()", "globals"),
    "vars": ("vars()", "vars"),
    "builtins_dict": ("__builtins__['open']", 'starts with "_"'),
    # writes to shared modules
    "module_write": ("import math\nmath.pi = 3", "read-only"),
    "module_function_write": ("import json\njson.dumps = None", "read-only"),
    "setattr_builtin": ("import math\nsetattr(math, 'pi', 3)", "setattr"),
    # CPU bombs and infinite loops
    "busy_loop": ("while True:\n    pass", "CPU time limit"),
    "huge_sum": ("sum(i * i for i in range(10**12))", "CPU time limit"),
    "huge_power": ("x = 7 ** (10**9)", "limit"),
    "infinite_generator": ("def f():\n    while True:\n        yield 1\nfor _x in f():\n    pass", "_x"),
    "infinite_generator_plain": (
        "def f():\n    while True:\n        yield 1\nfor x in f():\n    pass",
        "CPU time limit",
    ),
    # memory bombs
    "big_string": ("x = 'a' * (10**10)", "MemoryError"),
    "big_list": ("x = [0] * (10**9)", "MemoryError"),
    "growing_list": ("x = []\nwhile True:\n    x.append('x' * 10**7)", "MemoryError|CPU time limit"),
    # deep recursion
    "recursion": ("def f(n):\n    return f(n + 1)\nf(0)", "RecursionError"),
    "nested_repr": ("x = []\nfor i in range(100000):\n    x = [x]\nx", "RecursionError"),
    # fork attempts
    "fork": ("import os\nos.fork()", "not allowed"),
    "multiprocessing": ("import multiprocessing\nmultiprocessing.Process()", "not allowed"),
    "pty": ("import pty\npty.spawn('sh')", "not allowed"),
    # huge output
    "print_flood": ("while True:\n    print('x' * 1000)", "output limit"),
    "print_huge": ("print('x' * 10**7)", "output limit"),
    # environment variables
    "environ": ("import os\nos.environ['HOME']", "not allowed"),
    "getenv_via_posix": ("import posix\nposix.environ", "not allowed"),
    # network
    "urllib": ("import urllib.request\nurllib.request.urlopen('http://example.com')", "not allowed"),
    "http_client": ("import http.client", "not allowed"),
    # file writes
    "open_write": ("open('pwned.txt', 'w').write('x')", "open"),
    "pathlib_write": ("import pathlib\npathlib.Path('pwned.txt').write_text('x')", "not allowed"),
    "shutil": ("import shutil\nshutil.rmtree('/')", "not allowed"),
    # numpy and the image
    "numpy_save": ("import numpy as np\nnp.save('pwned.npy', image)", "not available"),
    "numpy_load": ("import numpy as np\nnp.load('/etc/passwd', allow_pickle=True)", "not available"),
    "array_tofile": ("image.tofile('pwned.bin')", "not available"),
    "array_ctypes": ("image.ctypes.data", "not available"),
    "array_make_writable": ("image.setflags(write=True)", "not available"),
    "array_flags_write": ("image.flags.writeable = True", "ttribute"),
    "image_write": ("image[0, 0, 0] = 1", "read-only"),
}


@pytest.fixture(scope="module")
def image():
    return image_part(size=(32, 24), color=(10, 200, 30), source="t")


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_is_refused_or_contained(name, image, tmp_path, monkeypatch):
    code, expected = HOSTILE[name]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISION_AGENT_TEST_SECRET", "s3cret")
    before = dict(os.environ)
    started = time.monotonic()
    result = run_python(code, LIMITS, image=image)
    assert not result.ok, result
    assert any(option in (result.error or "") for option in expected.split("|")), result.error
    assert "s3cret" not in (result.error or "") + result.output
    assert time.monotonic() - started < LIMITS.timeout_s + 2
    # the parent is unharmed: no files where it runs, its modules and environment untouched
    assert list(tmp_path.iterdir()) == []
    assert math.pi == 3.141592653589793
    assert dict(os.environ) == before


def test_wall_clock_timeout_kills_a_sleeping_program():
    # time.sleep is not importable; a blocking read on a pipe that never closes is not possible either,
    # so use a busy loop with a CPU limit above the wall-clock limit.
    limits = PythonToolSettings(timeout_s=1, cpu_s=30)
    started = time.monotonic()
    result = run_python("while True:\n    pass", limits)
    assert not result.ok and "timed out after 1 s" in result.error
    assert time.monotonic() - started < 3


def test_cancel_stops_the_program_at_once():
    import threading

    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    result = run_python("while True:\n    pass", PythonToolSettings(timeout_s=30, cpu_s=30), cancel=cancel)
    assert not result.ok and result.error == "cancelled"
    assert time.monotonic() - started < 2


def test_child_environment_is_stripped(monkeypatch):
    """The running child's own environment (read from /proc while it runs) holds none of the app's variables."""
    import threading
    from pathlib import Path

    from vision_agent.tooling.sandbox import runner

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leak-4f1d")
    cancel = threading.Event()
    worker = threading.Thread(
        target=run_python, args=("while True:\n    pass", PythonToolSettings(timeout_s=30, cpu_s=30)),
        kwargs={"cancel": cancel},
    )  # fmt: skip
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not any(runner._live.values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        (child,) = [proc for proc in runner._live.values() if proc is not None]
        environ = Path(f"/proc/{child.pid}/environ").read_bytes()
    finally:
        cancel.set()
        worker.join(10)
    names = {entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry}
    assert b"leak-4f1d" not in environ and "AWS_SECRET_ACCESS_KEY" not in names
    assert names and names <= {"PATH", "LANG", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"}


BENIGN = {
    "print_and_value": ("print('hello')\n6 * 7", "hello\n", "42"),
    "statistics": ("import statistics\nstatistics.mean([1, 2, 3, 4])", "", "2.5"),
    "json": ("import json\njson.dumps({'a': [1, 2]})", "", "'{\"a\": [1, 2]}'"),
    "regex": ("import re\nre.findall(r'\\d+', 'a1b22c333')", "", "['1', '22', '333']"),
    "counter": ("from collections import Counter\nCounter('abracadabra').most_common(1)", "", "[('a', 5)]"),
    "functions_and_recursion": (
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\nfib(20)",
        "",
        "6765",
    ),
    "class_with_methods": (
        "class Box:\n    def area(self, w, h):\n        return w * h\nBox().area(3, 4)",
        "",
        "12",
    ),
    "loops_unpacking_inplace": (
        "total = 0\nfor i, (a, b) in enumerate([(1, 2), (3, 4)]):\n    total += i * (a + b)\ntotal",
        "",
        "7",
    ),
    "dict_and_list_writes": ("d = {}\nd['k'] = [1]\nd['k'].append(2)\nd['k'][0] = 9\nd", "", "{'k': [9, 2]}"),
    "fstring": ("x = 2 / 3\nprint(f'{x:.3f}')", "0.667\n", None),
    "exceptions": ("try:\n    1 / 0\nexcept ZeroDivisionError:\n    r = 'caught'\nr", "", "'caught'"),
    "math": ("import math\nround(math.hypot(3, 4), 1)", "", "5.0"),
    "fractions": ("from fractions import Fraction\nFraction(1, 3) + Fraction(1, 6)", "", "Fraction(1, 2)"),
    "image_size": ("(width, height, image.shape)", "", "(32, 24, (24, 32, 3))"),
    "image_mean_colour": ("import numpy as np\n[int(v) for v in image.mean(axis=(0, 1))]", "", "[10, 200, 30]"),
    "image_unique_colours": ("import numpy as np\nlen(np.unique(image.reshape(-1, 3), axis=0))", "", "1"),
    "image_crop_and_compute": ("crop = image[2:10, 4:20]\nint(crop[..., 1].sum())", "", str(8 * 16 * 200)),
    "numpy_own_array_is_writable": ("import numpy as np\na = np.zeros(3)\na[1] = 5\na.tolist()", "", "[0.0, 5.0, 0.0]"),
}


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_benign_program_works(name, image):
    code, output, value = BENIGN[name]
    result = run_python(code, LIMITS, image=image)
    assert result.ok, result.error
    assert result.output == output
    assert result.value == value


def test_tool_reports_errors_and_partial_output(image):
    from vision_agent.config import load_settings
    from vision_agent.errors import ToolError
    from vision_agent.tooling import ToolContext, build_registry

    settings = load_settings(None, {"tools": {"python": LIMITS.model_dump()}})
    tool = build_registry(settings).get("python")
    context = ToolContext(images=[image], settings=settings.tools)
    assert tool.run({"code": "print('a')\nwidth * 2"}, context) == "a\n64"
    with pytest.raises(ToolError, match=r"ZeroDivisionError(.|\n)*printed before the error\]\nstep 1"):
        tool.run({"code": "print('step 1')\n1 / 0"}, context)
