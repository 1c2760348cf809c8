"""Where the project's data folders (prompts/, models/, examples/) live.

In a source checkout they sit beside the package; a wheel carries them in vision_agent/_data.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def checkout_root() -> Path | None:
    """The repository root when running from a source checkout, else None."""
    root = _PACKAGE_DIR.parent
    return root if (root / "models" / "catalog.toml").is_file() and (root / "prompts").is_dir() else None


def data_path(relative: str) -> Path:
    root = checkout_root()
    if root is not None:
        return root / relative
    return _PACKAGE_DIR / "_data" / relative
