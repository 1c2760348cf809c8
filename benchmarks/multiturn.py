"""Multi-turn vision chat: our llama.cpp backend against llama-cpp-python's MTMDChatHandler, in one process.

Generates (once, then reuses) a random-weight pair shaped like a small LLaVA: a CLIP-style ViT-B tower at
336 px with 14 px patches (576 image tokens) and an MLP projector, and a llama text model 1024 wide,
8 layers deep, with a 32k vocabulary. Both sides then hold the same four-turn conversation (one image;
a second image on turn 3), greedy, a fixed number of generated tokens, turn by turn alternately.

Run from a checkout:  python benchmarks/multiturn.py   (CPU; a few minutes, ~1.3 GB of model files)
Options: --tokens N (generated per turn), --rounds N, --dir PATH (where the pair is kept), --threads N,
--retokenise-answers (identical prompts on both sides: isolates the caching from keeping answer tokens).
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vision_agent.backends.base import Finished, GenerationRequest, TextDelta
from vision_agent.backends.llama_cpp.backend import LlamaCppBackend
from vision_agent.catalog import ResolvedModel
from vision_agent.catalog.demo_model import _WORDS, DemoShape, write_demo_pair
from vision_agent.config import ModelSettings
from vision_agent.core.images import decode_image
from vision_agent.core.messages import Message

SHAPE = DemoShape(
    n_embd=1024,
    n_ff=2816,
    n_layer=8,
    n_head=16,
    extra_vocab=32000 - 259 - len(_WORDS),
    image_size=336,
    patch_size=14,
    v_embd=768,
    v_ff=3072,
    v_layer=12,
    v_head=12,
)
SYSTEM = "You are a helpful assistant that looks carefully at images."
TURNS = [
    ("Describe this photo in detail.", 0),
    ("What colours stand out the most?", None),
    ("Here is a second photo. How does it differ from the first?", 1),
    ("Which of the two would make the better poster, and why?", None),
]
TARGETS = {1: "within 5%", 2: "<= 10%", 3: "<= 60%", 4: "<= 10%"}
LIMITS = {"max_bytes": 10**9, "max_pixels": 10**9}


# -- inputs --------------------------------------------------------------------------------------------


def photo(seed: int) -> bytes:
    """A 640x480 picture with gradients and shapes, as PNG bytes."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:480, 0:640]
    base = np.stack([x / 640 * 255, y / 480 * 255, (x + y) / 1120 * 255], axis=-1)
    pixels = (base * rng.uniform(0.4, 1.0, 3) + rng.normal(0, 8, base.shape)).clip(0, 255).astype("uint8")
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, 560), rng.integers(0, 400)
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.ellipse((x0, y0, x0 + rng.integers(20, 120), y0 + rng.integers(20, 120)), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def model_pair(directory: Path) -> tuple[Path, Path]:
    text, mmproj = directory / "demo-text.gguf", directory / "mmproj-demo.gguf"
    marker = directory / "shape.txt"
    if not (text.exists() and mmproj.exists() and marker.exists() and marker.read_text() == repr(SHAPE)):
        print(f"writing the benchmark pair to {directory} (once) …", file=sys.stderr)
        write_demo_pair(directory, SHAPE, seed=1)
        marker.write_text(repr(SHAPE))
    return text, mmproj


# -- measurement ---------------------------------------------------------------------------------------


class PeakRSS:
    """Samples this process's resident memory every few milliseconds (Linux /proc)."""

    def __init__(self):
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        import os

        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def reset(self) -> int:
        self.peak = self.now()
        return self.peak

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.now())


@dataclass
class Turn:
    ttft: float = 0.0
    decode_seconds: float = 0.0
    tokens: int = 0
    encodes: int = 0
    evaluated: int = 0  # prompt positions evaluated (not already held)
    cached: int = 0  # prompt positions already held
    text: str = ""


@dataclass
class Side:
    name: str
    retained: int = 0  # resident memory the side added and kept: loading, then each turn's net growth
    peak: int = 0  # the most it held at any moment: retained so far + the rise within a turn

    def measure(self, memory: PeakRSS, base: int) -> None:
        """Call after a turn that started when resident memory was `base`."""
        self.peak = max(self.peak, self.retained + memory.peak - base)
        self.retained += memory.now() - base

    rounds: list[list[Turn]] = field(default_factory=list)

    def median(self, index: int, name: str) -> float:
        return statistics.median(getattr(r[index], name) for r in self.rounds)

    def total(self, index: int, name: str) -> int:
        return sum(getattr(r[index], name) for r in self.rounds)

    def decode_rate(self) -> float:
        """Tokens after the first, per second from the first token to the last."""
        tokens = sum(t.tokens - 1 for r in self.rounds for t in r)
        return tokens / sum(t.decode_seconds for r in self.rounds for t in r)


class CountingMtmd:
    """Wraps llama_cpp.mtmd_cpp for MTMDChatHandler and counts the image chunks it evaluates."""

    def __init__(self, module):
        self._module = module
        self.encodes = 0

    def __getattr__(self, name):
        return getattr(self._module, name)

    def mtmd_helper_eval_chunk_single(self, ctx, lctx, chunk, *rest):
        if self._module.mtmd_input_chunk_get_type(chunk) != self._module.MTMD_INPUT_CHUNK_TYPE_TEXT:
            self.encodes += 1
        return self._module.mtmd_helper_eval_chunk_single(ctx, lctx, chunk, *rest)


# -- the two sides ---------------------------------------------------------------------------------------


def our_turn(backend, messages, n_tokens) -> Turn:
    turn = Turn()
    started = time.perf_counter()
    first = None
    pieces = []
    for chunk in backend.generate(GenerationRequest(messages=messages, temperature=0, max_tokens=n_tokens)):
        if isinstance(chunk, TextDelta):
            first = first or time.perf_counter()
            pieces.append(chunk.text)
        elif isinstance(chunk, Finished):
            turn.tokens = chunk.usage.completion_tokens
            turn.encodes = chunk.usage.images_encoded
            turn.evaluated = chunk.usage.prompt_tokens - chunk.usage.cached_tokens
            turn.cached = chunk.usage.cached_tokens
    ended = time.perf_counter()
    turn.ttft, turn.decode_seconds, turn.text = first - started, ended - first, "".join(pieces)
    return turn


def their_turn(llama, counter, messages, n_tokens) -> Turn:
    turn = Turn()
    before = counter.encodes
    started = time.perf_counter()
    first = None
    pieces = []
    for chunk in llama.create_chat_completion(messages=messages, temperature=0, max_tokens=n_tokens, stream=True):
        content = chunk["choices"][0]["delta"].get("content")
        if content:
            first = first or time.perf_counter()
            pieces.append(content)
    ended = time.perf_counter()
    turn.ttft, turn.decode_seconds, turn.text = first - started, ended - first, "".join(pieces)
    turn.encodes = counter.encodes - before
    turn.evaluated = llama.last_prompt_len  # it evaluates its whole prompt every turn
    turn.tokens = min(n_tokens, llama.n_tokens - llama.last_prompt_len + 1)  # counted as for ours
    return turn


def prompt_recording_llama():
    from llama_cpp import Llama

    class PromptRecordingLlama(Llama):
        """Records the length of the prompt MTMDChatHandler hands on (instrumentation only)."""

        last_prompt_len = 0

        def create_completion(self, prompt, *args, **kwargs):
            self.last_prompt_len = len(prompt)
            return super().create_completion(prompt, *args, **kwargs)

    return PromptRecordingLlama


def data_url(png: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}}


def run(args) -> tuple[Side, Side, int, tuple[int, int]]:
    import llama_cpp.mtmd_cpp as mtmd_cpp
    from llama_cpp.llama_chat_format import MTMDChatHandler

    text, mmproj = model_pair(Path(args.dir))
    memory = PeakRSS()
    ours, theirs = Side("vision-agent"), Side("MTMDChatHandler")

    before = memory.reset()
    settings = ModelSettings(
        n_ctx=4096, n_threads=args.threads, n_gpu_layers=0, keep_answer_tokens=not args.retokenise_answers
    )
    backend = LlamaCppBackend(ResolvedModel(text=text, mmproj=mmproj), settings)
    ours.retained = ours.peak = memory.now() - before

    before = memory.reset()
    handler = MTMDChatHandler(clip_model_path=str(mmproj), verbose=False)
    counter = handler._mtmd_cpp = CountingMtmd(mtmd_cpp)
    llama = prompt_recording_llama()(
        model_path=str(text), chat_handler=handler, n_ctx=4096, n_threads=args.threads, n_gpu_layers=0, verbose=False
    )
    theirs.retained = theirs.peak = memory.now() - before

    def play_ours(photos):
        messages = [Message.system(SYSTEM)]
        for question, image_index in TURNS:
            base = memory.reset()
            # Decoding the attached image is part of our turn, as it is part of MTMDChatHandler's.
            started = time.perf_counter()
            images = [decode_image(photos[image_index], source="photo", **LIMITS)] if image_index is not None else []
            decode_seconds = time.perf_counter() - started
            messages.append(Message.user(question, images))
            turn = our_turn(backend, messages, args.tokens)
            turn.ttft += decode_seconds
            ours.measure(memory, base)
            messages.append(Message.assistant(turn.text))
            yield turn

    def play_theirs(photos):
        messages = [{"role": "system", "content": SYSTEM}]
        for question, image_index in TURNS:
            base = memory.reset()
            content = [data_url(photos[image_index])] if image_index is not None else []
            messages.append({"role": "user", "content": [*content, {"type": "text", "text": question}]})
            turn = their_turn(llama, counter, messages, args.tokens)
            theirs.measure(memory, base)
            messages.append({"role": "assistant", "content": turn.text})
            yield turn

    for number in range(args.rounds):
        photos = [photo(10 * number + 1), photo(10 * number + 2)]
        # Turn by turn alternately; who goes first alternates between rounds.
        sides = [(ours, play_ours(photos)), (theirs, play_theirs(photos))]
        if number % 2:
            sides.reverse()
        for side, _ in sides:
            side.rounds.append([])
        for turn_number in range(1, len(TURNS) + 1):
            print(f"round {number + 1}/{args.rounds}, turn {turn_number} …", file=sys.stderr)
            for side, turns in sides:
                side.rounds[-1].append(next(turns))

    # An image seen before, in a fresh conversation: served from the embedding cache.
    fresh = [Message.user("What is in this picture?", [decode_image(photo(1), source="photo", **LIMITS)])]
    fresh_encodes = our_turn(backend, fresh, 4).encodes
    cache_bytes = backend._evaluator.embeddings.bytes, backend._evaluator.snapshots.bytes
    backend.close()
    llama.close()
    return ours, theirs, fresh_encodes, cache_bytes


def help_wall_time() -> float:
    times = []
    for _ in range(7):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vision_agent", "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def report(ours: Side, theirs: Side, fresh_encodes: int, cache_bytes: tuple[int, int], args) -> None:
    mib = 1024 * 1024
    rows = [("turn", "ours TTFT", "theirs TTFT", "ours/theirs", "target", "encodes", "positions evaluated")]
    for index in range(len(TURNS)):
        a, b = ours.median(index, "ttft"), theirs.median(index, "ttft")
        rows.append(
            (
                str(index + 1),
                f"{a * 1000:.0f} ms",
                f"{b * 1000:.0f} ms",
                f"{a / b * 100:.1f} %",
                TARGETS[index + 1],
                f"{ours.total(index, 'encodes')} / {theirs.total(index, 'encodes')}",
                f"{ours.median(index, 'evaluated'):.0f} / {theirs.median(index, 'evaluated'):.0f}",
            )
        )
    rate_a, rate_b = ours.decode_rate(), theirs.decode_rate()
    rows.append(
        ("decode", f"{rate_a:.1f} tok/s", f"{rate_b:.1f} tok/s", f"{rate_a / rate_b * 100:.1f} %", "within 5%", "", "")
    )
    memory_a, memory_b = ours.peak, theirs.peak
    rows.append(
        (
            "memory",
            f"{memory_a / mib:.0f} MiB",
            f"{memory_b / mib:.0f} MiB",
            f"{memory_a / memory_b * 100:.1f} %",
            "",
            "",
            "",
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("-+-".join("-" * width for width in widths))
    print()
    same = [
        all(mine[index].text == yours[index].text for mine, yours in zip(ours.rounds, theirs.rounds, strict=True))
        for index in range(len(TURNS))
    ]
    print(
        f"{args.rounds} rounds (fresh photos each round, order alternating); TTFT = median per turn, "
        f"encodes = total over the rounds, {args.tokens} tokens generated per turn"
    )
    print(
        "greedy outputs identical to MTMDChatHandler's, per turn: "
        + ", ".join(f"{index + 1}: {'yes' if equal else 'no'}" for index, equal in enumerate(same))
    )
    if not args.retokenise_answers:
        print(
            "  (from turn 2 on we keep the model's own tokens for its earlier answers, where MTMDChatHandler\n"
            "   re-tokenises their text, so the prompts differ; --retokenise-answers makes them identical)"
        )
    print("memory = resident memory added by loading the side + the most its turns added on top (peak)")
    print(
        f"our caches at the end: image embeddings {cache_bytes[0] / mib:.1f} MiB, "
        f"conversation snapshots {cache_bytes[1] / mib:.1f} MiB"
    )
    print(f"image already cached, in a fresh conversation: {fresh_encodes} encodes")
    print(f"vision-agent --help: {help_wall_time() * 1000:.0f} ms wall (median of 7)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per turn (default 32)")
    parser.add_argument("--dir", default=str(Path.home() / ".cache" / "vision-agent" / "bench-multiturn"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="conversations per side (default 3)")
    parser.add_argument(
        "--retokenise-answers",
        action="store_true",
        help="ours re-tokenises earlier answers as MTMDChatHandler does, so both see identical prompts",
    )
    args = parser.parse_args()
    ours, theirs, fresh_encodes, cache_bytes = run(args)
    report(ours, theirs, fresh_encodes, cache_bytes, args)


if __name__ == "__main__":
    main()
