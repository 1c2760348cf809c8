"""Load-time failures of llama.cpp are visible and coded: a context too large to allocate is a configuration
error (exit 2), a file llama.cpp refuses names what it said, and a ggml abort prints its message and llama.cpp's
last errors and exits with the llama.cpp-failure code instead of dying silently on SIGABRT."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import run_cli
from vision_agent.backends.llama_cpp.load import load_text_model
from vision_agent.config import ModelSettings
from vision_agent.errors import ModelFileError


def patched(source: Path, target: Path, old: bytes, new: bytes) -> Path:
    data = source.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    target.write_bytes(data.replace(old, new))
    return target


def with_u32(source: Path, target: Path, key: str, value: int) -> Path:
    """A copy of a GGUF with the uint32 metadata value `key` replaced (same layout, no other change)."""
    data = bytearray(source.read_bytes())
    name = key.encode()
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    assert struct.unpack_from("<I", data, at)[0] == 4  # GGUF type uint32
    struct.pack_into("<I", data, at + 4, value)
    target.write_bytes(bytes(data))
    return target


def ask(pair, *options: str, env):
    text, mmproj = pair
    return run_cli("ask", "--no-tools", "-m", str(text), "--mmproj", str(mmproj), *options, "Hi.", env=env)


def test_a_context_too_large_for_memory_is_a_configuration_error(demo_pair, cli_env):
    result = ask(demo_pair, "--ctx", "100000000", env=cli_env)
    message = result.stderr.decode()
    assert result.returncode == 2, message
    assert "100000000-token context" in message and "lower --ctx" in message and "GiB" in message
    assert "bad model file" not in message and "Traceback" not in message


def test_an_allocation_llama_cpp_fails_is_reported_with_its_own_lines(demo_pair, cli_env):
    """Under an address-space limit the estimate cannot see, llama.cpp itself fails to allocate."""
    text, mmproj = demo_pair
    code = textwrap.dedent(
        """
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, 3 * 1024**3))
        from vision_agent.frontends.cli.main import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    args = ["ask", "--no-tools", "-m", str(text), "--mmproj", str(mmproj), "--ctx", "500000", "Hi."]
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, env=cli_env, timeout=120)
    message = result.stderr.decode()
    assert result.returncode == 2, message
    assert "500000-token context" in message and "lower --ctx" in message
    # llama.cpp's own words; on a machine with under ~5 GB of memory the estimate refuses it first.
    assert "failed to allocate" in message or "does not fit" in message


def test_a_file_llama_cpp_refuses_is_named_with_its_reason(demo_pair, tmp_path):
    text, _ = demo_pair
    broken = patched(text, tmp_path / "broken.gguf", b"output_norm.weight", b"output_norm.weighX")
    with pytest.raises(ModelFileError, match="llama.cpp could not load .*output_norm.weight"):
        load_text_model(broken, ModelSettings(n_ctx=512), 0)


def test_a_ggml_abort_while_loading_prints_its_message_and_exits_11(demo_pair, tmp_path):
    """llama-cpp-python with verbose=False points fds 1/2 at /dev/null while loading, so this assertion
    used to kill the process with SIGABRT and print nothing."""
    text, _ = demo_pair
    crafted = with_u32(text, tmp_path / "layers.gguf", "llama.block_count", 100_000)
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from vision_agent.backends.llama_cpp.load import load_text_model
        from vision_agent.config import ModelSettings
        load_text_model(Path({str(crafted)!r}), ModelSettings(n_ctx=512), 0)
        print("loaded")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    stderr = result.stderr.decode()
    assert result.returncode == 11, stderr
    assert "vision-agent: llama.cpp aborted:" in stderr and "GGML_ASSERT" in stderr and "n_layer" in stderr
    assert result.stdout == b""
    assert len(stderr.splitlines()) == 1  # one line: no debugger backtrace
