"""A follow-up on a warm conversation: first-token latency through `vision-agent jsonl` against the backend called
directly, in the same shape of model.

The pair is benchmarks/multiturn.py's (a small-LLaVA shape: ViT-B tower at 336 px, 576 image tokens, a llama text
model 1024 wide, 8 layers, 32k vocabulary). Each round starts a conversation with a photo (a new photo per round,
so that turn 1 really encodes it), then asks a follow-up; the follow-up's time to its first answer token is measured:

- direct: LlamaCppBackend.generate in this process, with the messages the agent sends for a plain chat turn
  (the system prompt, the first question and its image, the first answer, the follow-up);
- jsonl: a `vision-agent jsonl --no-tools` process over pipes, from writing the request line to reading the
  first `token` line (so JSON, the session service, the store and the pipes are all in the figure).

It prints the median of each, their ratio (the issue's target: ≤ 1.2), and the follow-up's `usage` from the
server's `done` (images_encoded must be 0: the image was seen on turn 1; cached_tokens: the prefix kept).

Run from a checkout:  python benchmarks/server_latency.py   (CPU; a few minutes, ~1.3 GB of model files shared
with multiturn.py). Options: --rounds N, --tokens N, --threads N, --dir PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from followup import environment, model_pair  # run as a script: benchmarks/ is on sys.path

N_CTX = 4096
Q1, Q2 = "Describe this photo in detail.", "What colours stand out the most?"


def photos(folder: Path, count: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    paths = []
    for number in range(count):
        pixels = np.random.default_rng(100 + number).integers(0, 255, (480, 640, 3), dtype=np.uint8)
        path = folder / f"photo{number}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def direct(text: Path, mmproj: Path, images: list[Path], options: argparse.Namespace) -> list[float]:
    from vision_agent.backends.base import GenerationRequest, TextDelta
    from vision_agent.backends.llama_cpp.backend import LlamaCppBackend
    from vision_agent.catalog import ResolvedModel
    from vision_agent.config import ModelSettings
    from vision_agent.core.images import read_image_file
    from vision_agent.core.messages import Message
    from vision_agent.core.prompts import load_prompt

    settings = ModelSettings(n_ctx=N_CTX, n_threads=options.threads, embedding_cache_mb=0)
    backend = LlamaCppBackend(ResolvedModel(text=text, mmproj=mmproj), settings)
    system = Message.system(load_prompt("system.txt"))
    seconds = []
    try:
        for path in images:
            image = read_image_file(path, max_bytes=10**9, max_pixels=10**9)
            messages = [system, Message.user(Q1, [image])]
            request = GenerationRequest(messages=messages, temperature=0, max_tokens=options.tokens)
            answer = "".join(c.text for c in backend.generate(request) if isinstance(c, TextDelta))
            messages += [Message.assistant(answer), Message.user(Q2)]
            request = GenerationRequest(messages=messages, temperature=0, max_tokens=options.tokens)
            started = time.perf_counter()
            stream = backend.generate(request)
            for chunk in stream:
                if isinstance(chunk, TextDelta):
                    seconds.append(time.perf_counter() - started)
                    break
            for _ in stream:  # the rest of the answer, as the server's run would finish it
                pass
    finally:
        backend.close()
    return seconds


def through_jsonl(text: Path, mmproj: Path, images: list[Path], options: argparse.Namespace) -> tuple[list, dict]:
    command = [sys.executable, "-m", "vision_agent", "jsonl", "--no-tools", "--temperature", "0"]
    command += ["--max-tokens", str(options.tokens), "-m", str(text), "--mmproj", str(mmproj), "--ctx", str(N_CTX)]
    with tempfile.TemporaryDirectory(prefix="server-latency-") as folder:
        env = environment(Path(folder), {"VISION_AGENT_MODEL__EMBEDDING_CACHE_MB": "0"}, options.threads)
        server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        assert server.stdin is not None and server.stdout is not None
        try:
            ready = json.loads(server.stdout.readline())
            if ready.get("type") != "ready":
                raise SystemExit(f"the server did not start: {ready}")

            def send(request: dict) -> None:
                server.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
                server.stdin.flush()  # type: ignore[union-attr]

            def until_done(first_token_of: float | None = None) -> tuple[float | None, dict]:
                latency = None
                while True:
                    event = json.loads(server.stdout.readline())  # type: ignore[union-attr]
                    if event["type"] == "error":
                        raise SystemExit(f"the server refused a prompt: {event}")
                    if event["type"] == "token" and latency is None and first_token_of is not None:
                        latency = time.perf_counter() - first_token_of
                    if event["type"] == "done":
                        return latency, event

            seconds, usage = [], {}
            for number, path in enumerate(images):
                send({"id": f"first{number}", "prompt": Q1, "images": [str(path)]})
                _, done = until_done()
                started = time.perf_counter()
                send({"id": f"follow{number}", "prompt": Q2, "conversation": done["conversation_id"]})
                latency, done = until_done(started)
                seconds.append(latency)
                usage = done["usage"]
            send({"id": "bye", "shutdown": True})
            server.stdin.close()
            server.wait(60)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    return seconds, usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=str(Path.home() / ".cache" / "vision-agent" / "bench-multiturn"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=16, help="tokens generated per turn (default 16)")
    parser.add_argument("--threads", type=int, default=None)
    options = parser.parse_args()
    options.threads = options.threads or max(1, (os.cpu_count() or 2) // 2)
    text, mmproj = model_pair(Path(options.dir))
    with tempfile.TemporaryDirectory(prefix="server-latency-img-") as folder:
        images = photos(Path(folder), options.rounds)
        served, usage = through_jsonl(text, mmproj, images, options)
        called = direct(text, mmproj, images, options)
    median_direct, median_served = statistics.median(called), statistics.median(served)
    print(f"model: 1024 wide, 8 layers, 576 image tokens, n_ctx {N_CTX}; {options.rounds} rounds; medians")
    print(f"{'follow-up, first token':<28} {'direct':>10} {'jsonl':>10} {'ratio':>7}")
    ratio = median_served / median_direct
    print(f"{'':<28} {median_direct * 1000:>8.0f}ms {median_served * 1000:>8.0f}ms {ratio:>7.2f}")
    print(f"follow-up usage through jsonl: {json.dumps(usage)}")


if __name__ == "__main__":
    main()
