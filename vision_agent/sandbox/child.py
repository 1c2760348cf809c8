"""The sandbox child: runs one program from the model under RestrictedPython, inside OS resource limits.

Started fresh as `python -I child.py` (never forked from the app), with an empty environment and a
temporary working directory. It reads one request from stdin (a JSON header line, then the raw RGB
bytes of the current image), and writes one JSON result line to stdout. It imports nothing from
vision_agent, so the app's state and modules are out of reach by construction.

Layers, outermost first: the parent's wall-clock timeout (kills the process group); rlimits set
here before the program runs (CPU seconds, address space, no file writes, no new file descriptors so
no sockets or opens, no child processes); RestrictedPython's compile-time checks (no names or
attributes starting with "_", no eval/exec); and the guards below (attribute access, writes,
imports of an allow-list only, capped printing).
"""

import ast
import json
import os
import resource
import signal
import sys
import traceback

FILENAME = "<model code>"
RESULT_NAME = "vision_agent_last_value"
MODULES = ("math", "statistics", "json", "re", "random", "itertools", "functools", "collections",
           "fractions", "decimal", "datetime", "heapq", "bisect", "textwrap")  # fmt: skip
HIDDEN = {"namedtuple"}  # builds classes with exec
NUMPY_NAMES = (
    "array asarray zeros ones full zeros_like ones_like arange linspace mean median std var sum prod min max "
    "amin amax argmin argmax unique where sort argsort clip abs absolute round rint floor ceil sqrt exp log log2 "
    "log10 sin cos tan arctan2 hypot histogram bincount count_nonzero percentile quantile cumsum diff dot matmul "
    "concatenate stack vstack hstack reshape transpose isclose allclose all any nonzero logical_and logical_or "
    "logical_not maximum minimum mod floor_divide power sign flip rot90 uint8 int16 int32 int64 float32 float64 "
    "bool_ pi e inf nan isnan isfinite nanmean nanmax nanmin average cov corrcoef ravel tile repeat"
).split()
# ndarray attributes that reach memory, files or the type machinery.
ARRAY_DENIED = {"tofile", "dump", "dumps", "ctypes", "base", "setflags", "data", "getfield", "setfield", "put"}


class OutputLimit(Exception):
    pass


def main():
    stdin = sys.stdin.buffer
    request = json.loads(stdin.readline())
    raw = stdin.read(request["image_bytes"]) if request["image_bytes"] else b""
    out = sys.stdout
    sys.stdout = sys.stderr = open(os.devnull, "w")  # only our result line reaches the parent
    try:
        result = run(request, raw)
    except MemoryError:
        result = {"ok": False, "error": "MemoryError: the program exceeded the sandbox's memory limit"}
    out.write(json.dumps(result) + "\n")
    out.flush()


def run(request, raw):
    from RestrictedPython import compile_restricted_exec, limited_builtins, safe_builtins, utility_builtins
    from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
    from RestrictedPython.Guards import (
        full_write_guard,
        guarded_iter_unpack_sequence,
        guarded_unpack_sequence,
        safer_getattr_raise,
    )
    from RestrictedPython.PrintCollector import PrintCollector

    code = request["code"]
    try:
        tree = ast.parse(code, FILENAME)
    except SyntaxError as exc:
        return {"ok": False, "error": f"SyntaxError: {exc.msg} (line {exc.lineno})"}
    has_value = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
    if has_value:  # keep the value of a final expression, as a REPL would show it
        last = tree.body[-1]
        tree.body[-1] = ast.copy_location(
            ast.Assign(targets=[ast.Name(RESULT_NAME, ast.Store())], value=last.value), last
        )
        ast.fix_missing_locations(tree)
    compiled = compile_restricted_exec(tree, FILENAME)
    if compiled.errors:
        return {"ok": False, "error": "refused by the sandbox: " + "; ".join(compiled.errors)}

    np = None
    if raw or "np" in code or "numpy" in code:
        import numpy as np  # imported before the limits: it maps large libraries

        _warm_up(np)

    modules = {name: _module_view(__import__(name)) for name in MODULES}
    if np is not None:
        modules["numpy"] = _Namespace("numpy", {n: getattr(np, n) for n in NUMPY_NAMES if hasattr(np, n)})
    max_output = request["max_output_chars"]

    class CappedPrint(PrintCollector):
        size = 0

        def write(self, text):
            room = max_output - CappedPrint.size
            CappedPrint.size += len(text)
            if len(text) > room:
                super().write(text[:room])
                raise OutputLimit(f"the program printed more than {max_output:,} characters")
            super().write(text)

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name in modules:
            return modules[name]
        if isinstance(fromlist, list) and name.startswith("numpy.") and name in sys.modules:
            # numpy's C code importing its own internals (PyImport_Import passes a list; the
            # import statements of the program pass None or a tuple). The caller gets nothing back.
            return sys.modules[name]
        raise ImportError(f"import of {name!r} is not allowed in the sandbox (allowed: {', '.join(sorted(modules))})")

    def guarded_getattr(obj, name, *default):
        if np is not None and isinstance(obj, np.ndarray) and name in ARRAY_DENIED:
            raise AttributeError(f"array attribute {name!r} is not available in the sandbox")
        value = safer_getattr_raise(obj, name, *default)
        if type(value).__name__ == "module":
            raise AttributeError(f"module attribute {name!r} is not available in the sandbox")
        return value

    def write_guard(obj):
        if np is not None and isinstance(obj, np.ndarray):
            return obj  # numpy itself refuses writes to the read-only image
        if isinstance(obj, _Namespace):
            raise TypeError(f"module {obj._name} is read-only in the sandbox")
        return full_write_guard(obj)

    builtins = dict(safe_builtins)
    builtins.update(limited_builtins)
    builtins.update({k: v for k, v in utility_builtins.items() if k in ("set", "frozenset")})
    builtins.update(math=modules["math"], random=modules["random"])
    builtins.update(
        __import__=guarded_import,
        _getattr_=guarded_getattr,
        range=range,
        sum=sum, min=min, max=max, sorted=sorted, reversed=reversed, enumerate=enumerate, zip=zip,
        map=map, filter=filter, any=any, all=all, list=list, dict=dict, tuple=tuple, format=format,
    )  # fmt: skip
    for unsafe in ("setattr", "delattr"):
        builtins.pop(unsafe, None)
    glb = {
        "__builtins__": builtins,
        "__name__": "sandbox",
        "__metaclass__": type,
        "_getattr_": guarded_getattr,
        "_getitem_": default_guarded_getitem,
        "_getiter_": default_guarded_getiter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_write_": write_guard,
        "_inplacevar_": _inplacevar,
        "_print_": CappedPrint,
    }
    if request["width"]:
        glb["width"], glb["height"] = request["width"], request["height"]
        if np is not None:
            image = np.frombuffer(raw, dtype=np.uint8).reshape(request["height"], request["width"], 3)
            glb["image"] = image  # frombuffer over bytes: read-only, and numpy refuses to make it writable

    set_limits(request)
    try:
        exec(compiled.code, glb)
    except OutputLimit as exc:
        return {"ok": False, "error": f"output limit: {exc}", "output": _printed(glb)[:max_output]}
    except MemoryError:
        return {"ok": False, "error": "MemoryError: the program exceeded the sandbox's memory limit"}
    except RecursionError:
        return {"ok": False, "error": "RecursionError: maximum recursion depth exceeded", "output": _printed(glb)}
    except BaseException as exc:  # the program's own error, reported to the model
        return {"ok": False, "error": _describe(exc), "output": _printed(glb)}
    value = None
    if has_value and glb.get(RESULT_NAME) is not None:
        try:
            value = repr(glb[RESULT_NAME])
        except (Exception, RecursionError) as exc:
            return {"ok": False, "error": f"the final value cannot be shown: {_describe(exc)}", "output": _printed(glb)}
    return {"ok": True, "output": _printed(glb), "value": value}


def _warm_up(np):
    """Load numpy's lazily imported internals now, while files can still be opened."""
    a = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    a.mean(), a.std(), a.var(), a.sum(), a.min(), a.max(), a.astype(float).round()
    np.unique(a.reshape(-1, 3), axis=0), np.median(a), np.percentile(a, 50), np.histogram(a)
    repr(a), str(a.mean()), np.isclose(a, a).all()


def set_limits(request):
    cpu = request["cpu_s"]
    limits = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_FSIZE, (0, 0)),  # no file writes
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NPROC, (0, 0)),  # no fork (ignored for root, hence the other layers)
        (resource.RLIMIT_AS, (request["memory_bytes"], request["memory_bytes"])),  # not enforced on macOS
    ]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    for kind, value in limits:
        try:
            resource.setrlimit(kind, value)
        except (ValueError, OSError):
            pass
    # No new file descriptors: open(), sockets and pipes all fail in the kernel.
    highest = max(_open_fds(), default=2)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, highest + 1))
    except (ValueError, OSError):
        pass


def _open_fds():
    try:
        return [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        try:
            return [int(fd) for fd in os.listdir("/dev/fd")]
        except OSError:
            return [0, 1, 2]


def _printed(glb):
    collector = glb.get("_print")
    return collector() if collector is not None else ""


def _describe(exc):
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == FILENAME]
    where = f"line {frames[-1].lineno}: " if frames else ""
    return f"{where}{type(exc).__name__}: {exc}"


class _Namespace:
    """A module seen through a window: its public, non-module attributes, read-only."""

    def __init__(self, name, attributes):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_attributes", attributes)

    def __getattr__(self, name):
        try:
            return self._attributes[name]
        except KeyError:
            raise AttributeError(f"{self._name}.{name} is not available in the sandbox") from None

    def __setattr__(self, name, value):
        raise AttributeError(f"{self._name} is read-only in the sandbox")

    def __repr__(self):
        return f"<module {self._name}>"


def _module_view(module):
    attributes = {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_") and name not in HIDDEN and type(value).__name__ != "module"
    }
    return _Namespace(module.__name__, attributes)


_INPLACE = {
    "+=": lambda a, b: a + b, "-=": lambda a, b: a - b, "*=": lambda a, b: a * b, "/=": lambda a, b: a / b,
    "//=": lambda a, b: a // b, "%=": lambda a, b: a % b, "**=": lambda a, b: a**b, "&=": lambda a, b: a & b,
    "|=": lambda a, b: a | b, "^=": lambda a, b: a ^ b, "<<=": lambda a, b: a << b, ">>=": lambda a, b: a >> b,
    "@=": lambda a, b: a @ b,
}  # fmt: skip


def _inplacevar(op, x, y):
    return _INPLACE[op](x, y)


if __name__ == "__main__":
    main()
