"""calculator: exact arithmetic and math functions over an allow-list of Python syntax.

Never calls eval. Two walls stand between a short hostile expression and a hung app:

1. Bounds. Before any integer operation that can grow (power, product, factorial, comb, perm, round,
   lcm, modular pow) the size of its result is estimated with bounds that cannot cancel out, and the
   call is refused when it would pass MAX_DIGITS; the tree's depth and argument counts are capped.
   Every input is answered or refused in milliseconds.
2. A child process. The app only tidies the text; parsing and evaluation run in a short-lived
   `python -I -S` child that executes this very file with nothing but _ast, math and operator, under
   CPU and memory limits, in its own process group that is killed at a wall-clock deadline or when
   the run is cancelled. A computation the bounds miss costs the child its life, never the app its GIL.
"""

from __future__ import annotations

import _ast as ast  # the C module behind ast.py: the same node classes, without 7 ms of imports in the child
import math
import operator

if __name__ != "__main__":  # the app imports this file as a tool; the child runs it alone
    from vision_agent.errors import ToolError
    from vision_agent.tooling import ToolContext

MAX_INPUT_CHARS = 500
MAX_DIGITS = 4000  # of any intermediate or final integer; below Python's int<->str limit (4300 digits)
MAX_DEPTH = 300  # nesting of the expression tree (a 250-term sum is 250 deep)
MAX_ARGS = 64  # arguments of one function call
MAX_MODPOW_BITS = 1024  # pow(a, b, m): b and m of 1024 bits cost ~3 ms, of 2048 ~20 ms, of 13,000 seconds
CHILD_DEADLINE_S = 2.0  # wall clock for one evaluation, spawn included
CHILD_CPU_S = 2  # RLIMIT_CPU in the child
CHILD_MEMORY_BYTES = 512 * 1024 * 1024  # RLIMIT_AS in the child
_MAX_BITS = int(MAX_DIGITS * math.log2(10))
_LOG10_2 = math.log10(2)


class CalcError(Exception):
    """A refusal or a math error, with the message the model reads."""


# -- reading the text (in the app) ---------------------------------------------------------------------

_SYMBOLS = {"×": "*", "÷": "/", "−": "-", "^": "**"}
# "15%" at the end of an operand means 15/100; "7 % 3" stays modulo.
_PERCENT = r"(?<![\w.])([0-9]+(?:\.[0-9]+)?)\s*%(?!\s*[0-9.(a-z])"


def prepare(expression: str) -> str:
    """The expression as plain ASCII Python syntax, or CalcError."""
    import re

    if len(expression) > MAX_INPUT_CHARS:
        raise CalcError(f"expression too long ({len(expression)} characters; the limit is {MAX_INPUT_CHARS})")
    text = "".join(" " if ch.isspace() else _SYMBOLS.get(ch, ch) for ch in expression).strip()
    if not text:
        raise CalcError("empty expression")
    if not text.isascii():
        # Python's parser would read full-width letters and digits as ASCII ones, and superscripts or
        # other digit systems would be misread. Refuse plainly instead of guessing.
        strange = next(ch for ch in text if not ch.isascii())
        raise CalcError(f"only ASCII digits, names and operators are understood (found {strange!r})")
    return re.sub(_PERCENT, r"(\1/100)", text, flags=re.I | re.ASCII)


def evaluate(expression: str, bounds: bool = True):
    """prepare() then evaluate_text(), in this process (the tool itself uses the child)."""
    return evaluate_text(prepare(expression), bounds)


# -- the evaluator (in the child: _ast, math and operator only) ----------------------------------------


def evaluate_text(text: str, bounds: bool = True):
    """The value of prepared text (int, float or bool), or CalcError. `bounds=False` exists only for the
    test that proves the second wall: it lets the child run into an unbounded computation."""
    try:
        tree = compile(text, "<expression>", "eval", ast.PyCF_ONLY_AST)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise CalcError(f"not an arithmetic expression: {getattr(exc, 'msg', exc)}") from None
    if _depth(tree.body) > MAX_DEPTH:
        raise CalcError(f"expression nested too deeply (the limit is {MAX_DEPTH} levels)")
    try:
        return _eval(tree.body, bounds)
    except _NotAllowed as exc:
        node = exc.args[0]
        source = text[node.col_offset : node.end_col_offset]  # ASCII: byte offsets are character offsets
        raise CalcError(f"not allowed in an expression: {source[:60]!r}") from None
    except ZeroDivisionError:
        raise CalcError("division by zero") from None
    except OverflowError:
        raise CalcError("the result is too large for a floating-point number") from None
    except (ValueError, TypeError) as exc:
        raise CalcError(f"math error: {exc}") from None
    except RecursionError:
        raise CalcError("expression nested too deeply") from None
    except MemoryError:
        raise CalcError("refused: out of memory") from None


def format_number(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return f"{value:.15g}"
    return str(value)


class _NotAllowed(Exception):
    """A node outside the allow-list; evaluate_text names it from the source."""


def _children(node):
    for name in node._fields:
        value = getattr(node, name, None)
        if isinstance(value, ast.AST):
            yield value
        elif isinstance(value, list):
            yield from (item for item in value if isinstance(item, ast.AST))


def _depth(root) -> int:
    """Depth of the tree, measured without recursion."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in _children(node))
    return deepest


def _eval(node, bounds: bool):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(node.value)
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise CalcError(f"unknown name {node.id!r}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval(node.operand, bounds)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, bounds), _eval(node.right, bounds)
        if isinstance(node.op, ast.Pow):
            result = _power(left, right) if bounds else left**right
        else:
            if bounds and isinstance(node.op, ast.Mult):
                _check_product(left, right)
            result = _BINARY[type(node.op)](left, right)
        return _checked(result, left, right)
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        values = [_eval(node.left, bounds), *(_eval(c, bounds) for c in node.comparators)]
        return all(_COMPARE[type(op)](a, b) for op, a, b in zip(node.ops, values, values[1:], strict=False))
    if isinstance(node, ast.BoolOp):
        values = [_eval(v, bounds) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        name = node.func.id
        if name not in _FUNCTIONS:
            raise CalcError(f"unknown function {name!r}; available: {', '.join(sorted(_FUNCTIONS))}")
        if len(node.args) > MAX_ARGS:
            raise CalcError(f"too many arguments for {name} ({len(node.args)}; the limit is {MAX_ARGS})")
        args = [_eval(a, bounds) for a in node.args]
        function = _FUNCTIONS[name] if bounds else getattr(math, name, _FUNCTIONS[name])
        return _checked(function(*args), *args)
    raise _NotAllowed(node)


def _bits(value) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 0


def _times(count: int, each: float) -> float:
    """count * each as a float, inf where count is past the float range."""
    return count * each if count.bit_length() < 1000 else math.inf


def _refuse(digits: float, at_least: bool = False):
    size = f"more than {MAX_DIGITS:,}" if math.isinf(digits) else f"{'at least' if at_least else 'about'} {digits:,.0f}"
    raise CalcError(f"refused: the result would have {size} digits (the limit is {MAX_DIGITS:,})")


def _checked(value, *operands):
    """Refuse what no exact answer should be: complex numbers, oversized integers, and a float that
    overflowed to inf or nan from finite operands (1e308 * 10 is not infinity)."""
    if isinstance(value, complex):
        raise CalcError("the result is not a real number")
    if isinstance(value, int) and _bits(value) > _MAX_BITS:
        _refuse(_bits(value) * _LOG10_2)
    if isinstance(value, float) and not math.isfinite(value) and all(_finite(v) for v in operands):
        if math.isnan(value):
            raise CalcError("math error: the result is undefined")
        raise OverflowError
    return value


def _finite(value) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _power(base, exponent):
    """base ** exponent, refused before computing when an integer result would pass MAX_DIGITS."""
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if (_bits(base) - 1) * exponent > _MAX_BITS:  # a lower bound on the result's size in bits
            _refuse(_times(exponent, math.log10(abs(base))))
    return base**exponent


def _check_product(left, right) -> None:
    if isinstance(left, int) and isinstance(right, int) and _bits(left) + _bits(right) - 1 > _MAX_BITS:
        _refuse((_bits(left) + _bits(right) - 1) * _LOG10_2)


def _modpow_or_pow(*args):
    if len(args) == 3:
        base, exponent, modulus = args
        if all(isinstance(a, int) for a in args) and max(_bits(exponent), _bits(modulus)) > MAX_MODPOW_BITS:
            raise CalcError(f"refused: pow(a, b, m) takes b and m up to {MAX_MODPOW_BITS} bits")
        return pow(base, exponent, modulus)
    if len(args) != 2:
        raise CalcError(f"pow takes 2 or 3 arguments ({len(args)} given)")
    return _power(*args)


def _factorial(n):
    if isinstance(n, int) and n > 1:
        digits = math.lgamma(n + 1) / math.log(10) if n < 10**6 else math.inf
        if digits > MAX_DIGITS:
            _refuse(digits)
    return math.factorial(n)


def _comb(n, k):
    if isinstance(n, int) and isinstance(k, int) and 0 <= k <= n:
        small = min(k, n - k)
        # C(n, j) >= (n / j) ** j >= 2 ** j for j <= n / 2: a lower bound on the size that never cancels,
        # and the true size is at most 0.44 * j digits more, so whatever passes is cheap to compute.
        if small > _MAX_BITS:
            _refuse(_times(small, _LOG10_2), at_least=True)
        if 0 < small and n < 2**50:  # lgamma is within a few digits here; above, its differences cancel
            digits = (math.lgamma(n + 1) - math.lgamma(small + 1) - math.lgamma(n - small + 1)) / math.log(10)
            if digits > MAX_DIGITS + 10:
                _refuse(digits)
        elif small > 0:
            digits = small * (math.log10(n) - math.log10(small))
            if digits > MAX_DIGITS:
                _refuse(digits, at_least=True)
    return math.comb(n, k)


def _perm(n, k=None):
    if k is None:
        return _factorial(n)
    if isinstance(n, int) and isinstance(k, int) and 0 < k <= n:
        # perm(n, k) >= k! and >= (n - k + 1) ** k; whatever passes both has at most ~10,000 digits.
        if k > 10**6:
            _refuse(math.inf)
        digits = max(math.lgamma(k + 1) / math.log(10), k * math.log10(n - k + 1))
        if digits > MAX_DIGITS:
            _refuse(digits, at_least=True)
    return math.perm(n, k)


def _round(x, ndigits=None):
    if ndigits is None:
        return round(x)
    if isinstance(x, int) and isinstance(ndigits, int) and ndigits < -MAX_DIGITS:
        # |x| < 10 ** MAX_DIGITS rounds to 0 at that many places; Python would first build 10 ** -ndigits.
        return 0
    return round(x, ndigits)  # floats clamp ndigits themselves; an int with ndigits >= 0 is returned as is


def _lcm(*args):
    result = 1
    for value in args:
        if isinstance(value, int) and isinstance(result, int) and value and result:
            bits = _bits(result // math.gcd(result, value)) + _bits(value) - 1
            if bits > _MAX_BITS:
                _refuse(bits * _LOG10_2, at_least=True)
        result = math.lcm(result, value)
    return result


_FUNCTIONS = {
    name: getattr(math, name)
    for name in (
        "sqrt", "cbrt", "exp", "log", "log2", "log10", "sin", "cos", "tan", "asin", "acos", "atan", "atan2",
        "sinh", "cosh", "tanh", "hypot", "degrees", "radians", "floor", "ceil", "trunc", "fabs", "gcd",
        "isqrt", "copysign", "fmod",
    )
    if hasattr(math, name)
}  # fmt: skip
_FUNCTIONS.update(
    {
        "abs": abs,
        "min": min,
        "max": max,
        "round": _round,
        "pow": _modpow_or_pow,  # exact like **, with a modulus as a third argument
        "factorial": _factorial,
        "comb": _comb,
        "perm": _perm,
        "lcm": _lcm,
    }
)
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf, "nan": math.nan}
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


# -- the child process ---------------------------------------------------------------------------------


def _child_main() -> None:
    """stdin: "1" or "0" (bounds on or off), a newline, the prepared text. stdout: "ok" or "error", a
    newline, the value or the message."""
    import sys

    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CPU, (CHILD_CPU_S, CHILD_CPU_S + 1))
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU dumps core by default
    except (ImportError, ValueError, OSError):  # a platform without them: the deadline still holds
        pass
    flag, _, text = sys.stdin.buffer.read().decode("ascii", errors="replace").partition("\n")
    try:
        reply = "ok\n" + format_number(evaluate_text(text, bounds=flag != "0"))
    except CalcError as exc:
        reply = f"error\n{exc}"
    sys.stdout.write(reply)


# -- the tool (in the app) -----------------------------------------------------------------------------


def calculator(expression: str, context: ToolContext) -> str:
    """Evaluate an arithmetic expression exactly: + - * / // % ** (or ^), parentheses, comparisons,
    percentages like 15% (= 0.15), math functions (sqrt, log, sin, factorial, comb, ...) and constants
    (pi, e, tau).

    Args:
        expression: for example "(3.5 + 2) * 4^2" or "sqrt(2) * 15%"
    """
    deadline = min(CHILD_DEADLINE_S, context.settings.timeout_s)
    ok, text = run_in_child(expression, deadline_s=deadline, cancel=context.cancel)
    if not ok:
        raise ToolError(text)
    return text


def run_in_child(expression: str, deadline_s: float = CHILD_DEADLINE_S, cancel=None, bounds: bool = True):
    """Evaluate in a fresh child process: (True, value text) or (False, error text). The child's process
    group is killed at the deadline, on cancel, and on any way out of this function (Ctrl-C included)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    try:
        request = (("1" if bounds else "0") + "\n" + prepare(expression)).encode("ascii")
    except CalcError as exc:
        return False, str(exc)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        env={"LC_ALL": "C.UTF-8"},
        start_new_session=True,  # its own process group, killed as a whole
    )
    try:
        pending = request
        while True:
            try:
                out, err = proc.communicate(pending, timeout=0.01)
                break
            except subprocess.TimeoutExpired:
                pending = None
                if cancel is not None and cancel.is_set():
                    return False, "cancelled"
                if time.monotonic() - started > deadline_s:
                    return False, f"refused: the calculation did not finish within {deadline_s:g} s"
    finally:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                stream.close()
    status, _, text = out.decode("utf-8", errors="replace").partition("\n")
    if proc.returncode == 0 and status in ("ok", "error"):
        return status == "ok", text
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return False, f"refused: the calculation ran past its CPU limit ({CHILD_CPU_S} s)"
    detail = err.decode("utf-8", errors="replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
    return False, f"the calculator failed: {detail[0][:200]}"


TOOLS = [calculator]


if __name__ == "__main__":
    _child_main()
