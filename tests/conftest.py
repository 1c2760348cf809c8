"""Shared fixtures: a generated demo GGUF pair (the real llama.cpp path) and images on disk."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vision_agent.demo_model import DemoShape, write_demo_pair


@pytest.fixture(scope="session")
def demo_pair(tmp_path_factory) -> tuple[Path, Path]:
    return write_demo_pair(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def mismatched_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A text model of width 64 beside a projector that outputs width 32."""
    return write_demo_pair(tmp_path_factory.mktemp("mismatch"), DemoShape(projection_dim=32))


def png_bytes(size=(64, 48), color=(200, 30, 30), mode="RGB", fmt="PNG", **save) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=fmt, **save)
    return buffer.getvalue()


@pytest.fixture
def red_png(tmp_path) -> Path:
    path = tmp_path / "red.png"
    path.write_bytes(png_bytes())
    return path


@pytest.fixture
def blue_png(tmp_path) -> Path:
    path = tmp_path / "blue.png"
    path.write_bytes(png_bytes(size=(40, 70), color=(20, 40, 220)))
    return path


@pytest.fixture
def cli_env(tmp_path) -> dict[str, str]:
    """Environment for CLI subprocesses: an empty models dir and config dir, no user settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISION_AGENT_")}
    env["VISION_AGENT_MODEL__MODELS_DIR"] = str(tmp_path / "models")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    return env


def run_cli(*args: str, env: dict[str, str], stdin: bytes | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "vision_agent", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=env,
        timeout=timeout,
    )
