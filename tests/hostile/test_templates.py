"""Hostile chat templates (they come from the model file): compiled once, rendered under time, size and
memory caps that hold in-process. A syntax error is a bad model file (exit 4); a render that breaks a cap
or fails is a BackendError (exit 11) within about a second."""

from __future__ import annotations

import time

import pytest

from tests.hostile import gguf_craft as gc
from tests.hostile.bounded import assert_refused, run_bounded
from vision_agent.backends.llama_cpp.chat_format import compile_template, render_prompt
from vision_agent.core.messages import Message
from vision_agent.errors import BackendError, ModelFileError

MESSAGES = [
    Message.system("Be brief."),
    Message.user("What is it?"),
    Message.assistant("A cat."),
    Message.user("Sure?"),
]


def render(template: str) -> str:
    return render_prompt(MESSAGES, template, media_marker="<__media__>", bos_token="<s>", eos_token="</s>")


NS = "{% set ns = namespace(s='x', l=[0], n=3) %}"
HOSTILE = {
    "loops_1e5_by_1e5": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "output_200_mb": "{% for i in range(100000) %}{{ 'x' * 2000 }}{% endfor %}",
    "string_times_1e9": "{{ 'x' * 1000000000 }}",
    "list_times_1e9": "{{ ([0] * 1000000000)|length }}",
    "concat_doubling": NS + "{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "plus_doubling": NS + "{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}",
    "block_set_doubling": NS
    + "{% for i in range(40) %}{% set t %}{{ ns.s }}{{ ns.s }}{% endset %}{% set ns.s = t %}{% endfor %}",
    "macro_doubling": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% else %}xxxxxxxx{% endif %}"
    "{% endmacro %}{{ f(40)|length }}",
    "exponential_recursion": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
    "{{ f(60) }}",
    "infinite_recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "power_constant": "{{ 10 ** 100000000 }}",
    "power_variable": "{% set n = 100000000 %}{{ 10 ** n }}",
    "integer_squaring": NS + "{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}{{ ns.n > 0 }}",
    "percent_width": "{{ '%999999999d' % 1 }}",
    "percent_precision": "{{ '%.999999999f' % 1.0 }}",
    "percent_star": "{{ '%*d' % (999999999, 1) }}",
    "format_method_width": "{{ '{:>999999999}'.format(1) }}",
    "format_method_nested_width": "{{ '{:{w}}'.format(1, w=999999999) }}",
    "format_filter_width": "{{ '%999999999s'|format('x') }}",
    "center_filter": "{{ 'x'|center(1000000000) }}",
    "indent_filter": "{{ 'a\nb'|indent(1000000000) }}",
    "wordwrap_filter": "{{ ('x ' * 1000)|wordwrap(1, wrapstring='y' * 100000) }}",
    "replace_filter": "{{ ('a' * 100000)|replace('a', 'b' * 1000) }}",
    "join_filter": "{{ range(100000)|map('string')|join('x' * 1000) }}",
    "batch_filter": "{{ [1]|batch(1000000000, 0)|list }}",
    "slice_filter": "{{ [1]|slice(1000000000)|list|length }}",
    "sum_of_lists": "{{ ([[0] * 1000000] * 100)|sum(start=[])|length }}",
    "tojson_indent": "{{ [1]|tojson(indent=1000000000) }}",
    "str_center": "{{ 'x'.center(1000000000) }}",
    "str_zfill": "{{ '1'.zfill(1000000000) }}",
    "str_expandtabs": "{{ '\t'.expandtabs(1000000000) }}",
    "str_replace": "{{ ('a' * 100000).replace('a', 'b' * 1000) }}",
    "str_join": "{{ ('x' * 1000).join(['y' * 100000] * 100) }}",
    "lipsum_huge": "{{ lipsum(n=1000000, min=1000, max=100000) }}",
    "range_too_big": "{{ range(1000000000)|list }}",
    "memory_distinct_big_strings": "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}"
    "{% set ns.l = ns.l + [('x' * 3000000) ~ i] %}{% endfor %}{{ ns.l|length }}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_template_is_stopped_in_process(name):
    start = time.monotonic()
    # Refused when it runs, or (constant expressions, which Jinja folds while compiling) when it is compiled.
    with pytest.raises((BackendError, ModelFileError), match="chat template"):
        render(HOSTILE[name])
    assert time.monotonic() - start < 10  # the caps are 1 s of render time; this only says "it did not hang"


def test_template_that_calls_raise_exception_reports_its_message():
    with pytest.raises(BackendError, match="refused this conversation: roles must alternate"):
        render("{{ raise_exception('roles must alternate') }}")


def test_syntax_error_and_oversized_template_are_bad_model_files():
    with pytest.raises(ModelFileError, match="syntax error on line 2"):
        compile_template("ok\n{% for %}")
    with pytest.raises(ModelFileError, match="limit"):
        compile_template("x" * 300_000)
    with pytest.raises(ModelFileError):
        compile_template("{{ " + "(" * 50_000 + "1" + ")" * 50_000 + " }}")


# Templates that use every capped construct legitimately: the output must be what llama-cpp-python's
# Jinja2ChatFormatter (an uncapped environment with the same settings) produces.
ORDINARY = [
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content if m.content is string else "
    "m.content|map(attribute='text')|join('') }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "{{ bos_token }}{% for m in messages %}{{ '[' ~ m.role|upper ~ ']' }} {{ loop.index * 2 }} "
    "{{ '%-8s|%3d' % (m.role, loop.index) }} {{ '{:>6}'.format(m.role) }} {{ m.role|center(12) }}"
    "{{ m.role|replace('u', 'uu') }}{% endfor %}{{ eos_token * 2 }}",
    "{% set ns = namespace(parts=[]) %}{% for m in messages %}{% set ns.parts = ns.parts + [m.role] %}"
    "{% endfor %}{{ ns.parts|join(', ') }} {{ ns.parts|tojson }} {{ ns.parts|batch(3, '-')|list }}"
    " {{ ns.parts|slice(2)|list }} {{ [[1], [2]]|sum(start=[]) }} {{ 'a\nb'|indent(2, true) }}"
    " {{ 'one two three'|wordwrap(5) }} {{ '%s-%s'|format(1, 2) }} {{ 2 ** 10 }}",
    "{% macro say(m) %}{{ m.role }}: {% if m.content is string %}{{ m.content }}{% else %}"
    "{% for p in m.content %}{{ p.text }}{% endfor %}{% endif %}{% endmacro %}"
    "{% for m in messages %}{% set line %}{{ say(m) }}{% endset %}{{ line|trim }}\n{% endfor %}",
]


@pytest.mark.parametrize("template", ORDINARY)
def test_ordinary_templates_render_as_llama_cpp_python_does(template):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from vision_agent.backends.llama_cpp.chat_format import template_messages

    reference = Jinja2ChatFormatter(template=template, eos_token="</s>", bos_token="<s>")._environment.render(
        messages=template_messages(MESSAGES, "<__media__>"),
        add_generation_prompt=True,
        bos_token="<s>",
        eos_token="</s>",
    )
    assert render(template) == reference


# -- the real path: a model file carrying the template, through `ask` and `models info` ------------------------


@pytest.fixture
def with_template(demo_pair, tmp_path):
    def make(template: str):
        return gc.rewrite(demo_pair[0], tmp_path / "templated.gguf", {"tokenizer.chat_template": gc.s(template)})

    return make


def test_template_syntax_error_is_exit_4(with_template, demo_pair, cli_env, image, tmp_path):
    text = with_template("{% for m in messages %}{{ m.content }")
    args = ("ask", "-m", str(text), "--mmproj", str(demo_pair[1]), "-a", str(image), "--no-tools", "hi")
    assert_refused(run_bounded(*args, env=cli_env, tmp_path=tmp_path), 4, "chat_template", "syntax error")
    assert_refused(run_bounded("models", "info", str(text), env=cli_env, tmp_path=tmp_path), 4, "syntax error")


@pytest.mark.parametrize("name", ["loops_1e5_by_1e5", "output_200_mb", "concat_doubling"])
def test_hostile_template_in_a_model_file_is_exit_11(name, with_template, demo_pair, cli_env, image, tmp_path):
    text = with_template(HOSTILE[name])
    args = ("ask", "-m", str(text), "--mmproj", str(demo_pair[1]), "-a", str(image), "--no-tools", "hi")
    assert_refused(run_bounded(*args, env=cli_env, tmp_path=tmp_path), 11, "chat template")
