"""What of a long conversation the model still sees, and how it is cut down when it outgrows n_ctx.

Earlier turns leave the model's view oldest first, their images before their text. The system prompt
and the current turn always stay. A cut goes further than strictly needed (a quarter of the context
is freed) so that the next turns fit without moving it again: every move changes the prompt right
after the system prompt, and everything from there has to be evaluated again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vision_agent.core.messages import Conversation, ImagePart, Message, TextPart
from vision_agent.core.prompts import load_prompt


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
            parts = [TextPart(text=placeholder) if isinstance(p, ImagePart) else p for p in message.parts]
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

    for limit in (target, budget):
        index = _first_fitting(len(candidates), lambda i, limit=limit: needed(i) <= limit)
        if index is not None:
            break
    else:
        index = len(candidates) - 1
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
