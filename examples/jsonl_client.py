"""A small Python client of `vision-agent jsonl`: one server process, an image prompt, then a follow-up in the
same conversation; the answer streams as it comes. Usage:

    python examples/jsonl_client.py [IMAGE] [-- vision-agent flags, e.g. -m llava-1.5-7b]

Without flags it uses the demo model (random weights: meaningless answers, but the real llama.cpp path).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Model output is untrusted: control characters (escape sequences, bidi overrides) are dropped before printing.
UNPRINTABLE = dict.fromkeys([*range(0x20), 0x7F, *range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)])
del UNPRINTABLE[0x0A], UNPRINTABLE[0x09]


def main() -> int:
    args = sys.argv[1:]
    flags = args[args.index("--") + 1 :] if "--" in args else ["-m", "demo", "--no-tools"]
    images = [a for a in args[: args.index("--")] if a] if "--" in args else args
    image = images[0] if images else str(Path(__file__).with_name("shapes.png"))
    server = subprocess.Popen(
        [sys.executable, "-m", "vision_agent", "jsonl", *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    assert server.stdin and server.stdout

    def send(request: dict) -> None:
        server.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
        server.stdin.flush()  # type: ignore[union-attr]

    def stream(request_id: str) -> dict:
        """Print the answer of `request_id` as it streams; return its done (or error) line."""
        for raw in server.stdout:  # type: ignore[union-attr]
            line = json.loads(raw)
            if line.get("id") != request_id:
                continue
            if line["type"] == "token" and line["part"] == "answer":
                print(line["text"].translate(UNPRINTABLE), end="", flush=True)
            elif line["type"] == "tool_call":
                print(f"\n[{line['tool']} {json.dumps(line['arguments'])}]", file=sys.stderr)
            elif line["type"] in ("done", "error"):
                print()
                return line
        raise SystemExit("the server ended early")

    ready = json.loads(server.stdout.readline())
    if ready["type"] != "ready":
        raise SystemExit(f"the server did not start: {ready.get('message')}")
    print(f"model {ready['model']}", file=sys.stderr)

    send({"id": "q1", "prompt": "What is in this image?", "images": [image]})
    first = stream("q1")
    if first["type"] == "error":
        raise SystemExit(f"{first['code']}: {first['message']}")
    send({"id": "q2", "prompt": "And what colours stand out?", "conversation": first["conversation_id"]})
    second = stream("q2")
    print(f"usage of the follow-up: {second.get('usage')}", file=sys.stderr)

    server.stdin.close()  # EOF: the server finishes and exits 0
    return server.wait()


if __name__ == "__main__":
    raise SystemExit(main())
