"""The clients in examples/ work against the real servers on the demo model: what the README points people to."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.subprocess, pytest.mark.llama]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def flags(demo_pair) -> list[str]:
    text, mmproj = demo_pair
    return ["-m", str(text), "--mmproj", str(mmproj), "--no-tools", "--max-tokens", "6"]


@pytest.mark.parametrize("client", ["jsonl_client.py", "acp_client.py"])
def test_the_python_clients(client, demo_pair, cli_env, tmp_path):
    command = [sys.executable, str(EXAMPLES / client), str(EXAMPLES / "shapes.png"), "--", *flags(demo_pair)]
    result = subprocess.run(
        command, capture_output=True, env=cli_env, cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()  # the streamed answers
    assert b"\x1b" not in result.stdout  # control characters from the model are dropped


@pytest.mark.skipif(shutil.which("jq") is None or shutil.which("vision-agent") is None, reason="needs jq and the CLI")
def test_the_shell_client(demo_pair, cli_env, tmp_path):
    command = ["sh", str(EXAMPLES / "jsonl.sh"), str(EXAMPLES / "shapes.png"), *flags(demo_pair)]
    result = subprocess.run(
        command, capture_output=True, env=cli_env, cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert b'"images_encoded":0' in result.stderr  # the follow-up's usage: the image was not encoded again
