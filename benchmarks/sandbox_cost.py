"""Prints what the sandbox costs per call, with every layer and with each OS layer switched off, and how fast
cancel and the timeout end a run. Also lists the layers this machine gives.

Run from a checkout: python benchmarks/sandbox_cost.py [CALLS]   (CPU; about 15 s with the default 10 calls)
"""

from __future__ import annotations

import statistics
import sys
import threading
import time

from vision_agent.config import PythonToolSettings
from vision_agent.core.messages import ImagePart
from vision_agent.tooling.sandbox import layers, os_wall_active, run_python

SETTINGS = PythonToolSettings()
CASES = [
    ("1+1", "1 + 1", False),
    ("numpy + image", "import numpy as np\nint(image[..., 0].mean())", True),
]
CONFIGS = [("all layers", frozenset()), ("no seccomp", frozenset({"seccomp"})),
           ("no namespaces", frozenset({"namespaces"})), ("no chroot", frozenset({"chroot"}))]  # fmt: skip


def image() -> ImagePart:
    width, height = 640, 480
    rgb = bytes((x * 7 + y * 3) % 256 for y in range(height) for x in range(width) for _ in range(3))
    return ImagePart.model_construct(type="image", sha256="0" * 64, width=width, height=height, rgb=rgb, source="b")


def per_call(calls: int) -> None:
    picture = image()
    for label, code, with_image in CASES:
        for config, off in CONFIGS:
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                result = run_python(code, SETTINGS, image=picture if with_image else None, disable=off)
                times.append(time.perf_counter() - started)
                assert result.ok, result.error
            print(f"{label:14} {config:14} median {statistics.median(times) * 1000:5.0f} ms  "
                  f"min {min(times) * 1000:5.0f} ms  ({calls} calls)")  # fmt: skip


def stop_latency() -> None:
    cancel, set_at = threading.Event(), []

    def fire():
        set_at.append(time.perf_counter())
        cancel.set()

    threading.Timer(1.0, fire).start()
    run_python("while True:\n    pass", PythonToolSettings(timeout_s=60, cpu_s=60), cancel=cancel)
    print(f"cancel → returned: {(time.perf_counter() - set_at[0]) * 1000:.0f} ms")
    started = time.perf_counter()
    run_python("while True:\n    pass", PythonToolSettings(timeout_s=1, cpu_s=60))
    print(f"timeout_s=1 → returned after {(time.perf_counter() - started) * 1000:.0f} ms")


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    for layer in layers():
        print(f"{'on ' if layer['active'] else 'OFF'} {layer['name']}: {layer['detail']}")
    print(f"OS wall fully active: {os_wall_active()}\n")
    per_call(calls)
    stop_latency()


if __name__ == "__main__":
    main()
