"""Crafted values the first round of checks let through to llama.cpp, found by mutating every key of the demo
pair (and the optional keys llama.cpp and libmtmd read) through the real CLI."""

from __future__ import annotations

import pytest

from tests.hostile import gguf_craft as gc
from tests.hostile.bounded import assert_refused, run_bounded


@pytest.mark.parametrize("key", ["llama.attention.layer_norm_rms_epsilon", "llama.attention.layer_norm_epsilon"])
def test_a_negative_norm_epsilon_is_a_bad_model_file(demo_pair, cli_env, image, tmp_path, key):
    # ggml's rms_norm asserts eps >= 0: the process aborted at the first token (exit 11 with the assert).
    text, mmproj = demo_pair
    crafted = gc.rewrite(text, tmp_path / "negative-eps.gguf", {key: gc.f32(-1.0)})
    args = ("ask", "-m", str(crafted), "--mmproj", str(mmproj), "-a", str(image), "--no-tools", "hi")
    assert_refused(run_bounded(*args, env=cli_env, tmp_path=tmp_path), 4, key, "negative")
