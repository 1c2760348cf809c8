import pytest

from vision_agent.config import load_settings
from vision_agent.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    import os

    for name in list(os.environ):
        if name.startswith("VISION_AGENT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))


def write(tmp_path, text):
    path = tmp_path / "vision-agent.toml"
    path.write_text(text)
    return path


def test_defaults_file_env_flags_precedence(tmp_path, monkeypatch):
    config = write(tmp_path, '[model]\nn_ctx = 1000\nname = "from-file"\n[generation]\ntop_p = 0.5\nseed = 7\n')
    assert load_settings().model.n_ctx == 4096  # default, no file given or found

    settings = load_settings(config)
    assert (settings.model.n_ctx, settings.model.name, settings.generation.top_p) == (1000, "from-file", 0.5)

    monkeypatch.setenv("VISION_AGENT_MODEL__N_CTX", "3000")
    monkeypatch.setenv("VISION_AGENT_GENERATION__SEED", "8")
    settings = load_settings(config)
    assert (settings.model.n_ctx, settings.generation.seed) == (3000, 8)  # env beats file
    assert settings.model.name == "from-file"  # untouched keys survive from the file

    settings = load_settings(config, {"model": {"n_ctx": 2048}})
    assert settings.model.n_ctx == 2048  # flags beat env
    assert settings.generation.seed == 8 and settings.generation.top_p == 0.5


def test_default_config_file_in_user_config_dir_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "vision-agent").mkdir()
    (tmp_path / "vision-agent" / "vision-agent.toml").write_text("[model]\nn_ctx = 1234\n")
    assert load_settings().model.n_ctx == 1234


@pytest.mark.parametrize(
    "text, key",
    [("[model]\nnctx = 1\n", "model.nctx"), ("[modle]\nn_ctx = 1\n", "modle"), ("colour = 1\n", "colour")],
)
def test_unknown_key_in_file_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=f"unknown key '{key}'"):
        load_settings(write(tmp_path, text))


def test_unknown_environment_variable_is_named(monkeypatch):
    monkeypatch.setenv("VISION_AGENT_MODEL__NCTX", "3")
    with pytest.raises(ConfigError, match="VISION_AGENT_MODEL__NCTX"):
        load_settings()


def test_invalid_value_and_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="generation.temperature"):
        load_settings(write(tmp_path, "[generation]\ntemperature = -1\n"))
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(write(tmp_path, "[model\n"))
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.toml")


# -- hostile config paths and values: always a ConfigError (exit 2) with the reason, never a hang ------------


@pytest.mark.parametrize("special", ["/dev/zero", "directory", "fifo"])
def test_config_path_must_be_a_regular_file(tmp_path, special):
    import os

    path = {"/dev/zero": "/dev/zero", "directory": str(tmp_path)}.get(special)
    if special == "fifo":
        path = str(tmp_path / "fifo.toml")
        os.mkfifo(path)  # opened non-blocking: no writer cannot hang the read
    with pytest.raises(ConfigError, match="not a regular file"):
        load_settings(path)


def test_config_paths_the_system_refuses(tmp_path):
    loop = tmp_path / "loop.toml"
    loop.symlink_to(tmp_path / "loop2.toml")
    (tmp_path / "loop2.toml").symlink_to(loop)
    with pytest.raises(ConfigError, match="symbolic links"):
        load_settings(loop)
    with pytest.raises(ConfigError, match="Not a directory"):
        load_settings(write(tmp_path, "") / "below")
    with pytest.raises(ConfigError, match="too long"):
        load_settings(tmp_path / ("x" * 5000))


def test_default_config_behind_a_symlink_loop_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "vision-agent").mkdir()
    (tmp_path / "vision-agent" / "vision-agent.toml").symlink_to(tmp_path / "vision-agent" / "vision-agent.toml")
    with pytest.raises(ConfigError, match="vision-agent.toml"):
        load_settings()


def test_config_file_size_and_encoding(tmp_path):
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (2 * 1024 * 1024) + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_settings(big)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"[model]\nname = '\xff\xfe'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(binary)
    nested = tmp_path / "nested.toml"
    nested.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="nested.toml"):
        load_settings(nested)


@pytest.mark.parametrize(
    "name, value",
    [
        ("VISION_AGENT_GENERATION__STOP", "[oops"),
        ("VISION_AGENT_TOOLS__POLICY", "{python: ask}"),
        ("VISION_AGENT_MODEL", "{"),
        ("VISION_AGENT_TOOLS__DIRS", "[" * 100_000),
    ],
    ids=["list", "dict", "section", "nested"],
)
def test_malformed_json_in_an_environment_variable_names_it(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"environment variable {name}: invalid JSON"):
        load_settings()
