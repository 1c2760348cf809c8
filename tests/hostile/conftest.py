"""Fixtures for hostile-input tests; the bounded CLI runner and the refusal check are in bounded.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import png_bytes


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "img.png"
    path.write_bytes(png_bytes())
    return path
