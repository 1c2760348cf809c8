"""The one call-with-deadline helper (tooling.runner) that the agent and web_search share."""

from __future__ import annotations

import threading
import time

from vision_agent.config import ToolsSettings
from vision_agent.errors import ToolError
from vision_agent.tooling import FunctionTool, ToolContext, call_with_deadline, run_tool


def test_a_finished_call_returns_its_value():
    call = call_with_deadline(lambda cancel: 42, 5)
    assert call.value == 42 and call.error is None and not call.timed_out and not call.cancelled


def test_a_hung_call_is_abandoned_at_its_deadline_and_told_to_stop():
    seen = {}

    def hang(cancel: threading.Event) -> None:
        seen["stopped"] = cancel.wait(30)

    started = time.monotonic()
    call = call_with_deadline(hang, 0.3)
    assert call.timed_out and time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while "stopped" not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen["stopped"] is True  # the abandoned call's own cancel event was set


def test_the_runs_cancel_ends_the_wait_and_reaches_the_call():
    run_cancel, seen = threading.Event(), {}
    threading.Timer(0.2, run_cancel.set).start()
    call = call_with_deadline(lambda cancel: seen.update(stopped=cancel.wait(30)), 30, run_cancel)
    assert call.cancelled and not call.timed_out


def test_whatever_the_call_raises_is_returned_not_raised():
    def leave(cancel: threading.Event) -> None:
        raise SystemExit(3)

    call = call_with_deadline(leave, 5)
    assert isinstance(call.error, SystemExit)


def test_run_tool_outcomes():
    def echo(text: str) -> str:
        """Echo."""
        if text == "fail":
            raise ToolError("refused: too big")  # the tool's own words: an error, not a policy refusal
        if text == "crash":
            raise KeyError("k")
        return text * 1000

    tool, context = FunctionTool(echo), ToolContext(settings=ToolsSettings())
    long = run_tool(tool, {"text": "ab\ud800"}, context, 5, max_chars=300)
    assert long.ok and long.truncated and len(long.output) < 400 and "\ud800" not in long.output
    failed = run_tool(tool, {"text": "fail"}, context, 5, max_chars=300)
    assert (failed.ok, failed.output, failed.refused) == (False, "refused: too big", None)
    crashed = run_tool(tool, {"text": "crash"}, context, 5, max_chars=300)
    assert not crashed.ok and crashed.output == "the tool failed: KeyError: 'k'"
