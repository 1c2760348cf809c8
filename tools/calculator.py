"""calculator: exact arithmetic and math functions over an allow-list of Python syntax.

Never calls eval. Every power, product and factorial is checked against a size budget before it is
computed, so `4000000**4000000` or `(10**1000)**1000` is refused at once instead of hanging.
"""

from __future__ import annotations

import ast
import math
import operator
import re

from vision_agent.errors import ToolError

MAX_INPUT_CHARS = 500
MAX_DIGITS = 4000  # of any intermediate or final integer (Python prints at most 4300 by default)
_MAX_BITS = int(MAX_DIGITS * math.log2(10))

_FUNCTIONS = {
    name: getattr(math, name)
    for name in (
        "sqrt", "cbrt", "exp", "log", "log2", "log10", "sin", "cos", "tan", "asin", "acos", "atan", "atan2",
        "sinh", "cosh", "tanh", "hypot", "degrees", "radians", "floor", "ceil", "trunc", "fabs", "gcd",
        "lcm", "isqrt", "factorial", "comb", "perm", "copysign", "fmod",
    )
    if hasattr(math, name)
}  # fmt: skip
_FUNCTIONS.update({"abs": abs, "round": round, "min": min, "max": max, "pow": math.pow})
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
# "15%" at the end of an operand means 15/100; "7 % 3" stays modulo.
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%(?!\s*[\d.(a-z])", re.I)


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly: + - * / // % ** (or ^), parentheses, comparisons,
    percentages like 15% (= 0.15), math functions (sqrt, log, sin, factorial, comb, ...) and constants
    (pi, e, tau).

    Args:
        expression: for example "(3.5 + 2) * 4^2" or "sqrt(2) * 15%"
    """
    return format_number(evaluate(expression))


def evaluate(expression: str):
    if len(expression) > MAX_INPUT_CHARS:
        raise ToolError(f"expression too long ({len(expression)} characters; the limit is {MAX_INPUT_CHARS})")
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("−", "-").replace("^", "**")
    text = _PERCENT.sub(r"(\1/100)", text)
    if not text:
        raise ToolError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ToolError(f"not an arithmetic expression: {getattr(exc, 'msg', exc)}") from None
    try:
        return _eval(tree.body)
    except ToolError:
        raise
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("the result is too large for a floating-point number") from None
    except (ValueError, TypeError) as exc:
        raise ToolError(f"math error: {exc}") from None
    except RecursionError:
        raise ToolError("expression nested too deeply") from None


def format_number(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return f"{value:.15g}"
    return str(value)


def _eval(node):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        _check_int(node.value)
        return node.value
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ToolError(f"unknown name {node.id!r}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        _check_budget(node.op, left, right)
        return _check_int(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        values = [_eval(node.left), *(_eval(c) for c in node.comparators)]
        return all(_COMPARE[type(op)](a, b) for op, a, b in zip(node.ops, values, values[1:], strict=False))
    if isinstance(node, ast.BoolOp):
        values = [_eval(v) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        name = node.func.id
        if name not in _FUNCTIONS:
            raise ToolError(f"unknown function {name!r}; available: {', '.join(sorted(_FUNCTIONS))}")
        args = [_eval(a) for a in node.args]
        _check_function(name, args)
        return _check_int(_FUNCTIONS[name](*args))
    raise ToolError(f"not allowed in an expression: {ast.unparse(node)[:60]!r}")


def _bits(value) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 0


def _refuse(digits: float):
    raise ToolError(f"refused: the result would have about {digits:,.0f} digits (the limit is {MAX_DIGITS:,})")


def _check_int(value):
    if isinstance(value, complex):
        raise ToolError("the result is not a real number")
    if isinstance(value, int) and _bits(value) > _MAX_BITS:
        _refuse(_bits(value) * math.log10(2))
    return value


def _check_budget(op, left, right) -> None:
    """Estimate the size of an integer result before computing it."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return
    if isinstance(op, ast.Pow) and right > 0 and abs(left) > 1:
        bits = (_bits(left) - 1) * right  # a lower bound on the result's size
        if bits > _MAX_BITS:
            _refuse(math.floor(right * math.log10(abs(left))) + 1)
    elif isinstance(op, ast.Mult) and _bits(left) + _bits(right) - 1 > _MAX_BITS:
        _refuse((_bits(left) + _bits(right)) * math.log10(2))


def _check_function(name: str, args: list) -> None:
    if name in ("factorial", "comb", "perm") and all(isinstance(a, int) and a >= 0 for a in args) and args:
        n = args[0]
        k = args[1] if len(args) > 1 else None
        if name == "factorial":
            digits = math.lgamma(n + 1) / math.log(10)
        elif k is None or k > n:
            digits = math.lgamma(n + 1) / math.log(10) if k is None else 0
        elif name == "perm":
            digits = (math.lgamma(n + 1) - math.lgamma(n - k + 1)) / math.log(10)
        else:
            digits = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(10)
        if digits > MAX_DIGITS:
            _refuse(digits)


TOOLS = [calculator]
