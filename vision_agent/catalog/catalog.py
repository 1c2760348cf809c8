"""The model catalog (models/catalog.toml) and resolution of `-m` into files on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vision_agent.config import ModelSettings, read_toml
from vision_agent.errors import ConfigError, ModelFileError, NoModelError
from vision_agent.files import exists
from vision_agent.paths import data_path, default_models_dir


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    chat_format: str
    size_gb: float
    repo: str = ""
    file: str = ""
    mmproj: str = ""
    generated: bool = False
    n_ctx: int | None = None


@dataclass(frozen=True)
class ResolvedModel:
    """What the backend loads: a text GGUF and its projector, or a replay script."""

    text: Path | None = None
    mmproj: Path | None = None
    chat_format: str = "auto"
    entry: CatalogEntry | None = None
    replay_script: Path | None = None

    @property
    def label(self) -> str:
        if self.replay_script:
            return f"replay:{self.replay_script}"
        return self.entry.name if self.entry else str(self.text)

    @property
    def pair(self) -> tuple[Path, Path]:
        """The text model and its projector: resolve_model sets both unless it resolved a replay script."""
        assert self.text is not None and self.mmproj is not None, "a replay script has no model files"
        return self.text, self.mmproj


def load_catalog(path: Path | None = None) -> dict[str, CatalogEntry]:
    raw = read_toml(path or data_path("models/catalog.toml"))
    return {name: CatalogEntry(name=name, **fields) for name, fields in raw.get("models", {}).items()}


def models_dir(settings: ModelSettings) -> Path:
    """The configured models dir, else models/ in a source checkout, else the user data dir's."""
    if settings.models_dir:
        return Path(settings.models_dir).expanduser()
    return default_models_dir()


def entry_dir(settings: ModelSettings, entry: CatalogEntry) -> Path:
    return models_dir(settings) / entry.name


def installed_files(settings: ModelSettings, entry: CatalogEntry) -> tuple[Path, Path] | None:
    """The downloaded (text, mmproj) pair of a catalog entry, or None when it is not complete."""
    directory = entry_dir(settings, entry)
    if entry.generated:
        from vision_agent.catalog.demo_model import MMPROJ_FILE, TEXT_FILE

        text, mmproj = directory / TEXT_FILE, directory / MMPROJ_FILE
        return (text, mmproj) if text.is_file() and mmproj.is_file() else None
    ggufs = sorted(directory.glob("*.gguf")) if directory.is_dir() else []
    projectors = [p for p in ggufs if p.name.lower().startswith("mmproj")]
    texts = [p for p in ggufs if p not in projectors]
    return (texts[0], projectors[0]) if texts and projectors else None


def resolve_model(settings: ModelSettings, catalog: dict[str, CatalogEntry] | None = None) -> ResolvedModel:
    """Turn settings.name (catalog name, GGUF path or replay:FILE) into files, with clear failures."""
    catalog = catalog if catalog is not None else load_catalog()
    name = settings.name
    if not name:
        downloaded = [e for e in catalog.values() if not e.generated and installed_files(settings, e)]
        if not downloaded:
            raise NoModelError(
                "no model: pass -m NAME_OR_PATH, or download one with "
                "`vision-agent models pull llava-1.5-7b` (`vision-agent models list` shows all)"
            )
        name = downloaded[0].name

    if name.startswith("replay:"):
        script = Path(name.removeprefix("replay:")).expanduser()
        if not exists(script, what="replay script", error=ModelFileError):
            raise ModelFileError(f"replay script {script}: no such file")
        return ResolvedModel(replay_script=script)

    if name in catalog:
        entry = catalog[name]
        files = installed_files(settings, entry)
        if files is None and entry.generated:
            from vision_agent.catalog.demo_model import write_demo_pair

            files = write_demo_pair(entry_dir(settings, entry))
        if files is None:
            raise NoModelError(f"model {name} is not downloaded: run `vision-agent models pull {name}`")
        text, mmproj = files
        fmt = settings.chat_format if settings.chat_format != "auto" else entry.chat_format
        return ResolvedModel(text=text, mmproj=settings.mmproj or mmproj, chat_format=fmt, entry=entry)

    text = Path(name).expanduser()
    if not exists(text, what="model file", error=ModelFileError):
        if "/" not in name and not name.endswith(".gguf"):
            raise NoModelError(
                f"unknown model {name!r}: not in the catalog (see `vision-agent models list`) and no such file"
            )
        raise ModelFileError(f"model file {text}: no such file")
    mmproj = settings.mmproj or find_mmproj_beside(text)
    return ResolvedModel(text=text, mmproj=mmproj, chat_format=settings.chat_format)


def find_mmproj_beside(text: Path) -> Path:
    candidates = sorted(p for p in text.parent.glob("*.gguf") if p.name.lower().startswith("mmproj"))
    if not candidates:
        raise ModelFileError(f"no projector for {text}: pass --mmproj PATH (no mmproj*.gguf found beside the model)")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise ConfigError(f"several projectors beside {text.name} ({names}): choose one with --mmproj")
    return candidates[0]
