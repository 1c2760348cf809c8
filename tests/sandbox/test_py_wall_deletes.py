"""Deleting an attribute of a module view's class or of an item-only wrapper is refused with the sandbox's own
message (the __delattr__ shared with __setattr__ once failed with "missing 1 required positional argument")."""

from __future__ import annotations

import importlib.util
import math

import pytest

from vision_agent.tooling.sandbox.runner import CHILD


def _py_wall():
    spec = importlib.util.spec_from_file_location("py_wall_under_test", CHILD.with_name("py_wall.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deleting_from_a_module_views_class_says_read_only():
    view = _py_wall().module_view("math", {"pi": math.pi})
    with pytest.raises(TypeError, match="module math is read-only in the sandbox"):
        del type(view).pi
    assert view.pi == math.pi


def test_deleting_an_attribute_of_an_item_only_wrapper_says_cannot_set():
    items = _py_wall()._ItemsOnly({"a": 1})
    with pytest.raises(TypeError, match="cannot set attributes of a dict in the sandbox"):
        del items.target
    del items["a"]
    assert items.target == {}
