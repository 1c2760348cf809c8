"""Settings: defaults < config file < environment (VISION_AGENT_...) < command-line flags.

Built once in the entry point and passed down. Unknown keys anywhere are an error that names the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from vision_agent.errors import ConfigError

ChatFormat = Literal["auto", "gguf", "vicuna", "mistral", "chatml"]
CONFIG_FILE_NAME = "vision-agent.toml"
MIB = 1024 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    name: str | None = Field(None, description="catalog name, path to a text GGUF, or replay:FILE")
    mmproj: Path | None = None
    chat_format: ChatFormat = "auto"
    n_ctx: int = Field(4096, ge=64)
    n_batch: int = Field(512, ge=1)
    n_threads: int | None = Field(None, ge=1)
    n_gpu_layers: int | None = Field(None, ge=-1, description="None: all layers when the build can offload")
    mmproj_offload: bool = True
    keep_answer_tokens: bool = Field(
        True, description="earlier answers enter later prompts as the tokens sampled, not re-tokenised text"
    )
    kv_reuse: bool = Field(True, description="keep the KV cache between calls; evaluate only what is new")
    image_cache_mb: int = Field(256, ge=0, description="image embeddings kept by image hash (LRU); 0: off")
    state_cache_mb: int = Field(
        2048, ge=0, description="saved KV states of other conversations in host memory (LRU); 0: off"
    )
    models_dir: Path | None = None


class GenerationSettings(_Section):
    temperature: float = Field(0.2, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1)
    seed: int | None = None
    stop: list[str] = []


class ImageSettings(_Section):
    max_bytes: int = Field(50 * 1024 * 1024, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)


class AgentSettings(_Section):
    system_prompt: str | None = Field(None, description="None: prompts/system.txt; empty: no system message")
    max_steps: int = Field(5, ge=1, le=50, description="tool-using steps before a final answer is demanded")
    format_retries: int = Field(2, ge=0, le=10, description="malformed steps fed back before giving up")
    max_result_chars: int = Field(4000, ge=200, description="longer tool results are truncated with a marker")
    max_thought_chars: int = Field(300, ge=10, description="grammar bound on a step's one-line thought")
    max_argument_chars: int = Field(4000, ge=10, description="grammar bound on each string argument")


ToolPolicy = Literal["auto", "ask", "off"]


class PythonToolSettings(_Section):
    timeout_s: float = Field(10.0, gt=0, description="wall clock; the whole process group is killed")
    cpu_s: int = Field(5, ge=1)
    memory_mb: int = Field(1024, ge=64, description="address-space limit (not enforced on macOS)")
    max_output_chars: int = Field(20_000, ge=100)


class WebSearchSettings(_Section):
    provider: str = Field("ddgs", description="ddgs, or file:PATH (a JSON list of results, for offline use)")
    max_results: int = Field(5, ge=1, le=25)
    region: str = "wt-wt"
    safesearch: Literal["on", "moderate", "off"] = "moderate"
    timeout_s: float = Field(10.0, gt=0)
    backend: str = Field("auto", description="ddgs backend(s), e.g. duckduckgo or auto")


class ToolsSettings(_Section):
    default_policy: ToolPolicy = "auto"
    policy: dict[str, ToolPolicy] = Field({}, description="per-tool policy, e.g. {python = 'ask'}")
    dirs: list[Path] = Field([], description="extra folders of plugin tools")
    timeout_s: float = Field(60.0, gt=0, description="any tool call that takes longer is abandoned")
    python: PythonToolSettings = PythonToolSettings()
    web_search: WebSearchSettings = WebSearchSettings()

    def policy_for(self, name: str) -> ToolPolicy:
        return self.policy.get(name, self.default_policy)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VISION_AGENT_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    model: ModelSettings = ModelSettings()
    generation: GenerationSettings = GenerationSettings()
    images: ImageSettings = ImageSettings()
    agent: AgentSettings = AgentSettings()
    tools: ToolsSettings = ToolsSettings()
    verbose: bool = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: flags (init values), environment, then the config file (see load_settings).
        return (init_settings, env_settings, _FileSource(settings_cls, cls._file_values))

    _file_values: ClassVar[dict[str, Any]] = {}


class _FileSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]):
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field, field_name):  # required by the base class; unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._values


def default_config_path() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("vision-agent")) / CONFIG_FILE_NAME


def load_settings(config_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build Settings. An explicit config path must exist; the default one is optional."""
    file_values: dict[str, Any] = {}
    path = Path(config_path) if config_path else default_config_path()
    if config_path or path.is_file():
        file_values = read_toml(path)
    _check_env_keys()
    # A subclass per call carries this file's values into the source chain without global state.
    bound = type("Settings", (Settings,), {"_file_values": file_values})
    try:
        return bound(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path if file_values else None)) from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML ({exc})") from None


def _check_env_keys() -> None:
    """pydantic-settings ignores unknown VISION_AGENT_* variables; a typo there should not pass silently."""
    known: set[str] = set()
    open_prefixes: list[str] = []  # dict-valued settings take any key below them

    def collect(prefix: str, model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}".upper()
            known.add(key)
            if isinstance(field.default, BaseModel):
                collect(f"{key}__", type(field.default))
            elif isinstance(field.default, dict):
                open_prefixes.append(f"{key}__")

    collect("VISION_AGENT_", Settings)
    for name in os.environ:
        upper = name.upper()
        if upper.startswith("VISION_AGENT_") and upper not in known and not upper.startswith(tuple(open_prefixes)):
            raise ConfigError(f"environment variable {name}: unknown setting")


def _describe(exc: ValidationError, path: Path | None) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    where = f"config file {path}: " if path else "settings: "
    if error["type"] == "extra_forbidden":
        return f"{where}unknown key '{key}'"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}{key}: {error['msg']}{more}"
