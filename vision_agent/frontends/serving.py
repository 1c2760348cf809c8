"""The life of a stdio protocol server (`jsonl`, `acp`) around its line handler: read lines until EOF, then let
the queued prompts finish and exit 0; on SIGINT, SIGTERM or SIGHUP cancel every prompt, give each a moment to
end with its own done, and exit with the signal's code. A second signal, or a run stuck in llama.cpp, leaves at
once (no child process of ours left behind)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vision_agent.frontends.protocol_io import Oversized
    from vision_agent.sessions.service import PromptService, Replies

CLOSE_GRACE_S = 2.0  # after a cancel, how long a run has to end with its own done


def serve_lines(
    service: PromptService,
    handle: Callable[[bytes | Oversized], None],
    *,
    max_line_bytes: int,
    replies: Replies,
    stopping: Callable[[], bool] = lambda: False,
) -> int:
    from vision_agent.errors import EXIT_INTERRUPTED
    from vision_agent.frontends.protocol_io import read_lines

    code = 0
    try:
        for line in read_lines(sys.stdin.buffer, max_line_bytes):
            handle(line)
            if stopping():
                break
        replies.close()  # nobody can answer an approval any more: each waiting one is refused now
        service.close()  # EOF: the queued prompts finish; a shutdown: each ends with its cancelled done
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM/SIGHUP (cli.main.Interrupted carries its number)
        code = 128 + exc.args[1] if len(exc.args) == 2 else EXIT_INTERRUPTED
        _stop(service, code)
    finally:
        service.cancel_all()
        if service.close(CLOSE_GRACE_S):
            service.session.close()
    return code


def _stop(service: PromptService, code: int) -> None:
    from vision_agent.frontends.console import quit_now

    try:
        service.cancel_all()
        if not service.close(CLOSE_GRACE_S):  # stuck in llama.cpp (an image encode): leave without it
            quit_now(code)
    except KeyboardInterrupt:  # a second signal: at once
        quit_now(code)
