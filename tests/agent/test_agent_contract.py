"""The agent's contract with the session and the front ends, on the replay backend: the conversation id in
every request, the approver given the ToolCall, refusals told apart from tool errors, usage summed into
`done`, and a format retry that never overflows the context."""

from __future__ import annotations

import json

import pytest

from tests.agent.test_agent_replay import answer, make_agent, step
from tests.helpers import image_part
from vision_agent.backends.replay import ReplayBackend
from vision_agent.core.agent import MAX_FEEDBACK_CHARS, Agent
from vision_agent.core.events import Done, Notice, ToolCall, ToolResult
from vision_agent.core.messages import Conversation
from vision_agent.paths import data_path
from vision_agent.tooling import ToolRegistry, load_tools


def test_the_conversation_id_reaches_every_request(settings):
    backend = ReplayBackend([step("calculator", {"expression": "2+2"}), "garbled", answer("4")])
    registry = ToolRegistry(load_tools([data_path("tools")]), settings.tools)
    agent = Agent(backend, settings, registry, conversation_id="c0ffee")
    assert list(agent.stream("2+2?", [], Conversation()))[-1].status == "ok"
    assert [r.conversation_id for r in backend.requests] == ["c0ffee"] * 3
    alone = ReplayBackend(["hi"])
    list(Agent(alone, settings).stream("x", [], Conversation()))
    assert alone.requests[0].conversation_id is None


def test_the_approver_receives_the_tool_call_event(settings):
    settings.tools.policy = {"calculator": "ask"}
    asked = []
    agent, _ = make_agent(
        [step("calculator", {"expression": "6*7"}), answer("42")], settings, approver=lambda c: asked.append(c) or True
    )
    events = list(agent.stream("x", [], Conversation()))
    call = next(e for e in events if isinstance(e, ToolCall))
    assert asked == [call] and isinstance(asked[0], ToolCall) and asked[0].arguments == {"expression": "6*7"}
    assert next(e for e in events if isinstance(e, ToolResult)).output == "42"


def test_the_calculators_own_refusal_is_a_tool_error_not_a_policy_refusal(settings):
    agent, backend = make_agent([step("calculator", {"expression": "9**9**9**9"}), answer("Too big.")], settings)
    events = list(agent.stream("x", [], Conversation()))
    result = next(e for e in events if isinstance(e, ToolResult))
    assert not result.ok and result.output.startswith("refused: the result would have")  # the calculator's words
    assert result.refused is None  # ... but the tool ran: no policy refused it
    assert not [e for e in events if isinstance(e, Notice)]
    assert "(error)" in backend.requests[1].messages[-1].text
    assert events[-1].status == "ok"


@pytest.mark.parametrize(
    "policy, approver, reason",
    [
        ("ask", None, "nobody is available to approve it"),
        ("ask", lambda call: False, "the user declined"),
        ("ask", lambda call: 1 / 0, "approval failed (ZeroDivisionError)"),
        ("off", None, "its policy is off"),
    ],
)
def test_policy_refusals_are_refusals(settings, policy, approver, reason):
    settings.tools.policy = {"calculator": policy}
    agent, _ = make_agent([step("calculator", {"expression": "1+1"}), answer("2")], settings, approver=approver)
    events = list(agent.stream("x", [], Conversation()))
    result = next(e for e in events if isinstance(e, ToolResult))
    assert not result.ok and result.refused is not None and reason in result.refused
    assert any(isinstance(e, Notice) and reason in e.message for e in events)
    assert events[-1].status == "ok"


def test_an_unknown_tool_is_the_models_error_not_a_refusal(settings):
    agent, _ = make_agent([step("shell", {"cmd": "ls"}), answer("no")], settings)
    result = next(e for e in agent.stream("x", [], Conversation()) if isinstance(e, ToolResult))
    assert not result.ok and result.refused is None and "unknown tool 'shell'" in result.output


def test_done_sums_cached_tokens_and_cached_images_over_the_steps(settings):
    backend = ReplayBackend([step("calculator", {"expression": "1+1"}), answer("2")], cache=True)
    agent = Agent(backend, settings, ToolRegistry(load_tools([data_path("tools")]), settings.tools))
    events = list(agent.stream("What is 1+1 in this image?", [image_part(source="a.png")], Conversation()))
    done = events[-1]
    assert isinstance(done, Done) and done.status == "ok"
    first, second = backend.requests
    first_words = [w for m in first.messages for w in m.text.split()]
    step_words = step("calculator", {"expression": "1+1"}).split()
    # The second step's prompt starts with the first step's prompt and answer: all of that was held.
    assert done.usage.cached_tokens == len(first_words) + len(step_words)
    assert (done.usage.images_encoded, done.usage.images_cached) == (1, 1)
    assert done.usage.prompt_tokens == backend.count_prompt_tokens(second)
    assert done.usage.completion_tokens == len(step_words) + len(answer("2").split())


def _first_prompt_tokens(settings) -> int:
    probe = ReplayBackend([answer("x")])
    list(
        Agent(probe, settings, ToolRegistry(load_tools([data_path("tools")]), settings.tools)).stream(
            "hi", [], Conversation()
        )
    )
    return probe.count_prompt_tokens(probe.requests[0])


@pytest.mark.parametrize("room, excerpt_kept", [(150, True), (60, False)])
def test_a_long_malformed_step_does_not_push_the_retry_out_of_the_context(settings, room, excerpt_kept):
    """A malformed step as long as the model's budget came back whole and overflowed the retry (exit 9)."""
    settings.generation.max_tokens = room - 10
    context_size = _first_prompt_tokens(settings) + room
    rambling = "Thought: " + " ".join(["blah"] * (3 * room))
    backend = ReplayBackend([rambling, answer("done")], context_size=context_size)
    agent = Agent(backend, settings, ToolRegistry(load_tools([data_path("tools")]), settings.tools))
    events = list(agent.stream("hi", [], Conversation()))
    done = events[-1]
    assert done.status == "ok", done.error
    retry = backend.requests[-1].messages
    assert "did not follow the step format" in retry[-1].text
    quoted = [m.text for m in retry if m.role == "assistant"]
    if excerpt_kept:
        assert quoted == [rambling[:MAX_FEEDBACK_CHARS] + " …"]
    else:
        assert quoted == []  # left out to fit; the reminder stays
    assert backend.count_prompt_tokens(backend.requests[-1]) < context_size


def test_format_retries_do_not_pile_up_in_the_prompt(settings):
    agent, backend = make_agent(["garbled one", "garbled two", answer("ok")], settings)
    assert list(agent.stream("x", [], Conversation()))[-1].status == "ok"
    last = backend.requests[-1].messages
    assert [m.text for m in last if m.role == "assistant"] == ["garbled two"]
    assert sum("did not follow the step format" in m.text for m in last) == 1


def test_the_step_budget_lets_a_tool_step_finish(settings):
    """Each tool step may take the tokens its grammar bounds allow, whatever max_tokens says."""
    settings.generation.max_tokens = 8
    long_call = step("python", {"code": " + ".join(["1"] * 40)})
    agent, backend = make_agent([long_call, answer("41")], settings)
    events = list(agent.stream("x", [], Conversation()))
    assert next(e for e in events if isinstance(e, ToolResult)).output == "40"
    assert backend.requests[0].max_tokens > 8
    assert json.loads(json.dumps(events[-1].model_dump()))["status"] == "ok"
