"""What of a long conversation the model still sees, and how it is cut down when it outgrows n_ctx.

Earlier turns leave the model's view oldest first, their images before their text. The system prompt
and the current turn always stay. A cut goes further than strictly needed (a quarter of the context
is freed) so that the next turns fit without moving it again: every move changes the prompt right
after the system prompt, and everything from there has to be evaluated again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vision_agent.core.messages import Conversation, ImagePart, Message, TextPart
from vision_agent.core.prompts import load_prompt
from vision_agent.errors import ContextOverflowError

if TYPE_CHECKING:
    from vision_agent.backends.base import Backend, GenerationRequest


@dataclass(frozen=True)
class View:
    hidden_before: int  # messages before this index are not shown
    images_hidden_before: int  # images in messages before this index are shown as a placeholder


@dataclass(frozen=True)
class Trim:
    view: View
    tokens: int  # what the prompt needs with this view
    images_dropped: int
    turns_dropped: int


def current_view(conversation: Conversation) -> View:
    return View(conversation.hidden_before, conversation.images_hidden_before)


def visible_messages(conversation: Conversation, view: View | None = None) -> list[Message]:
    view = view or current_view(conversation)
    placeholder = None
    shown = []
    for index in range(view.hidden_before, len(conversation.messages)):
        message = conversation.messages[index]
        if index < view.images_hidden_before and message.images:
            placeholder = placeholder or load_prompt("context/image_dropped.txt").strip()
            parts: list[TextPart | ImagePart] = [
                TextPart(text=placeholder) if isinstance(p, ImagePart) else p for p in message.parts
            ]
            message = Message(role=message.role, parts=parts)
        shown.append(message)
    return shown


def fitting_start(conversation: Conversation, n_ctx: int, max_token_bytes: int) -> int:
    """The earliest turn start from which the conversation could still fit `n_ctx` positions.

    A lower bound on what each message needs (one position, its text's bytes over the most bytes a token
    stands for, one per image), summed from the newest turn back: turns before the returned index cannot
    be in view whatever the template adds, so a long saved conversation is never rendered whole. It stops
    after at most about `n_ctx` messages.
    """
    messages = conversation.messages
    starts = sorted({0, *conversation.turn_boundaries()})
    need = 0
    fitting = len(messages)
    for begin, end in reversed(list(zip(starts, [*starts[1:], len(messages)], strict=True))):
        for message in messages[begin:end]:
            text = sum(len(p.text.encode("utf-8", errors="replace")) for p in message.parts if isinstance(p, TextPart))
            need += max(1, text // max_token_bytes) + len(message.images)
        if need > n_ctx:
            return fitting
        fitting = begin
    return fitting


def plan_trim(conversation: Conversation, count: Callable[[View], int], budget: int, target: int) -> Trim | None:
    """The mildest cut whose prompt fits `target` positions, else the mildest that fits `budget`.

    `count` gives the positions a view's prompt needs; it shrinks along the candidates, so a binary
    search finds the cut with few counts (each one tokenises the prompt). None: nothing left to drop.
    """
    candidates = _candidates(conversation)
    if not candidates:
        return None
    counts: dict[int, int] = {}

    def needed(index: int) -> int:
        if index not in counts:
            counts[index] = count(candidates[index])
        return counts[index]

    def first_within(limit: int) -> int | None:
        return _first_fitting(len(candidates), lambda i: needed(i) <= limit)

    found = first_within(target)
    if found is None:
        found = first_within(budget)
    index = len(candidates) - 1 if found is None else found
    view = candidates[index]
    return Trim(view, needed(index), *_dropped(conversation, current_view(conversation), view))


def _candidates(conversation: Conversation) -> list[View]:
    """Ever harsher views: images of the oldest turns first, then the oldest turns themselves."""
    now = current_view(conversation)
    end = len(conversation.messages)
    boundaries = [start for start in conversation.turn_boundaries() if start > 0] + [end]
    # The first message still showing its images: a boundary past it has images to hide (one pass, so that a
    # conversation of many turns does not cost a scan per turn).
    first_image = next((i for i in range(now.images_hidden_before, end) if conversation.messages[i].images), end)
    views = []
    for boundary in boundaries:
        if boundary > now.images_hidden_before and boundary > first_image:
            views.append(View(now.hidden_before, boundary))
    images_cut = max(now.images_hidden_before, end if views else now.images_hidden_before)
    for boundary in boundaries:
        if boundary > now.hidden_before:
            views.append(View(boundary, max(images_cut, boundary)))
    return views


def _first_fitting(n: int, fits: Callable[[int], bool]) -> int | None:
    low, high = 0, n
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return low if low < n else None


def _dropped(conversation: Conversation, before: View, after: View) -> tuple[int, int]:
    images = sum(
        len(m.images)
        for i, m in enumerate(conversation.messages)
        if before.images_hidden_before <= i < after.images_hidden_before and i >= before.hidden_before
    )
    turns = sum(1 for start in conversation.turn_boundaries() if before.hidden_before <= start < after.hidden_before)
    return images, turns


# -- what the agent asks of this module: checks before a request, and the cut after an overflow -----------------


def check_prompt_size(backend: Backend, prompt: str) -> None:
    """Refuse a prompt that cannot fit before tokenising it (llama.cpp's tokeniser is quadratic in length)."""
    limit = backend.max_prompt_bytes
    size = len(prompt.encode("utf-8", errors="replace"))
    if limit and size > limit:
        raise ContextOverflowError(
            f"prompt too long: {size:,} bytes cannot fit the {backend.context_size}-token context "
            f"(at most {limit:,} bytes could); shorten it or raise --ctx"
        )


def answer_reserve(backend: Backend, max_tokens: int) -> int:
    """Room kept free for the answer when deciding whether the prompt fits."""
    n_ctx = backend.context_size
    return min(max_tokens, n_ctx // 4) if n_ctx else 0


def hide_what_cannot_fit(backend: Backend, conversation: Conversation) -> str | None:
    """Turns too long for the context even on their own leave the view before anything is rendered: a long
    saved conversation costs neither a render of all of it nor the template's time cap. The notice, if any."""
    n_ctx, limit = backend.context_size, backend.max_prompt_bytes
    if not n_ctx or not limit:
        return None
    start = fitting_start(conversation, n_ctx, max(limit // n_ctx, 1))
    if start <= conversation.hidden_before:
        return None
    turns = sum(1 for begin in conversation.turn_boundaries() if conversation.hidden_before <= begin < start)
    conversation.hidden_before = start
    conversation.images_hidden_before = max(conversation.images_hidden_before, start)
    return f"the conversation outgrew the {n_ctx}-token context: the {turns} oldest turn(s) left out of view"


@dataclass(frozen=True)
class Fit:
    notice: str
    full: bool  # the prompt fits only with less room than the reserve: the answer may be cut short


def fit_after_overflow(
    backend: Backend,
    conversation: Conversation,
    request_for: Callable[[View | None], GenerationRequest],
    reserve: int,
    overflow: ContextOverflowError,
) -> Fit:
    """Hide the oldest turns (images first) until the prompt fits; the system prompt and this turn stay.

    `request_for(view)` builds the request as it would be with that view (None: the conversation's own).
    The conversation's view is moved on success; ContextOverflowError when even this turn alone cannot fit.
    """
    n_ctx = backend.context_size
    if not n_ctx:
        raise overflow
    budget = n_ctx - max(reserve, 1)
    trim = plan_trim(
        conversation,
        lambda view: backend.count_prompt_tokens(request_for(view)),
        budget=budget - 1,
        target=budget - 1 - n_ctx // 4,
    )
    tokens = backend.count_prompt_tokens(request_for(None)) if trim is None else trim.tokens
    if tokens + 1 >= n_ctx:
        raise ContextOverflowError(
            f"{overflow} (the current turn alone does not fit, even with every earlier turn left out)"
        ) from None
    if trim is None:  # nothing earlier to leave out: the current turn takes the room
        return Fit(
            f"the prompt takes {tokens} of the {n_ctx}-token context: the answer may be cut short", tokens >= budget
        )
    conversation.hidden_before = trim.view.hidden_before
    conversation.images_hidden_before = trim.view.images_hidden_before
    dropped = []
    if trim.images_dropped:
        dropped.append(f"{trim.images_dropped} earlier image(s)")
    if trim.turns_dropped:
        dropped.append(f"the {trim.turns_dropped} oldest turn(s)")
    return Fit(
        f"the conversation outgrew the {n_ctx}-token context: {' and '.join(dropped)} left out of view "
        f"(the prompt is now {tokens} tokens)",
        tokens >= budget,
    )
