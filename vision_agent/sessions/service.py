"""Prompts from a long-lived front end (the JSON-lines and ACP servers): a small queue and one worker thread that
owns the model, so that cancels, status and approval answers are handled at once by the caller's reader thread
while a prompt runs.

Every submitted Job ends in exactly one of two ways: `fail(error)` without any event (it could not start: an
image, an unknown conversation, bad overrides), or its run's events ending with one `Done`. A job cancelled
while it waits gets only `Done(status="cancelled")`: it never ran, so nothing of it is stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vision_agent.errors import ConfigError, VisionAgentError

if TYPE_CHECKING:
    from vision_agent.core.events import Event, ToolCall
    from vision_agent.sessions.session import Session

log = logging.getLogger(__name__)

ImageInput = str | bytes  # a file path, a data: URI (base64), or an image file's bytes


class Busy(VisionAgentError):
    """The queue is full: the client should wait for a `done` and send again."""

    exit_code = 2
    kind = "busy"


class InternalError(VisionAgentError):
    """A bug met while starting a prompt: reported to the client, and the server goes on."""

    exit_code = 1
    kind = "internal"


@dataclass(eq=False)
class Job:
    key: str  # the caller's handle: the request id (jsonl), the session id (acp)
    prompt: str
    emit: Callable[[Event], None]  # each event of the run, from the worker thread; the last is Done
    fail: Callable[[VisionAgentError], None]  # the prompt could not start; called instead of any event
    images: list[ImageInput] = field(default_factory=list)
    conversation: str | None = None  # a stored conversation to continue: id, id prefix or title prefix
    new_id: str | None = None  # without `conversation`: the id the new conversation gets
    overrides: dict | None = None  # Session.run's per-run settings
    approver: Callable[[ToolCall], bool] | None = None  # for tools whose policy is `ask`; runs in the worker
    cancel: threading.Event = field(default_factory=threading.Event)
    ended: bool = field(default=False, init=False)  # its done was delivered


class PromptService:
    def __init__(self, session: Session, *, max_queued: int = 4):
        self.session = session
        self.max_queued = max_queued
        self._lock = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: Job | None = None
        self._closed = False
        self._completed = 0
        self._started_at = time.monotonic()
        self._worker = threading.Thread(target=self._work, name="prompts", daemon=True)
        self._worker.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                raise ConfigError("the server is shutting down: no new prompts")
            if self._find(job.key) is not None:
                raise ConfigError(f"a prompt with id {job.key!r} is already queued or running")
            if len(self._queue) >= self.max_queued:
                raise Busy(f"busy: {len(self._queue)} prompts already wait (the limit); send it again after a done")
            self._queue.append(job)
            self._lock.notify_all()

    def cancel(self, key: str) -> bool:
        """The running job: its run is cancelled (it ends with its own done, recorded as cancelled). A queued one
        is dropped and answered with a cancelled done. False when no job has this key."""
        with self._lock:
            job = self._find(key)
            if job is None:
                return False
            job.cancel.set()
            if job is self._running:
                return True
            self._queue.remove(job)
        _deliver_cancelled(job)
        return True

    def cancel_all(self) -> None:
        with self._lock:
            dropped = list(self._queue)
            self._queue.clear()
            for job in (*dropped, self._running):
                if job is not None:
                    job.cancel.set()
        for job in dropped:
            _deliver_cancelled(job)

    def status(self) -> dict:
        with self._lock:
            return {
                "running": self._running.key if self._running else None,
                "queued": [job.key for job in self._queue],
                "completed": self._completed,
                "model": self.session.model,
                "mmproj": self.session.mmproj,
                "uptime_s": round(time.monotonic() - self._started_at, 3),
            }

    def running(self, key: str) -> bool:
        with self._lock:
            return self._find(key) is not None

    def close(self, timeout: float | None = None) -> bool:
        """Accept no more prompts; the queued and running ones finish. True when the worker is done."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._worker.join(timeout)
        return not self._worker.is_alive()

    # -- the worker -----------------------------------------------------------------------------------------

    def _find(self, key: str) -> Job | None:
        """The queued or running job with this key; a running one that delivered its done is over for its client
        (the worker may still be saving state), so its key is free again."""
        running = self._running
        if running is not None and running.key == key and not running.ended:
            return running
        return next((job for job in self._queue if job.key == key), None)

    def _end(self, job: Job) -> None:
        """The job's ending is about to be delivered: from then on its key may be used again."""
        with self._lock:
            job.ended = True

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if not self._queue:
                    return
                job = self._running = self._queue.popleft()
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running = None
                    self._completed += 1

    def _run(self, job: Job) -> None:
        from vision_agent.core.events import Done

        started = False
        try:
            images = load_image_inputs(job.images, self.session.settings)
            conversation = self.session.store.resolve(job.conversation) if job.conversation else None
            if job.cancel.is_set():  # cancelled while its images were read
                self._end(job)
                _deliver_cancelled(job)
                return
            events = self.session.run(
                job.prompt,
                images,
                conversation=conversation,
                new_id=job.new_id,
                cancel=job.cancel,
                approver=job.approver,
                overrides=job.overrides,
            )
            for event in events:
                started = True
                if isinstance(event, Done):
                    self._end(job)
                _deliver(job.emit, event)
        except VisionAgentError as exc:
            if not started:
                self._end(job)
                _deliver(job.fail, exc)
            else:  # a Session ends every run it started with a done; this is a bug, reported as one
                log.error("a run failed after it started: %s", exc)
        except Exception as exc:
            log.debug("a prompt failed", exc_info=True)
            if not started:
                self._end(job)
                _deliver(job.fail, InternalError(f"internal error: {type(exc).__name__}: {exc}"))
            else:
                log.error("a run failed after it started: %s: %s", type(exc).__name__, exc)


def _deliver(callback: Callable[[Any], None], value: Any) -> None:
    """A front end's callback failing (a client gone) must not stop the worker."""
    try:
        callback(value)
    except Exception:
        log.debug("a front end's callback failed", exc_info=True)


def _deliver_cancelled(job: Job) -> None:
    from vision_agent.core.events import Done

    _deliver(job.emit, Done(status="cancelled"))


def load_image_inputs(inputs: list[ImageInput], settings) -> list:
    """ImageParts from paths, data: URIs and raw bytes, within the settings' budgets (see core.images)."""
    from vision_agent.core.images import load_images

    return load_images(inputs, settings.images)


class Replies:
    """Answers a client gives by key (approval answers, responses to our own JSON-RPC requests), each awaited
    by one thread with a deadline. No answer in time, or a cancel, is None: the caller treats it as a refusal."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._waiting: dict[str, list] = {}  # key -> [answered, value]
        self._closed = False  # the client can answer no more (its input ended): every wait ends at once

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def expect(self, key: str) -> None:
        with self._lock:
            self._waiting[key] = [False, None]

    def answer(self, key: str, value: Any) -> bool:
        with self._lock:
            slot = self._waiting.get(key)
            if slot is None or slot[0]:
                return False
            slot[0], slot[1] = True, value
            self._lock.notify_all()
            return True

    def wait(self, key: str, timeout: float, cancel: threading.Event | None = None) -> Any | None:
        deadline = time.monotonic() + timeout
        with self._lock:
            try:
                while True:
                    slot = self._waiting.get(key)
                    if slot is None or slot[0]:
                        return slot[1] if slot else None
                    left = deadline - time.monotonic()
                    if left <= 0 or self._closed or (cancel is not None and cancel.is_set()):
                        return None
                    self._lock.wait(min(left, 0.05))  # short: a cancel is an Event, not a notify of ours
            finally:
                self._waiting.pop(key, None)

    def pending(self) -> list[str]:
        with self._lock:
            return [key for key, slot in self._waiting.items() if not slot[0]]
