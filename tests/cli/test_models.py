"""`models pull/list/info/demo` and `doctor` through real subprocesses; pull against a local fake hub."""

from __future__ import annotations

import pytest

from tests.cli.fake_hub import FakeHub
from tests.helpers import run_cli

LLAVA_REPO = "mys/ggml_llava-v1.5-7b"
SMOL_REPO = "ggml-org/SmolVLM-500M-Instruct-GGUF"


@pytest.fixture
def hub(demo_pair):
    text, mmproj = demo_pair
    repos = {
        LLAVA_REPO: {"ggml-model-q4_k.gguf": text.read_bytes(), "mmproj-model-f16.gguf": mmproj.read_bytes()},
        SMOL_REPO: {
            "SmolVLM-500M-Instruct-Q8_0.gguf": text.read_bytes(),
            "SmolVLM-500M-Instruct-f16.gguf": b"not this one",
            "mmproj-SmolVLM-500M-Instruct-Q8_0.gguf": b"not this one either",
            "mmproj-SmolVLM-500M-Instruct-f16.gguf": mmproj.read_bytes(),
            "README.md": b"# readme",
        },
    }
    with FakeHub(repos) as server:
        yield server


@pytest.fixture
def hub_env(cli_env, hub):
    return {**cli_env, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_ETAG_TIMEOUT": "5"}


def test_pull_downloads_verifies_and_the_model_then_answers(hub, hub_env, demo_pair, tmp_path):
    result = run_cli("models", "pull", "llava-1.5-7b", env=hub_env)
    assert result.returncode == 0, result.stderr
    target = tmp_path / "models" / "llava-1.5-7b"
    assert (target / "ggml-model-q4_k.gguf").read_bytes() == demo_pair[0].read_bytes()
    assert (target / "mmproj-model-f16.gguf").read_bytes() == demo_pair[1].read_bytes()
    assert b"llava-1.5-7b" in run_cli("models", "list", env=hub_env).stdout
    listed = [
        line for line in run_cli("models", "list", env=hub_env).stdout.decode().splitlines() if "llava-1.5" in line
    ]
    assert "ready" in listed[0]

    answer = run_cli("ask", "-m", "llava-1.5-7b", "--no-tools", "--max-tokens", "4", "hi", env=hub_env)
    assert answer.returncode == 0, answer.stderr
    # With no -m, a downloaded catalog model is used.
    assert run_cli("ask", "--no-tools", "--max-tokens", "2", "hi", env=hub_env).returncode == 0


def test_pull_resolves_globs_against_the_repo_listing(hub, hub_env, tmp_path):
    result = run_cli("models", "pull", "smolvlm-500m", env=hub_env)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "models" / "smolvlm-500m").glob("*.gguf"))
    assert names == ["SmolVLM-500M-Instruct-Q8_0.gguf", "mmproj-SmolVLM-500M-Instruct-f16.gguf"]


def test_interrupted_download_resumes_with_a_range_request(hub, hub_env, tmp_path, demo_pair):
    hub.cut_downloads_at = 100_000
    broken = run_cli("models", "pull", "llava-1.5-7b", env=hub_env)
    assert broken.returncode == 10 and b"run pull again to resume" in broken.stderr
    part = tmp_path / "models" / "llava-1.5-7b" / "ggml-model-q4_k.gguf.part"
    assert part.stat().st_size == 100_000
    hub.cut_downloads_at = None
    result = run_cli("models", "pull", "llava-1.5-7b", env=hub_env)
    assert result.returncode == 0, result.stderr
    ranges = [r for method, path, r in hub.requests if method == "GET" and "q4_k" in path and r]
    assert ranges and ranges[0] == "bytes=100000-"
    assert (tmp_path / "models" / "llava-1.5-7b" / "ggml-model-q4_k.gguf").read_bytes() == demo_pair[0].read_bytes()


def test_size_mismatch_is_refused(hub, hub_env, tmp_path):
    hub.claimed_sizes["mmproj-model-f16.gguf"] = 999
    result = run_cli("models", "pull", "llava-1.5-7b", env=hub_env)
    assert result.returncode == 10
    assert b"Traceback" not in result.stderr


def test_pull_errors(hub_env, cli_env):
    unknown = run_cli("models", "pull", "nope", env=hub_env)
    assert unknown.returncode == 3 and b"unknown model" in unknown.stderr
    offline = run_cli("models", "pull", "llava-1.5-7b", env={**cli_env, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert offline.returncode == 10
    assert b"127.0.0.1:9" in offline.stderr and b"Traceback" not in offline.stderr


def test_models_info_and_demo(demo_pair, tmp_path, cli_env):
    result = run_cli("models", "demo", str(tmp_path / "d"), env=cli_env)
    assert result.returncode == 0
    assert (tmp_path / "d" / "demo-text.gguf").stat().st_size + (
        tmp_path / "d" / "mmproj-demo.gguf"
    ).stat().st_size < 1_000_000
    text_info = run_cli("models", "info", str(demo_pair[0]), env=cli_env).stdout.decode()
    assert "llama" in text_info and "embedding width  64" in text_info and "gguf (embedded template)" in text_info
    proj_info = run_cli("models", "info", str(demo_pair[1]), env=cli_env).stdout.decode()
    assert "projector (mmproj)" in proj_info and "patches per image  16" in proj_info
    bad = run_cli("models", "info", str(tmp_path / "d"), env=cli_env)
    assert bad.returncode == 4


def test_doctor_reports_build_model_and_settings(demo_pair, cli_env, mismatched_pair):
    text, mmproj = demo_pair
    result = run_cli("doctor", "-m", str(text), "--mmproj", str(mmproj), "--ctx", "777", env=cli_env)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr
    assert "GPU offload" in out and "pair              ok" in out and '"n_ctx": 777' in out
    bad = run_cli("doctor", "-m", str(mismatched_pair[0]), "--mmproj", str(mismatched_pair[1]), env=cli_env)
    assert bad.returncode == 5 and b"mismatched pair" in bad.stdout
