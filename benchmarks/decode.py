"""Decoding: our token loop against llama-cpp-python's Llama.generate, per-token cost, and cancel latency.

Generates (once, then reuses) a random-weight pair with a text model 768 wide, 6 layers deep, with a 32k
vocabulary, and runs on the CPU with an 8192-token context:

  (a) decode throughput, greedy, of our backend's generate() and of Llama.generate on the same prompt
      tokens (on the backend's own llama.cpp instance: a second instance of the same model can run a few
      per cent faster or slower by where its memory lies), at 100 and at 4,000 tokens;
  (b) the cost of one token near token 100 and near token 4,000 of one long generation, on both sides
      (attention grows with the context on both; the loop itself must add nothing that grows);
  (c) how long after cancel.set() the stream ends, while a long prompt is evaluated and while decoding.

Throughput is (N - 1) / (time for N tokens - time for 1 token), each run from an empty KV cache, so
prompt evaluation cancels out; each time the fastest of the runs (the least disturbed on a shared
machine). The loop's own cost per token, which the 768-wide model's decode time hides, is measured on the
64-wide demo model. Prints figures; asserts nothing.

Run from a checkout:  python benchmarks/decode.py   (CPU; a few minutes on 2 cores, ~400 MB of model files)
Options: --quick (1,000 tokens instead of 4,000, fewer repeats), --threads N, --repeats N, --dir PATH (where
the pair is kept), --old-path (also time the create_completion(stream=True) loop this backend used before).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

from vision_agent.backends.base import Finished, GenerationRequest, TextDelta
from vision_agent.backends.llama_cpp.backend import LlamaCppBackend
from vision_agent.catalog import ResolvedModel
from vision_agent.catalog.demo_model import _WORDS, DemoShape, write_demo_pair
from vision_agent.config import ModelSettings
from vision_agent.core.messages import Message
from vision_agent.frontends.logging_setup import configure_logging

SHAPE = DemoShape(
    n_embd=768,
    n_ff=2048,
    n_layer=6,
    n_head=12,
    n_ctx_train=8192,
    extra_vocab=32000 - 259 - len(_WORDS),
)
N_CTX = 8192
# The random model's greedy answer to some prompts ends early on its end-of-sequence token; the first
# prompt whose answer runs to the longest length measured is used.
PROMPTS = [f"Tell me a long story about the {word}, please." for word in ("sky", "sun", "tree", "house", "dog")] + [
    "Tell me a story.",
    "Describe the colours.",
    "What is in this picture?",
]


def model_pair(directory: Path) -> tuple[Path, Path]:
    text, mmproj = directory / "demo-text.gguf", directory / "mmproj-demo.gguf"
    marker = directory / "shape.txt"
    if not (text.exists() and mmproj.exists() and marker.exists() and marker.read_text() == repr(SHAPE)):
        print(f"writing the benchmark pair to {directory} (once) …", file=sys.stderr)
        write_demo_pair(directory, SHAPE, seed=2)
        marker.write_text(repr(SHAPE))
    return text, mmproj


class TokenClock:
    """Stands in for the backend's piece lookup, which the loop calls once per sampled token: a timestamp
    per token, for the per-token figures (a perf_counter call, well under a microsecond)."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.times: list[float] = []

    def __call__(self, token):
        self.times.append(time.perf_counter())
        return self.pieces(token)


def ours(backend, messages, n_tokens: int, cancel=None) -> tuple[float, list[float], Finished]:
    """Our generate(), from an empty KV cache (as theirs runs), with a timestamp per sampled token."""
    clock = TokenClock(backend._pieces)
    backend._pieces = clock
    backend._evaluator.forget()
    try:
        started = time.perf_counter()
        request = GenerationRequest(messages=messages, temperature=0, max_tokens=n_tokens, cancel=cancel)
        finished = [c for c in backend.generate(request) if isinstance(c, Finished)][0]
        return time.perf_counter() - started, clock.times, finished
    finally:
        backend._pieces = clock.pieces


def theirs(backend, prompt: list[int], n_tokens: int) -> tuple[float, list[float]]:
    """Llama.generate on the backend's llama, with the same sampler settings, from an empty KV cache (the
    backend then forgets what it held: both sides evaluate the whole prompt in T(1) and T(N) alike)."""
    times = []
    backend._evaluator.forget()
    started = time.perf_counter()
    stream = backend.llama.generate(prompt, temp=0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0)
    for _ in stream:
        times.append(time.perf_counter())
        if len(times) >= n_tokens:
            break
    stream.close()
    seconds = time.perf_counter() - started
    backend._evaluator.forget()
    return seconds, times


def long_runs(backend, n_tokens: int, repeats: int) -> tuple[list[Message], list[int], dict[str, list]]:
    """The prompt (its messages and tokens) and, per side, `repeats` runs of (seconds for 1 token, seconds
    for n_tokens, per-token timestamps), the sides alternating. The random model ends its answer to some
    prompts early; the first prompt answered at full length is used."""
    for text in PROMPTS:
        messages = [Message.user(text)]
        one = ours(backend, messages, 1)[0]
        seconds, times, finished = ours(backend, messages, n_tokens)
        if finished.usage.completion_tokens == n_tokens:
            break
    else:
        raise SystemExit(f"no prompt gave {n_tokens} tokens before end-of-sequence; add prompts")
    prompt = backend.llama.input_ids[: finished.usage.prompt_tokens].tolist()
    runs: dict[str, list] = {"ours": [(one, seconds, times)], "Llama.generate": []}
    for repeat in range(repeats):
        if repeat:
            one = ours(backend, messages, 1)[0]
            seconds, times, _ = ours(backend, messages, n_tokens)
            runs["ours"].append((one, seconds, times))
        one = theirs(backend, prompt, 1)[0]
        seconds, times = theirs(backend, prompt, n_tokens)
        runs["Llama.generate"].append((one, seconds, times))
    return messages, prompt, runs


def short_runs(backend, messages, prompt, n_tokens: int, repeats: int) -> dict[str, list]:
    runs: dict[str, list] = {"ours": [], "Llama.generate": []}
    for _ in range(repeats):
        runs["ours"].append((ours(backend, messages, 1)[0], *ours(backend, messages, n_tokens)[:2]))
        runs["Llama.generate"].append((theirs(backend, prompt, 1)[0], *theirs(backend, prompt, n_tokens)))
    return runs


def rate(runs: list, n_tokens: int) -> float:
    """Tokens per second after the first, (N - 1) / (T(N) - T(1)), each time the fastest of the runs: on a
    shared machine the least disturbed one."""
    return (n_tokens - 1) / (min(seconds for _, seconds, _ in runs) - min(one for one, _, _ in runs))


def loop_overhead(directory: Path, repeats: int) -> tuple[float, float]:
    """Microseconds per token, ours and Llama.generate's (fastest of `repeats`), on the 64-wide demo model,
    whose llama_decode takes a fraction of a millisecond: what the loop itself costs shows there."""

    text, mmproj = write_demo_pair(directory / "tiny", DemoShape(n_ctx_train=4096))
    backend = LlamaCppBackend(ResolvedModel(text=text, mmproj=mmproj), ModelSettings(n_ctx=4096, n_gpu_layers=0))
    try:
        messages, prompt, runs = long_runs(backend, 2000, 1)
        more = short_runs(backend, messages, prompt, 2000, repeats - 1)
        return tuple(1e6 / rate(runs[side] + more[side], 2000) for side in ("ours", "Llama.generate"))
    finally:
        backend.close()


def old_path(backend, prompt: list[int], n_tokens: int) -> float:
    """What the backend did before owning the loop: create_completion(stream=True) on the evaluated prompt."""
    llama = backend.llama
    backend._evaluator.forget()
    llama.eval(prompt)
    started = time.perf_counter()
    stream = llama.create_completion(prompt=prompt, temperature=0, max_tokens=n_tokens, stream=True)
    for _ in stream:
        pass
    seconds = time.perf_counter() - started
    backend._evaluator.forget()
    return (n_tokens - 1) / seconds


def per_token_ms(times: list[float], around: int, width: int = 50) -> float:
    """Median gap between consecutive tokens in [around - width, around + width), in milliseconds."""
    lo, hi = max(1, around - width), min(len(times), around + width)
    return 1000 * statistics.median(times[i] - times[i - 1] for i in range(lo, hi))


def cancel_latency(backend, messages_for, after_seconds: float, repeats: int) -> tuple[list[float], list[str]]:
    """Seconds from cancel.set() to the end of the stream; the cancel fires `after_seconds` into a run."""
    latencies, reasons = [], []
    for index in range(repeats):
        cancel = threading.Event()
        fired = []

        def fire(cancel=cancel, fired=fired):
            fired.append(time.perf_counter())
            cancel.set()

        timer = threading.Timer(after_seconds, fire)
        request = GenerationRequest(messages=messages_for(index), temperature=0, max_tokens=N_CTX, cancel=cancel)
        timer.start()
        finished = [c for c in backend.generate(request) if not isinstance(c, TextDelta)][-1]
        ended = time.perf_counter()
        timer.cancel()
        if fired:
            latencies.append(ended - fired[0])
            reasons.append(finished.reason)
    return latencies, reasons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 tokens instead of 4,000; fewer repeats")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (default 2; quick 1)")
    parser.add_argument("--old-path", action="store_true", help="also time create_completion(stream=True)")
    parser.add_argument("--dir", default=str(Path.home() / ".cache" / "vision-agent" / "bench-decode"))
    args = parser.parse_args()
    long_run = 1000 if args.quick else 4000
    repeats = args.repeats or (1 if args.quick else 2)
    configure_logging(False)

    started = time.perf_counter()
    text, mmproj = model_pair(Path(args.dir))
    settings = ModelSettings(n_ctx=N_CTX, n_threads=args.threads, n_gpu_layers=0)
    backend = LlamaCppBackend(ResolvedModel(text=text, mmproj=mmproj), settings)
    try:
        messages, prompt, long = long_runs(backend, long_run, repeats)
        print(
            f"model: {SHAPE.n_embd} wide, {SHAPE.n_layer} layers, vocab 32000, n_ctx {N_CTX}, "
            f"threads {backend.llama.n_threads}; prompt {len(prompt)} tokens; greedy"
        )
        # The two sides must agree before their speeds mean anything.
        ours(backend, messages, 200)
        our_tokens = backend.last_completion_tokens
        backend._evaluator.forget()
        their_tokens = []
        for token in backend.llama.generate(prompt, temp=0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0):
            their_tokens.append(token)
            if len(their_tokens) >= 199:
                break
        backend._evaluator.forget()
        print(f"same tokens as Llama.generate (first 199): {our_tokens == their_tokens}")

        short = short_runs(backend, messages, prompt, 100, 5 * repeats + 1)
        print("\n(a) decode throughput, tokens/s after the first (fastest run)")
        print(f"{'tokens':>8} {'ours':>10} {'Llama.generate':>15} {'ours/theirs':>12}")
        for n_tokens, runs in ((100, short), (long_run, long)):
            mine, reference = rate(runs["ours"], n_tokens), rate(runs["Llama.generate"], n_tokens)
            print(f"{n_tokens:>8} {mine:>10.1f} {reference:>15.1f} {mine / reference:>11.1%}")
        if args.old_path:
            old = old_path(backend, prompt, 500)
            print(f"     500 tokens, the old path (create_completion, stream=True): {old:.1f}")
        mine, reference = loop_overhead(Path(args.dir), repeats + 1)
        print(
            f"  the loop's own cost, on the 64-wide demo model: {mine:.0f} us/token, "
            f"Llama.generate {reference:.0f} us/token ({mine - reference:+.0f} us)"
        )

        far = long_run - 60
        print(f"\n(b) cost of one token within a {long_run}-token generation, ms (median of 100 gaps, then of runs)")
        print(f"{'side':>15} {'~token 100':>11} {f'~token {far}':>12} {'growth':>8}")
        for side, runs in long.items():
            near_ms = statistics.median(per_token_ms(times, 100) for _, _, times in runs)
            far_ms = statistics.median(per_token_ms(times, far) for _, _, times in runs)
            print(f"{side:>15} {near_ms:>11.2f} {far_ms:>12.2f} {far_ms / near_ms:>8.2f}x")

        print("\n(c) cancel latency: cancel.set() to the end of the stream, ms")
        cancel_repeats = 3 if args.quick else 5
        long_text = " ".join(_WORDS) * 10  # ~5,700 tokens of text
        prompt_tokens = backend.count_prompt_tokens(GenerationRequest(messages=[Message.user("0 " + long_text)]))
        latencies, reasons = cancel_latency(backend, lambda i: [Message.user(f"{i} {long_text}")], 0.5, cancel_repeats)
        print(
            f"  during evaluation of a {prompt_tokens}-token prompt: median {1000 * statistics.median(latencies):.1f}"
            f", max {1000 * max(latencies):.1f} ({', '.join(sorted(set(reasons)))}; {len(latencies)} runs)"
        )
        one_token = per_token_ms(long["ours"][0][2], 100) / 1000
        latencies, reasons = cancel_latency(backend, lambda i: messages, 0.05 + 40 * one_token, cancel_repeats)
        print(
            f"  during decoding (one token takes ~{1000 * one_token:.1f} ms): median "
            f"{1000 * statistics.median(latencies):.1f}, max {1000 * max(latencies):.1f} "
            f"({', '.join(sorted(set(reasons)))}; {len(latencies)} runs)"
        )
        print(f"\n(total {time.perf_counter() - started:.0f} s)")
    finally:
        backend.close()


if __name__ == "__main__":
    main()
