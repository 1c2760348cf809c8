"""The observe → interpret → act loop: one typed event stream per user turn.

Each step, the model writes a thought and then either calls a tool or answers. Tool results come
back as delimited observations, errors included, and the loop goes on until an answer, the step cap
(then one last step with the tools withdrawn), cancellation, or a failure that ends the run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from vision_agent.backends.base import Backend, Finished, GenerationRequest, TextDelta
from vision_agent.config import Settings
from vision_agent.core.context_window import fitting_start, plan_trim, visible_messages
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
from vision_agent.core.observations import observation, truncate
from vision_agent.core.prompts import load_prompt
from vision_agent.core.step_format import AnswerStep, StepStreamer, ToolStep, parse_step, step_grammar
from vision_agent.errors import ContextOverflowError, StepFormatError, ToolError, VisionAgentError
from vision_agent.text import valid_text
from vision_agent.tooling import Tool, ToolContext, ToolRegistry

log = logging.getLogger(__name__)

# Decides whether a call under the "ask" policy may run; None means nobody is there to ask.
Approver = Callable[[str, dict], bool]
# What is kept of any tool's result before anything else sees it (a plugin may return anything).
MAX_RESULT_CAPTURE = 1_000_000


class Cancelled(Exception):
    pass


@dataclass
class _Run:
    """What one run accumulates: the messages of this turn and the usage totals."""

    messages: list[Message]
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images_encoded: int = 0
    format_errors: int = 0
    finishes: list[Finished] = field(default_factory=list)

    def usage_info(self) -> UsageInfo:
        return UsageInfo(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            images_encoded=self.images_encoded,
        )


class Agent:
    def __init__(
        self,
        backend: Backend,
        settings: Settings,
        registry: ToolRegistry | None = None,
        approver: Approver | None = None,
    ):
        self.backend = backend
        self.settings = settings
        self.registry = registry
        self.approver = approver

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
            self._check_size(prompt)
            if tools:
                yield from self._agent_loop(run, tools, conversation, cancel)
            else:
                yield from self._plain_turn(run, conversation, cancel)
        except Cancelled:
            yield Done(status="cancelled", steps=run.steps, usage=run.usage_info())
        except VisionAgentError as exc:
            yield self._failed(run, exc.kind, str(exc), exc.exit_code)
        except Exception as exc:  # a bug or an unexpected llama.cpp failure: still end the stream properly
            log.debug("the run failed", exc_info=True)
            yield self._failed(run, "internal", f"{type(exc).__name__}: {exc}", 1)

    def _check_size(self, prompt: str) -> None:
        """Refuse a prompt that cannot fit before tokenising it (llama.cpp's tokeniser is quadratic in length).

        A backend that knows its vocabulary offers `max_prompt_bytes`: its context times the most bytes one
        token can stand for, so anything longer needs more positions than there are.
        """
        limit = getattr(self.backend, "max_prompt_bytes", None)
        size = len(prompt.encode("utf-8", errors="replace"))
        if limit and size > limit:
            raise ContextOverflowError(
                f"prompt too long: {size:,} bytes cannot fit the {self.backend.context_size}-token context "
                f"(at most {limit:,} bytes could); shorten it or raise --ctx"
            )

    # -- the two modes ------------------------------------------------------------------------------

    def _plain_turn(self, run: _Run, conversation: Conversation, cancel: threading.Event) -> Iterator[Event]:
        """No tools enabled: exactly the model's chat format, every token part of the answer."""
        pieces: list[str] = []
        for delta in self._generate(self._system_text(None), conversation, run, None, cancel):
            if isinstance(delta, Notice):
                yield delta
                continue
            pieces.append(delta)
            yield Token(text=delta, part="answer")
        answer = "".join(pieces)
        conversation.add_turn([*run.messages, Message.assistant(answer)])
        yield Answer(text=answer, finish_reason=run.finishes[-1].reason)
        yield Done(status="ok", steps=run.steps, usage=run.usage_info())

    def _agent_loop(
        self, run: _Run, tools: list[Tool], conversation: Conversation, cancel: threading.Event
    ) -> Iterator[Event]:
        agent = self.settings.agent
        system = self._system_text(tools)
        bounds = {"max_thought_chars": agent.max_thought_chars, "max_argument_chars": agent.max_argument_chars}
        grammar = step_grammar(tools, **bounds)
        while True:
            final = run.steps >= agent.max_steps
            if final:
                run.messages.append(Message.user(load_prompt("agent/final.txt").format(max_steps=agent.max_steps)))
                grammar = step_grammar([], **bounds)
            streamer = StepStreamer()
            pieces: list[str] = []
            for delta in self._generate(system, conversation, run, grammar, cancel):
                if isinstance(delta, Notice):
                    yield delta
                    continue
                pieces.append(delta)
                for part, text in streamer.feed(delta):
                    yield Token(text=text, part=part)
            for part, text in streamer.finish():
                yield Token(text=text, part=part)
            text = "".join(pieces)
            run.messages.append(Message.assistant(text))
            try:
                step = parse_step(text)
            except StepFormatError as exc:
                if run.finishes[-1].reason == "length":
                    exc = StepFormatError(
                        f"{exc}; the step was cut off at the {self.settings.generation.max_tokens}-token limit"
                    )
                if final or run.format_errors >= agent.format_retries:
                    raise StepFormatError(
                        f"the model did not follow the step format ({exc}) after {run.format_errors + 1} tries"
                    ) from None
                run.format_errors += 1
                yield Notice(message=f"step {run.steps}: malformed ({exc}); asking the model again")
                run.messages.append(Message.user(load_prompt("agent/format_error.txt").format(error=exc)))
                continue
            if isinstance(step, AnswerStep):
                conversation.add_turn(run.messages)
                yield Answer(text=step.answer, finish_reason=run.finishes[-1].reason)
                yield Done(status="max_steps" if final else "ok", steps=run.steps, usage=run.usage_info())
                return
            if final:  # only possible without a grammar: the model insists on a tool
                raise StepFormatError(f"the model called {step.tool} after the step limit instead of answering")
            yield from self._act(step, run, conversation, cancel)

    def _act(self, step: ToolStep, run: _Run, conversation: Conversation, cancel: threading.Event) -> Iterator[Event]:
        arguments = _as_arguments(step.arguments, self.registry.get(step.tool))
        yield ToolCall(step=run.steps, tool=step.tool, arguments=arguments)
        started = time.monotonic()
        ok, output = self._call_tool(step.tool, arguments, run, conversation, cancel)
        if cancel.is_set():
            raise Cancelled
        if not ok and output.startswith("refused: "):
            yield Notice(message=f"{step.tool}: {output.removeprefix('refused: ')}")
        shown, truncated = truncate(output, self.settings.agent.max_result_chars)
        yield ToolResult(
            step=run.steps,
            tool=step.tool,
            ok=ok,
            output=shown,
            truncated=truncated,
            seconds=round(time.monotonic() - started, 3),
        )
        run.messages.append(Message.user(observation(step.tool, ok, shown)))

    # -- tools ----------------------------------------------------------------------------------------

    def _call_tool(
        self, name: str, arguments: dict, run: _Run, conversation: Conversation, cancel: threading.Event
    ) -> tuple[bool, str]:
        tool = self.registry.get(name)
        if tool is None or self.registry.policy(name) == "off":
            available = ", ".join(t.name for t in self.registry.enabled())
            return False, f"unknown tool {name!r}; the available tools are: {available}"
        if self.registry.policy(name) == "ask":
            refusal = self._approval(name, arguments)
            if refusal:
                return False, "refused: " + refusal
        images = [*conversation.images, *(i for m in run.messages for i in m.images)]
        context = ToolContext(images=images, settings=self.registry.settings, cancel=cancel)
        return _run_with_timeout(tool, arguments, context, self.registry.settings.timeout_s)

    def _approval(self, name: str, arguments: dict) -> str | None:
        """None when approved; otherwise the observation's reason."""
        if self.approver is None:
            reason = "nobody is available to approve it (not an interactive terminal)"
        else:
            try:
                if self.approver(name, arguments):
                    return None
                reason = "the user declined"
            except Exception as exc:  # e.g. the terminal went away mid-question
                reason = f"approval failed ({type(exc).__name__})"
        return load_prompt("agent/refused.txt").format(tool=name, reason=reason)

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
        self, system: str, conversation: Conversation, messages: list[Message], grammar: str | None, view=None
    ) -> GenerationRequest:
        generation = self.settings.generation
        history = [m for m in visible_messages(conversation, view) if m.role != "system"]
        prefix = [Message.system(system)] if system else []
        return GenerationRequest(
            messages=[*prefix, *history, *messages],
            temperature=generation.temperature,
            top_p=generation.top_p,
            max_tokens=generation.max_tokens,
            seed=generation.seed,
            stop=list(generation.stop),
            grammar=grammar,
            reserve=self._reserve(),
        )

    def _reserve(self) -> int:
        """Room kept free for the answer when deciding whether the prompt fits."""
        n_ctx = getattr(self.backend, "context_size", None)
        return min(self.settings.generation.max_tokens, n_ctx // 4) if n_ctx else 0

    def _generate(
        self, system: str, conversation: Conversation, run: _Run, grammar: str | None, cancel: threading.Event
    ) -> Iterator[str | Notice]:
        """Text deltas of one step, preceded by a notice when older turns had to leave the context."""
        if cancel.is_set():
            raise Cancelled
        run.steps += 1
        notice = self._hide_what_cannot_fit(conversation)
        if notice is not None:
            yield notice
        request = self._request(system, conversation, run.messages, grammar)
        stream = self.backend.generate(dataclasses.replace(request, cancel=cancel))
        try:
            first = next(stream, None)
        except ContextOverflowError as exc:
            stream.close()
            notice, request = self._fit(system, conversation, run, grammar, exc)
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
                    run.prompt_tokens = chunk.usage.prompt_tokens
                    run.completion_tokens += chunk.usage.completion_tokens
                    run.images_encoded += chunk.usage.images_encoded
                    if chunk.reason == "cancelled":
                        raise Cancelled
        finally:
            stream.close()
        if cancel.is_set():  # a backend that does not look at request.cancel (replay) ran to its end
            raise Cancelled

    def _hide_what_cannot_fit(self, conversation: Conversation) -> Notice | None:
        """Turns too long for the context even on their own leave the view before anything is rendered: a
        long saved conversation costs neither a render of all of it nor the template's time cap."""
        n_ctx = getattr(self.backend, "context_size", None)
        limit = getattr(self.backend, "max_prompt_bytes", None)
        if not n_ctx or not limit:
            return None
        start = fitting_start(conversation, n_ctx, max(limit // n_ctx, 1))
        if start <= conversation.hidden_before:
            return None
        turns = sum(1 for begin in conversation.turn_boundaries() if conversation.hidden_before <= begin < start)
        conversation.hidden_before = start
        conversation.images_hidden_before = max(conversation.images_hidden_before, start)
        return Notice(
            message=f"the conversation outgrew the {n_ctx}-token context: the {turns} oldest turn(s) left out of view"
        )

    def _fit(
        self, system: str, conversation: Conversation, run: _Run, grammar: str | None, overflow: ContextOverflowError
    ) -> tuple[Notice, GenerationRequest]:
        """Hide the oldest turns (images first) until the prompt fits; the system prompt and this turn stay."""
        count = getattr(self.backend, "count_prompt_tokens", None)
        n_ctx = getattr(self.backend, "context_size", None)
        if count is None or not n_ctx:
            raise overflow
        budget = n_ctx - max(self._reserve(), 1)
        trim = plan_trim(
            conversation,
            lambda view: count(self._request(system, conversation, run.messages, grammar, view)),
            budget=budget - 1,
            target=budget - 1 - n_ctx // 4,
        )
        if trim is None:  # nothing earlier to leave out: the current turn takes the room
            tokens = count(self._request(system, conversation, run.messages, grammar))
        else:
            tokens = trim.tokens
        if tokens + 1 >= n_ctx:
            raise ContextOverflowError(
                f"{overflow} (the current turn alone does not fit, even with every earlier turn left out)"
            ) from None
        if trim is not None:
            conversation.hidden_before = trim.view.hidden_before
            conversation.images_hidden_before = trim.view.images_hidden_before
        request = self._request(system, conversation, run.messages, grammar)
        if tokens >= budget:
            request.reserve = 0  # it fits, with less room for the answer than usual
        if trim is None:
            message = f"the prompt takes {tokens} of the {n_ctx}-token context: the answer may be cut short"
        else:
            dropped = []
            if trim.images_dropped:
                dropped.append(f"{trim.images_dropped} earlier image(s)")
            if trim.turns_dropped:
                dropped.append(f"the {trim.turns_dropped} oldest turn(s)")
            message = (
                f"the conversation outgrew the {n_ctx}-token context: {' and '.join(dropped)} left out of view "
                f"(the prompt is now {tokens} tokens)"
            )
        return Notice(message=message), request

    def _failed(self, run: _Run, kind: str, message: str, exit_code: int) -> Done:
        return Done(
            status="error",
            steps=run.steps,
            usage=run.usage_info(),
            error=ErrorInfo(kind=kind, message=message, exit_code=exit_code),
        )


def _as_arguments(value: object, tool: Tool | None) -> dict:
    """A bare value for a one-parameter tool is taken as that parameter (small models do this)."""
    if isinstance(value, dict):
        return value
    properties = list((tool.parameters.get("properties") or {}) if tool else {})
    if len(properties) >= 1 and isinstance(value, (str, int, float)):
        return {properties[0]: value}
    return {"value": value}


def _run_with_timeout(tool: Tool, arguments: dict, context: ToolContext, timeout: float) -> tuple[bool, str]:
    """Run a tool in a daemon thread: a hung plugin costs its timeout, never the session.

    The call gets a cancel event of its own, set when the run is cancelled and when the call is
    abandoned at its timeout, so a tool that watches it (the sandbox kills its child) stops either way.
    """
    outcome: dict = {}
    run_cancel = context.cancel
    call_cancel = threading.Event()
    context = dataclasses.replace(context, cancel=call_cancel)

    def work():
        try:
            result = tool.run(arguments, context)
            outcome["ok"] = (True, result if isinstance(result, str) else str(result))
        except ToolError as exc:
            outcome["ok"] = (False, str(exc))
        except BaseException as exc:  # SystemExit from a plugin too: it ends the call, never the app
            log.debug("tool %s failed", tool.name, exc_info=True)
            outcome["ok"] = (False, f"the tool failed: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=work, name=f"tool-{tool.name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while thread.is_alive():
        thread.join(0.05)
        if run_cancel.is_set():
            call_cancel.set()
            return False, "cancelled"
        if time.monotonic() > deadline:
            call_cancel.set()
            return False, f"the tool did not finish within {timeout:g} s"
    ok, text = outcome["ok"]
    if len(text) > MAX_RESULT_CAPTURE:
        text, _ = truncate(text, MAX_RESULT_CAPTURE)
    return ok, valid_text(text)
