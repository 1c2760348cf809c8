"""Shared fixtures: a generated demo GGUF pair (the real llama.cpp path), backends built on it and closed
afterwards, images on disk, and an environment for CLI subprocesses. Plain helpers are in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import png_bytes
from vision_agent.catalog.demo_model import DemoShape, write_demo_pair


@pytest.fixture(autouse=True)
def _no_user_dirs(tmp_path_factory, monkeypatch):
    """In-process code (backends, the store) never touches the developer's own cache, data or config dirs, and
    each test starts as a new user would: no image embeddings on disk from another test."""
    home = tmp_path_factory.mktemp("user-dirs")
    for name in ("XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(name, str(home / name.lower()))


@pytest.fixture(scope="session")
def demo_pair(tmp_path_factory) -> tuple[Path, Path]:
    return write_demo_pair(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def mismatched_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A text model of width 64 beside a projector that outputs width 32."""
    return write_demo_pair(tmp_path_factory.mktemp("mismatch"), DemoShape(projection_dim=32))


@pytest.fixture(scope="module")
def make_backend(demo_pair):
    """Builds LlamaCppBackends and closes every one it built when the module's tests are done.

    `make_backend(n_ctx=1024)` loads the demo pair; `pair=(text, mmproj)` loads another; `chat_format=` and
    `embedding_cache=` are passed on; every other keyword is a ModelSettings field. A test that builds many
    may close them sooner (closing twice is harmless).
    """
    from vision_agent.backends.llama_cpp.backend import LlamaCppBackend
    from vision_agent.catalog import ResolvedModel
    from vision_agent.config import ModelSettings

    opened = []

    def make(pair=None, *, chat_format: str = "auto", embedding_cache=None, **settings) -> LlamaCppBackend:
        text, mmproj = pair or demo_pair
        # The on-disk embedding tier outlives a backend; a test turns it on when it is what it tests.
        settings.setdefault("embedding_cache_mb", 0)
        model = ResolvedModel(text=text, mmproj=mmproj, chat_format=chat_format)
        backend = LlamaCppBackend(model, ModelSettings(**settings), embedding_cache)
        opened.append(backend)
        return backend

    yield make
    for backend in reversed(opened):
        backend.close()


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
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    # No test reaches the internet unless marked `network`: the hub and the search engine are a closed port.
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    env["DDGS_PROXY"] = "http://127.0.0.1:9"
    return env
