"""The agent on the real llama.cpp path (the generated demo pair) with every step decoded under the grammar."""

from __future__ import annotations

import json

import pytest

from vision_agent.backends.base import GenerationRequest
from vision_agent.config import load_settings
from vision_agent.core.agent import Agent
from vision_agent.core.events import Done, Notice, ToolCall
from vision_agent.core.images import read_image_file
from vision_agent.core.messages import Conversation, Message
from vision_agent.core.step_format import parse_step
from vision_agent.paths import data_path
from vision_agent.tooling import build_registry


@pytest.fixture(scope="module")
def backend(make_backend):
    return make_backend(n_ctx=8192)


def agent_settings(tmp_path, seed: int):
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"title": "t", "url": "https://example.test", "snippet": "s"}]))
    return load_settings(
        None,
        {
            "generation": {"temperature": 1.0, "seed": seed, "max_tokens": 160},
            # Random weights ramble: tight grammar bounds let a step finish inside its token budget.
            "agent": {"max_steps": 3, "max_thought_chars": 12, "max_argument_chars": 12},
            "tools": {"python": {"timeout_s": 5, "cpu_s": 2}, "web_search": {"provider": f"file:{results}"}},
        },
    )


def test_twenty_seeds_each_end_with_done_within_the_cap(backend, tmp_path):
    image = read_image_file(data_path("examples/shapes.png"), max_bytes=10**7, max_pixels=10**7)
    tool_calls = 0
    for seed in range(20):
        settings = agent_settings(tmp_path, seed)
        agent = Agent(backend, settings, build_registry(settings))
        events = list(agent.stream("How many shapes are there?", [image], Conversation()))
        done = events[-1]
        assert isinstance(done, Done) and sum(isinstance(e, Done) for e in events) == 1
        assert done.steps <= settings.agent.max_steps + 1
        # Each step's token budget covers the longest step the grammar allows: none is cut off or retried.
        assert done.status in ("ok", "max_steps"), done
        assert not [e.message for e in events if isinstance(e, Notice)]
        tool_calls += sum(isinstance(e, ToolCall) for e in events)
    assert tool_calls > 0  # the grammar offers the tools and the model takes them


def test_a_step_that_finishes_under_the_grammar_always_parses(backend, tmp_path):
    settings = agent_settings(tmp_path, 0)
    registry = build_registry(settings)
    from vision_agent.core.step_format import step_grammar

    grammar = step_grammar(registry.enabled(), max_thought_chars=12, max_argument_chars=12)
    parsed = 0
    for seed in range(10):
        request = GenerationRequest(
            messages=[Message.user("Step?")], temperature=1.0, seed=seed, max_tokens=300, grammar=grammar
        )
        chunks = list(backend.generate(request))
        text = "".join(c.text for c in chunks[:-1])
        if chunks[-1].reason == "stop":
            step = parse_step(text)
            parsed += 1
            if hasattr(step, "tool"):
                assert step.tool in registry.tools and isinstance(step.arguments, dict)
    assert parsed >= 5
