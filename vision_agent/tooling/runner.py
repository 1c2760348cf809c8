"""The one way a tool is called: in a daemon thread, with a deadline and the run's cancel event.

A hung plugin or a hung network call costs its timeout, never the session. The call gets a cancel event
of its own, set when the run is cancelled and when the call is abandoned at its deadline, so a tool that
watches it (the sandbox kills its child, the calculator its process) stops either way.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from vision_agent.errors import ToolError
from vision_agent.tooling.types import Tool, ToolContext, ToolOutcome

log = logging.getLogger(__name__)

T = TypeVar("T")
POLL_S = 0.05
# What is kept of any tool's result before anything else sees it (a plugin may return anything).
MAX_RESULT_CAPTURE = 1_000_000


@dataclass(frozen=True)
class Call(Generic[T]):
    """How a deadline call ended: exactly one of value (finished), error (raised), timed_out, cancelled."""

    value: T | None = None
    error: BaseException | None = None
    timed_out: bool = False
    cancelled: bool = False
    seconds: float = 0.0


def call_with_deadline(
    work: Callable[[threading.Event], T], timeout_s: float, cancel: threading.Event | None = None, name: str = "call"
) -> Call[T]:
    """Run `work(call_cancel)` in a daemon thread; return when it ends, at the deadline, or when `cancel` is set.

    Whatever it raises (SystemExit and KeyboardInterrupt from a plugin too) is returned, never raised here.
    """
    call_cancel = threading.Event()
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = work(call_cancel)
        except BaseException as exc:  # reported to the caller: a tool ends its call, never the app
            outcome["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, name=f"tool-{name}", daemon=True)
    thread.start()
    deadline = started + timeout_s
    while thread.is_alive():
        thread.join(POLL_S)
        if not thread.is_alive():
            break
        if cancel is not None and cancel.is_set():
            call_cancel.set()
            return Call(cancelled=True, seconds=time.monotonic() - started)
        if time.monotonic() > deadline:
            call_cancel.set()
            return Call(timed_out=True, seconds=time.monotonic() - started)
    seconds = time.monotonic() - started
    if "error" in outcome:
        return Call(error=outcome["error"], seconds=seconds)
    return Call(value=outcome.get("value"), seconds=seconds)


def run_tool(tool: Tool, arguments: dict, context: ToolContext, timeout_s: float, max_chars: int) -> ToolOutcome:
    """Call a tool under `timeout_s`, with `context.cancel` as the run's cancel; its output cleaned and capped.

    A ToolError is the tool's own failure (its message is for the model); any other exception is reported
    as the tool having failed. `max_chars` caps what the model will read, with a truncation marker.
    """
    from vision_agent.core.observations import truncate
    from vision_agent.text import valid_text

    def work(call_cancel: threading.Event) -> str:
        result = tool.run(arguments, dataclasses.replace(context, cancel=call_cancel))
        return result if isinstance(result, str) else str(result)

    call = call_with_deadline(work, timeout_s, context.cancel, name=tool.name)
    if call.cancelled:
        ok, text = False, "cancelled"
    elif call.timed_out:
        ok, text = False, f"the tool did not finish within {timeout_s:g} s"
    elif isinstance(call.error, ToolError):
        ok, text = False, str(call.error)
    elif call.error is not None:
        log.debug("tool %s failed", tool.name, exc_info=call.error)
        ok, text = False, f"the tool failed: {type(call.error).__name__}: {call.error}"
    else:
        ok, text = True, call.value or ""
    text, _ = truncate(text, MAX_RESULT_CAPTURE)
    shown, truncated = truncate(valid_text(text), max_chars)
    return ToolOutcome(ok=ok, output=shown, truncated=truncated, seconds=round(call.seconds, 3))
