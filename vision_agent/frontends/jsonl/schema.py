"""`vision-agent jsonl --schema`: the JSON Schema of every request and every output line, from the models."""

from __future__ import annotations

import json
import sys


def schema() -> dict:
    from pydantic import TypeAdapter

    from vision_agent.core.events import Event
    from vision_agent.frontends.jsonl.messages import (
        ERROR_CODES,
        PROTOCOL,
        REQUESTS,
        Ack,
        ApprovalRequest,
        ErrorLine,
        Ready,
        Status,
    )

    return {
        "protocol": PROTOCOL,
        "requests": {kind: model.model_json_schema() for kind, model in REQUESTS.items()},
        "lines": {
            model.model_fields["type"].default: model.model_json_schema()
            for model in (Ready, ErrorLine, ApprovalRequest, Status, Ack)
        },
        "events": TypeAdapter(Event).json_schema(),
        "events_note": "every event line also holds the request's `id`",
        "error_codes": ERROR_CODES,
    }


def print_schema() -> int:
    sys.stdout.write(json.dumps(schema(), indent=2) + "\n")
    return 0
