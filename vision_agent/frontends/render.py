"""Renderers of the event stream, terminal-free: any front end that writes to streams can use them.

- JSON lines: every event as one JSON object on one line, the exact text kept (escaped, never raw controls).
- Text: the answer on `out`; the agent's working (thoughts, tool calls and results, notes) on `err`.
Everything shown in text goes through vision_agent.frontends.terminal: model, tool and file text is never obeyed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TextIO

from vision_agent.core.events import Done, Event, Notice, Token, ToolCall, ToolResult, to_json
from vision_agent.errors import EXIT_INTERRUPTED
from vision_agent.frontends.terminal import safe, safe_json, safe_line


def write_events(events: Iterable[Event], out: TextIO, err: TextIO, *, json_lines: bool) -> int:
    """Render the stream; return the exit code its final `done` implies."""
    view = JsonLinesRenderer(out) if json_lines else TextRenderer(out, err)
    code = 0
    for event in events:
        view.show(event)
        if isinstance(event, Done):
            code = exit_code(event)
    return code


def exit_code(done: Done) -> int:
    if done.status == "cancelled":
        return EXIT_INTERRUPTED
    return done.error.exit_code if done.error is not None else 0


def try_write(stream: TextIO, text: str) -> bool:
    """Write and flush; False when the stream is gone (a closed pipe, a hung-up terminal)."""
    try:
        stream.write(text)
        stream.flush()
        return True
    except (OSError, ValueError):
        return False


class JsonLinesRenderer:
    def __init__(self, out: TextIO):
        self.out = out

    def show(self, event: Event) -> None:
        # JSON escapes control characters itself; safe_json escapes the few it leaves raw (C1, bidi).
        try_write(self.out, safe_json(to_json(event)) + "\n")


class TextRenderer:
    """Answer text on `out`; the agent's working (thoughts, calls, results) on `err`."""

    def __init__(self, out: TextIO, err: TextIO):
        self.out, self.err = out, err
        self.wrote_answer = False
        self.err_mid_line = False
        self.dim = _isatty(err)

    def show(self, event: Event) -> None:
        if isinstance(event, Token):
            if event.part == "answer":
                if self.err_mid_line:
                    self._line("")
                try_write(self.out, safe(event.text))
                self.wrote_answer = True
            else:
                if not self.err_mid_line:
                    self._err("thought: ")
                self._err(safe(event.text), dim=True)
                self.err_mid_line = True
        elif isinstance(event, ToolCall):
            arguments = safe_line(json.dumps(event.arguments, ensure_ascii=False))
            self._line(f"→ {safe_line(event.tool)} {arguments[:300]}")
        elif isinstance(event, ToolResult):
            lines = event.output.splitlines() or [""]
            more = f" (+{len(lines) - 6} lines)" if len(lines) > 6 else ""
            status = "ok" if event.ok else "error"
            body = "\n  ".join(safe_line(line[:200]) for line in lines[:6])
            self._line(f"← {safe_line(event.tool)} {status} ({event.seconds:.2f} s): {body}{more}")
        elif isinstance(event, Notice):
            self._line(f"vision-agent: note: {safe(event.message)}")
        elif isinstance(event, Done):
            self._finish(event)

    def _finish(self, done: Done) -> None:
        if self.wrote_answer:
            try_write(self.out, "\n")
            self.wrote_answer = False
        if done.status == "max_steps":
            self._line(
                f"vision-agent: the step limit was reached after {done.steps - 1} steps; answered without more tools"
            )
        elif done.status == "cancelled":
            self._line("vision-agent: cancelled")
        elif done.error is not None:
            self._line(f"vision-agent: {safe(done.error.message)}")
        elif self.err_mid_line:
            self._line("")

    def _line(self, text: str) -> None:
        if self.err_mid_line:
            try_write(self.err, "\n")
            self.err_mid_line = False
        if text:
            try_write(self.err, text + "\n")

    def _err(self, text: str, dim: bool = False) -> None:
        try_write(self.err, f"\x1b[2m{text}\x1b[0m" if dim and self.dim else text)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False
