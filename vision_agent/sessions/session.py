"""The session service: one model and one tool registry, built once, serving many runs, each run recorded.

A front end opens a Session, then calls `run(prompt, images, conversation=...)` for each user turn and renders
the events it yields. Every event carries the run's `run_id` and its `conversation_id`; when the run ends
(answered, cancelled or failed) its turn is committed to the store in one transaction, with its status, before
the final `done` is yielded: a client that sees `done` finds the turn stored. No terminal, no Textual here.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from vision_agent.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from vision_agent.backends.base import Backend
    from vision_agent.config import Settings
    from vision_agent.core.agent import Approver
    from vision_agent.core.events import Done, Event
    from vision_agent.core.messages import ImagePart
    from vision_agent.sessions.store import StepRecord, Store
    from vision_agent.tooling import ToolRegistry

log = logging.getLogger(__name__)

# Sections a run may override; the model is loaded once per session, so its settings cannot change per run.
RUN_SECTIONS = ("generation", "images", "agent", "tools")


class Session:
    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        registry: ToolRegistry,
        *,
        model: str,
        mmproj: str | None,
        store: Store | None = None,
    ):
        self.settings = settings
        self.backend = backend
        self.registry = registry
        self.model, self.mmproj = model, mmproj
        self._store = store
        self._owns_store = store is None
        self._store_lock = threading.Lock()

    @classmethod
    def open(cls, settings: Settings, *, store: Store | None = None) -> Session:
        """Resolve the model and build the tools and the backend (the slow part: the model loads here).

        The store given is used as is (and left open by `close`); without one, the session opens the one the
        settings name when it first needs it, so that a store that cannot be opened still lets a new
        conversation be answered (its run then ends saying it could not be saved)."""
        from vision_agent.backends.factory import make_backend
        from vision_agent.catalog import resolve_model
        from vision_agent.tooling import build_registry

        registry = build_registry(settings)  # a bad tool setting fails before the model loads
        resolved = resolve_model(settings.model)
        backend = make_backend(resolved, settings.model)
        mmproj = str(resolved.mmproj) if resolved.mmproj else None
        return cls(settings, backend, registry, model=resolved.label, mmproj=mmproj, store=store)

    @property
    def store(self) -> Store:
        with self._store_lock:
            if self._store is None:
                from vision_agent.sessions.store import Store

                self._store = Store.open(self.settings.store.path, limits=self.settings.images)
            return self._store

    def close(self) -> None:
        try:
            self.backend.close()
        finally:
            if self._owns_store and self._store is not None:
                self._store.close()
                self._store = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # -- one run ------------------------------------------------------------------------------------------

    def run(
        self,
        prompt: str,
        images: list[ImagePart],
        *,
        conversation: str | None = None,
        new_id: str | None = None,
        cancel: threading.Event | None = None,
        approver: Approver | None = None,
        overrides: dict | None = None,
    ) -> Iterator[Event]:
        """One user turn in `conversation` (an id; None starts a new conversation titled from the prompt, with the
        id `new_id` when that is given).

        Raises before the first event when the overrides are invalid or the conversation cannot be loaded.
        """
        from vision_agent.core.agent import Agent
        from vision_agent.core.events import Notice
        from vision_agent.core.messages import Conversation, Message

        settings = self._run_settings(overrides)
        registry = self._run_registry(settings)
        run_id = uuid.uuid4().hex
        save_error: StoreError | None = None
        notes: list[str] = []
        if conversation is None:
            history = Conversation()
            try:  # the store titles it from the prompt's first line
                conversation = self.store.new_conversation(prompt, self.model, self.mmproj, new_id)
            except StoreError as exc:  # answer anyway; the run ends saying it was not saved
                save_error = exc
        else:
            loaded = self.store.load_with_notes(conversation)  # damaged turns are left out, each with a note
            history, notes = loaded.conversation, loaded.problems
        cancel = cancel or threading.Event()
        stamp = {"run_id": run_id, "conversation_id": conversation}
        agent = Agent(self.backend, settings, registry, approver=approver, conversation_id=conversation)
        turn = _TurnLog(prompt, images, before=len(history.messages))
        try:
            for event in agent.stream(prompt, images, history, cancel):
                turn.see(event)
                if turn.done is None:
                    yield event.model_copy(update=stamp)
                for note in notes:  # after run_started: what of the conversation the model will not see
                    yield Notice(message=note).model_copy(update=stamp)
                notes = []
            if turn.done is None:  # an agent always ends with done; a bug otherwise: record it as one
                raise RuntimeError("the run ended without a done event")
        except BaseException as exc:  # the consumer stopped early (GeneratorExit) or a bug: never half a turn
            if turn.done is None and conversation is not None and save_error is None:
                status = "cancelled" if isinstance(exc, GeneratorExit) else "error"
                error = None if status == "cancelled" else f"{type(exc).__name__}: {exc}"
                self._try_commit(conversation, turn.record(run_id, status, error), [Message.user(prompt, images)])
            raise
        done = turn.done
        if save_error is None and conversation is not None:
            messages = history.messages[turn.before :] if done.status in ("ok", "max_steps") else []
            record = turn.record(run_id, done.status, done.error.message if done.error else None)
            try:
                self.store.commit_turn(conversation, record, messages or [Message.user(prompt, images)])
            except StoreError as exc:
                save_error = exc
        if save_error is not None:
            done, notice = _unsaved(done, save_error)
            if notice is not None:
                yield notice.model_copy(update=stamp)
        yield done.model_copy(update=stamp)
        if done.status in ("ok", "max_steps") and conversation is not None:
            self._finish(conversation)

    def _finish(self, conversation: str) -> None:
        """Let the backend keep what it can of this conversation (a saved KV state); a cache, so never fatal."""
        finish = getattr(self.backend, "finish_conversation", None)
        if finish is None:
            return
        try:
            finish(conversation)
        except Exception:
            log.warning("the conversation's model state could not be saved", exc_info=log.isEnabledFor(logging.DEBUG))

    def _try_commit(self, conversation: str, record, messages) -> None:
        try:
            self.store.commit_turn(conversation, record, messages)
        except Exception:
            log.debug("the interrupted turn could not be recorded", exc_info=True)

    def _run_settings(self, overrides: dict | None) -> Settings:
        """A copy of the session's settings with the run's overrides merged in; the shared ones never change."""
        if not overrides:
            return self.settings
        from pydantic import ValidationError

        unknown = sorted(set(overrides) - set(RUN_SECTIONS))
        if unknown:
            raise ConfigError(
                f"run overrides: '{unknown[0]}' cannot change per run (only {', '.join(RUN_SECTIONS)} can)"
            )
        update = {}
        for section, values in overrides.items():
            if not isinstance(values, dict):
                raise ConfigError(f"run overrides: '{section}' must be a table of settings")
            current = getattr(self.settings, section)
            try:
                update[section] = type(current).model_validate(_merged(current.model_dump(), values))
            except ValidationError as exc:
                error = exc.errors()[0]
                where = ".".join(str(p) for p in (section, *error["loc"]))
                raise ConfigError(f"run overrides: {where}: {error['msg']}") from None
        return self.settings.model_copy(update=update)

    def _run_registry(self, settings: Settings) -> ToolRegistry:
        if settings.tools is self.settings.tools:
            return self.registry
        from vision_agent.tooling import ToolRegistry

        return ToolRegistry(self.registry.tools, settings.tools)  # the same loaded tools, the run's policies


class _TurnLog:
    """What a run did, gathered from its events: the record the store keeps of the turn."""

    def __init__(self, prompt: str, images: list[ImagePart], before: int):
        self.prompt, self.images, self.before = prompt, images, before
        self.steps: list[StepRecord] = []
        self._pending: dict | None = None
        self.answer_pieces: list[str] = []
        self.answer: str | None = None
        self.done: Done | None = None

    def see(self, event: Event) -> None:
        from vision_agent.core.events import Answer, Done, Token, ToolCall, ToolResult

        if isinstance(event, ToolCall):
            self._flush()
            self._pending = {"tool": event.tool, "arguments": event.arguments}
        elif isinstance(event, ToolResult):
            pending = self._pending or {"tool": event.tool, "arguments": {}}
            self._pending = None
            self._add(pending, event.ok, event.output)
        elif isinstance(event, Token) and event.part == "answer":
            self.answer_pieces.append(event.text)
        elif isinstance(event, Answer):
            self.answer = event.text
        elif isinstance(event, Done):
            self._flush()
            self.done = event

    def _flush(self) -> None:
        if self._pending is not None:  # a call without a result: cancelled while it ran
            self._add(self._pending, None, "")
            self._pending = None

    def _add(self, call: dict, ok: bool | None, output: str) -> None:
        from vision_agent.sessions.store import StepRecord

        self.steps.append(StepRecord(tool=call["tool"], arguments=call["arguments"], ok=ok, output=output))

    def record(self, run_id: str, status: str, error: str | None):
        from vision_agent.sessions.store import TurnRecord

        self._flush()
        usage = self.done.usage.model_dump() if self.done is not None else {}
        # A cancelled or failed run keeps what it had streamed of its answer, for `conversations show`.
        answer = self.answer if self.answer is not None else "".join(self.answer_pieces)
        return TurnRecord(
            run_id=run_id,
            prompt=self.prompt,
            images=[image.sha256 for image in self.images],
            answer=answer,
            status=status,
            steps=list(self.steps),
            usage=usage,
            error=error,
        )


def _unsaved(done: Done, exc: StoreError) -> tuple[Done, Any]:
    """The done of a run whose turn could not be stored: an answered run fails with the store's exit code; a
    cancelled or failed one keeps its own outcome and says so in a notice."""
    from vision_agent.core.events import ErrorInfo, Notice

    message = f"the conversation could not be saved: {exc}"
    if done.status in ("ok", "max_steps"):
        error = ErrorInfo(kind=exc.kind, message=message, exit_code=exc.exit_code)
        return done.model_copy(update={"status": "error", "error": error}), None
    return done, Notice(message=message)


def _merged(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged
