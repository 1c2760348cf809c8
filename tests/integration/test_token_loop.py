"""Our token loop on the real llama.cpp path: the same tokens and text as llama-cpp-python's create_completion,
grammar, exact max_tokens, and cancel (between tokens, inside a prompt's evaluation) with correct usage after."""

from __future__ import annotations

import re
import threading
import time

import pytest

from vision_agent.backends.base import Finished, GenerationRequest, TextDelta
from vision_agent.backends.llama_cpp import log as llama_log
from vision_agent.core.images import read_image_file
from vision_agent.core.messages import Message
from vision_agent.errors import BackendError

LIMITS = {"max_bytes": 10**8, "max_pixels": 10**8}
PROMPTS = ["What is in this picture?", "Describe the colours.", "Tell me a story.", "Is there text?"]


@pytest.fixture(scope="module")
def backend(make_backend):
    return make_backend(n_ctx=1024)


def generate(backend, messages, **options) -> tuple[list[str], Finished]:
    chunks = list(backend.generate(GenerationRequest(messages=messages, **options)))
    assert isinstance(chunks[-1], Finished) and all(isinstance(c, TextDelta) for c in chunks[:-1])
    return [c.text for c in chunks[:-1]], chunks[-1]


def create_completion(backend, prompt: list[int], seed_before: int, **options) -> tuple[str, str]:
    """llama-cpp-python's create_completion on the same prompt tokens, with the llama's seed where ours started
    (an unseeded call derives its seed from it). Not streamed: its streamed variant (the old path) loses a
    character whose bytes are split across tokens when it flushes held text at the end, token by token."""
    import llama_cpp

    llama = backend.llama
    backend._evaluator.forget()
    llama.set_seed(seed_before)
    limit = len(prompt) + options["max_tokens"]
    result = llama.create_completion(
        prompt=prompt,
        top_k=40,
        min_p=0.05,
        typical_p=1.0,
        repeat_penalty=1.0,
        stopping_criteria=llama_cpp.StoppingCriteriaList([lambda ids, _logits: len(ids) >= limit]),
        **options,
    )
    backend._evaluator.forget()
    return result["choices"][0]["text"], result["choices"][0]["finish_reason"]


CASES = [
    {"temperature": 0, "max_tokens": 48},
    {"temperature": 0, "max_tokens": 7},
    {"temperature": 1.0, "top_p": 0.9, "seed": 42, "max_tokens": 48},
    {"temperature": 0.7, "seed": 7, "max_tokens": 32},
    {"temperature": 0.8, "seed": None, "max_tokens": 32},  # unseeded: the seed chain is followed as before
]


@pytest.mark.parametrize("options", CASES, ids=lambda o: f"t{o['temperature']}-s{o.get('seed')}-n{o['max_tokens']}")
@pytest.mark.parametrize("prompt", PROMPTS)
def test_same_text_as_create_completion_on_the_same_prompt(backend, prompt, options):
    seed_before = backend.llama._seed
    deltas, finished = generate(backend, [Message.user(prompt)], **options)
    tokens = backend.llama.input_ids[: finished.usage.prompt_tokens].tolist()
    theirs, their_reason = create_completion(backend, tokens, seed_before, **options)
    assert "".join(deltas) == theirs
    assert finished.usage.completion_tokens <= options["max_tokens"]
    if finished.reason == "length":
        assert finished.usage.completion_tokens == options["max_tokens"]
    else:
        assert finished.reason == "stop" == their_reason


def test_stop_strings_cut_as_before(backend):
    messages = [Message.user("Tell me a story.")]
    full = "".join(generate(backend, messages, temperature=0, max_tokens=64)[0])
    assert len(full) > 12, full
    raw = backend.llama.detokenize(backend.last_completion_tokens)
    # llama-cpp-python matches stop strings in the raw bytes, we in the text shown: they agree unless
    # invalid bytes (dropped from the text) sit between a stop string's characters.
    valid_utf8 = raw.decode("utf-8", errors="ignore").encode() == raw
    for stop in (full[5:8], full[-4:], full[10], "never-in-the-output"):
        seed_before = backend.llama._seed
        deltas, finished = generate(backend, messages, temperature=0, max_tokens=64, stop=[stop])
        cut = full[: full.index(stop)] if stop in full else full
        assert "".join(deltas) == cut
        assert finished.reason == ("stop" if stop in full else "length")
        if valid_utf8:
            tokens = backend.llama.input_ids[: finished.usage.prompt_tokens].tolist()
            assert create_completion(backend, tokens, seed_before, temperature=0, max_tokens=64, stop=[stop])[0] == cut


def test_grammar_constrains_the_output(backend):
    grammar = 'root ::= ("yes" | "no") " " [a-c]{3,5} "."'
    for seed in range(4):
        deltas, finished = generate(
            backend, [Message.user("Answer.")], temperature=1.0, seed=seed, max_tokens=32, grammar=grammar
        )
        assert re.fullmatch(r"(yes|no) [a-c]{3,5}\.", "".join(deltas)), deltas
        assert finished.reason == "stop"  # the grammar ended, so only end-of-sequence was allowed


def test_a_grammar_llama_cpp_refuses_is_an_error_not_a_crash(backend):
    with pytest.raises(BackendError, match="grammar"):
        generate(backend, [Message.user("Answer.")], max_tokens=4, grammar="root ::= (")
    assert generate(backend, [Message.user("Answer.")], temperature=0, max_tokens=4)[1].usage.completion_tokens > 0


def test_max_tokens_is_exact(backend, red_png):
    messages = [Message.user("Describe it.", [read_image_file(red_png, **LIMITS)])]
    _, natural = generate(backend, messages, temperature=0, max_tokens=200)
    caps = [cap for cap in (1, 2, 5, 13, 20, 40) if cap < natural.usage.completion_tokens]
    assert len(caps) >= 3, natural
    for cap in caps:
        _, finished = generate(backend, messages, temperature=0, max_tokens=cap)
        assert (finished.reason, finished.usage.completion_tokens) == ("length", cap)
        assert len(backend.last_completion_tokens) == cap - 1  # the last sampled token is never evaluated


class CancelAfterChecks(threading.Event):
    """An event that sets itself on its n-th is_set(): cancel at a chosen point of the loop, no timing."""

    def __init__(self, checks: int):
        super().__init__()
        self.left = checks

    def is_set(self) -> bool:
        self.left -= 1
        if self.left <= 0:
            self.set()
        return super().is_set()


class CountingPieces:
    """Counts the tokens the loop samples (it looks up each one's bytes once); llama.cpp is untouched."""

    def __init__(self, pieces):
        self.pieces, self.count = pieces, 0

    def __call__(self, token):
        self.count += 1
        return self.pieces(token)


def test_cancel_while_decoding_ends_at_once_with_usage(make_backend):
    on, fresh = make_backend(n_ctx=1024), make_backend(n_ctx=1024)
    counter = on._pieces = CountingPieces(on._pieces)
    messages = [Message.user("Tell me a story.")]
    cancel = threading.Event()
    stream = on.generate(GenerationRequest(messages=messages, temperature=0, max_tokens=500, cancel=cancel))
    seen, sampled_at_cancel = [], None
    for chunk in stream:
        if isinstance(chunk, TextDelta):
            seen.append(chunk.text)
            if len(seen) == 3:
                cancel.set()
                sampled_at_cancel = counter.count
        else:
            finished = chunk
    assert len(seen) == 3  # nothing after the cancel
    assert finished.reason == "cancelled"
    # Not one token sampled after the cancel, and the usage says how many were.
    assert finished.usage.completion_tokens == sampled_at_cancel == counter.count
    assert len(on.last_completion_tokens) == sampled_at_cancel - 1
    reference = generate(fresh, messages, temperature=0, max_tokens=500)[1]
    assert finished.usage.prompt_tokens == reference.usage.prompt_tokens
    # The next request is answered as a fresh backend answers it.
    for follow_up in (messages, [Message.user("Something else.")]):
        ours = generate(on, follow_up, temperature=0, max_tokens=40)
        assert ours[0] == generate(fresh, follow_up, temperature=0, max_tokens=40)[0]
        assert on.last_completion_tokens == fresh.last_completion_tokens


def test_cancel_is_checked_after_every_token_even_without_text(backend):
    messages = [Message.user("Tell me a story.")]
    full = "".join(generate(backend, messages, temperature=0, max_tokens=64)[0])
    # A stop string the answer keeps matching the start of holds its text back: no delta arrives.
    never = full + "\x00"
    deltas, finished = generate(
        backend, messages, temperature=0, max_tokens=64, stop=[never], cancel=CancelAfterChecks(8)
    )
    assert finished.reason == "cancelled"
    assert len(deltas) <= 1  # no text arrived before the cancel; what was held back comes out at the end
    assert "".join(deltas) == full[: len("".join(deltas))]
    assert 2 <= finished.usage.completion_tokens <= 4  # one check at the start, two per token after it


def test_cancel_set_before_the_request_evaluates_nothing(backend):
    cancel = threading.Event()
    cancel.set()
    deltas, finished = generate(backend, [Message.user("Hi.")], max_tokens=8, cancel=cancel)
    assert deltas == [] and finished.reason == "cancelled"
    assert finished.usage.completion_tokens == 0 and finished.usage.prompt_tokens > 0


@pytest.fixture(scope="module")
def slower_pair(tmp_path_factory):
    """Wide enough that a few thousand prompt tokens take a while to evaluate on a CPU."""
    from vision_agent.catalog.demo_model import DemoShape, write_demo_pair

    return write_demo_pair(tmp_path_factory.mktemp("slower"), DemoShape(n_embd=256, n_ff=512, n_layer=4))


def test_cancel_inside_a_long_prompt_evaluation_aborts_llama_decode(make_backend, slower_pair):
    settings = {"n_ctx": 4096, "n_threads": 1}
    on, fresh = make_backend(slower_pair, **settings), make_backend(slower_pair, **settings)
    long_prompt = [Message.user("the sky is blue and the sun is bright " * 60)]
    cancel = threading.Event()
    fired = []
    timer = threading.Timer(0.1, lambda: (fired.append(time.monotonic()), cancel.set()))
    point = llama_log.mark()
    timer.start()
    deltas, finished = generate(on, long_prompt, temperature=0, max_tokens=8, cancel=cancel)
    ended = time.monotonic()
    assert deltas == [] and finished.reason == "cancelled"
    assert finished.usage.completion_tokens == 0 and finished.usage.prompt_tokens > 2000
    assert any("ret = 2" in line for line in llama_log.errors_since(point, 32)), "llama_decode was not aborted"
    assert ended - fired[0] < 2.0  # generous: it did not go on to the end of the prompt
    # The KV cache held part of the prompt when it stopped; the next requests are answered as fresh.
    for messages in ([Message.user("the sky is blue and the sun is bright " * 20)], [Message.user("Short.")]):
        assert (
            generate(on, messages, temperature=0, max_tokens=12)[0]
            == generate(fresh, messages, temperature=0, max_tokens=12)[0]
        )
