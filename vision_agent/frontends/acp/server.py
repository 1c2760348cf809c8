"""The `vision-agent acp` command: claim stdout, load the model, then serve JSON-RPC lines until EOF or a signal."""

from __future__ import annotations

import sys


def serve(args, settings) -> int:
    from vision_agent.errors import VisionAgentError
    from vision_agent.frontends.acp.agent import AcpAgent
    from vision_agent.frontends.acp.rpc import Connection
    from vision_agent.frontends.protocol_io import ProtocolOut
    from vision_agent.frontends.serving import serve_lines
    from vision_agent.frontends.terminal import safe_line
    from vision_agent.sessions.service import PromptService
    from vision_agent.sessions.session import Session

    out = ProtocolOut.claim()  # first: llama.cpp and logging may write to fd 1 from here on
    try:
        session = Session.open(settings)
    except VisionAgentError as exc:  # before any request: the client shows the agent's stderr
        print(f"vision-agent: {safe_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    service = PromptService(session, max_queued=args.queue)
    connection = Connection(out)
    agent = AcpAgent(connection, service, args.approval_timeout)
    return serve_lines(service, agent.handle, max_line_bytes=args.max_line_bytes, replies=connection.replies)
