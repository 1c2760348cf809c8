"""The context-size check that refuses impossible contexts before llama.cpp allocates (no llama.cpp)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from vision_agent.backends.llama_cpp.load import MAX_N_CTX, N_UBATCH, check_context_size, minimum_bytes
from vision_agent.catalog.gguf_info import GGUFSummary
from vision_agent.errors import ConfigError

# A 7B-class model with grouped-query attention: 32 layers, 32 heads, 8 K/V heads of 128.
GQA = {"head_count": 32, "head_count_kv": 8, "key_length": 128, "value_length": 128}


def summary(**fields) -> GGUFSummary:
    base = {"embedding_length": 4096, "block_count": 32, "context_length": 8192}
    return GGUFSummary(path=Path("model.gguf"), architecture="llama", **{**base, **fields})


def test_the_minimum_is_the_kv_cache_and_one_micro_batch_of_attention_scores():
    kv = 4096 * 32 * 8 * (128 + 128) * 2  # f16 K and V, every layer: 512 MiB
    assert minimum_bytes(4096, summary(**GQA)) == kv + 4096 * N_UBATCH * 32 * 4


def test_a_file_that_does_not_say_enough_counts_for_less():
    assert minimum_bytes(4096, summary()) == 4096 * N_UBATCH * 4  # one head's scores, no KV cache


def test_a_long_context_that_fits_is_not_refused():
    # 128k positions of this model may need 16 GiB of KV cache, or 64 GiB without grouped-query attention:
    # a file without head counts does not say which, so only the certain part (256 MiB of scores) counts.
    check_context_size(131072, summary(context_length=131072), host_memory=True)


def test_impossible_contexts_are_configuration_errors():
    with pytest.raises(ConfigError, match=f"more than llama.cpp supports \\({MAX_N_CTX}\\)"):
        check_context_size(MAX_N_CTX + 1, summary(), host_memory=False)
    with pytest.raises(ConfigError, match=r"100000000-token context does not fit: .*KV cache ~\d.*lower --ctx"):
        check_context_size(100_000_000, summary(**GQA), host_memory=True)
    with pytest.raises(ConfigError, match=r"100000000-token context does not fit"):
        check_context_size(100_000_000, summary(), host_memory=True)  # the scores alone: 190 GiB


def test_offloaded_contexts_are_left_to_llama_cpp():
    check_context_size(100_000_000, summary(**GQA), host_memory=False)  # GPU memory is not ours to guess


def test_ordinary_contexts_pass_and_a_longer_than_trained_one_warns(caplog):
    with caplog.at_level(logging.WARNING):
        check_context_size(4096, summary(**GQA), host_memory=True)
        assert not caplog.records
        check_context_size(16384, summary(**GQA), host_memory=True)
    assert "more than the 8192 tokens model.gguf was trained with" in caplog.text
