"""Context overflow: older turns leave the model's view (images first) and the run goes on with a notice."""

from __future__ import annotations

import pytest

from tests.helpers import image_part
from vision_agent.backends.replay import IMAGE_TOKENS, ReplayBackend
from vision_agent.config import load_settings
from vision_agent.core.agent import Agent
from vision_agent.core.context_window import View, plan_trim, visible_messages
from vision_agent.core.events import Done, Notice, Token
from vision_agent.core.messages import Conversation, ImagePart, Message, TextPart
from vision_agent.core.prompts import load_prompt

PLACEHOLDER = load_prompt("context/image_dropped.txt").strip()


def image(color):
    return image_part(size=(8, 8), color=color, source="x.png", limit=10**6)


@pytest.fixture
def settings():
    return load_settings(
        None,
        {
            "agent": {"system_prompt": "Be brief."},
            "generation": {"max_tokens": 8},
            "tools": {"default_policy": "off"},
        },
    )


def chat(settings, context_size, turns):
    backend = ReplayBackend(["a b c"] * turns, context_size=context_size)
    return Agent(backend, settings), backend, Conversation()


def ask(agent, conversation, text, images=()):
    events = list(agent.stream(text, list(images), conversation))
    assert isinstance(events[-1], Done)
    return events


def notices(events):
    return [e.message for e in events if isinstance(e, Notice)]


def test_oldest_images_go_first_then_oldest_turns_and_the_cut_stays_put(settings):
    agent, backend, conversation = chat(settings, context_size=100, turns=12)
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]
    for colour in colours[:3]:
        events = ask(agent, conversation, "one two three four five", [image(colour)])
        assert not notices(events) and events[-1].status == "ok"

    events = ask(agent, conversation, "one two three four five", [image(colours[3])])
    assert events[-1].status == "ok"
    [notice] = notices(events)
    assert "earlier image" in notice and "100-token context" in notice
    # The notice comes before any token of the answer.
    kinds = [type(e) for e in events]
    assert kinds.index(Notice) < kinds.index(Token)
    request = backend.requests[-1]
    assert request.messages[0].text == "Be brief."
    assert request.messages[-1].images and request.messages[-1].images[0].sha256 == image(colours[3]).sha256
    assert any(PLACEHOLDER in m.text for m in request.messages)
    assert backend.count_prompt_tokens(request) <= 100 - 8 - 1 - 25  # a quarter of the context freed
    assert conversation.images_hidden_before > 0 and conversation.hidden_before == 0

    # The next short turn fits the same view: no new cut, so the prompt prefix stays the same.
    cut = (conversation.hidden_before, conversation.images_hidden_before)
    events = ask(agent, conversation, "ok?")
    assert not notices(events) and (conversation.hidden_before, conversation.images_hidden_before) == cut

    # Keep going: once no image is left to drop, whole turns go, and the view starts at a turn.
    seen = []
    for _ in range(6):
        events = ask(agent, conversation, "six seven eight nine ten eleven twelve", [image((9, 9, 9))])
        assert events[-1].status == "ok"
        seen += notices(events)
    assert any("oldest turn" in n for n in seen)
    assert conversation.hidden_before > 0
    assert conversation.hidden_before in conversation.turn_starts
    request = backend.requests[-1]
    assert request.messages[0].text == "Be brief." and request.messages[1].role == "user"


def test_a_turn_too_long_on_its_own_is_a_clear_error_and_the_session_goes_on(settings):
    agent, backend, conversation = chat(settings, context_size=60, turns=3)
    ask(agent, conversation, "hello there")
    events = ask(agent, conversation, " ".join(["word"] * 80))
    done = events[-1]
    assert done.status == "error" and done.error.kind == "context_overflow" and done.error.exit_code == 9
    assert "does not fit" in done.error.message
    assert len(conversation.turn_starts) == 1  # the failed turn was not added
    assert ask(agent, conversation, "and now?")[-1].status == "ok"


def test_a_long_first_turn_that_fits_without_the_reserve_runs_with_a_notice(settings):
    agent, backend, conversation = chat(settings, context_size=60, turns=1)
    events = ask(agent, conversation, " ".join(["word"] * 52))
    assert events[-1].status == "ok"
    assert any("may be cut short" in n for n in notices(events))
    assert backend.requests[-1].reserve == 0


def conversation_of(turns: int) -> Conversation:
    conversation = Conversation()
    for n in range(turns):
        conversation.add_turn([Message.user(f"q{n}", [image((n, 0, 0))]), Message.assistant(f"a{n}")])
    return conversation


def test_plan_trim_prefers_images_and_counts_few_times():
    conversation = conversation_of(16)
    calls = []

    def count(view: View) -> int:
        calls.append(view)
        shown = visible_messages(conversation, view)
        return sum(2 + IMAGE_TOKENS * len(m.images) for m in shown)

    full = count(View(0, 0))
    calls.clear()
    trim = plan_trim(conversation, count, budget=full - 1, target=full - 40)
    # Dropping the images of the three oldest turns (16 each) is the mildest cut under the target.
    assert trim.view == View(0, 6) and trim.images_dropped == 3 and trim.turns_dropped == 0
    assert len(calls) <= 7  # a binary search over 31 candidates

    trim = plan_trim(conversation, count, budget=40, target=20)
    assert trim.view.images_hidden_before == len(conversation.messages)  # every image gone first
    assert trim.view.hidden_before in conversation.turn_starts and trim.turns_dropped > 0
    assert trim.tokens <= 20


def test_visible_messages_replace_hidden_images_with_a_placeholder():
    conversation = conversation_of(2)
    shown = visible_messages(conversation, View(0, 2))
    assert isinstance(shown[0].parts[0], TextPart) and shown[0].parts[0].text == PLACEHOLDER
    assert isinstance(shown[2].parts[0], ImagePart)
    assert visible_messages(conversation, View(2, 2))[0].text == "q1"
    # The stored conversation keeps everything: only the view changes.
    assert conversation.messages[0].images
