"""Chat templates that build a value whose printed form is enormous from small, shared parts. Each step is
small (a list of 10^5 references to one list of 10^5 items), so the size caps on `*`, `+` and the filters let
it through; printing it is one C call (str) that no deadline can interrupt: `{{ [[1]*100000]*100000 }}` took
24 GB and was still running after 450 s, deaf to SIGTERM. Every value a template builds is now bounded in
its printed size, however it was built: operators, calls, filters and literals."""

from __future__ import annotations

import time

import pytest

from tests.hostile import gguf_craft as gc
from tests.hostile.bounded import assert_refused, run_bounded
from vision_agent.backends.llama_cpp.chat_format import render_prompt
from vision_agent.core.messages import Message
from vision_agent.errors import BackendError

# Sizes from the conversation (one message), so that nothing can be folded while compiling: see FOLDED.
N = "{% set n = (messages|length) * 100000 %}"
A = N + "{% set a = [1] * n %}"
SHARED = {
    "times": N + "{{ [[1] * n] * n }}",
    "times_then_length": N + "{{ ([[1] * n] * n)|string|length }}",
    "list_literal": A + "{{ [" + "a, " * 100 + "] }}",
    "tuple_literal": A + "{{ (" + "a, " * 100 + ") }}",
    "dict_literal": A + "{{ {" + ", ".join(f"{i}: a" for i in range(100)) + "} }}",
    "call_result": A + "{{ dict(" + ", ".join(f"k{i}=a" for i in range(100)) + ") }}",
    "filter_result": A + "{{ [1]|batch(100000, a)|list }}",
    "namespace": A + "{% set ns = namespace() %}" + "".join(f"{{% set ns.k{i} = a %}}" for i in range(100))
    + "{{ ns }}",
    "concat": A + "{% set b = [a] * 40 %}{{ b ~ b }}",
    "join": A + "{{ ([a] * 40)|join(',') }}",
    "tojson": A + "{{ ([a] * 40)|tojson }}",
    "percent": A + "{{ '%s' % ([a] * 40,) }}",
    "comparison": N + "{{ [[1] * n] * n == [[1] * n] * n }}",
}  # fmt: skip
# Constant expressions are folded while the template compiles (llama-cpp-python compiles it uncapped at load).
FOLDED = {
    "times": "{{ [[1] * 100000] * 100000 }}",
    "literal": "{{ [" + "'x' * 1000000, " * 5 + "] }}",
}


def render(template: str) -> str:
    messages = [Message.user("hi")]
    return render_prompt(messages, template, media_marker="<__media__>", bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("name", sorted(SHARED))
def test_a_value_that_prints_too_large_is_refused_through_the_cli(name, demo_pair, cli_env, image, tmp_path):
    text = gc.rewrite(demo_pair[0], tmp_path / "shared.gguf", {"tokenizer.chat_template": gc.s(SHARED[name])})
    args = ("ask", "-m", str(text), "--mmproj", str(demo_pair[1]), "-a", str(image), "--no-tools", "hi")
    run = run_bounded(*args, env=cli_env, tmp_path=tmp_path, timeout=60)
    assert_refused(run, 11, "chat template", "prints as more than")


@pytest.mark.parametrize("name", sorted(FOLDED))
def test_a_constant_that_prints_too_large_is_a_bad_model_file(name, demo_pair, cli_env, image, tmp_path):
    text = gc.rewrite(demo_pair[0], tmp_path / "folded.gguf", {"tokenizer.chat_template": gc.s(FOLDED[name])})
    run = run_bounded("models", "info", str(text), env=cli_env, tmp_path=tmp_path, timeout=60)
    assert_refused(run, 4, "chat template", "prints as more than")


def test_values_within_the_cap_still_render():
    started = time.monotonic()
    counts = "{{ [a, a]|length }} {{ ([1] * 10)|batch(3, 0)|list|length }} {{ {1: a}|length }}"
    assert render(A + counts) == "2 4 1"
    assert render(A + "{{ (a ~ '')|length }} {{ a|tojson|length }}") == "300000 300000"
    assert time.monotonic() - started < 10


def test_a_cycle_through_a_namespace_is_measured():
    assert render("{% set ns = namespace() %}{% set ns.me = ns %}{{ [ns, ns]|length }}") == "2"
    with pytest.raises(BackendError, match="prints as more than"):
        render(A + "{% set ns = namespace(a=a) %}{% set ns.me = ns %}{% set ns.b = [ns] * 100 %}")
