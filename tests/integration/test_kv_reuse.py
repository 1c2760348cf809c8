"""KV-cache reuse, the image embedding cache and conversation snapshots on the real llama.cpp path.

Every scenario runs twice, on a backend with all caching on and on one with all caching off, and the
greedy outputs must agree token for token. The usage figures then show that the caching happened.
"""

from __future__ import annotations

import pytest

from vision_agent.backends.base import Finished, GenerationRequest, TextDelta
from vision_agent.core.images import read_image_file
from vision_agent.core.messages import Message

LIMITS = {"max_bytes": 10**8, "max_pixels": 10**8}
CACHING_OFF = {"kv_reuse": False, "image_cache_mb": 0, "embedding_cache_mb": 0, "state_cache_mb": 0}


@pytest.fixture(params=[True, False], ids=["answer-tokens", "retokenised-answers"])
def pair_of_backends(request, make_backend):
    keep = {"keep_answer_tokens": request.param}
    on, off = make_backend(n_ctx=2048, **keep), make_backend(n_ctx=2048, **keep, **CACHING_OFF)
    yield on, off
    on.close()  # now, not at the module's end: a dozen tests build a pair each
    off.close()


@pytest.fixture
def images(red_png, blue_png):
    return read_image_file(red_png, **LIMITS), read_image_file(blue_png, **LIMITS)


def run(backend, messages, **options):
    """(text, completion token ids, usage) of one greedy generation."""
    options = {"temperature": 0, "max_tokens": 20, **options}
    chunks = list(backend.generate(GenerationRequest(messages=messages, **options)))
    finished = chunks[-1]
    assert isinstance(finished, Finished) and all(isinstance(c, TextDelta) for c in chunks[:-1])
    return "".join(c.text for c in chunks[:-1]), backend.last_completion_tokens, finished.usage


class Conversation:
    """Turns against both backends, asserting equal outputs and collecting the cached side's usage."""

    def __init__(self, on, off, system: str | None = None):
        self.on, self.off = on, off
        self.messages = [Message.system(system)] if system else []

    def ask(self, text: str, images=(), **options):
        self.messages.append(Message.user(text, list(images)))
        return self.answer(**options)

    def answer(self, **options):
        ours = run(self.on, self.messages, **options)
        reference = run(self.off, self.messages, **options)
        assert ours[:2] == reference[:2], f"caching changed the output at turn {len(self.messages)}"
        assert reference[2].cached_tokens == 0
        self.messages.append(Message.assistant(ours[0]))
        return ours[2]

    def regenerate(self, **options):
        self.messages.pop()
        return self.answer(**options)


def test_multi_turn_multi_image_equals_no_caching(pair_of_backends, images):
    red, blue = images
    chat = Conversation(*pair_of_backends, system="You describe images.")
    first = chat.ask("What is in this picture?", [red])
    assert first.images_encoded == 1
    second = chat.ask("And its colour?")
    third = chat.ask("Compare it with this one.", [blue])
    fourth = chat.ask("Which is brighter?")
    assert (second.images_encoded, third.images_encoded, fourth.images_encoded) == (0, 1, 0)
    for before, after in ((first, second), (second, third), (third, fourth)):
        if chat.on.keep_answer_tokens:
            # The previous prompt and the answer's sampled tokens are held; all but the last were evaluated.
            assert after.cached_tokens == before.prompt_tokens + before.completion_tokens - 1
        else:
            # The answer is re-tokenised from its text, which need not give back the sampled tokens.
            assert after.cached_tokens >= before.prompt_tokens


def test_two_images_in_one_turn_and_the_same_image_twice(pair_of_backends, images):
    red, blue = images
    chat = Conversation(*pair_of_backends)
    usage = chat.ask("Compare these.", [red, blue, red])
    # The repeated image is encoded once and its embedding reused within the same prompt.
    assert usage.images_encoded == 2 and usage.images_cached == 1
    chat.ask("Which came first?")


def test_regenerate_and_edited_turn(pair_of_backends, images):
    red, _ = images
    chat = Conversation(*pair_of_backends)
    chat.ask("Describe it.", [red])
    chat.ask("Shorter, please.")
    again = chat.regenerate()
    assert again.images_encoded == 0 and again.cached_tokens == again.prompt_tokens - 1
    with_seed = chat.regenerate(temperature=1.0, seed=7)  # sampled, not greedy: still equal with a seed
    assert with_seed.images_encoded == 0
    # Edit the first question: the image stays in the KV cache, the text after it is evaluated again.
    chat.messages = chat.messages[:1]
    chat.messages[0] = Message.user("Describe it in one word.", [red])
    edited = chat.answer()
    assert edited.images_encoded == 0 and 16 <= edited.cached_tokens < edited.prompt_tokens


def test_switching_conversations_restores_their_state(pair_of_backends, images):
    red, blue = images
    on, off = pair_of_backends
    a = Conversation(on, off, system="You are terse.")
    b = Conversation(on, off, system="You are verbose and kind.")
    a_first = a.ask("What is this?", [red])
    b_first = b.ask("Tell me about this picture.", [blue])
    assert b_first.images_encoded == 1
    a_second = a.ask("Are you sure?")
    # Conversation A's state came back from its snapshot: nothing of it is evaluated again.
    assert a_second.images_encoded == 0 and a_second.cached_tokens >= a_first.prompt_tokens
    b_second = b.ask("Why?")
    assert b_second.images_encoded == 0 and b_second.cached_tokens >= b_first.prompt_tokens
    a.ask("Thanks.")
    b.regenerate()


def test_a_cached_image_costs_no_encode_in_a_fresh_conversation(make_backend, images):
    red, blue = images
    backend = make_backend(n_ctx=2048, state_cache_mb=0)  # no snapshot: only the embedding cache can help
    run(backend, [Message.user("What is this?", [red])])
    run(backend, [Message.user("And this?", [blue])])
    _, _, usage = run(backend, [Message.system("Another conversation."), Message.user("Look again.", [red])])
    assert usage.images_encoded == 0 and usage.images_cached == 1


def test_shared_embedding_cache_between_backends(make_backend, images):
    from vision_agent.backends.llama_cpp.caches import ByteBoundedLRU

    red, _ = images
    shared = ByteBoundedLRU(64 * 1024 * 1024)
    first = make_backend(n_ctx=512, embedding_cache=shared)
    second = make_backend(n_ctx=512, embedding_cache=shared)
    assert run(first, [Message.user("What is this?", [red])])[2].images_encoded == 1
    assert run(second, [Message.user("What is this?", [red])])[2].images_cached == 1


def test_image_cache_bound_evicts_least_recently_used(make_backend, images):
    red, blue = images
    one_image = 16 * 64 * 4  # the demo projector: 16 tokens of width 64, float32
    backend = make_backend(n_ctx=2048, kv_reuse=False, image_cache_mb=0, embedding_cache_mb=0)  # memory only
    backend._evaluator.embeddings.max_bytes = one_image  # room for exactly one embedding
    assert run(backend, [Message.user("A", [red])])[2].images_encoded == 1
    assert run(backend, [Message.user("B", [red])])[2].images_cached == 1
    assert run(backend, [Message.user("C", [blue])])[2].images_encoded == 1
    assert run(backend, [Message.user("D", [red])])[2].images_encoded == 1  # evicted by blue


def test_a_failed_generation_leaves_a_usable_backend(make_backend, images):
    red, _ = images
    on, off = make_backend(n_ctx=2048), make_backend(n_ctx=2048, **CACHING_OFF)
    messages = [Message.user("Describe it.", [red])]
    stream = on.generate(GenerationRequest(messages=messages, temperature=0, max_tokens=20))
    next(stream)  # abandoned after the first token, as a cancelled run does
    stream.close()
    assert run(on, messages)[:2] == run(off, messages)[:2]


def test_long_conversation_through_the_agent_trims_and_stays_equal(make_backend, images):
    """More turns than a 384-token context holds: older turns leave the view with a notice, every turn
    answers, and the cached backend still answers exactly as the uncached one."""
    from vision_agent.config import load_settings
    from vision_agent.core.agent import Agent
    from vision_agent.core.events import Answer, Done, Notice
    from vision_agent.core.messages import Conversation as History

    red, blue = images
    settings = load_settings(
        None,
        {
            "agent": {"system_prompt": "Answer briefly."},
            "generation": {"temperature": 0, "max_tokens": 16},
            "tools": {"default_policy": "off"},
        },
    )
    sides = []
    for extra in ({}, CACHING_OFF):
        backend = make_backend(n_ctx=384, **extra)
        sides.append((backend, Agent(backend, settings), History()))
    seen_notice = False
    for turn in range(8):
        results = []
        for backend, agent, history in sides:
            events = list(agent.stream(f"Turn {turn}: and this one?", [(red, blue)[turn % 2]], history))
            done = events[-1]
            assert isinstance(done, Done) and done.status == "ok", done
            assert done.usage.prompt_tokens + 1 < 384
            seen_notice |= any(isinstance(e, Notice) and "left out of view" in e.message for e in events)
            results.append(([e.text for e in events if isinstance(e, Answer)], backend.last_completion_tokens))
        assert results[0] == results[1], f"turn {turn}"
    assert seen_notice
    assert sides[0][2].hidden_before > 0  # whole turns went too, not only images
