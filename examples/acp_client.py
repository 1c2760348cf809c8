"""A small Agent Client Protocol client of `vision-agent acp`, with the official Python SDK
(`pip install agent-client-protocol`): a session, an image prompt, a follow-up; tool permissions asked on the
terminal. Usage:

    python examples/acp_client.py [IMAGE] [-- vision-agent flags, e.g. -m llava-1.5-7b --tool-policy python=ask]

Without flags it uses the demo model (random weights: meaningless answers, but the real llama.cpp path).
"""

from __future__ import annotations

import asyncio
import base64
import sys
from pathlib import Path

import acp
from acp import schema

# Model output is untrusted: control characters (escape sequences, bidi overrides) are dropped before printing.
UNPRINTABLE = dict.fromkeys([*range(0x20), 0x7F, *range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)])
del UNPRINTABLE[0x0A], UNPRINTABLE[0x09]


class TerminalClient:
    async def session_update(self, session_id, update, **kwargs):
        kind = update.session_update
        if kind == "agent_message_chunk" and update.content.type == "text":
            print(update.content.text.translate(UNPRINTABLE), end="", flush=True)
        elif kind == "tool_call":
            print(f"\n[{update.title} {update.raw_input}]", file=sys.stderr)

    async def request_permission(self, session_id, tool_call, options, **kwargs):
        answer = await asyncio.to_thread(input, f"\nallow {tool_call.title} {tool_call.raw_input}? [y/N] ")
        chosen = "allow_once" if answer.strip().lower() in ("y", "yes") else "reject_once"
        return schema.RequestPermissionResponse(outcome=schema.AllowedOutcome(outcome="selected", option_id=chosen))


async def main() -> None:
    args = sys.argv[1:]
    flags = args[args.index("--") + 1 :] if "--" in args else ["-m", "demo", "--no-tools"]
    images = args[: args.index("--")] if "--" in args else args
    image = Path(images[0] if images else Path(__file__).with_name("shapes.png"))
    async with acp.spawn_agent_process(
        TerminalClient(), sys.executable, "-m", "vision_agent", "acp", *flags, transport_kwargs={"limit": 2**26}
    ) as (connection, _process):
        init = await connection.initialize(protocol_version=acp.PROTOCOL_VERSION)
        print(f"agent {init.agent_info.name} {init.agent_info.version}", file=sys.stderr)
        session = (await connection.new_session(cwd=str(Path.cwd()), mcp_servers=[])).session_id
        picture = acp.image_block(base64.b64encode(image.read_bytes()).decode(), "image/png")
        first = await connection.prompt(session_id=session, prompt=[acp.text_block("What is in this image?"), picture])
        print(f"\n[{first.stop_reason}]", file=sys.stderr)
        second = await connection.prompt(session_id=session, prompt=[acp.text_block("What colours stand out?")])
        print(f"\n[{second.stop_reason}] stored: vision-agent conversations show {session}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
