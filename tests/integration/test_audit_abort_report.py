"""A ggml abort is reported in one line even when several compute threads fail the same assert at once
(a negative norm epsilon printed the report twice: one per thread)."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import ctypes, threading
from vision_agent.backends.llama_cpp import log as llama_log
llama_log.install()
import llama_cpp._ggml as ggml
abort = ggml.libggml.ggml_abort
abort.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
barrier = threading.Barrier(4)
def fail():
    barrier.wait()
    abort(b"ops.cpp", 1, b"GGML_ASSERT(eps >= 0.0f) failed")
threads = [threading.Thread(target=fail) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


def test_threads_failing_together_give_one_report_and_exit_11():
    for _ in range(3):
        result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, timeout=60)
        assert result.returncode == 11, result.stderr
        assert result.stderr.decode().splitlines() == [
            "vision-agent: llama.cpp aborted: ops.cpp:1: GGML_ASSERT(eps >= 0.0f) failed"
        ]
