"""One-shot `ask`: the answer streams to stdout; thoughts, tool calls and diagnostics go to stderr.

With --json every event goes to stdout as one JSON line. Ctrl-C cancels the run cleanly (the stream
still ends with `done`); a second Ctrl-C exits at once.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import TextIO

from vision_agent.config import Settings
from vision_agent.errors import EXIT_INTERRUPTED, ConfigError
from vision_agent.events import Done, Event, Notice, Token, ToolCall, ToolResult, to_json
from vision_agent.messages import ImagePart


def ask(args: argparse.Namespace, settings: Settings) -> int:
    from vision_agent.agent import Agent
    from vision_agent.backends.factory import make_backend
    from vision_agent.catalog import resolve_model
    from vision_agent.history import load_last, save_last
    from vision_agent.messages import Conversation
    from vision_agent.tooling import apply_tool_flags, build_registry

    images = load_attachments(args.attach, settings)  # before the model loads: bad input fails fast
    stdin_used = "-" in args.attach
    prompt = read_prompt(args.prompt, stdin_taken=stdin_used)
    settings.tools = apply_tool_flags(settings.tools, args.tools, args.no_tools, args.tool_policy or [])
    registry = build_registry(settings)
    conversation = load_last() if args.continue_conversation else Conversation()
    interactive = not args.json and not stdin_used and sys.stdin.isatty() and sys.stderr.isatty()
    backend = make_backend(resolve_model(settings.model), settings.model)
    try:
        agent = Agent(backend, settings, registry, approver=terminal_approver() if interactive else None)
        cancel = threading.Event()
        events = in_background(lambda: agent.stream(prompt, images, conversation, cancel), cancel)
        code = write_events(events, sys.stdout, sys.stderr, json_lines=args.json)
    finally:
        backend.close()
    if code == 0:
        save_last(conversation)
    return code


def load_attachments(paths: list[str], settings: Settings) -> list[ImagePart]:
    from vision_agent.images import decode_image, read_image_file

    limits = {"max_bytes": settings.images.max_bytes, "max_pixels": settings.images.max_pixels}
    if paths.count("-") > 1:
        raise ConfigError("-a - (stdin) can be given only once")
    images = []
    for path in paths:
        if path == "-":
            data = sys.stdin.buffer.read(limits["max_bytes"] + 1)
            images.append(decode_image(data, source="<stdin>", **limits))
        else:
            images.append(read_image_file(path, **limits))
    return images


def read_prompt(prompt: str | None, *, stdin_taken: bool) -> str:
    if prompt is None and not stdin_taken and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    if not prompt or not prompt.strip():
        raise ConfigError("no prompt: give PROMPT as an argument or pipe it on stdin")
    return prompt.strip()


def terminal_approver(err: TextIO = sys.stderr, answers: TextIO = sys.stdin):
    """Asks on the terminal before a tool under the `ask` policy runs."""

    def approve(tool: str, arguments: dict) -> bool:
        shown = json.dumps(arguments, ensure_ascii=False)
        err.write(f"\nvision-agent: run {tool} {shown[:400]}? [y/N] ")
        err.flush()
        return answers.readline().strip().lower() in ("y", "yes")

    return approve


def in_background(start, cancel: threading.Event, err: TextIO = sys.stderr) -> Iterator[Event]:
    """Run the event stream in a worker thread so that Ctrl-C reaches the main thread at once.

    The first Ctrl-C asks the run to stop (it still ends with `done`); a second one quits.
    """
    events: queue.Queue = queue.Queue()
    end = object()

    def work():
        try:
            for event in start():
                events.put(event)
        finally:
            events.put(end)

    threading.Thread(target=work, name="agent", daemon=True).start()
    while True:
        try:
            event = events.get()
        except KeyboardInterrupt:
            if cancel.is_set():
                raise
            cancel.set()
            err.write("\nvision-agent: cancelling… (Ctrl-C again to quit at once)\n")
            err.flush()
            continue
        if event is end:
            return
        yield event


def write_events(events: Iterable[Event], out: TextIO, err: TextIO, *, json_lines: bool) -> int:
    """Render the stream; return the exit code its final `done` implies."""
    view = _JsonView(out) if json_lines else _TextView(out, err)
    exit_code = 0
    for event in events:
        view.show(event)
        if isinstance(event, Done):
            exit_code = _exit_code(event)
            if not json_lines:
                view.finish(event)
    return exit_code


def _exit_code(done: Done) -> int:
    if done.status == "cancelled":
        return EXIT_INTERRUPTED
    return done.error.exit_code if done.error is not None else 0


class _JsonView:
    def __init__(self, out: TextIO):
        self.out = out

    def show(self, event: Event) -> None:
        self.out.write(to_json(event) + "\n")
        self.out.flush()


class _TextView:
    """Answer text on stdout; the agent's working (thoughts, calls, results) on stderr."""

    def __init__(self, out: TextIO, err: TextIO):
        self.out, self.err = out, err
        self.wrote_answer = False
        self.err_mid_line = False
        self.dim = err.isatty()

    def show(self, event: Event) -> None:
        if isinstance(event, Token):
            if event.part == "answer":
                if self.err_mid_line:
                    self._line("")
                self.out.write(event.text)
                self.out.flush()
                self.wrote_answer = True
            else:
                if not self.err_mid_line:
                    self._err("thought: ")
                self._err(event.text, dim=True)
                self.err_mid_line = True
        elif isinstance(event, ToolCall):
            self._line(f"→ {event.tool} {json.dumps(event.arguments, ensure_ascii=False)[:300]}")
        elif isinstance(event, ToolResult):
            lines = event.output.splitlines() or [""]
            more = f" (+{len(lines) - 6} lines)" if len(lines) > 6 else ""
            status = "ok" if event.ok else "error"
            body = "\n  ".join(line[:200] for line in lines[:6])
            self._line(f"← {event.tool} {status} ({event.seconds:.2f} s): {body}{more}")
        elif isinstance(event, Notice):
            self._line(f"vision-agent: note: {event.message}")

    def finish(self, done: Done) -> None:
        if self.wrote_answer:
            self.out.write("\n")
            self.out.flush()
        if done.status == "max_steps":
            self._line(
                f"vision-agent: the step limit was reached after {done.steps - 1} steps; answered without more tools"
            )
        elif done.status == "cancelled":
            self._line("vision-agent: cancelled")
        elif done.error is not None:
            self._line(f"vision-agent: {done.error.message}")
        elif self.err_mid_line:
            self._line("")

    def _line(self, text: str) -> None:
        if self.err_mid_line:
            self.err.write("\n")
            self.err_mid_line = False
        if text:
            self.err.write(text + "\n")
        self.err.flush()

    def _err(self, text: str, dim: bool = False) -> None:
        self.err.write(f"\x1b[2m{text}\x1b[0m" if dim and self.dim else text)
        self.err.flush()
