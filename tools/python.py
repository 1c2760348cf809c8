"""python: runs a short program in the sandbox (RestrictedPython inside a fresh, resource-limited process)."""

from __future__ import annotations

from vision_agent.errors import ToolError
from vision_agent.sandbox import run_python
from vision_agent.tooling import ToolContext


def python(code: str, context: ToolContext) -> str:
    """Run a short Python program and return what it prints and the value of its last expression.
    Available: math, statistics, json, re, random, itertools, functools, collections, fractions,
    decimal, datetime, and numpy (import numpy as np). The current image is the read-only uint8
    array `image` (height x width x 3, RGB), with `width` and `height`. No files, network or imports
    beyond these.

    Args:
        code: the program, e.g. "import numpy as np\\nnp.unique(image.reshape(-1, 3), axis=0).shape[0]"
    """
    result = run_python(code, context.settings.python, context.image, context.cancel)
    if not result.ok:
        printed = f"\n[printed before the error]\n{result.output}" if result.output else ""
        raise ToolError(f"{result.error}{printed}")
    parts = [result.output.rstrip("\n")] if result.output else []
    if result.value is not None:
        parts.append(result.value)
    return "\n".join(parts) if parts else "(no output: print something or end with an expression)"


TOOLS = [python]
