"""Prints the agent and tool figures: sandbox call overhead, and 20 seeded agent runs on the demo model.

Run from a checkout: python benchmarks/agent_tools.py   (CPU; about 20 s)
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from vision_agent.backends.llama_cpp.backend import LlamaCppBackend
from vision_agent.catalog import ResolvedModel
from vision_agent.catalog.demo_model import write_demo_pair
from vision_agent.config import PythonToolSettings, load_settings
from vision_agent.core.agent import Agent
from vision_agent.core.images import read_image_file
from vision_agent.core.messages import Conversation
from vision_agent.paths import data_path
from vision_agent.tooling import build_registry
from vision_agent.tooling.sandbox import run_python


def sandbox_overhead(image) -> None:
    cases = [
        ("plain", "sum(range(100))", None),
        ("numpy+image", "import numpy as np\nlen(np.unique(image.reshape(-1, 3), axis=0))", image),
    ]
    for label, code, picture in cases:
        times = []
        for _ in range(10):
            started = time.perf_counter()
            result = run_python(code, PythonToolSettings(), image=picture)
            times.append(time.perf_counter() - started)
            assert result.ok, result
        print(f"sandbox {label}: median {statistics.median(times) * 1000:.0f} ms over 10 calls")


def seeded_agent_runs(image, seeds: int = 20) -> None:
    folder = Path(tempfile.mkdtemp())
    text, mmproj = write_demo_pair(folder)
    results = folder / "results.json"
    results.write_text('[{"title": "t", "url": "https://example.test", "snippet": "s"}]')
    backend = LlamaCppBackend(
        ResolvedModel(text=text, mmproj=mmproj), load_settings(None, {"model": {"n_ctx": 8192}}).model
    )
    statuses, steps, tool_results = Counter(), Counter(), Counter()
    started = time.perf_counter()
    for seed in range(seeds):
        settings = load_settings(
            None,
            {
                "generation": {"temperature": 1.0, "seed": seed, "max_tokens": 160},
                "agent": {"max_steps": 3, "max_thought_chars": 12, "max_argument_chars": 12},
                "tools": {"python": {"timeout_s": 5, "cpu_s": 2}, "web_search": {"provider": f"file:{results}"}},
            },
        )
        events = list(
            Agent(backend, settings, build_registry(settings)).stream("How many shapes?", [image], Conversation())
        )
        statuses[events[-1].status] += 1
        steps[events[-1].steps] += 1
        for event in events:
            if event.type == "tool_result":
                tool_results[f"{event.tool} {'ok' if event.ok else 'error'}"] += 1
    backend.close()
    print(f"{seeds} seeded runs in {time.perf_counter() - started:.1f} s")
    print(f"  done status: {dict(statuses)}")
    print(f"  steps per run: {dict(sorted(steps.items()))}")
    print(f"  tool results: {dict(tool_results)}")


def main() -> None:
    image = read_image_file(data_path("examples/shapes.png"), max_bytes=10**8, max_pixels=10**8)
    sandbox_overhead(image)
    seeded_agent_runs(image)


if __name__ == "__main__":
    main()
