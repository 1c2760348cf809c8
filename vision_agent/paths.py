"""Where things live: the project's data folders (prompts/, models/, examples/, tools/) and the user's dirs.

The data folders sit beside the package in a source checkout; a wheel carries them in vision_agent/_data.
The user's folders (config, data, history, downloaded models, plugin tools) come from platformdirs, and
this is the only module that asks it: XDG_CONFIG_HOME and XDG_DATA_HOME move them on Linux.
"""

from __future__ import annotations

from pathlib import Path

APP_NAME = "vision-agent"
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


def config_dir() -> Path:
    """The user config dir: the config file and the user's plugin tools."""
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP_NAME))


def data_dir() -> Path:
    """The user data dir: the conversation history, and downloaded models outside a checkout."""
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME))


def cache_dir() -> Path:
    """The user cache dir: image embeddings and saved KV states (safe to delete; rebuilt on demand)."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir(APP_NAME))


def history_dir() -> Path:
    return data_dir() / "history"


def user_tools_dir() -> Path:
    return config_dir() / "tools"


def default_models_dir() -> Path:
    """Downloads go to models/ in a source checkout, else to the user data dir."""
    root = checkout_root()
    return root / "models" if root is not None else data_dir() / "models"
