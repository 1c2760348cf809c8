"""The observe → interpret → act loop: one typed event stream per user turn.

Each step, the model writes a thought and then either calls a tool or answers. Tool results come
back as delimited observations, errors included, and the loop goes on until an answer, the step cap
(then one last step with the tools withdrawn), cancellation, or a failure that ends the run.

Only the loop lives here: the step format is step_format's, fitting the context is context_window's,
calling a tool under its deadline is tooling.runner's.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from vision_agent.backends.base import Backend, Finished, GenerationRequest, TextDelta
from vision_agent.config import Settings
from vision_agent.core import context_window
from vision_agent.core.context_window import View, visible_messages
from vision_agent.core.events import (
    Answer,
    Done,
    ErrorInfo,
    Event,
    ImageRef,
    Notice,
    RunStarted,
    Token,
    ToolCall,
    ToolResult,
    UsageInfo,
)
from vision_agent.core.messages import Conversation, ImagePart, Message
from vision_agent.core.observations import observation
from vision_agent.core.prompts import load_prompt
from vision_agent.core.step_format import (
    AnswerStep,
    StepStreamer,
    ToolStep,
    parse_step,
    step_grammar,
    step_token_budget,
)
from vision_agent.errors import ContextOverflowError, StepFormatError, VisionAgentError
from vision_agent.tooling import Tool, ToolContext, ToolOutcome, ToolRegistry, run_tool

log = logging.getLogger(__name__)

# Decides whether a call under the "ask" policy may run; it receives the ToolCall event. None: nobody to ask.
Approver = Callable[[ToolCall], bool]
# How much of a malformed step is shown back to the model with the format reminder: enough to see the
# mistake, little enough that the retry's prompt grows by a bounded amount (a step cut off at the token
# limit would otherwise come back whole and could push the retry out of the context).
MAX_FEEDBACK_CHARS = 300


class Cancelled(Exception):
    pass


@dataclass
class _Run:
    """What one run accumulates: the messages of this turn, the usage totals, and its format retries."""

    messages: list[Message]
    steps: int = 0
    usage: UsageInfo = field(default_factory=UsageInfo)
    format_errors: int = 0
    finishes: list[Finished] = field(default_factory=list)
    feedback_at: int | None = None  # where the latest malformed step and its reminder are in `messages`


@dataclass(frozen=True)
class _Step:
    """What one generation request is for: its grammar and its token budget."""

    grammar: str | None
    max_tokens: int


class Agent:
    def __init__(
        self,
        backend: Backend,
        settings: Settings,
        registry: ToolRegistry | None = None,
        approver: Approver | None = None,
        conversation_id: str | None = None,
    ):
        self.backend = backend
        self.settings = settings
        self.registry = registry
        self.approver = approver
        self.conversation_id = conversation_id

    def stream(
        self,
        prompt: str,
        images: list[ImagePart],
        conversation: Conversation,
        cancel: threading.Event | None = None,
    ) -> Iterator[Event]:
        """Run one user turn. The conversation gains the turn only when the run ends with an answer."""
        cancel = cancel or threading.Event()
        yield RunStarted(
            model=self.backend.label,
            prompt=prompt,
            images=[ImageRef(sha256=i.sha256, width=i.width, height=i.height, source=i.source) for i in images],
        )
        run = _Run(messages=[Message.user(prompt, images)])
        tools = self.registry.enabled() if self.registry else []
        try:
            context_window.check_prompt_size(self.backend, prompt)
            if tools:
                yield from self._agent_loop(run, tools, conversation, cancel)
            else:
                yield from self._plain_turn(run, conversation, cancel)
        except Cancelled:
            yield Done(status="cancelled", steps=run.steps, usage=run.usage)
        except VisionAgentError as exc:
            yield self._failed(run, exc.kind, str(exc), exc.exit_code)
        except Exception as exc:  # a bug or an unexpected llama.cpp failure: still end the stream properly
            log.debug("the run failed", exc_info=True)
            yield self._failed(run, "internal", f"{type(exc).__name__}: {exc}", 1)

    # -- the two modes ------------------------------------------------------------------------------

    def _plain_turn(self, run: _Run, conversation: Conversation, cancel: threading.Event) -> Iterator[Event]:
        """No tools enabled: exactly the model's chat format, every token part of the answer."""
        pieces: list[str] = []
        step = _Step(grammar=None, max_tokens=self.settings.generation.max_tokens)
        for delta in self._generate(self._system_text(None), conversation, run, step, cancel):
            if isinstance(delta, Notice):
                yield delta
                continue
            pieces.append(delta)
            yield Token(text=delta, part="answer")
        answer = "".join(pieces)
        conversation.add_turn([*run.messages, Message.assistant(answer)])
        yield Answer(text=answer, finish_reason=_answer_reason(run))
        yield Done(status="ok", steps=run.steps, usage=run.usage)

    def _agent_loop(
        self, run: _Run, tools: list[Tool], conversation: Conversation, cancel: threading.Event
    ) -> Iterator[Event]:
        agent, max_tokens = self.settings.agent, self.settings.generation.max_tokens
        system = self._system_text(tools)
        bounds = {"max_thought_chars": agent.max_thought_chars, "max_argument_chars": agent.max_argument_chars}
        # A tool step under the grammar gets the tokens its bounds need, so that it can always finish.
        step = _Step(step_grammar(tools, **bounds), step_token_budget(tools, max_tokens, **bounds))
        while True:
            final = run.steps >= agent.max_steps
            if final:
                run.messages.append(Message.user(load_prompt("agent/final.txt").format(max_steps=agent.max_steps)))
                step = _Step(step_grammar([], **bounds), step_token_budget([], max_tokens, **bounds))
            streamer = StepStreamer()
            pieces: list[str] = []
            for delta in self._generate(system, conversation, run, step, cancel):
                if isinstance(delta, Notice):
                    yield delta
                    continue
                pieces.append(delta)
                for part, text in streamer.feed(delta):
                    yield Token(text=text, part=part)
            for part, text in streamer.finish():
                yield Token(text=text, part=part)
            text = "".join(pieces)
            try:
                parsed = parse_step(text)
            except StepFormatError as exc:
                if run.finishes[-1].reason == "length":
                    exc = StepFormatError(f"{exc}; {self._cut_off(run, step)}")
                if final or run.format_errors >= agent.format_retries:
                    raise StepFormatError(
                        f"the model did not follow the step format ({exc}) after {run.format_errors + 1} tries"
                    ) from None
                run.format_errors += 1
                yield Notice(message=f"step {run.steps}: malformed ({exc}); asking the model again")
                self._feed_back(run, text, exc)
                continue
            run.messages.append(Message.assistant(text))
            if isinstance(parsed, AnswerStep):
                conversation.add_turn(run.messages)
                yield Answer(text=parsed.answer, finish_reason=_answer_reason(run))
                yield Done(status="max_steps" if final else "ok", steps=run.steps, usage=run.usage)
                return
            if final:  # only possible without a grammar: the model insists on a tool
                raise StepFormatError(f"the model called {parsed.tool} after the step limit instead of answering")
            yield from self._act(parsed, run, conversation, cancel)

    def _cut_off(self, run: _Run, step: _Step) -> str:
        if run.finishes[-1].usage.completion_tokens >= step.max_tokens:
            return f"the step was cut off at the {step.max_tokens}-token limit"
        return f"the step was cut off at the end of the {self.backend.context_size}-token context"

    def _feed_back(self, run: _Run, text: str, error: StepFormatError) -> None:
        """Show the model (an excerpt of) its malformed step and the format; it replaces an earlier one."""
        if run.feedback_at is not None:
            del run.messages[run.feedback_at :]
        shown = text if len(text) <= MAX_FEEDBACK_CHARS else text[:MAX_FEEDBACK_CHARS] + " …"
        run.feedback_at = len(run.messages)
        run.messages.append(Message.assistant(shown))
        run.messages.append(Message.user(load_prompt("agent/format_error.txt").format(error=error)))

    def _act(self, step: ToolStep, run: _Run, conversation: Conversation, cancel: threading.Event) -> Iterator[Event]:
        assert self.registry is not None  # only the agent loop acts, and only with tools
        call = ToolCall(
            step=run.steps, tool=step.tool, arguments=_as_arguments(step.arguments, self.registry.get(step.tool))
        )
        yield call
        outcome = self._call_tool(call, run, conversation, cancel)
        if cancel.is_set():
            raise Cancelled
        if outcome.refused is not None:
            yield Notice(message=f"{step.tool}: {outcome.refused}")
        yield ToolResult(
            step=run.steps,
            tool=step.tool,
            ok=outcome.ok,
            output=outcome.output,
            truncated=outcome.truncated,
            seconds=outcome.seconds,
            refused=outcome.refused,
        )
        run.messages.append(Message.user(observation(step.tool, outcome.ok, outcome.output)))

    # -- tools ----------------------------------------------------------------------------------------

    def _call_tool(self, call: ToolCall, run: _Run, conversation: Conversation, cancel: threading.Event) -> ToolOutcome:
        assert self.registry is not None
        name, registry = call.tool, self.registry
        tool = registry.get(name)
        if tool is None or registry.policy(name) == "off":
            available = ", ".join(t.name for t in registry.enabled())
            unknown = f"unknown tool {name!r}; the available tools are: {available}"
            # An off tool was hidden from the model: it reads "unknown", the user reads the refusal.
            refused = None if tool is None else "refused: its policy is off"
            return ToolOutcome(ok=False, output=unknown, refused=refused)
        if registry.policy(name) == "ask":
            reason = self._refusal(call)
            if reason is not None:
                text = load_prompt("agent/refused.txt").format(tool=name, reason=reason)
                return ToolOutcome(ok=False, output=text, refused=reason)
        images = [*conversation.images, *(i for m in run.messages for i in m.images)]
        context = ToolContext(images=images, settings=registry.settings, cancel=cancel)
        return run_tool(
            tool, call.arguments, context, registry.settings.timeout_s, self.settings.agent.max_result_chars
        )

    def _refusal(self, call: ToolCall) -> str | None:
        """None when the call is approved; otherwise why not."""
        if self.approver is None:
            return "nobody is available to approve it (not an interactive terminal)"
        try:
            return None if self.approver(call) else "the user declined"
        except Exception as exc:  # e.g. the terminal went away mid-question
            return f"approval failed ({type(exc).__name__})"

    # -- generation ---------------------------------------------------------------------------------

    def _system_text(self, tools: list[Tool] | None) -> str:
        base = self.settings.agent.system_prompt
        base = load_prompt("system.txt") if base is None else base
        if not tools:
            return base
        listing = "\n".join(
            f"- {t.name}: {t.description}\n  Input schema: {json.dumps(t.parameters.get('properties', {}))}"
            for t in tools
        )
        instructions = load_prompt("agent/tools.txt").format(tools=listing)
        return f"{base}\n\n{instructions}" if base else instructions

    def _request(
        self, system: str, conversation: Conversation, run: _Run, step: _Step, view: View | None = None
    ) -> GenerationRequest:
        generation = self.settings.generation
        history = [m for m in visible_messages(conversation, view) if m.role != "system"]
        prefix = [Message.system(system)] if system else []
        return GenerationRequest(
            messages=[*prefix, *history, *run.messages],
            temperature=generation.temperature,
            top_p=generation.top_p,
            max_tokens=step.max_tokens,
            seed=generation.seed,
            stop=list(generation.stop),
            grammar=step.grammar,
            reserve=self._reserve(),
            conversation_id=self.conversation_id,
        )

    def _reserve(self) -> int:
        return context_window.answer_reserve(self.backend, self.settings.generation.max_tokens)

    def _generate(
        self, system: str, conversation: Conversation, run: _Run, step: _Step, cancel: threading.Event
    ) -> Iterator[str | Notice]:
        """Text deltas of one step, preceded by a notice when older turns had to leave the context."""
        if cancel.is_set():
            raise Cancelled
        run.steps += 1
        message = context_window.hide_what_cannot_fit(self.backend, conversation)
        if message is not None:
            yield Notice(message=message)
        request = self._request(system, conversation, run, step)
        stream = self.backend.generate(dataclasses.replace(request, cancel=cancel))
        try:
            first = next(stream, None)
        except ContextOverflowError as exc:
            stream.close()
            notice, request = self._fit(system, conversation, run, step, exc)
            yield notice
            stream = self.backend.generate(dataclasses.replace(request, cancel=cancel))
            first = next(stream, None)
        try:
            for chunk in itertools.chain([first] if first is not None else [], stream):
                if isinstance(chunk, TextDelta):
                    # After a cancel the backend ends the stream at its next token with Finished("cancelled")
                    # and the usage so far; text still held back until then is not shown.
                    if not cancel.is_set():
                        yield chunk.text
                elif isinstance(chunk, Finished):
                    run.finishes.append(chunk)
                    run.usage = run.usage.then(chunk.usage)
                    if chunk.reason == "cancelled":
                        raise Cancelled
        finally:
            stream.close()
        if cancel.is_set():  # a backend that does not look at request.cancel (replay) ran to its end
            raise Cancelled

    def _fit(
        self, system: str, conversation: Conversation, run: _Run, step: _Step, overflow: ContextOverflowError
    ) -> tuple[Notice, GenerationRequest]:
        """The request after hiding older turns. A retry that still does not fit leaves out the malformed
        step it quoted (the reminder stays), so a format retry never turns into a context overflow."""

        def fit() -> context_window.Fit:
            return context_window.fit_after_overflow(
                self.backend,
                conversation,
                lambda view: self._request(system, conversation, run, step, view),
                self._reserve(),
                overflow,
            )

        try:
            fitted = fit()
        except ContextOverflowError:
            if run.feedback_at is None or run.messages[run.feedback_at].role != "assistant":
                raise
            del run.messages[run.feedback_at]
            fitted = fit()
        request = self._request(system, conversation, run, step)
        if fitted.full:
            request.reserve = 0  # it fits, with less room for the answer than usual
        return Notice(message=fitted.notice), request

    def _failed(self, run: _Run, kind: str, message: str, exit_code: int) -> Done:
        return Done(
            status="error",
            steps=run.steps,
            usage=run.usage,
            error=ErrorInfo(kind=kind, message=message, exit_code=exit_code),
        )


def _answer_reason(run: _Run) -> Literal["stop", "length"]:
    return "length" if run.finishes[-1].reason == "length" else "stop"


def _as_arguments(value: object, tool: Tool | None) -> dict:
    """A bare value for a one-parameter tool is taken as that parameter (small models do this)."""
    if isinstance(value, dict):
        return value
    properties = list((tool.parameters.get("properties") or {}) if tool else {})
    if len(properties) >= 1 and isinstance(value, (str, int, float)):
        return {properties[0]: value}
    return {"value": value}
