"""Hostile programs against the first wall (RestrictedPython and the module views), by family.

Each program is refused (an error matching `error`) or contained (none of `absent` appears in what comes
back); either way the parent is unharmed. These go beyond tests/sandbox/test_python_sandbox.py: helpers that
read or write attributes by a name the program chooses, str-like formatting, module-view poisoning, forged
results, numpy, frames, descriptors, class creation, pickling, resource exhaustion.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import pytest

from tests.helpers import image_part
from vision_agent.config import PythonToolSettings
from vision_agent.tooling.sandbox import run_python

LIMITS = PythonToolSettings(timeout_s=15, cpu_s=1, memory_mb=512, max_output_chars=5000)  # wall clock: loaded CI
# What would show that a program reached the interpreter's internals or the parent.
LEAKS = ("__builtins__", "<module '", "built-in function open", "posix", "s3cret", "/proc/", "<frame", "<code ")


@dataclass
class Hostile:
    code: str
    error: str | None = None  # a regex the error must match (then the run must have failed)
    absent: tuple[str, ...] = ()  # texts that must not come back


ATTRIBUTE_BY_NAME = {
    "update_wrapper_globals": Hostile(
        "import functools, statistics\ndef f(): pass\n"
        "functools.update_wrapper(f, statistics.mean, assigned=(), updated=('__globals__',))\nsys.modules",
        error="only the standard attribute names",
    ),
    "update_wrapper_poisons_view": Hostile(
        "import functools, math\ndef f(): pass\n"
        "functools.update_wrapper(math, f, assigned=(), updated=('_attributes',))\nmath.pi",
        error="must be a function defined by the program",
    ),
    "update_wrapper_writes_stdlib_function": Hostile(
        "import functools, json\ndef f(): pass\nfunctools.update_wrapper(json.dumps, f)",
        error="must be a function defined by the program",
    ),
    "wraps_custom_assigned": Hostile(
        "import functools, statistics\n@functools.wraps(statistics.mean, assigned=('__globals__',))\n"
        "def f(): pass\nf.mean",
        error="only the standard attribute names",
    ),
    "wraps_copies_view_dict": Hostile(
        "import functools, json\n@functools.wraps(json)\ndef f(): pass\nf.dumps",
        error="has no attribute 'dumps'",
    ),
    "wraps_copies_class_dict_underscores": Hostile(
        "import functools, collections\n@functools.wraps(collections.OrderedDict)\ndef f(): pass\nd = f.__dict__",
        error='"__dict__" is an invalid attribute name',
    ),
    "singledispatch_eval_annotation": Hostile(
        "import functools\n@functools.singledispatch\ndef f(x): pass\n"
        'def g(x: "().__class__.__base__.__subclasses__()"): pass\nf.register(g)',
        error="singledispatch is not available",
    ),
    "singledispatchmethod": Hostile("import functools\nfunctools.singledispatchmethod", error="not available"),
    "total_ordering_on_stdlib_class": Hostile(
        "import functools, textwrap\nfunctools.total_ordering(textwrap.TextWrapper)", error="not available"
    ),
    "cached_property_attrname_rewrite": Hostile(
        "import functools\nclass A:\n    x = functools.cached_property(lambda self: 1)\n"
        "A.x.attrname = '__array_interface__'\nA().x",
        error="cannot change a cached_property",
    ),
    "partialmethod": Hostile("import functools\nfunctools.partialmethod", error="not available"),
    "namedtuple_exec": Hostile("import collections\ncollections.namedtuple('P', 'x')", error="not available"),
    "namedtuple_via_statistics": Hostile("import statistics\nstatistics.namedtuple", error="not available"),
    "re_template_and_scanner": Hostile("import re\nre.Scanner([])", error="not available"),
    "reduce_with_getattr": Hostile("import functools\nfunctools.reduce(getattr, ['__class__'], 1)", error="getattr"),
    "operator_attrgetter": Hostile("import operator\noperator.attrgetter('__class__')(1)", error="not allowed"),
    "copyreg_import": Hostile("import copyreg\ncopyreg.dispatch_table", error="not allowed"),
    "json_object_hook_type": Hostile(
        "import json\njson.loads('{\"__class__\": 1}', object_hook=lambda d: d)", absent=LEAKS
    ),
}

STR_FORMATTING = {
    "userstring_format": Hostile(
        "import collections\ndef f(): pass\ncollections.UserString('{0.__globals__}').format(f)", error="not available"
    ),
    "format_map_on_literal": Hostile("'{x.__class__}'.format_map({'x': 1})", error="format"),
    "format_via_map": Hostile("list(map(str.format, ['{0.__class__}'], [1]))", error="format"),
    "numpy_str_format": Hostile(
        "import numpy as np\ndef f(): pass\nnp.array(['{0.__globals__}'])[0].format(f)", error="format"
    ),
    "joined_string_format": Hostile("''.join(['{0.', '__class__}']).format(1)", error="format"),
    "format_builtin_with_field_spec": Hostile("def f(): pass\nformat(f, '{0.__globals__}')", absent=LEAKS),
    "fstring_nested_spec": Hostile("x = 'a'\nf\"{x:{'{0.__class__}'}}\"", absent=LEAKS),
    "strftime_fields": Hostile(
        "import datetime\ndatetime.date(2020, 1, 1).strftime('%Y {0.__globals__}')", absent=LEAKS
    ),
    "decimal_format_spec": Hostile("import decimal\nformat(decimal.Decimal(1), '{0.__class__}')", absent=LEAKS),
    "re_sub_group_name": Hostile("import re\nre.sub('a', '\\\\g<__class__>', 'a')", error="unknown group name"),
    "string_formatter": Hostile("import string\nstring.Formatter().format('{0.__class__}', 1)", error="not allowed"),
    "percent_format_mapping": Hostile("'%(x)s' % {'x': (lambda: 0)}", absent=("__globals__", "__builtins__")),
}

MODULE_VIEWS = {
    "delete_view_attribute": Hostile("import math\ndel math.pi", error="read-only"),
    "class_attribute_write_stdlib": Hostile(
        "import json\njson.JSONEncoder.default = lambda self, o: 1", error="cannot change a type"
    ),
    "counter_method_write": Hostile(
        "import collections\ncollections.Counter.most_common = None", error="cannot change"
    ),
    "random_instance_method_write": Hostile(
        "import random\nrandom.Random.random = lambda self: 4\nrandom.random()", error="cannot change"
    ),
    "view_class_reached": Hostile("import math\nmath.__class__", error='"__class__" is an invalid attribute'),
    "view_getattribute_dunder": Hostile(
        "import math\nimport functools\n@functools.wraps(math)\ndef f(): pass\nf.sqrt", error="has no attribute"
    ),
    "view_as_base_class": Hostile(
        "import math\nclass M(math):\n    pass", error="metaclass conflict|takes no argument"
    ),
    "subclass_view_type_through_numpy_mro": Hostile(
        "import numpy as np\nnp.uint8.mro()[-1].mro()", absent=("ModuleView", "Frozen")
    ),
    "decimal_context_write": Hostile("import decimal\ndecimal.getcontext().prec = 1", error="cannot change"),
    "setattr_missing": Hostile("import math\nsetattr(math, 'pi', 3)", error="setattr"),
}

FORGERY_AND_OUTPUT = {
    "printed_fake_result_line": Hostile(
        'print(\'{"kind": "result", "ok": true, "value": "FORGED"}\')\n\'real\'', absent=("'FORGED'",)
    ),
    "huge_final_value_is_cut": Hostile("'x' * 10**6", absent=("x" * 6000,)),
    "lone_surrogate_value": Hostile("chr(0xD800) * 3", absent=()),
    "print_to_module_view": Hostile("import json\nprint('x', file=json)", error="write"),
    "print_flood_of_newlines": Hostile("while True:\n    print()", error="output limit"),
    "exception_message_flood": Hostile("raise ValueError('e' * 10**6)", error="ValueError", absent=("e" * 3000,)),
}

NUMPY = {
    "ctypeslib": Hostile("import numpy as np\nnp.ctypeslib", error="not available"),
    "frombuffer": Hostile("import numpy as np\nnp.frombuffer(b'x' * 8)", error="not available"),
    "empty_uninitialised_memory": Hostile("import numpy as np\nnp.empty(1000)", error="not available"),
    "lib_format": Hostile("import numpy as np\nnp.lib.format", error="not available"),
    "import_submodule": Hostile("from numpy import ctypeslib", error="not allowed|cannot import|not available"),
    "fromfile": Hostile("import numpy as np\nnp.fromfile('/etc/passwd')", error="not available"),
    "scalar_tofile": Hostile("import numpy as np\nnp.uint8(1).tofile('pwned')", error="not available"),
    "scalar_dumps_pickle": Hostile("import numpy as np\nnp.float64(1).dumps()", error="not available"),
    "scalar_type_dump": Hostile("image.dtype.type.dump", error="not available"),
    "array_dumps_pickle": Hostile("import numpy as np\nnp.array([1]).dumps()", error="not available"),
    "flat_base_setflags": Hostile("image.flat.base.setflags(write=True)", error="not available"),
    "reshape_base": Hostile("image.reshape(-1).base", error="not available"),
    "flags_item_write": Hostile("image.flags['WRITEABLE'] = True", error="cannot change"),
    "strides_write": Hostile("a = image.copy()\na.strides = (0, 0, 0)", error="cannot set attributes"),
    "shape_write_on_image": Hostile("image.shape = (1,)", error="cannot set attributes"),
    "object_view_of_image": Hostile("image.view('O')", error="TypeError|ValueError"),
    "object_array_reduce": Hostile("import numpy as np\nnp.array([len], dtype=object).__reduce__()", error="_"),
    "array_interface": Hostile("image.__array_interface__", error='"__array_interface__" is an invalid'),
    "memory_bomb": Hostile("import numpy as np\nnp.ones((10**5, 10**5))", error="MemoryError|Unable to allocate"),
    "image_write_through_view": Hostile("v = image[:, :, 0]\nv[0, 0] = 5", error="read-only"),
    "out_parameter_into_image": Hostile(
        "import numpy as np\nnp.add(image, 1, out=image)", error="not available|read-only|writable"
    ),
}

FRAMES_AND_EXCEPTIONS = {
    "gi_yieldfrom": Hostile("def g():\n    yield 1\ng().gi_yieldfrom", error="gi_yieldfrom"),
    "cr_frame_async": Hostile("async def f():\n    pass", error="not allowed"),
    "traceback_module": Hostile("import traceback\ntraceback.extract_stack()", error="not allowed"),
    "sys_exc_info": Hostile("import sys\nsys.exc_info()", error="not allowed"),
    "exception_context": Hostile(
        "try:\n    1/0\nexcept Exception as e:\n    e.__context__", error='"__context__" is an invalid'
    ),
    "except_star_group": Hostile("try:\n    pass\nexcept* ValueError:\n    pass", error="not allowed"),
    "match_class_pattern_attribute": Hostile("match 1:\n    case int(__class__=c):\n        c", error="not allowed"),
    "generator_throw_frame": Hostile(
        "def g():\n    yield 1\nx = g()\nnext(x)\nx.throw(ValueError('v'))", error="ValueError|next"
    ),
    "system_exit_is_reported": Hostile("raise SystemExit(0)", error="SystemExit"),
    "keyboard_interrupt_is_reported": Hostile("raise KeyboardInterrupt", error="KeyboardInterrupt"),
    "json_recursion_bomb": Hostile("import json\njson.loads('[' * 100000 + ']' * 100000)", error="RecursionError"),
}

CLASSES_AND_DESCRIPTORS = {
    "type_three_arguments": Hostile("type('A', (), {'__getattr__': len})", error="type"),
    "metaclass_keyword": Hostile("class A(metaclass=len):\n    pass", error="metaclass"),
    "init_subclass": Hostile("class A:\n    def __init_subclass__(cls):\n        pass", error="invalid variable"),
    "set_name": Hostile("class A:\n    def __set_name__(self, o, n):\n        pass", error="invalid variable"),
    "slots_name": Hostile("class A:\n    __slots__ = ()", error="invalid variable"),
    "property_builtin": Hostile("property(len)", error="property"),
    "object_builtin": Hostile("object()", error="object"),
    "super_builtin": Hostile("class A:\n    def f(self):\n        return super()\nA().f()", error="super"),
    "cached_property_dunder_key": Hostile(
        "import functools\nclass A:\n    @functools.cached_property\n    def __eq__(self):\n        return 1\n"
        "a = A()\na.__eq__",
        error='"__eq__" is an invalid attribute',
    ),
    "subclass_stdlib_and_reach_internals": Hostile(
        "import collections\nclass D(collections.OrderedDict):\n    pass\nD()._OrderedDict__root",
        error="invalid attribute",
    ),
    "program_class_attribute_underscore_key": Hostile(
        "class A:\n    pass\nA.x = 1\n[A.x, A.mro()[-1].mro()]", absent=("ModuleView",)
    ),
    "eq_hook_sees_only_strings": Hostile(
        "seen = []\nclass E:\n    def __eq__(self, other):\n        seen.append(repr(other))\n        return False\n"
        "    def __hash__(self):\n        return 0\n"
        "import math\n[E() == 1, seen]",
        error="invalid variable",
    ),
    "vars_and_dir": Hostile("dir()", error="dir"),
    "globals_via_lambda": Hostile("(lambda: 0).__globals__", error="invalid attribute"),
    "builtins_name": Hostile("__builtins__", error="invalid variable"),
    "breakpoint": Hostile("breakpoint()", error="reserved name|breakpoint"),
}

IMPORTS_AND_MODULES = {
    "pickle": Hostile("import pickle\npickle.loads(b'')", error="not allowed"),
    "weakref": Hostile("import weakref\nweakref.ref", error="not allowed"),
    "gc": Hostile("import gc\ngc.get_objects()", error="not allowed"),
    "collections_abc": Hostile("from collections import abc", error="not available|cannot import"),
    "json_decoder_module": Hostile("import json\njson.decoder", error="not available"),
    "relative_import": Hostile("from . import x", error="not allowed"),
    "dotted_stdlib": Hostile("import re._parser", error="not allowed"),
    "datetime_capi": Hostile("import datetime\ndatetime.datetime_CAPI", error="not available"),
    "random_systemrandom": Hostile("import random\nrandom.SystemRandom", error="not available"),
    "math_via_builtin_reaches_nothing": Hostile("math.sqrt.__self__", error="invalid attribute"),
}

EXHAUSTION = {
    "regex_backtracking": Hostile("import re\nre.match('(a+)+$', 'a' * 40 + 'b')", error="CPU time limit|timed out"),
    "factorial": Hostile("import math\nmath.factorial(10**7)", error="CPU time limit|timed out"),
    "permutations_forever": Hostile(
        "import itertools\nfor p in itertools.permutations(range(100)):\n    pass", error="CPU time limit|timed out"
    ),
    "decimal_max_precision": Hostile(
        "import decimal\nc = decimal.Context(prec=decimal.MAX_PREC)\nc.divide(1, 3)",
        error="MemoryError|CPU time limit|timed out",
    ),
    "huge_int_to_string": Hostile("str(10**100000)", error="ValueError|Exceeds"),
    "sorted_huge_range": Hostile("sorted(range(10**9))", error="MemoryError|CPU time limit|timed out"),
    "arange_bomb": Hostile("import numpy as np\nnp.arange(10**12)", error="MemoryError|Unable to allocate"),
    "deque_growth": Hostile(
        "import collections\nd = collections.deque()\nwhile True:\n    d.append('x' * 10**6)",
        error="MemoryError|CPU time limit",
    ),
}

REACHABLE_OBJECTS = {
    "abc_register_through_mro": Hostile(
        "import collections\nm = collections.UserDict.mro()[2]\nm.register(int)\nm.mro()[-1].mro()",
        absent=LEAKS,
    ),
    "object_from_mro_has_nothing": Hostile("int.mro()[-1].__subclasses__()", error="invalid attribute"),
    "generic_alias_proxy": Hostile("import collections\ncollections.deque[int].__origin__", error="invalid attribute"),
    "json_scanner_objects": Hostile(
        "import json\nd = json.JSONDecoder()\n[d.parse_object, d.scan_once]", absent=("__globals__", "<module")
    ),
    "ufunc_at_on_image": Hostile("import numpy as np\nnp.sqrt.at(image, 0)", error="not available|read-only"),
    "numpy_abstract_type_dump": Hostile("image.dtype.type.mro()[4].dump", error="not available"),
    "flat_base_is_only_the_image": Hostile("image.flat.base.tobytes()[:3]", absent=LEAKS),
    "random_c_base_class": Hostile("import random\nrandom.Random.mro()[1].mro()", absent=LEAKS),
    "cached_property_lock": Hostile("import functools\nfunctools.cached_property(len).lock", absent=LEAKS),
    "lru_cache_wrapped": Hostile(
        "import functools\nf = functools.lru_cache(len)\nf.__wrapped__", error="invalid attribute"
    ),
    "nul_byte_in_code": Hostile("1\x00 + 1", error="SyntaxError|null"),
    "absurd_nesting": Hostile("(" * 100000 + ")" * 100000, error="SyntaxError|too many|nest|Recursion|too long"),
    "fullwidth_dunder": Hostile("(1).\uff3f\uff3fclass\uff3f\uff3f", error="SyntaxError|invalid attribute"),
    "fullwidth_eval": Hostile("\uff45\uff56\uff41\uff4c('1')", error="Eval calls are not allowed"),
    "apply_with_underscore_kwargs": Hostile("dict(**{'__class__': 1})", absent=LEAKS),
    "program_function_attribute_write": Hostile("def f(): pass\nf.x = 1", error="cannot change a function"),
    "program_class_attribute_named_like_type_methods": Hostile(
        "class A:\n    pass\nA.mro = 1\nclass B(A):\n    pass\n[B.mro, B().mro]", absent=LEAKS
    ),
}

FAMILIES = {
    "attribute_by_name": ATTRIBUTE_BY_NAME,
    "str_formatting": STR_FORMATTING,
    "module_views": MODULE_VIEWS,
    "forgery_and_output": FORGERY_AND_OUTPUT,
    "numpy": NUMPY,
    "frames_and_exceptions": FRAMES_AND_EXCEPTIONS,
    "classes_and_descriptors": CLASSES_AND_DESCRIPTORS,
    "imports_and_modules": IMPORTS_AND_MODULES,
    "exhaustion": EXHAUSTION,
    "reachable_objects": REACHABLE_OBJECTS,
}
CASES = [(family, name) for family, cases in FAMILIES.items() for name in sorted(cases)]


@pytest.fixture(scope="module")
def image():
    return image_part(size=(32, 24), color=(10, 200, 30), source="t")


def check(case: Hostile, image, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISION_AGENT_TEST_SECRET", "s3cret")
    before = dict(os.environ)
    result = run_python(case.code, LIMITS, image=image)
    seen = f"{result.output}\n{result.value}\n{result.error}"
    if case.error is not None:
        assert not result.ok, result
        assert re.search(case.error, result.error or ""), result.error
    for text in (*case.absent, "s3cret"):
        assert text not in seen, seen[:500]
    assert len(seen) < 3 * LIMITS.max_output_chars + 5000
    assert list(tmp_path.iterdir()) == []
    assert math.pi == 3.141592653589793
    assert dict(os.environ) == before
    return result


@pytest.mark.parametrize(("family", "name"), CASES, ids=[f"{f}:{n}" for f, n in CASES])
def test_hostile_program(family, name, image, tmp_path, monkeypatch):
    check(FAMILIES[family][name], image, tmp_path, monkeypatch)


def test_there_are_at_least_forty_new_programs():
    assert len(CASES) >= 40


def test_a_printed_fake_result_is_only_output(image, tmp_path, monkeypatch):
    result = check(FORGERY_AND_OUTPUT["printed_fake_result_line"], image, tmp_path, monkeypatch)
    assert result.ok and result.value == "'real'" and '"FORGED"' in result.output


def test_a_huge_final_value_is_cut_by_the_child(image, tmp_path, monkeypatch):
    result = check(FORGERY_AND_OUTPUT["huge_final_value_is_cut"], image, tmp_path, monkeypatch)
    assert result.ok and len(result.value) <= LIMITS.max_output_chars + 100 and "cut by the sandbox" in result.value


def test_module_views_hold_even_against_unrestricted_python():
    """No dict, no slot, no writable attribute: even object.__setattr__ and the class have nothing to give."""
    import gc
    import importlib.util

    from vision_agent.tooling.sandbox.runner import CHILD

    spec = importlib.util.spec_from_file_location("py_wall_under_test", CHILD.with_name("py_wall.py"))
    py_wall = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(py_wall)
    view = py_wall.module_view("math", {"pi": math.pi})
    assert view.pi == math.pi and repr(view) == "<module math>"
    for name in ("__dict__", "__class__", "__slots__", "_attributes", "table", "e"):
        with pytest.raises(AttributeError):
            getattr(view, name)
    with pytest.raises((AttributeError, TypeError)):
        object.__setattr__(view, "pi", 3)
    with pytest.raises(TypeError):
        view.pi = 3
    with pytest.raises(TypeError):
        type(view).pi = 3
    with pytest.raises(TypeError):
        vars(view)
    assert gc.get_referents(view) == [type(view)]  # nothing else hangs off the instance
    assert view.pi == math.pi
