"""The terminal side of `ask`: reading the prompt and attachments, signals, the approver on the terminal, and
the worker thread that keeps the main thread free for signals. The run itself is a Session's (sessions/), its
rendering frontends.render's.

The answer streams to stdout; thoughts, tool calls and diagnostics go to stderr. With --json every event goes
to stdout as one JSON line. SIGINT (Ctrl-C), SIGTERM and SIGHUP cancel the run: it still ends with `done`
(cancelled) within a second, and the exit code says which signal (130, 143, 129). A second signal quits at
once. Everything shown comes through vision_agent.frontends.terminal: text from the model, a tool or a file
never acts on the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TextIO

from vision_agent.config import Settings
from vision_agent.core.events import Done, Event, Token, ToolCall, UsageInfo
from vision_agent.core.messages import ImagePart
from vision_agent.errors import EXIT_INTERRUPTED, ConfigError, ContextOverflowError
from vision_agent.frontends.render import try_write as _try_write
from vision_agent.frontends.render import write_events
from vision_agent.frontends.terminal import safe_line

if TYPE_CHECKING:
    from vision_agent.core.agent import Approver

# Read at most this much of a prompt from stdin: a model's context is far smaller, and memory is finite.
MAX_PROMPT_BYTES = 8 * 1024 * 1024
# After a cancel, how long the run has to end with its own `done` before we end it ourselves.
CANCEL_GRACE_S = 0.8


def ask(args: argparse.Namespace, settings: Settings) -> int:
    """One turn through a Session: a new conversation, or the one -c / --cid names; the answer rendered."""
    from vision_agent.frontends.cli.ask import apply_run_flags

    images = load_attachments(args.attach, settings)  # before the model loads: bad input fails fast
    stdin_used = "-" in args.attach
    prompt = read_prompt(args.prompt, stdin_taken=stdin_used)
    apply_run_flags(args, settings)
    conversation = which_conversation(settings, latest=args.continue_conversation, ref=args.cid)
    interactive = not args.json and not stdin_used and sys.stdin.isatty() and sys.stderr.isatty()
    approver = terminal_approver() if interactive else None
    cancel = threading.Event()

    def run() -> Iterator[Event]:
        # The model loads in the worker, so that a signal during a long load is still answered at once.
        from vision_agent.sessions import Session

        session = Session.open(settings)
        try:
            yield from session.run(prompt, images, conversation=conversation, cancel=cancel, approver=approver)
        finally:
            session.close()

    with SignalCancel(cancel) as signals:
        worker = Background(run, cancel)
        code = write_events(worker.events(), sys.stdout, sys.stderr, json_lines=args.json)
    if signals.received is not None and code == EXIT_INTERRUPTED:
        code = 128 + signals.received
    if worker.abandoned:  # stuck in llama.cpp: do not wait for it, nor let interpreter shutdown meet it
        quit_now(code)
    return code


def which_conversation(settings: Settings, *, latest: bool, ref: str | None) -> str | None:
    """The id of the conversation to continue: the latest (-c), the one `ref` names (--cid), or None (new)."""
    if not latest and ref is None:
        return None
    from vision_agent.sessions.store import Store

    with Store.open(settings.store.path, limits=settings.images) as store:
        if ref is not None:
            return store.resolve(ref)
        found = store.latest()
    if found is None:
        raise ConfigError("no previous conversation to continue (-c): ask something without -c first")
    return found


def load_attachments(paths: list[str], settings: Settings) -> list[ImagePart]:
    """Every attachment's bytes, then the request's pixel budget from their headers, then decoding."""
    from vision_agent.core.images import decode_all, display_name, read_image_bytes

    limits = settings.images
    if paths.count("-") > 1:
        raise ConfigError("-a - (stdin) can be given only once")
    sources = []
    for path in paths:
        if path == "-":
            sources.append(("<stdin>", sys.stdin.buffer.read(limits.max_bytes + 1)))
        else:
            sources.append((display_name(path), read_image_bytes(path, max_bytes=limits.max_bytes)))
    return decode_all(sources, limits)


def read_prompt(prompt: str | None, *, stdin_taken: bool) -> str:
    if prompt is None and not stdin_taken and not sys.stdin.isatty():
        data = sys.stdin.buffer.read(MAX_PROMPT_BYTES + 1)
        if len(data) > MAX_PROMPT_BYTES:
            raise ContextOverflowError(f"the prompt on stdin is over {MAX_PROMPT_BYTES // 2**20} MiB")
        prompt = _valid_text(data, "the prompt on stdin")
    elif prompt is not None:
        # Arguments that are not valid UTF-8 arrive with surrogate escapes, which nothing later can encode.
        prompt = _valid_text(prompt.encode("utf-8", errors="surrogateescape"), "the prompt")
    if not prompt or not prompt.strip():
        raise ConfigError("no prompt: give PROMPT as an argument or pipe it on stdin")
    return prompt.strip()


def _valid_text(data: bytes, what: str) -> str:
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - data.count("\ufffd".encode())
    if bad > 0:
        print(f"vision-agent: note: {what} is not valid UTF-8; {bad} invalid byte sequence(s) became U+FFFD",
              file=sys.stderr)  # fmt: skip
    return text


def terminal_approver(err: TextIO = sys.stderr, answers: TextIO = sys.stdin) -> Approver:
    """Asks on the terminal before a tool under the `ask` policy runs; it receives the ToolCall event."""

    def approve(call: ToolCall) -> bool:
        shown = safe_line(json.dumps(call.arguments, ensure_ascii=False))
        err.write(f"\nvision-agent: run {safe_line(call.tool)} {shown[:400]}? [y/N] ")
        err.flush()
        return answers.readline().strip().lower() in ("y", "yes")

    return approve


class SignalCancel:
    """SIGINT, SIGTERM and SIGHUP cancel the run; a second one quits at once (its children killed first)."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self, cancel: threading.Event, err: TextIO = sys.stderr):
        self.cancel, self.err = cancel, err
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> SignalCancel:
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *_exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, _frame) -> None:
        if self.cancel.is_set():
            quit_now(128 + number)
        self.received = number
        self.cancel.set()
        hint = " (Ctrl-C again to quit at once)" if number == signal.SIGINT else ""
        _try_write(self.err, f"\nvision-agent: cancelling…{hint}\n")


def quit_now(code: int) -> None:
    """Leave at once: no process of ours outlives us, whatever thread is stuck where."""
    _kill_children()
    for stream in (sys.stdout, sys.stderr):
        _try_write(stream, "")
    os._exit(code)


def _kill_children() -> None:
    try:
        from vision_agent.tooling import sandbox

        kill_all = getattr(sandbox, "kill_all", None)
        if kill_all is not None:
            kill_all()
    except Exception:  # leaving anyway
        pass


class Background:
    """Run the event stream in a worker thread so that signals reach the main thread at once.

    Once the run is cancelled it has CANCEL_GRACE_S to end with its own `done`; a worker stuck in a
    call that cannot be interrupted (an image encode, a model load) gets a `done` written for it and is
    left behind (`abandoned`). An error raised before the first event (a bad model file) is raised in
    the caller's thread.
    """

    def __init__(self, start: Callable[[], Iterable[Event]], cancel: threading.Event):
        self.start, self.cancel = start, cancel
        self.abandoned = False

    def events(self) -> Iterator[Event]:
        events: queue.Queue = queue.Queue()
        end = object()

        def work():
            try:
                for event in self.start():
                    events.put(event)
            except BaseException as exc:  # handed to the main thread
                events.put(exc)
            finally:
                events.put(end)

        threading.Thread(target=work, name="agent", daemon=True).start()
        cancelled_at = None
        completion_tokens = 0
        done_seen = False  # after its done, a run still winding down (saving state) is only waited for
        stamp: dict = {}  # the run's ids, for a done written on its behalf
        while True:
            if self.cancel.is_set() and cancelled_at is None:
                cancelled_at = time.monotonic()
            try:
                event = events.get(timeout=0.05)
            except queue.Empty:
                if cancelled_at is not None and time.monotonic() - cancelled_at > CANCEL_GRACE_S:
                    self.abandoned = True
                    if done_seen:
                        return
                    usage = UsageInfo(completion_tokens=completion_tokens)
                    yield Done(status="cancelled", usage=usage, **stamp)
                    return
                continue
            if event is end:
                return
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, Token):
                completion_tokens += 1
            done_seen = done_seen or isinstance(event, Done)
            stamp = {"run_id": event.run_id, "conversation_id": event.conversation_id}
            yield event
