"""Helpers several test modules share: images, the CLI as a real subprocess, replay scripts, JSON events.

Fixtures live in conftest.py; plain functions live here, imported as `from tests.helpers import ...`.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path


def png_bytes(size=(64, 48), color=(200, 30, 30), mode="RGB", fmt="PNG", **save) -> bytes:
    """An image of one colour, encoded (PNG unless `fmt` says otherwise)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def image_part(size=(64, 48), color=(200, 30, 30), source: str = "img.png", limit: int = 10**7):
    """A decoded image of one colour, as the app holds an attachment (an ImagePart)."""
    from vision_agent.core.images import decode_image

    return decode_image(png_bytes(size=size, color=color), source=source, max_bytes=limit, max_pixels=limit)


def run_cli(*args: str, env: dict[str, str], stdin: bytes | None = None, timeout: float = 120):
    """`python -m vision_agent ARGS` as a real process; stdout and stderr captured as bytes."""
    return subprocess.run(
        [sys.executable, "-m", "vision_agent", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=env,
        timeout=timeout,
    )


def replay_model(directory: Path, *turns: str, name: str = "script.json", token_delay_s: float = 0.0) -> str:
    """Write a replay script of `turns` and return the `-m` value that plays it.

    A `.json` name writes a JSON list (each turn exactly as given); any other name writes the text format
    (turns separated by a line `---`), which the CLI parses too. `token_delay_s` (JSON only) slows each word.
    """
    path = Path(directory) / name
    if path.suffix == ".json":
        script = {"turns": list(turns), "token_delay_s": token_delay_s} if token_delay_s else list(turns)
        path.write_text(json.dumps(script))
    else:
        path.write_text("\n---\n".join(turns))
    return f"replay:{path}"


def json_events(result) -> list[dict]:
    """The events of `ask --json`: every stdout line must be one JSON object."""
    return [json.loads(line) for line in result.stdout.splitlines()]


def data_url(image) -> dict:
    """An image as an OpenAI-style `image_url` content part (what llama-cpp-python's handlers take)."""
    from vision_agent.core.images import encode_png

    return {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(encode_png(image)).decode()},
    }


def mtmd_handler_answer(pair, messages_openai, max_tokens, n_ctx=1024) -> tuple[str, int]:
    """What llama-cpp-python's own MTMDChatHandler answers, greedily, for the same input: (text, tokens)."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import MTMDChatHandler

    text, mmproj = pair
    llama = Llama(
        model_path=str(text),
        chat_handler=MTMDChatHandler(clip_model_path=str(mmproj), verbose=False),
        n_ctx=n_ctx,
        verbose=False,
    )
    try:
        result = llama.create_chat_completion(messages=messages_openai, temperature=0, max_tokens=max_tokens)
        return result["choices"][0]["message"]["content"], result["usage"]["completion_tokens"]
    finally:
        llama.close()
