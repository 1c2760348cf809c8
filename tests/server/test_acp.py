"""`vision-agent acp` as a real process, driven by the official ACP Python SDK as the client (which parses every
message the agent sends with the protocol's schema models), and over raw pipes for hostile input: the demo model
(real llama.cpp) for images, follow-ups, session/load and cancel; the replay backend for permissions."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.helpers import png_bytes, replay_model, run_cli

acp = pytest.importorskip("acp")
schema = pytest.importorskip("acp.schema")

pytestmark = pytest.mark.subprocess

CALC = 'Thought: add\nAction: calculator\nInput: {"expression": "12 + 30"}'


class RecordingClient:
    """An ACP client: keeps every update per session, answers permission questions from a list."""

    def __init__(self, answers: list[str | None] | None = None):
        self.updates: dict[str, list] = {}
        self.answers = list(answers or [])
        self.asked: list = []
        self.first_chunk = asyncio.Event()

    async def request_permission(self, session_id, tool_call, options, **kwargs):
        self.asked.append((tool_call, [o.option_id for o in options]))
        answer = self.answers.pop(0) if self.answers else None
        if answer is None:
            return schema.RequestPermissionResponse(outcome=schema.DeniedOutcome(outcome="cancelled"))
        return schema.RequestPermissionResponse(outcome=schema.AllowedOutcome(outcome="selected", option_id=answer))

    async def session_update(self, session_id, update, **kwargs):
        self.updates.setdefault(session_id, []).append(update)
        if getattr(update, "session_update", "") == "agent_message_chunk":
            self.first_chunk.set()

    def kinds(self, session_id: str) -> list[str]:
        return [u.session_update for u in self.updates.get(session_id, [])]

    def text(self, session_id: str, kind: str = "agent_message_chunk") -> str:
        return "".join(u.content.text for u in self.updates.get(session_id, []) if u.session_update == kind)


@asynccontextmanager
async def agent_process(client, args: list[str], env: dict, tmp_path: Path):
    with open(tmp_path / "agent-stderr.txt", "ab") as stderr:
        transport = {"limit": 2**26, "stderr": stderr}
        async with acp.spawn_agent_process(
            client,
            sys.executable,
            "-m",
            "vision_agent",
            "acp",
            *args,
            env=env,
            cwd=tmp_path,
            transport_kwargs=transport,
        ) as (connection, process):
            init = await asyncio.wait_for(connection.initialize(protocol_version=acp.PROTOCOL_VERSION), 120)
            yield connection, process, init


@pytest.fixture
def env(cli_env, tmp_path):
    return {**cli_env, "TMPDIR": str(tmp_path)}


def demo_args(demo_pair, *extra: str) -> list[str]:
    text, mmproj = demo_pair
    return ["-m", str(text), "--mmproj", str(mmproj), "--no-tools", "--temperature", "0", *extra]


def image_block(data: bytes):
    return schema.ImageContentBlock(type="image", mime_type="image/png", data=base64.b64encode(data).decode())


def stored_turns(env, conversation: str) -> list[dict]:
    result = run_cli("conversations", "show", conversation, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["turns"]


@pytest.mark.llama
def test_image_prompt_follow_up_and_load_in_a_new_process(demo_pair, env, tmp_path):
    (tmp_path / "blue.png").write_bytes(png_bytes(color=(0, 0, 240)))

    async def first_process():
        client = RecordingClient()
        async with agent_process(client, demo_args(demo_pair, "--max-tokens", "8", "-v"), env, tmp_path) as (
            connection,
            _,
            init,
        ):
            assert init.protocol_version == 1 and init.agent_capabilities.load_session
            assert init.agent_capabilities.prompt_capabilities.image
            session = (await connection.new_session(cwd=str(tmp_path), mcp_servers=[])).session_id
            first = await connection.prompt(
                session_id=session, prompt=[acp.text_block("What is this?"), image_block(png_bytes())]
            )
            assert first.stop_reason in ("end_turn", "max_tokens")
            assert "agent_message_chunk" in client.kinds(session)
            link = acp.resource_link_block(name="blue.png", uri=(tmp_path / "blue.png").as_uri())
            second = await connection.prompt(session_id=session, prompt=[acp.text_block("And this file?"), link])
            third = await connection.prompt(session_id=session, prompt=[acp.text_block("The first one again?")])
            assert second.stop_reason in ("end_turn", "max_tokens") and third.usage.cached_read_tokens > 0
            return session, client.text(session)

    session, answers = asyncio.run(first_process())
    turns = stored_turns(env, session)
    assert [t["prompt"] for t in turns] == ["What is this?", "And this file?", "The first one again?"]
    assert [len(t["images"]) for t in turns] == [1, 1, 0] and all(t["status"] == "ok" for t in turns)
    assert turns[2]["usage"]["images_encoded"] == 0  # images the conversation holds are never encoded again

    async def second_process():
        client = RecordingClient()
        async with agent_process(client, demo_args(demo_pair, "--max-tokens", "4"), env, tmp_path) as (
            connection,
            _,
            _init,
        ):
            await connection.load_session(cwd=str(tmp_path), session_id=session, mcp_servers=[])
            replayed = client.updates[session]
            users = [u for u in replayed if u.session_update == "user_message_chunk"]
            assert [u.content.text for u in users if u.content.type == "text"] == [t["prompt"] for t in turns]
            assert sum(1 for u in users if u.content.type == "image") == 2
            assert client.text(session) == "".join(t["answer"] for t in turns)
            more = await connection.prompt(session_id=session, prompt=[acp.text_block("Still there?")])
            assert more.stop_reason in ("end_turn", "max_tokens")
            with pytest.raises(acp.RequestError):
                await connection.load_session(cwd=str(tmp_path), session_id="f" * 32, mcp_servers=[])

    asyncio.run(second_process())
    assert len(stored_turns(env, session)) == 4


@pytest.mark.llama
def test_cancel_mid_generation_answers_cancelled_and_is_recorded(demo_pair, env, tmp_path):
    async def scenario():
        client = RecordingClient()
        async with agent_process(client, demo_args(demo_pair, "--max-tokens", "3000"), env, tmp_path) as (
            connection,
            _,
            _init,
        ):
            session = (await connection.new_session(cwd=str(tmp_path), mcp_servers=[])).session_id
            running = asyncio.create_task(connection.prompt(session_id=session, prompt=[acp.text_block("Go on.")]))
            await asyncio.wait_for(client.first_chunk.wait(), 60)
            await connection.cancel(session_id=session)
            response = await asyncio.wait_for(running, 60)
            assert response.stop_reason == "cancelled"
            after = await connection.prompt(session_id=session, prompt=[acp.text_block("Short.")])
            assert after.stop_reason in ("end_turn", "max_tokens")
            return session

    session = asyncio.run(scenario())
    assert [t["status"] for t in stored_turns(env, session)][:1] == ["cancelled"]


def test_permission_allowed_refused_and_always(env, tmp_path):
    turns = [CALC, "Answer: 42", CALC, "Answer: refused", CALC, "Answer: always", CALC, "Answer: no question"]
    model = replay_model(tmp_path, *turns)

    async def scenario():
        client = RecordingClient(["allow_once", "reject_once", "allow_always"])
        args = ["-m", model, "--tool-policy", "calculator=ask"]
        async with agent_process(client, args, env, tmp_path) as (connection, _, _init):
            session = (await connection.new_session(cwd=str(tmp_path), mcp_servers=[])).session_id
            results = []
            for _ in range(4):
                before = len(client.updates.get(session, []))
                response = await connection.prompt(session_id=session, prompt=[acp.text_block("add")])
                assert response.stop_reason == "end_turn"
                done = [u for u in client.updates[session][before:] if u.session_update == "tool_call_update"]
                results.append(done[0].status)
            calls = [u for u in client.updates[session] if u.session_update == "tool_call"]
            assert calls[0].kind == "think" and calls[0].raw_input == {"expression": "12 + 30"}
            return results, client.asked

    results, asked = asyncio.run(scenario())
    assert results == ["completed", "failed", "completed", "completed"]
    assert len(asked) == 3  # the fourth call was allowed for the session already
    tool_call, options = asked[0]
    assert tool_call.title == "calculator" and "allow_once" in options and "reject_once" in options


class Wire:
    """The agent over raw pipes: every stdout line must be a JSON-RPC 2.0 message the SDK's models accept."""

    def __init__(self, args: list[str], env: dict, cwd: Path):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vision_agent", "acp", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
        )

    def send(self, message) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.process.stdin.write(data + b"\n")
        self.process.stdin.flush()

    def read(self) -> dict:
        raw = self.process.stdout.readline()
        assert raw, "the agent ended"
        message = json.loads(raw)
        assert message["jsonrpc"] == "2.0"
        if message.get("method") == "session/update":
            schema.SessionNotification.model_validate(message["params"])
        return message

    def response(self, request_id) -> dict:
        while True:
            message = self.read()
            if message.get("id") == request_id and "method" not in message:
                return message

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_hostile_lines_get_json_rpc_errors_and_the_agent_serves_on(env, tmp_path):
    model = replay_model(tmp_path, "Answer: " + " ".join(["slow"] * 100), "Answer: fine", token_delay_s=0.01)
    wire = Wire(["-m", model, "-v", "--max-line-bytes", "4096"], env, tmp_path)
    try:
        cases = [
            (b"not json", -32700),
            (b"\xff\xfe\x00", -32700),
            (b"[" * 3000, -32700),
            (b"[]", -32600),
            (b'{"jsonrpc": "1.0", "id": 1, "method": "initialize"}', -32600),
            (b'{"jsonrpc": "2.0", "id": {"x": 1}, "method": "initialize"}', -32600),
            (b'{"jsonrpc": "2.0", "id": 2, "method": "no/such"}', -32601),
            (b'{"jsonrpc": "2.0", "id": 3, "method": "initialize", "params": []}', -32602),
            (b'{"jsonrpc": "2.0", "id": 4, "method": "initialize", "params": {"protocolVersion": "x"}}', -32602),
            (
                b'{"jsonrpc": "2.0", "id": 5, "method": "session/prompt", "params": {"sessionId": "x", "prompt": []}}',
                -32002,
            ),
            (b'{"jsonrpc": "2.0", "id": 6, "method": "session/new", "params": {}}', -32602),
            (b"x" * 10_000, -32600),
        ]
        for line, code in cases:
            wire.send(line)
            reply = wire.read()
            assert reply["error"]["code"] == code, (line[:60], reply)
        wire.send(b'{"jsonrpc": "2.0", "method": "no/such/notification", "params": {}}')  # never answered
        wire.send({"jsonrpc": "2.0", "id": "i", "method": "initialize", "params": {"protocolVersion": 1}})
        assert wire.response("i")["result"]["protocolVersion"] == 1
        wire.send(
            {"jsonrpc": "2.0", "id": "n", "method": "session/new", "params": {"cwd": str(tmp_path), "mcpServers": []}}
        )
        session = wire.response("n")["result"]["sessionId"]
        bad_blocks = [[{"type": "audio", "data": "", "mimeType": "audio/wav"}], [{"type": "text"}], [], "text"]
        for number, blocks in enumerate(bad_blocks):
            wire.send(
                {
                    "jsonrpc": "2.0",
                    "id": f"b{number}",
                    "method": "session/prompt",
                    "params": {"sessionId": session, "prompt": blocks},
                }
            )
            assert wire.response(f"b{number}")["error"]["code"] == -32602
        broken = [{"type": "text", "text": "look"}, {"type": "image", "mimeType": "image/png", "data": "!!"}]
        wire.send(
            {
                "jsonrpc": "2.0",
                "id": "img",
                "method": "session/prompt",
                "params": {"sessionId": session, "prompt": broken},
            }
        )
        error = wire.response("img")["error"]
        assert error["code"] == -32602 and error["data"]["kind"] == "image_corrupt"
        prompt = {"sessionId": session, "prompt": [{"type": "text", "text": "hello"}]}
        wire.send({"jsonrpc": "2.0", "id": "p1", "method": "session/prompt", "params": prompt})
        wire.send({"jsonrpc": "2.0", "id": "p2", "method": "session/prompt", "params": prompt})
        second = wire.response("p2")
        assert second.get("error", {}).get("code") == -32600, second  # one prompt per session at a time
        assert wire.response("p1")["result"]["stopReason"] == "end_turn"
        wire.send({"jsonrpc": "2.0", "id": "p3", "method": "session/prompt", "params": prompt})
        assert wire.response("p3")["result"]["stopReason"] == "end_turn"
        wire.process.stdin.close()
        assert wire.process.wait(30) == 0
    finally:
        wire.kill()


def test_sigterm_mid_prompt_answers_cancelled_and_exits_143(env, tmp_path):
    model = replay_model(tmp_path, "Answer: " + " ".join(["slow"] * 500), token_delay_s=0.02)
    wire = Wire(["-m", model], env, tmp_path)
    try:
        wire.send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": 1}})
        wire.response(1)
        wire.send(
            {"jsonrpc": "2.0", "id": 2, "method": "session/new", "params": {"cwd": str(tmp_path), "mcpServers": []}}
        )
        session = wire.response(2)["result"]["sessionId"]
        prompt = {"sessionId": session, "prompt": [{"type": "text", "text": "go"}]}
        wire.send({"jsonrpc": "2.0", "id": 3, "method": "session/prompt", "params": prompt})
        while wire.read().get("method") != "session/update":
            pass
        started = time.monotonic()
        wire.process.send_signal(signal.SIGTERM)
        assert wire.response(3)["result"]["stopReason"] == "cancelled"
        assert wire.process.wait(20) == 143 and time.monotonic() - started < 15
    finally:
        wire.kill()
