"""The first wall: the program runs under RestrictedPython, with curated, read-only views of a few modules.

Imported only by the sandbox child. RestrictedPython refuses at compile time names and attributes starting
with "_", the inspect attributes (frames, code), eval/exec, async, match and `try/except*`; at run time
every attribute read goes through `guarded_getattr`, every subscript through `guarded_getitem` and every
write through `write_guard`. `print` in every scope writes to one capped buffer.

What this module adds is the audit of what the program can reach. The weak spot of this kind of sandbox is
trusted code that reads or writes attributes *by a name the program chooses* (the name is a string, so
the compiler never sees it): `str.format` field names, `functools.update_wrapper`'s `assigned`/`updated`,
`singledispatch` (which evaluates string annotations with plain `eval`), `namedtuple` (exec),
`UserString.format`. So:
- each module is an allow-list of names (not "everything public"), seen through a view that has no
  `__dict__`, no slots and a frozen class: nothing in it can be read except the listed names, or written;
- `update_wrapper`/`wraps` are replaced by versions that copy only the standard names, only onto a
  function the program defined, and `__dict__` only from another function of the program (copying a class's
  dict handed over `str.format` and numpy's `dump` on a holder the name checks do not look at);
- names are not enough, so values are checked too (`refusal`): whatever an attribute read or a subscript
  returns, and whatever an attribute is read from, is refused if it is an interpreter internal (module, frame,
  code, traceback), a module's namespace, a left-out builtin, a slot method, `str.format`/`format_map` or one
  of numpy's file and memory methods, however the program came to hold it;
- attribute writes reach only classes the program defined and their instances; item writes reach dicts,
  lists, deques and numpy arrays (numpy refuses writes to the read-only image);
- numpy array and scalar attributes that reach memory or files are hidden; `empty` (uninitialised memory
  of this process) is not offered.
"""

from __future__ import annotations

import ast
import builtins as real_builtins
import collections
import functools
import types
import weakref
from typing import Any

FILENAME = "<model code>"
RESULT_NAME = "vision_agent_last_value"

# None: every public name of a C module whose functions only compute; else the names offered.
MODULES = {
    "math": None,
    "itertools": None,
    "heapq": None,
    "bisect": None,
    "statistics": "mean fmean geometric_mean harmonic_mean median median_low median_high median_grouped mode "
    "multimode quantiles pstdev pvariance stdev variance covariance correlation linear_regression NormalDist "
    "StatisticsError",
    "json": "dumps loads JSONDecodeError JSONDecoder JSONEncoder",
    "re": "compile search match fullmatch split findall finditer sub subn escape purge error Pattern Match "
    "A ASCII I IGNORECASE L LOCALE M MULTILINE S DOTALL X VERBOSE U UNICODE NOFLAG",
    "random": "random uniform randint randrange choice choices sample shuffle seed gauss normalvariate "
    "lognormvariate expovariate vonmisesvariate gammavariate betavariate paretovariate weibullvariate "
    "triangular getrandbits randbytes getstate setstate Random",
    "functools": "reduce partial lru_cache cache cmp_to_key cached_property wraps update_wrapper "
    "WRAPPER_ASSIGNMENTS WRAPPER_UPDATES",
    "collections": "Counter OrderedDict defaultdict deque ChainMap UserDict UserList",
    "fractions": "Fraction",
    "decimal": "Decimal Context localcontext getcontext setcontext DecimalException InvalidOperation "
    "DivisionByZero Inexact Rounded Overflow Underflow Subnormal Clamped FloatOperation ROUND_CEILING "
    "ROUND_DOWN ROUND_FLOOR ROUND_HALF_DOWN ROUND_HALF_EVEN ROUND_HALF_UP ROUND_UP ROUND_05UP MAX_PREC "
    "MAX_EMAX MIN_EMIN MIN_ETINY",
    "datetime": "date time datetime timedelta timezone tzinfo MINYEAR MAXYEAR UTC",
    "textwrap": "wrap fill shorten dedent indent TextWrapper",
}
NUMPY_NAMES = (
    "array asarray zeros ones full zeros_like ones_like arange linspace mean median std var sum prod min max "
    "amin amax argmin argmax unique where sort argsort clip abs absolute round rint floor ceil sqrt exp log log2 "
    "log10 sin cos tan arctan2 hypot histogram bincount count_nonzero percentile quantile cumsum diff dot matmul "
    "concatenate stack vstack hstack reshape transpose isclose allclose all any nonzero logical_and logical_or "
    "logical_not maximum minimum mod floor_divide power sign flip rot90 uint8 int16 int32 int64 float32 float64 "
    "bool_ pi e inf nan isnan isfinite nanmean nanmax nanmin average cov corrcoef ravel tile repeat "
    "argwhere column_stack dstack roll squeeze expand_dims swapaxes moveaxis meshgrid indices digitize "
    "searchsorted interp cumprod outer gradient convolve uint16 uint32 int8 float16 nanstd nansum ptp"
).split()
# ndarray and numpy scalar attributes that reach memory, files, pickles or the type machinery.
NUMPY_DENIED = {"tofile", "dump", "dumps", "ctypes", "base", "setflags", "data", "getfield", "setfield", "put"}
# Builtins that read or write attributes by a chosen name, run code, make classes or reach files.
REFUSED_BUILTINS = (
    "open eval exec compile __import__ getattr setattr delattr hasattr vars globals locals dir breakpoint input help "
    "type super memoryview __build_class__"
).split()


def module_view(name: str, table: dict):
    """A read-only stand-in for a module: the names in `table`, and nothing else reachable or writable.

    The table lives only in this closure. The view has no `__dict__` and no slots, answers every attribute
    (dunders included) from the table, and its class refuses attribute writes.
    """
    table = dict(table)

    class Frozen(type):
        def __setattr__(cls, attr, value=None):  # the default: it is __delattr__ too, called without a value
            raise TypeError(f"module {name} is read-only in the sandbox")

        __delattr__ = __setattr__

    class ModuleView(metaclass=Frozen):
        __slots__ = ()

        def __getattribute__(self, attr):
            try:
                return table[attr]
            except (KeyError, TypeError):
                raise AttributeError(f"{name}.{attr} is not available in the sandbox") from None

        def __setattr__(self, attr, value):
            raise TypeError(f"module {name} is read-only in the sandbox")

        def __delattr__(self, attr):
            raise TypeError(f"module {name} is read-only in the sandbox")

        def __repr__(self):
            return f"<module {name}>"

    return ModuleView()


def _public(module) -> dict:
    return {
        n: v
        for n, v in vars(module).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType) and n != "namedtuple"
    }


class OutputLimit(Exception):
    pass


# -- what the program may never hold, however it got there ------------------------------------------------
#
# The compile-time checks and the getattr guard look at *names*. A helper that copies attributes (as
# `functools.update_wrapper` did with `__dict__`), an exception attribute (`AttributeError.obj`), or a container
# can hand over an object without its name ever being checked. So every value that comes out of an attribute
# read or a subscript is also looked at, and so is the object read from: the interpreter's internals, the real
# modules and their namespaces, the formatting methods of `str`, numpy's file and memory methods, and the
# builtins left out are refused whatever holds them.

_PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None), tuple, list, set, frozenset, slice, range})
_C_CALLABLES = (
    types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType, types.MethodWrapperType,
    types.GetSetDescriptorType, types.MemberDescriptorType, types.ClassMethodDescriptorType,
)  # fmt: skip
_REFUSED_IDS = frozenset(id(getattr(real_builtins, n)) for n in REFUSED_BUILTINS if hasattr(real_builtins, n))
_INTERNALS = (types.ModuleType, types.FrameType, types.CodeType, types.TracebackType)
_SUSPECT_METHODS = frozenset({"format", "format_map", *NUMPY_DENIED})


def refusal(value, np=None) -> str | None:
    """Why the program may not hold `value` (None when it may). Fast for the common plain values: it runs on
    every attribute read and subscript."""
    kind = type(value)
    if kind in _PLAIN:
        return None
    if kind is dict:
        return "a module's namespace is not available in the sandbox" if _is_namespace(value) else None
    if id(value) in _REFUSED_IDS:
        return f"{getattr(value, '__name__', 'this builtin')} is not available in the sandbox"
    if issubclass(kind, _C_CALLABLES):  # by type, never `__class__` (which an object can answer as it likes)
        name = value.__name__
        if name[:1] == "_":
            return f"{name!r} is not available in the sandbox"
        if name in _SUSPECT_METHODS:
            owner: Any = getattr(value, "__objclass__", None)  # anything: made a type just below
            if owner is None:
                owner = getattr(value, "__self__", None)
            if not issubclass(type(owner), type):
                owner = type(owner)
            if name in ("format", "format_map") and issubclass(owner, str):
                return "the format methods of str are not available in the sandbox"
            if np is not None and name in NUMPY_DENIED and issubclass(owner, (np.ndarray, np.generic)):
                return f"array attribute {name!r} is not available in the sandbox"
        return None
    if issubclass(kind, _INTERNALS):
        return f"{kind.__name__} objects are not available in the sandbox"
    return None


def _is_namespace(mapping: dict) -> bool:
    """Whether `mapping` is the `__dict__` of a loaded module (builtins included)."""
    import sys

    name = mapping.get("__name__")
    module = sys.modules.get(name) if type(name) is str else None
    return module is not None and getattr(module, "__dict__", None) is mapping


class _ItemsOnly:
    """What `x[k] = v` and `del x[k]` see for containers whose attributes the program may not set."""

    __slots__ = ("target",)

    def __init__(self, target):
        object.__setattr__(self, "target", target)

    def __setitem__(self, key, value):
        self.target[key] = value

    def __delitem__(self, key):
        del self.target[key]

    def __setattr__(self, attr, value=None):  # the default: it is __delattr__ too, called without a value
        raise TypeError(f"cannot set attributes of a {type(self.target).__name__} in the sandbox")

    __delattr__ = __setattr__


class Program:
    """One compiled program and the namespace it will run in. Build before the lock-down, run after."""

    def __init__(self, code: str, width: int, height: int, raw: bytes, max_output: int, np=None):
        """`np`: numpy, when `warm_up` loaded it (the caller sets the memory budget between the two)."""
        from RestrictedPython import compile_restricted_exec

        self.max_output = max_output
        self.error = None
        self.np = np
        try:
            tree = ast.parse(code, FILENAME)
        except SyntaxError as exc:
            self.error = f"SyntaxError: {exc.msg} (line {exc.lineno})"
            return
        except (ValueError, RecursionError, MemoryError) as exc:  # NUL bytes, absurd nesting
            self.error = f"SyntaxError: {type(exc).__name__}: {exc}"
            return
        last = tree.body[-1] if tree.body else None
        self.has_value = isinstance(last, ast.Expr)
        if isinstance(last, ast.Expr):  # keep the value of a final expression, as a REPL would show it
            tree.body[-1] = ast.copy_location(
                ast.Assign(targets=[ast.Name(RESULT_NAME, ast.Store())], value=last.value), last
            )
            ast.fix_missing_locations(tree)
        compiled = compile_restricted_exec(tree, FILENAME)
        if compiled.errors:
            self.error = "refused by the sandbox: " + "; ".join(compiled.errors)
            return
        assert compiled.code is not None, "RestrictedPython returns code when it reports no errors"
        self.code = compiled.code
        self.glb = self._namespace(width, height, raw)

    # -- the namespace -------------------------------------------------------------------------------

    def _namespace(self, width: int, height: int, raw: bytes) -> dict:
        from RestrictedPython import safe_builtins
        from RestrictedPython.Eval import default_guarded_getiter
        from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence, safer_getattr_raise

        np = self.np
        glb: dict[str, Any] = {}
        # types whose values need no look (the value guard's fast path on every attribute read and subscript)
        self.plain = _PLAIN | ({np.ndarray, *np.sctypeDict.values()} if np is not None else set())
        self.safer_getattr = safer_getattr_raise  # by name: "_", the inspect attributes, str.format
        made: weakref.WeakSet[type] = weakref.WeakSet()  # classes the program defined
        self.made = made
        views = {}
        for name, names in MODULES.items():
            module = __import__(name)
            table = (
                _public(module)
                if names is None
                else {n: getattr(module, n) for n in names.split() if hasattr(module, n)}
            )
            if name == "functools":
                table.update(self._safe_functools(glb))
            views[name] = module_view(name, table)
        if np is not None:
            views["numpy"] = module_view("numpy", {n: getattr(np, n) for n in NUMPY_NAMES if hasattr(np, n)})
        self.views = views

        def build_class(func, name, *bases, **kwargs):
            cls = real_builtins.__build_class__(func, name, *bases, **kwargs)
            made.add(cls)
            return cls

        builtins = dict(safe_builtins)
        for unsafe in ("setattr", "delattr", "_getattr_"):
            builtins.pop(unsafe, None)
        builtins.update(
            __build_class__=build_class, __import__=self._guarded_import, _getattr_=self._guarded_getattr,
            math=views["math"], random=views["random"], set=set, frozenset=frozenset, range=range,
            sum=sum, min=min, max=max, sorted=sorted, reversed=reversed, enumerate=enumerate, zip=zip,
            map=map, filter=filter, any=any, all=all, list=list, dict=dict, tuple=tuple, format=format,
            next=next, iter=iter, bin=bin,
        )  # fmt: skip
        glb.update({
            "__builtins__": builtins,
            "__name__": "sandbox",
            "__metaclass__": type,
            "_getattr_": self._guarded_getattr,
            "_getitem_": self._guarded_getitem,
            "_getiter_": default_guarded_getiter,
            "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
            "_unpack_sequence_": guarded_unpack_sequence,
            "_write_": self._write_guard,
            "_inplacevar_": _inplacevar,
            "_apply_": _apply,
            "_print_": self._print_class(),
        })  # fmt: skip
        if width:
            glb["width"], glb["height"] = width, height
            if np is not None:  # frombuffer over bytes: read-only, and numpy refuses to make it writable
                glb["image"] = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
        return glb

    @staticmethod
    def _safe_functools(glb: dict) -> dict:
        assignments, updates = functools.WRAPPER_ASSIGNMENTS, functools.WRAPPER_UPDATES

        def update_wrapper(wrapper, wrapped, assigned=assignments, updated=updates):
            """functools.update_wrapper for decorators: the standard names only, onto the program's own function."""
            if not (isinstance(wrapper, types.FunctionType) and wrapper.__globals__ is glb):
                raise TypeError("update_wrapper: the wrapper must be a function defined by the program")
            if not set(assigned) <= set(assignments) or not set(updated) <= set(updates):
                raise TypeError("update_wrapper: only the standard attribute names are allowed in the sandbox")
            for attr in assigned:
                value = getattr(wrapped, attr, None)
                if isinstance(value, str):
                    setattr(wrapper, attr, value)
            # `__dict__` only from another function of the program: a class's dict (`str.format`, numpy's `dump`)
            # or a library object's would hand over what the guards refuse on its owner.
            if "__dict__" in updated and isinstance(wrapped, types.FunctionType) and wrapped.__globals__ is glb:
                extra = wrapped.__dict__
                wrapper.__dict__.update({k: v for k, v in extra.items() if type(k) is str and k[:1] != "_"})
            return wrapper

        def wraps(wrapped, assigned=assignments, updated=updates):
            return functools.partial(update_wrapper, wrapped=wrapped, assigned=assigned, updated=updated)

        return {"update_wrapper": update_wrapper, "wraps": wraps}

    def _print_class(self):
        """RestrictedPython makes one collector per function scope; they all write to one capped buffer, so
        what a function prints is not lost."""
        from RestrictedPython.PrintCollector import PrintCollector

        limit = self.max_output
        shared = self.printed = []

        class CappedPrint(PrintCollector):
            size = 0

            def __init__(self, _getattr_=None):
                super().__init__(_getattr_)
                self.txt = shared

            def write(self, text):
                text = str.__str__(text) if isinstance(text, str) else str(text)
                room = limit - CappedPrint.size
                CappedPrint.size += len(text)
                if len(text) > room:
                    shared.append(text[: max(room, 0)])
                    raise OutputLimit(f"the program printed more than {limit:,} characters")
                shared.append(text)

            def flush(self):  # print(..., flush=True)
                pass

        return CappedPrint

    # -- the guards ----------------------------------------------------------------------------------

    def _guarded_import(self, name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name in self.views:
            return self.views[name]
        import sys

        if isinstance(fromlist, list) and name in sys.modules:
            # C code importing a module already loaded (numpy's internals, `time` for datetime's strftime):
            # PyImport_Import passes a list, the import statements of the program pass None or a tuple, and
            # nothing else can call this function. The program gets nothing back.
            return sys.modules[name]
        allowed = ", ".join(sorted(self.views))
        raise ImportError(f"import of {name!r} is not allowed in the sandbox (allowed: {allowed})")

    def _numpy_denied(self, obj, name) -> bool:
        np = self.np
        if np is None or name not in NUMPY_DENIED:
            return False
        cls = obj if isinstance(obj, type) else type(obj)
        return issubclass(cls, (np.ndarray, np.generic))

    def _guarded_getattr(self, obj, name, *default):
        if name in NUMPY_DENIED and self._numpy_denied(obj, name):
            raise AttributeError(f"array attribute {name!r} is not available in the sandbox")
        if type(obj) not in self.plain:
            why = refusal(obj, self.np)
            if why is not None:
                raise AttributeError(why)
        value = self.safer_getattr(obj, name, *default)
        if type(value) in self.plain:
            return value
        if issubclass(type(value), types.ModuleType):
            raise AttributeError(f"module attribute {name!r} is not available in the sandbox")
        why = refusal(value, self.np)
        if why is not None:
            raise AttributeError(why)
        return value

    def _guarded_getitem(self, obj, index):
        # Only the value: whatever a refused container holds is refused on the way out (and pixel loops stay fast).
        value = obj[index]
        if type(value) in self.plain:
            return value
        why = refusal(value, self.np)
        if why is not None:
            raise TypeError(why)
        return value

    def _write_guard(self, obj):
        kind = type(obj)
        if kind is dict or kind is list:
            return obj
        if kind in self.made or (isinstance(obj, type) and obj in self.made):
            return obj  # the program's own classes and objects
        if isinstance(obj, (dict, list, collections.deque)) or (
            self.np is not None and isinstance(obj, self.np.ndarray)
        ):
            return _ItemsOnly(obj)
        if type(kind).__name__ == "Frozen":
            raise TypeError(f"{obj!r} is read-only in the sandbox")
        raise TypeError(f"cannot change a {kind.__name__} (attribute or item assignment) in the sandbox")

    # -- running -------------------------------------------------------------------------------------

    def run(self) -> dict:
        glb = self.glb
        try:
            exec(self.code, glb)
        except OutputLimit as exc:
            return {"ok": False, "error": f"output limit: {exc}", "output": self._printed()}
        except MemoryError:
            return {"ok": False, "error": "MemoryError: the program exceeded the sandbox's memory limit"}
        except RecursionError:
            return {"ok": False, "error": "RecursionError: maximum recursion depth exceeded", "output": self._printed()}
        except BaseException as exc:  # the program's own error, reported to the model
            return {"ok": False, "error": describe(exc), "output": self._printed()}
        value = None
        if self.has_value and glb.get(RESULT_NAME) is not None:
            try:
                value = repr(glb[RESULT_NAME])
            except (Exception, RecursionError) as exc:
                return {
                    "ok": False,
                    "error": f"the final value cannot be shown: {describe(exc)}",
                    "output": self._printed(),
                }
        return {"ok": True, "output": self._printed(), "value": value}

    def _printed(self) -> str:
        return "".join(self.printed)


def describe(exc: BaseException) -> str:
    """`line N: Type: message`, the line being the program's own (no source file is read)."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    try:
        message = str(exc)
    except Exception:
        message = "(the message cannot be shown)"
    return f"{f'line {line}: ' if line else ''}{type(exc).__name__}: {message}"


def warm_up(code: str, raw: bytes):
    """Import what the program may use, while files can still be opened; numpy if it may use it (else None).
    Runs before the memory budget is set: what a fixed set of imports costs is not the program's to spend."""
    import RestrictedPython  # noqa: F401

    np = None
    if raw or "np" in code or "numpy" in code:
        import numpy

        _warm_up_numpy(numpy)
        np = numpy
    _warm_up_stdlib(code)
    return np


def _warm_up_stdlib(code: str) -> None:
    """What the allowed modules import or read lazily, loaded while files can still be opened."""
    import datetime
    import time

    time.localtime()  # reads the time zone once
    if "strptime" in code:
        datetime.datetime.strptime("2000", "%Y")
    if "encode" in code or "decode" in code:
        for codec in ("utf-16", "utf-32", "cp1252", "latin-1", "ascii", "idna"):
            "x".encode(codec)


def _warm_up_numpy(np):
    """Load numpy's lazily imported internals now, while files can still be opened."""
    a = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    a.mean(), a.std(), a.var(), a.sum(), a.min(), a.max(), a.astype(float).round()
    np.unique(a.reshape(-1, 3), axis=0), np.median(a), np.percentile(a, 50), np.histogram(a)
    np.cov(a.reshape(-1, 3).T), np.corrcoef(a.reshape(-1, 3).T), np.gradient(a.astype(float))
    np.convolve([1, 2], [1]), np.interp([1], [0, 2], [0, 2]), np.meshgrid([1], [2])
    repr(a), str(a.mean()), np.isclose(a, a).all()


def _apply(func, *args, **kwargs):
    return func(*args, **kwargs)


_INPLACE = {
    "+=": lambda a, b: a + b, "-=": lambda a, b: a - b, "*=": lambda a, b: a * b, "/=": lambda a, b: a / b,
    "//=": lambda a, b: a // b, "%=": lambda a, b: a % b, "**=": lambda a, b: a**b, "&=": lambda a, b: a & b,
    "|=": lambda a, b: a | b, "^=": lambda a, b: a ^ b, "<<=": lambda a, b: a << b, ">>=": lambda a, b: a >> b,
    "@=": lambda a, b: a @ b,
}  # fmt: skip


def _inplacevar(op, x, y):
    return _INPLACE[op](x, y)
