"""A follow-up question in a new process, as a user asks it: what the on-disk caches save on turn 2.

Runs the CLI, one new process per turn, on a random-weight pair shaped like a small LLaVA (the pair of
benchmarks/multiturn.py: a ViT-B tower at 336 px, 576 image tokens, a llama text model 1024 wide, 8 layers,
32k vocabulary), each configuration with its own empty XDG dirs:

    python -m vision_agent ask --json --no-tools -m TEXT --mmproj MMPROJ -a IMG "q1"
    python -m vision_agent ask --json --no-tools -m TEXT --mmproj MMPROJ -c "q2"

and prints turn 2's wall time and the usage of its `done` event, for: the caches off
(VISION_AGENT_MODEL__EMBEDDING_CACHE_MB=0), the image-embedding cache on, and the embedding cache plus saved
KV state (VISION_AGENT_MODEL__SAVE_STATE=1). A KV state file is written only when the front end calls
backend.finish_conversation (the session does); where turn 1 left none, that row says n/a.

Then, in this process, what a saved state costs: bytes per KV position on disk, and the time to save it,
to read and check it, and to set it into llama.cpp.

Run from a checkout:  python benchmarks/followup.py   (CPU; a few minutes, ~1.3 GB of model files, shared
with benchmarks/multiturn.py). Options: --dir PATH (where the pair is kept), --tokens N, --threads N,
--rounds N (turn-2 runs per configuration; the fastest is shown).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The pair of benchmarks/multiturn.py (same shape and seed: one copy on disk).
from multiturn import SHAPE  # run as a script: benchmarks/ is on sys.path

from vision_agent.catalog.demo_model import write_demo_pair

N_CTX = 4096
Q1, Q2 = "Describe this photo in detail.", "What colours stand out the most?"
CONFIGS = [
    ("caches off", {"VISION_AGENT_MODEL__EMBEDDING_CACHE_MB": "0"}),
    ("embedding cache", {}),
    ("embedding cache + save_state", {"VISION_AGENT_MODEL__SAVE_STATE": "1"}),
]


def model_pair(directory: Path) -> tuple[Path, Path]:
    text, mmproj = directory / "demo-text.gguf", directory / "mmproj-demo.gguf"
    marker = directory / "shape.txt"
    if not (text.exists() and mmproj.exists() and marker.exists() and marker.read_text() == repr(SHAPE)):
        print(f"writing the benchmark pair to {directory} (once) …", file=sys.stderr)
        write_demo_pair(directory, SHAPE, seed=1)
        marker.write_text(repr(SHAPE))
    return text, mmproj


def photo(path: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def environment(home: Path, extra: dict[str, str], threads: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISION_AGENT_")}
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        env[name] = str(home / name.lower())
    env["VISION_AGENT_MODEL__MODELS_DIR"] = str(home / "models")
    if threads:
        env["VISION_AGENT_MODEL__N_THREADS"] = str(threads)
    return {**env, **extra}


def ask(args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    """(wall seconds, the `done` event) of one CLI process."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "vision_agent", "ask", *args], env=env, capture_output=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"ask exited {result.returncode}: {result.stderr.decode(errors='replace')[-2000:]}")
    events = [json.loads(line) for line in result.stdout.decode().splitlines() if line.strip()]
    done = events[-1]
    if done.get("type") != "done":
        raise SystemExit(f"the last event is not done: {done}")
    return wall, done


def state_files(home: Path) -> list[Path]:
    return list((home / "xdg_cache_home").glob("*/states/*.kvs"))


def follow_ups(text: Path, mmproj: Path, image: Path, options: argparse.Namespace) -> None:
    common = ["--json", "--no-tools", "--temperature", "0", "--max-tokens", str(options.tokens)]
    common += ["-m", str(text), "--mmproj", str(mmproj), "--ctx", str(N_CTX)]
    print(
        f"{'configuration':<30} {'turn-2 wall':>12} {'images_encoded':>15} {'images_cached':>14} {'cached_tokens':>14}"
    )
    for label, extra in CONFIGS:
        best = None
        for _ in range(options.rounds):
            with tempfile.TemporaryDirectory(prefix="followup-") as folder:
                home = Path(folder)
                env = environment(home, extra, options.threads)
                ask([*common, "-a", str(image), Q1], env)
                saved = bool(state_files(home))
                wall, done = ask([*common, "-c", Q2], env)
            if best is None or wall < best[0]:
                best = (wall, done, saved)
        wall, done, saved = best  # type: ignore[misc]
        usage = done["usage"]
        cached = usage["cached_tokens"]
        if "SAVE_STATE" in str(extra) and not saved:
            cached = f"n/a ({cached})"  # turn 1 saved no state: the front end never called finish_conversation
        print(f"{label:<30} {wall:>11.2f}s {usage['images_encoded']:>15} {usage['images_cached']:>14} {cached!s:>14}")


def state_cost(text: Path, mmproj: Path, image: Path, options: argparse.Namespace) -> None:
    """Save, read and set one conversation's KV state, in this process."""
    import ctypes

    import llama_cpp

    from vision_agent.backends.base import Finished, GenerationRequest
    from vision_agent.backends.llama_cpp.backend import LlamaCppBackend
    from vision_agent.catalog import ResolvedModel
    from vision_agent.config import ModelSettings
    from vision_agent.core.images import read_image_file
    from vision_agent.core.messages import Message

    part = read_image_file(image, max_bytes=10**9, max_pixels=10**9)
    with tempfile.TemporaryDirectory(prefix="followup-state-") as folder:
        os.environ["XDG_CACHE_HOME"] = folder
        settings = ModelSettings(n_ctx=N_CTX, save_state=True, embedding_cache_mb=0, n_threads=options.threads)
        model = ResolvedModel(text=text, mmproj=mmproj)
        messages = [Message.user(Q1, [part])]
        backend = LlamaCppBackend(model, settings)
        request = GenerationRequest(messages=messages, temperature=0, max_tokens=options.tokens, conversation_id="c")
        usage = [c for c in backend.generate(request) if isinstance(c, Finished)][0].usage
        _ = backend._evaluator.states.identity  # the model files hashed once (memoised): not part of the save
        started = time.perf_counter()
        assert backend.finish_conversation("c")
        save_s = time.perf_counter() - started
        positions = len(backend._evaluator.held)
        backend.close()

        fresh = LlamaCppBackend(model, settings)
        states = fresh._evaluator.states
        (path,) = Path(folder).glob("*/states/*.kvs")
        size = path.stat().st_size
        started = time.perf_counter()
        saved = states.peek("c")
        payload = states.load(saved)
        read_s = time.perf_counter() - started
        buffer = (ctypes.c_uint8 * len(payload)).from_buffer(payload)
        started = time.perf_counter()
        ok = llama_cpp.llama_state_seq_set_data(fresh.llama._ctx.ctx, buffer, len(payload), 0)
        set_s = time.perf_counter() - started
        fresh.close()
    per_position = 2 * SHAPE.n_layer * SHAPE.n_embd * 2
    print(
        f"\nKV state of one turn ({positions} positions: {usage.prompt_tokens} prompt incl. 576 image, "
        f"{usage.completion_tokens} sampled):\n"
        f"  on disk {size / 2**20:.1f} MiB = {size / positions / 1024:.1f} KiB per position "
        f"(f16 K+V: 2 x {SHAPE.n_layer} layers x {SHAPE.n_embd} x 2 bytes = {per_position / 1024:.0f} KiB)\n"
        f"  save (get_data, sha256, write, rename) {save_s * 1000:.0f} ms; read + check {read_s * 1000:.0f} ms; "
        f"llama_state_seq_set_data {set_s * 1000:.0f} ms ({'ok' if ok else 'REFUSED'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=str(Path.home() / ".cache" / "vision-agent" / "bench-multiturn"))
    parser.add_argument("--tokens", type=int, default=16, help="tokens generated per turn (default 16)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=1, help="turn-2 runs per configuration (default 1)")
    options = parser.parse_args()
    text, mmproj = model_pair(Path(options.dir))
    with tempfile.TemporaryDirectory(prefix="followup-img-") as folder:
        image = photo(Path(folder) / "photo.png")
        print(
            f"model: {SHAPE.n_embd} wide, {SHAPE.n_layer} layers, 576 image tokens, n_ctx {N_CTX}; new process per turn"
        )
        follow_ups(text, mmproj, image, options)
        state_cost(text, mmproj, image, options)


if __name__ == "__main__":
    main()
