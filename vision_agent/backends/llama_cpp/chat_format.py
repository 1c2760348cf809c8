"""Renders a conversation into the model's prompt text, with libmtmd's media marker where images go.

A GGUF's own `tokenizer.chat_template` is rendered exactly as llama-cpp-python's MTMDChatHandler
renders it (same Jinja environment and variables), so our prompts match llama.cpp's tools.

The template comes from the model file, so it is hostile input: it is compiled once (a syntax error is a
bad model file, exit 4) and rendered under caps that hold in-process:
- time: a trace function checks a deadline on every line Python runs during the render (Jinja's loops,
  macros and filters are Python), and the memory the process gained, every few milliseconds;
- size: every operation that can build a large value in one C call (`*`, `**`, `+`, `%`, `~`, the joins
  behind macros and blocks, str methods, the center/indent/wordwrap/replace/join/format/batch/slice/sum/
  tojson filters) is checked before it runs, and the output is streamed and counted.
A render that breaks a cap or fails for the conversation at hand is a BackendError (exit 11).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache

from vision_agent.core.messages import ImagePart, Message
from vision_agent.core.prompts import chat_template
from vision_agent.errors import BackendError, ModelFileError

RENDER_SECONDS = 1.0
COMPILE_SECONDS = 2.0
MAX_TEMPLATE_CHARS = 256 * 1024
MAX_OUTPUT_CHARS = 4 * 1024 * 1024
MAX_ITEMS = 4 * 1024 * 1024  # characters of one string, items of one list, width of one format field
MAX_INT_BITS = 1 << 16
MAX_MEMORY_GROWTH = 256 * 1024 * 1024


def choose_template(chat_format: str, gguf_template: str | None) -> str:
    """chat_format 'auto' uses the GGUF's template when it has one, else LLaVA-1.5's Vicuna format."""
    if chat_format in ("auto", "gguf") and gguf_template:
        return gguf_template
    if chat_format == "gguf":
        from vision_agent.errors import ConfigError

        raise ConfigError("chat format 'gguf' asked for, but the model file carries no chat template")
    return chat_template("vicuna" if chat_format == "auto" else chat_format)


def template_messages(messages: list[Message], media_marker: str) -> list[dict]:
    """Messages in the OpenAI-like shape templates expect; an image becomes a text part holding the marker."""
    rendered = []
    for message in messages:
        if message.role == "user":
            content = [
                {"type": "text", "text": media_marker if isinstance(part, ImagePart) else part.text}
                for part in message.parts
            ]
            rendered.append({"role": "user", "content": content})
        else:
            rendered.append({"role": message.role, "content": message.text})
    return rendered


class CompiledTemplate:
    """A chat template compiled once, in the capped environment."""

    def __init__(self, source: str, template):
        self.source = source
        self._template = template

    def render(self, variables: dict, *, seconds: float = RENDER_SECONDS) -> str:
        def produce() -> str:
            pieces, total = [], 0
            for piece in self._template.generate(**variables):
                total += len(piece)
                if total > MAX_OUTPUT_CHARS:
                    raise TemplateLimit(f"output longer than {MAX_OUTPUT_CHARS:,} characters")
                pieces.append(piece)
            return "".join(pieces)

        return _guarded(produce, seconds)


@lru_cache(maxsize=8)
def compile_template(text: str) -> CompiledTemplate:
    """Parse and compile a chat template under the caps; any failure is a bad model file (exit 4).
    Cached: read_summary checks the file's templates at load, and the backend renders with the same object."""
    if len(text) > MAX_TEMPLATE_CHARS:
        raise ModelFileError(f"chat template is {len(text):,} characters long (the limit is {MAX_TEMPLATE_CHARS:,})")
    import jinja2

    def build():
        _check_constant_folding(env, env.parse(text))
        return env.from_string(_capped_ast(env, text))

    try:
        env = _environment()
        return CompiledTemplate(text, _guarded(build, COMPILE_SECONDS))
    except jinja2.TemplateSyntaxError as exc:
        raise ModelFileError(
            f"chat template syntax error on line {exc.lineno}: {one_line(exc.message or '')}"
        ) from None
    except TemplateLimit as exc:
        raise ModelFileError(f"chat template rejected while compiling: {exc}") from None
    except Exception as exc:  # RecursionError on deep nesting, errors raised by folded constants, ...
        raise ModelFileError(f"chat template cannot be compiled ({type(exc).__name__}: {one_line(str(exc))})") from None


def render_prompt(
    messages: list[Message],
    template: str | CompiledTemplate,
    *,
    media_marker: str,
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text; raises BackendError when the template fails or breaks a cap for this conversation."""
    compiled = template if isinstance(template, CompiledTemplate) else compile_template(template)

    def raise_exception(message: str):
        raise _TemplateRefusal(message)

    variables = dict(
        messages=template_messages(messages, media_marker),
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
        media_marker=media_marker,
        raise_exception=raise_exception,
        functions=None,
        function_call=None,
        tools=None,
        tool_choice=None,
        strftime_now=_strftime_now,
    )
    try:
        return compiled.render(variables)
    except TemplateLimit as exc:
        raise BackendError(f"the chat template was stopped: {exc}") from None
    except _TemplateRefusal as exc:
        raise BackendError(f"the chat template refused this conversation: {one_line(str(exc))}") from None
    except Exception as exc:  # a template may raise anything
        raise BackendError(f"the chat template failed: {type(exc).__name__}: {one_line(str(exc))}") from None


class TemplateLimit(BaseException):
    """A cap broke. A BaseException, so that `except Exception` inside Jinja or a filter cannot swallow it."""


class _TemplateRefusal(Exception):
    """The template called raise_exception (e.g. roles that do not alternate)."""


def one_line(text: str, limit: int = 300) -> str:
    """Template-derived text for a one-line message: control characters escaped, shortened."""
    text = text if len(text) <= limit else text[:limit] + "..."
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


# -- time and memory: a trace function over every Python frame the render runs ---------------------------


def _guarded(work, seconds: float):
    _sizes.memo = {}  # printed sizes of the values this render builds (see _check_printed)
    deadline = time.monotonic() + seconds
    baseline = _resident_bytes()
    next_memory_check = 0.0

    def trace(frame, event, arg):
        nonlocal next_memory_check
        now = time.monotonic()
        if now > deadline:
            raise TemplateLimit(f"took longer than {seconds:g} s")
        if now > next_memory_check:
            next_memory_check = now + 0.005
            if _resident_bytes() - baseline > MAX_MEMORY_GROWTH:
                raise TemplateLimit(f"used more than {MAX_MEMORY_GROWTH // (1 << 20)} MiB of memory")
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        return work()
    finally:
        sys.settrace(previous)
        _sizes.memo = None


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


# -- size: checks on every operation that builds a large value in one step --------------------------------


# -- printed size: every value a template builds, however it was built ------------------------------------
#
# Each operation's own size is checked above, but small steps can share parts: `[[1] * 100000] * 100000` is a
# list of 10^5 references to one list of 10^5 items, cheap to build and 10^10 items to print. Printing is one
# C call (str, join, tojson, %) that neither the deadline nor a signal can interrupt. So the result of every
# operator, call, filter and literal is measured as it would print, shared parts counted each time they appear.

_sizes = threading.local()  # .memo: id -> (printed size, the value, kept alive so that its id stays its own)


def _check_printed(value):
    """`value`, unless printing it would write more than MAX_ITEMS items (characters and elements)."""
    if type(value) in (str, int, float, bool) or value is None:
        return value
    memo = getattr(_sizes, "memo", None)
    try:
        size = _printed_size(value, {} if memo is None else memo, MAX_ITEMS)
    except RecursionError:
        raise TemplateLimit("a value nested too deeply") from None
    if size > MAX_ITEMS:
        raise TemplateLimit(f"a value that prints as more than {MAX_ITEMS:,} items")
    return value


def _printed_size(value, memo: dict, budget: int) -> int:
    """An upper bound on the items `str(value)` writes (shared parts counted each time); stops past `budget`."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int):
        return value.bit_length() // 3 + 1
    parts, mutable = _parts(value)
    if parts is None:
        return 1
    key = id(value)
    if key in memo:
        return memo[key][0]
    memo[key] = (1, value)  # while it is walked: a cycle prints as "..."
    size = 1
    for part in parts:
        size += _printed_size(part, memo, budget - size) + 2
        if size > budget:
            break
    if size > budget or mutable:  # a partial count, or a namespace that may still change: not kept
        del memo[key]
    else:
        memo[key] = (size, value)
    return size


def _parts(value) -> tuple[Iterable | None, bool]:
    """What `value` prints of (None for an atom), and whether it can change during the render."""
    if isinstance(value, (list, tuple, set, frozenset)):
        return value, False
    if isinstance(value, dict):
        return itertools.chain.from_iterable(value.items()), False
    from jinja2.utils import Namespace

    if isinstance(value, Namespace):
        return object.__getattribute__(value, "_Namespace__attrs").items(), True
    return None, False


def _capped_namespace():
    """Jinja's `namespace`, measured after each `{% set ns.attr = … %}` (the one container a template changes)."""
    from jinja2.utils import Namespace

    class CappedNamespace(Namespace):
        def __setitem__(self, name, value):
            super().__setitem__(name, value)
            _check_printed(self)

    return CappedNamespace


def _printed_checked(function):
    """A filter whose result is measured by _check_printed (pass_context and the like carried over)."""
    import functools

    @functools.wraps(function)
    def checked(*args, **kwargs):
        return _check_printed(function(*args, **kwargs))

    return checked


def _limit(what: str, size: int) -> None:
    if size > MAX_ITEMS:
        raise TemplateLimit(f"{what} would build {size:,} items (the limit is {MAX_ITEMS:,})")


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")
_BRACE_SPEC = re.compile(r"\d+")


def _check_percent_format(fmt: str) -> None:
    for width, precision in _PERCENT_SPEC.findall(fmt):
        for number in (width, precision):
            if number == "*" or (number and int(number) > MAX_ITEMS):
                raise TemplateLimit(f"a %-format field width of {number} is not allowed")


def _check_brace_format(fmt: str) -> None:
    import string

    for _, _, spec, _ in string.Formatter().parse(fmt):
        if spec and ("{" in spec or any(int(n) > MAX_ITEMS for n in _BRACE_SPEC.findall(spec))):
            raise TemplateLimit(f"a format field {one_line(spec, 40)!r} is not allowed")


def _check_binop(operator: str, left, right) -> None:
    sequences = (str, list, tuple)
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, sequences) and isinstance(count, int):
                _limit("repetition", len(seq) * max(count, 0))
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise TemplateLimit(f"a product of more than {MAX_INT_BITS} bits")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if left.bit_length() * right > MAX_INT_BITS:
                raise TemplateLimit(f"a power of more than {MAX_INT_BITS} bits")
    elif operator == "+":
        if isinstance(left, sequences) and isinstance(right, sequences):
            _limit("concatenation", len(left) + len(right))
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left)


def _estimate_replace(s: str, old: str, new: str, count=None) -> int:
    hits = len(s) + 1 if old == "" else s.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * max(len(new) - len(old), 0)


def _check_str_method(obj, args: tuple, kwargs: dict) -> tuple:
    """Size checks for str methods that can build a large string; returns the (possibly listed) args."""
    name, s = obj.__name__, obj.__self__
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        _limit(f"str.{name}", args[0])
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            _limit("str.expandtabs", len(s) + s.count("\t") * size)
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _limit("str.replace", _estimate_replace(s, *args[:3]))
    elif name == "join" and args:
        items = list(args[0])
        _limit("str.join", sum(len(x) if isinstance(x, str) else 0 for x in items) + len(s) * len(items))
        args = (items, *args[1:])
    return args


# -- the environment ----------------------------------------------------------------------------------------


def _capped_concat(pieces) -> str:
    """The join behind macros, {% set %} blocks, call blocks and `~`."""
    pieces = [p if isinstance(p, str) else str(p) for p in pieces]
    _limit("joining output", sum(map(len, pieces)))
    return "".join(pieces)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(x, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    """llama-cpp-python's tojson (Transformers' behaviour), with bounded indent and separators."""
    if (isinstance(indent, int) and indent > 64) or (isinstance(indent, str) and len(indent) > 64):
        raise TemplateLimit("tojson indent too large")
    if separators is not None and sum(len(str(part)) for part in separators) > 16:
        raise TemplateLimit("tojson separators too long")
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _capped_filters() -> dict:
    """Jinja's filters that can build a large value in one step, with their sizes checked first."""
    from jinja2 import filters as f
    from jinja2.utils import pass_environment, pass_eval_context

    def center(value, width=80):
        if isinstance(width, int):
            _limit("center", width)
        return f.do_center(value, width)

    def indent(s, width=4, first=False, blank=False):
        unit = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        _limit("indent", len(str(s)) + (str(s).count("\n") + 1) * unit)
        return f.do_indent(s, width, first, blank)

    @pass_environment
    def wordwrap(environment, s, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True):
        wrap = len(wrapstring) if isinstance(wrapstring, str) else 1
        _limit("wordwrap", len(str(s)) * (1 + wrap))
        return f.do_wordwrap(environment, s, width, break_long_words, wrapstring, break_on_hyphens)

    @pass_eval_context
    def replace(eval_ctx, s, old, new, count=None):
        _limit("replace", _estimate_replace(str(s), str(old), str(new), count))
        return f.do_replace(eval_ctx, s, old, new, count)

    @pass_eval_context
    def join(eval_ctx, value, d="", attribute=None):
        items = list(value)
        _limit("join", sum(len(x) if isinstance(x, str) else 1 for x in items) + len(str(d)) * len(items))
        return f.sync_do_join(eval_ctx, items, d, attribute)

    def format_(value, *args, **kwargs):
        _check_percent_format(str(value))
        return f.do_format(value, *args, **kwargs)

    def batch(value, linecount, fill_with=None):
        _limit("batch", linecount)
        return f.do_batch(value, linecount, fill_with)

    def slice_(value, slices, fill_with=None):
        _limit("slice", slices)
        return f.sync_do_slice(value, slices, fill_with)

    @pass_environment
    def sum_(environment, iterable, attribute=None, start=0):
        if isinstance(start, (int, float)):
            return f.sync_do_sum(environment, iterable, attribute, start)
        if isinstance(start, str):
            raise TypeError("sum() can't sum strings [use ''.join(seq) instead]")
        getter = f.make_attrgetter(environment, attribute) if attribute is not None else None
        total = start  # lists: each step checked, so that sum() cannot build a huge list in one call
        for item in iterable:
            value = getter(item) if getter else item
            _check_binop("+", total, value)
            total = total + value
        return total

    return {
        "center": center,
        "indent": indent,
        "wordwrap": wordwrap,
        "replace": replace,
        "join": join,
        "format": format_,
        "batch": batch,
        "slice": slice_,
        "sum": sum_,
        "tojson": _tojson,
    }


def _environment():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class IgnoreGenerationTags(jinja2.ext.Extension):
        """Pass-through for HuggingFace's `{% generation %}` tag (as llama-cpp-python's Jinja2ChatFormatter)."""

        tags = {"generation"}

        def parse(self, parser):
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    class CappedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+", "%"})
        concat = staticmethod(_capped_concat)
        capped_concat = staticmethod(lambda *pieces: _capped_concat(pieces))
        capped_value = staticmethod(_check_printed)

        def call_binop(self, context, operator, left, right):
            _check_binop(operator, left, right)
            return _check_printed(super().call_binop(context, operator, left, right))

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (names as Jinja's, for kwargs)
            if type(getattr(__obj, "__self__", None)) is str:
                args = _check_str_method(__obj, args, kwargs)
            return _check_printed(super().call(__context, __obj, *args, **kwargs))

        def wrap_str_format(self, value):
            """str.format / str.format_map, sandboxed by Jinja; their field widths checked first."""
            sandboxed = super().wrap_str_format(value)
            if sandboxed is None:
                return None

            def checked(*args, **kwargs):
                _check_brace_format(value.__self__)
                return sandboxed(*args, **kwargs)

            return checked

    env = CappedEnvironment(
        loader=jinja2.BaseLoader(),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[IgnoreGenerationTags, jinja2.ext.loopcontrols],
    )
    env.filters.update(_capped_filters())
    env.filters.update({name: _printed_checked(function) for name, function in env.filters.items()})
    env.globals["namespace"] = _capped_namespace()
    return env


def _capped_ast(env, text: str):
    """The template's syntax tree with every `~` turned into a call to the capped join, and every list, tuple
    and dict literal measured as it is built (`[a, a, a, …]` shares `a` as `[a] * n` does)."""
    from jinja2 import nodes
    from jinja2.visitor import NodeTransformer

    def call(name: str, node, arguments):
        return nodes.Call(nodes.EnvironmentAttribute(name), arguments, [], None, None, lineno=node.lineno)

    class CapConcat(NodeTransformer):
        def visit_Concat(self, node):
            node = self.generic_visit(node)
            return call("capped_concat", node, node.nodes)

        def visit_List(self, node):
            return call("capped_value", node, [self.generic_visit(node)])

        visit_Dict = visit_List

        def visit_Tuple(self, node):
            node = self.generic_visit(node)
            return node if node.ctx != "load" else call("capped_value", node, [node])  # not a target of set/for

    return CapConcat().visit(env.parse(text))


def _check_constant_folding(env, tree) -> None:
    """Jinja folds constant expressions while compiling. llama-cpp-python compiles the file's templates in an
    uncapped environment when the model loads, where `{{ 10 ** 10 ** 10 }}` or `{{ 'x' * 10 ** 10 }}` would
    run there and then; so every expression Jinja could fold is folded here first, bottom-up, with the caps."""
    import operator

    from jinja2 import nodes
    from jinja2.visitor import NodeTransformer

    arithmetic = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
    arithmetic |= {"//": operator.floordiv, "%": operator.mod, "**": operator.pow}
    eval_ctx = nodes.EvalContext(env)

    class Fold(NodeTransformer):
        def generic_visit(self, node, *args, **kwargs):
            node = super().generic_visit(node, *args, **kwargs)
            if not isinstance(node, nodes.Expr) or isinstance(node, nodes.Const):
                return node
            if not all(isinstance(child, nodes.Const) for child in node.iter_child_nodes()):
                return node
            try:
                if isinstance(node, nodes.BinExpr) and node.operator in arithmetic:
                    left, right = node.left.value, node.right.value
                    _check_binop(node.operator, left, right)
                    value = arithmetic[node.operator](left, right)
                else:
                    value = node.as_const(eval_ctx)
            except Exception:  # not foldable (Impossible) or failing: Jinja leaves it for run time too
                return node
            return nodes.Const(_check_printed(value), lineno=node.lineno)

    Fold().visit(tree)
