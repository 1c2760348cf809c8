"""One-shot `ask`: the answer streams to stdout; diagnostics go to stderr; --json writes events."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import TextIO

from vision_agent.config import Settings
from vision_agent.errors import ConfigError
from vision_agent.events import Done, Event, Token, to_json
from vision_agent.messages import ImagePart


def ask(args: argparse.Namespace, settings: Settings) -> int:
    from vision_agent.backends.factory import make_backend
    from vision_agent.catalog import resolve_model
    from vision_agent.chat import run_turn, system_message
    from vision_agent.messages import Conversation

    images = load_attachments(args.attach, settings)  # before the model loads: bad input fails fast
    prompt = read_prompt(args.prompt, stdin_taken="-" in args.attach)
    backend = make_backend(resolve_model(settings.model), settings.model)
    try:
        conversation = Conversation()
        system = system_message(settings.agent.system_prompt)
        if system:
            conversation.add(system)
        events = run_turn(backend, conversation, prompt, images, settings.generation)
        return write_events(events, sys.stdout, sys.stderr, json_lines=args.json)
    finally:
        backend.close()


def load_attachments(paths: list[str], settings: Settings) -> list[ImagePart]:
    from vision_agent.images import decode_image, read_image_file

    limits = {"max_bytes": settings.images.max_bytes, "max_pixels": settings.images.max_pixels}
    if paths.count("-") > 1:
        raise ConfigError("-a - (stdin) can be given only once")
    images = []
    for path in paths:
        if path == "-":
            data = sys.stdin.buffer.read(limits["max_bytes"] + 1)
            images.append(decode_image(data, source="<stdin>", **limits))
        else:
            images.append(read_image_file(path, **limits))
    return images


def read_prompt(prompt: str | None, *, stdin_taken: bool) -> str:
    if prompt is None and not stdin_taken and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    if not prompt or not prompt.strip():
        raise ConfigError("no prompt: give PROMPT as an argument or pipe it on stdin")
    return prompt.strip()


def write_events(events: Iterable[Event], out: TextIO, err: TextIO, *, json_lines: bool) -> int:
    """Render the stream; return the exit code its final `done` implies."""
    exit_code = 0
    wrote_text = False
    for event in events:
        if json_lines:
            out.write(to_json(event) + "\n")
            out.flush()
        elif isinstance(event, Token):
            out.write(event.text)
            out.flush()
            wrote_text = True
        if isinstance(event, Done):
            if not json_lines and wrote_text:
                out.write("\n")
                out.flush()
            if event.error is not None:
                err.write(f"vision-agent: {event.error.message}\n")
                exit_code = event.error.exit_code
    return exit_code
