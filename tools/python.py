"""python: runs a short program in the sandbox (RestrictedPython, and an OS wall around a fresh child process).

The layers and what each platform gives are described in vision_agent/tooling/sandbox/__init__.py; `vision-agent doctor`
lists them (`vision_agent.tooling.sandbox.layers()`).
"""

from __future__ import annotations

from vision_agent.errors import ToolError
from vision_agent.tooling import ToolContext
from vision_agent.tooling.sandbox import os_wall_active, run_python


def python(code: str, context: ToolContext) -> str:
    """Run a short Python program and return what it prints and the value of its last expression.
    Available: math, statistics, json, re, random, itertools, functools, collections, fractions,
    decimal, datetime, heapq, bisect, textwrap, and numpy (import numpy as np). The current image is
    the read-only uint8 array `image` (height x width x 3, RGB), with `width` and `height`. No files,
    network, processes or imports beyond these; names starting with "_" are refused.

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


def _policy_floor() -> str | None:
    """Where the OS wall is not complete (macOS, no seccomp), running model code needs the user's yes."""
    return None if os_wall_active() else "ask"


python.policy_floor = _policy_floor
TOOLS = [python]
