"""The real llama.cpp path on the generated demo pair (no mocks)."""

from __future__ import annotations

import pytest

from tests.helpers import data_url, mtmd_handler_answer
from vision_agent.backends.base import Finished, GenerationRequest, TextDelta
from vision_agent.core.images import read_image_file
from vision_agent.core.messages import Message
from vision_agent.errors import ContextOverflowError, ModelFileError, ModelMismatchError

LIMITS = {"max_bytes": 10**8, "max_pixels": 10**8}


@pytest.fixture(scope="module")
def backend(make_backend):
    return make_backend(n_ctx=1024)


def generate(backend, messages, **options):
    chunks = list(backend.generate(GenerationRequest(messages=messages, **options)))
    assert isinstance(chunks[-1], Finished) and all(isinstance(c, TextDelta) for c in chunks[:-1])
    return "".join(c.text for c in chunks[:-1]), chunks[-1], len(chunks) - 1


def test_loads_and_streams_token_by_token(backend, red_png):
    image = read_image_file(red_png, **LIMITS)
    text, finished, n_deltas = generate(backend, [Message.user("Describe it.", [image])], temperature=0, max_tokens=24)
    assert n_deltas > 1 and text
    assert finished.usage.images_encoded == 1
    assert finished.usage.prompt_tokens > 16  # 16 image tokens plus the text
    assert 0 < finished.usage.completion_tokens <= 24


def test_max_tokens_is_a_hard_cap(backend, red_png):
    image = read_image_file(red_png, **LIMITS)
    long, _, _ = generate(backend, [Message.user("Describe it.", [image])], temperature=0, max_tokens=40)
    for cap in (1, 3, 7):
        _, finished, _ = generate(backend, [Message.user("Describe it.", [image])], temperature=0, max_tokens=cap)
        assert finished.usage.completion_tokens <= cap
        assert finished.reason == "length" or len(long) == 0


def test_stop_string_cuts_the_answer(backend, red_png):
    image = read_image_file(red_png, **LIMITS)
    messages = [Message.user("Describe it.", [image])]
    full, _, _ = generate(backend, messages, temperature=0, max_tokens=48)
    words = [w for w in full.split() if w.isalpha() and full.index(w) > 0]
    assert words, f"demo model produced too little text to test stops: {full!r}"
    stop = words[len(words) // 2]
    cut, finished, _ = generate(backend, messages, temperature=0, max_tokens=48, stop=[stop])
    assert cut == full[: full.index(stop)]
    assert finished.reason == "stop"


def test_seeded_sampling_is_reproducible(backend, red_png):
    image = read_image_file(red_png, **LIMITS)
    messages = [Message.user("Describe it.", [image])]
    a = generate(backend, messages, temperature=1.0, seed=42, max_tokens=16)[0]
    b = generate(backend, messages, temperature=1.0, seed=42, max_tokens=16)[0]
    assert a == b


def test_two_images_in_one_prompt(make_backend, red_png, blue_png):
    backend = make_backend(n_ctx=1024)
    red, blue = read_image_file(red_png, **LIMITS), read_image_file(blue_png, **LIMITS)
    _, finished, _ = generate(backend, [Message.user("Compare them.", [red, blue])], temperature=0, max_tokens=8)
    assert finished.usage.images_encoded == 2
    _, one, _ = generate(backend, [Message.user("Compare them.", [red])], temperature=0, max_tokens=8)
    assert finished.usage.prompt_tokens == one.usage.prompt_tokens + 16


@pytest.mark.parametrize("prompt", ["What is in this picture?", "Describe the colours.", "Is there text?"])
def test_greedy_output_equals_mtmd_chat_handler(backend, demo_pair, red_png, blue_png, prompt):
    red, blue = read_image_file(red_png, **LIMITS), read_image_file(blue_png, **LIMITS)
    for images in ([red], [red, blue]):
        theirs, n_theirs = mtmd_handler_answer(
            demo_pair, [{"role": "user", "content": [*map(data_url, images), {"type": "text", "text": prompt}]}], 32
        )
        # llama-cpp-python can overshoot max_tokens on byte-fallback tokens, so compare at its own length.
        ours, _, _ = generate(backend, [Message.user(prompt, images)], temperature=0, max_tokens=n_theirs)
        assert ours == theirs


def test_greedy_multi_turn_with_system_equals_mtmd_chat_handler(backend, demo_pair, red_png):
    red = read_image_file(red_png, **LIMITS)
    messages = [
        Message.system("You are terse."),
        Message.user("What is it?", [red]),
        Message.assistant("A red square."),
        Message.user("And the shade?"),
    ]
    theirs, n_theirs = mtmd_handler_answer(
        demo_pair,
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [data_url(red), {"type": "text", "text": "What is it?"}]},
            {"role": "assistant", "content": "A red square."},
            {"role": "user", "content": [{"type": "text", "text": "And the shade?"}]},
        ],
        24,
    )
    ours, _, _ = generate(backend, messages, temperature=0, max_tokens=n_theirs)
    assert ours == theirs


def test_context_overflow_is_a_clear_error_and_backend_survives(make_backend, red_png):
    small = make_backend(n_ctx=256)
    image = read_image_file(red_png, **LIMITS)
    with pytest.raises(ContextOverflowError, match="do not fit the 256-token context"):
        generate(small, [Message.user("word " * 300, [image])], max_tokens=4)
    text_out, finished, _ = generate(small, [Message.user("hi")], temperature=0, max_tokens=4)
    assert 0 < finished.usage.prompt_tokens < 256


def test_mismatched_pair_refused_before_llama_cpp_loads(make_backend, mismatched_pair):
    with pytest.raises(ModelMismatchError, match="outputs width 32 but text model .* has embedding width 64"):
        make_backend(mismatched_pair)


def test_swapped_pair_and_corrupt_file_refused(make_backend, demo_pair, tmp_path):
    text, mmproj = demo_pair
    with pytest.raises(ModelMismatchError, match="projector"):
        make_backend((mmproj, text))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(text.read_bytes()[: text.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="truncated|corrupt"):
        make_backend((truncated, mmproj))


def test_template_less_gguf_falls_back_to_vicuna_and_a_flag_can_force_a_format(make_backend, tmp_path, red_png):
    from vision_agent.catalog.demo_model import DemoShape, write_demo_pair

    pair = write_demo_pair(tmp_path, DemoShape(with_chat_template=False))
    image = read_image_file(red_png, **LIMITS)
    request = GenerationRequest(messages=[Message.system("Sys."), Message.user("Q?", [image])], max_tokens=4)
    fallback = make_backend(pair, n_ctx=512)
    forced = make_backend(pair, chat_format="chatml", n_ctx=512)
    assert fallback.render(request) == f"Sys.\nUSER: {fallback.media_marker}\nQ?\nASSISTANT:"
    assert forced.render(request).startswith("<|im_start|>system\nSys.<|im_end|>")
    assert generate(fallback, request.messages, max_tokens=4)[1].usage.images_encoded == 1


def test_concurrent_callers_are_serialised(backend, red_png):
    import threading

    image = read_image_file(red_png, **LIMITS)
    messages = [Message.user("Describe it.", [image])]
    expected = generate(backend, messages, temperature=0, max_tokens=24)[0]
    results: list[str] = []

    def worker():
        results.append(generate(backend, messages, temperature=0, max_tokens=24)[0])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 4
