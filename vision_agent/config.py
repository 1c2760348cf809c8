"""Settings: defaults < config file < environment (VISION_AGENT_...) < command-line flags.

Built once in the entry point and passed down. Unknown keys anywhere are an error that names the key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from vision_agent.errors import ConfigError, VisionAgentError
from vision_agent.files import exists, read_regular

ChatFormat = Literal["auto", "gguf", "vicuna", "mistral", "chatml"]
CONFIG_FILE_NAME = "vision-agent.toml"
MIB = 1024 * 1024
DAY_S = 86_400  # the longest any timeout may be: inf or 1e300 would overflow the clocks they are added to


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    name: str | None = Field(None, description="catalog name, path to a text GGUF, or replay:FILE")
    mmproj: Path | None = None
    chat_format: ChatFormat = "auto"
    n_ctx: int = Field(4096, ge=64)
    n_batch: int = Field(512, ge=1)
    n_threads: int | None = Field(None, ge=1, le=512)  # ggml's GGML_MAX_N_THREADS; more crashes it
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
    embedding_cache_mb: int = Field(
        1024, ge=0, description="image embeddings kept on disk across processes, by projector and image (LRU); 0: off"
    )
    save_state: bool = Field(
        False, description="save each conversation's KV state to disk, so a new process evaluates only the new turn"
    )
    state_dir_mb: int = Field(4096, ge=0, description="bound on the saved KV state files (LRU)")
    models_dir: Path | None = None


class GenerationSettings(_Section):
    temperature: float = Field(0.2, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1)
    seed: int | None = None
    stop: list[str] = []

    @field_validator("stop")
    @classmethod
    def _encodable(cls, stop: list[str]) -> list[str]:
        from vision_agent.text import valid_text

        return [valid_text(s) for s in stop]  # bytes from argv that are not UTF-8 arrive as lone surrogates


class ImageSettings(_Section):
    max_bytes: int = Field(50 * 1024 * 1024, ge=1)
    max_pixels: int = Field(40_000_000, ge=1, description="per image, read from the header before decoding")
    max_total_pixels: int = Field(200_000_000, ge=1, description="all attachments of one request together")
    max_kept_pixels: int = Field(16_000_000, ge=1, description="a larger decoded image is scaled down to this")


class AgentSettings(_Section):
    system_prompt: str | None = Field(None, description="None: prompts/system.txt; empty: no system message")
    max_steps: int = Field(5, ge=1, le=50, description="tool-using steps before a final answer is demanded")
    format_retries: int = Field(2, ge=0, le=10, description="malformed steps fed back before giving up")
    max_result_chars: int = Field(4000, ge=200, description="longer tool results are truncated with a marker")
    max_thought_chars: int = Field(300, ge=10, description="grammar bound on a step's one-line thought")
    max_argument_chars: int = Field(4000, ge=10, description="grammar bound on each string argument")

    @field_validator("system_prompt")
    @classmethod
    def _encodable(cls, text: str | None) -> str | None:
        from vision_agent.text import valid_text

        return None if text is None else valid_text(text)  # from argv or the environment: maybe not UTF-8


ToolPolicy = Literal["auto", "ask", "off"]


class PythonToolSettings(_Section):
    timeout_s: float = Field(10.0, gt=0, le=DAY_S, description="wall clock; the whole process group is killed")
    cpu_s: int = Field(5, ge=1, le=DAY_S)
    memory_mb: int = Field(1024, ge=64, le=1 << 24, description="address-space limit (not enforced on macOS)")
    max_output_chars: int = Field(20_000, ge=100)


class WebSearchSettings(_Section):
    provider: str = Field("ddgs", description="ddgs, or file:PATH (a JSON list of results, for offline use)")
    max_results: int = Field(5, ge=1, le=25)
    region: str = "wt-wt"
    safesearch: Literal["on", "moderate", "off"] = "moderate"
    timeout_s: float = Field(10.0, gt=0, le=DAY_S)
    backend: str = Field("auto", description="ddgs backend(s), e.g. duckduckgo or auto")


class ToolsSettings(_Section):
    default_policy: ToolPolicy = "auto"
    policy: dict[str, ToolPolicy] = Field({}, description="per-tool policy, e.g. {python = 'ask'}")
    dirs: list[Path] = Field([], description="extra folders of plugin tools")
    timeout_s: float = Field(60.0, gt=0, le=DAY_S, description="any tool call that takes longer is abandoned")
    python: PythonToolSettings = PythonToolSettings()
    web_search: WebSearchSettings = WebSearchSettings()

    def policy_for(self, name: str) -> ToolPolicy:
        return self.policy.get(name, self.default_policy)


class StoreSettings(_Section):
    path: Path | None = Field(None, description="the conversation store (default: vision-agent.db in the data dir)")


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
    store: StoreSettings = StoreSettings()
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
    from vision_agent.paths import config_dir

    return config_dir() / CONFIG_FILE_NAME


MAX_CONFIG_BYTES = MIB  # real config files are a few hundred bytes


def load_settings(config_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build Settings. An explicit config path must exist; the default one is optional."""
    from pydantic_settings import SettingsError

    file_values: dict[str, Any] = {}
    path = Path(config_path) if config_path else default_config_path()
    if config_path or exists(path, what="config file", error=ConfigError):
        file_values = read_toml(path)
    complex_keys = _check_env_keys()
    # A subclass per call carries this file's values into the source chain without global state.
    bound = type("Settings", (Settings,), {"_file_values": file_values})
    try:
        return bound(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path if file_values else None)) from None
    except (SettingsError, RecursionError) as exc:  # a VISION_AGENT_* value that is not the JSON it needs
        raise ConfigError(_describe_env_json(complex_keys) or f"settings: {exc}") from None


def read_toml(path: Path, max_bytes: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    """A TOML file of at most `max_bytes`, UTF-8: anything else (a device, a FIFO, a directory, a loop of
    symlinks, binary data) is a ConfigError with the reason, never a hang or a traceback."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib
    text = read_text_file(path, max_bytes, what="config file", error=ConfigError)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"config file {path}: invalid TOML (nested too deeply)") from None


def read_text_file(path: Path, max_bytes: int, *, what: str, error: type[VisionAgentError]) -> str:
    """The UTF-8 text of a regular file no larger than `max_bytes`; `error` says what is wrong otherwise."""
    data = read_regular(path, max_bytes, what=what, error=error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path}: not UTF-8 text (byte {exc.start})") from None


def _check_env_keys() -> set[str]:
    """pydantic-settings ignores unknown VISION_AGENT_* variables; a typo there should not pass silently.
    Returns the variables whose value pydantic-settings parses as JSON (lists, dicts, whole sections)."""
    known: set[str] = set()
    complex_keys: set[str] = set()
    open_prefixes: list[str] = []  # dict-valued settings take any key below them

    def collect(prefix: str, model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}".upper()
            known.add(key)
            if isinstance(field.default, BaseModel):
                complex_keys.add(key)
                collect(f"{key}__", type(field.default))
            elif isinstance(field.default, (dict, list)):
                complex_keys.add(key)
                if isinstance(field.default, dict):
                    open_prefixes.append(f"{key}__")

    collect("VISION_AGENT_", Settings)
    for name in os.environ:
        upper = name.upper()
        if upper.startswith("VISION_AGENT_") and upper not in known and not upper.startswith(tuple(open_prefixes)):
            raise ConfigError(f"environment variable {_shown(name)}: unknown setting")
    return complex_keys


def _describe_env_json(complex_keys: set[str]) -> str | None:
    """Which VISION_AGENT_* variable holds JSON that does not parse, and where."""
    import json

    for name, value in os.environ.items():
        if name.upper() in complex_keys:
            try:
                json.loads(value)
            except json.JSONDecodeError as exc:
                return f"environment variable {name}: invalid JSON ({exc.msg} at character {exc.pos})"
            except RecursionError:
                return f"environment variable {name}: invalid JSON (nested too deeply)"
    return None


def _shown(text: str) -> str:
    """A name from the environment, fit for a one-line message (control characters escaped)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text[:200])


def _describe(exc: ValidationError, path: Path | None) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    where = f"config file {path}: " if path else "settings: "
    if error["type"] == "extra_forbidden":
        return f"{where}unknown key '{key}'"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}{key}: {error['msg']}{more}"
