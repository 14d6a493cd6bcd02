"""`POST /graphql`: find the operation's name, hand it to its handler, shape the answer.

The name comes from `operationName`, else from the first `query|mutation|subscription Name` in
the text (the Public API's Python queries send none). There is no GraphQL engine: each handler
answers with the fields wandb 0.31 reads. An operation without a handler is answered
`{"data": null, "errors": [...]}` with status 200, as a server that lacks a field would, and its
name is recorded so that a test can fail on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.testing.wandb_server.store import Store

_COMMENT = re.compile(r"#[^\n]*")
_OPERATION = re.compile(r"\b(?:query|mutation|subscription)\s+([A-Za-z_][A-Za-z0-9_]*)")
_FIRST_FIELD = re.compile(r"^\s*(?:query|mutation)?\s*\{\s*([A-Za-z_][A-Za-z0-9_]*)")


# Operations in wandb-core 0.31 that this server does not answer, on purpose: sweeps, launch
# queues, rewind, stopping runs, console-log reads, custom charts, multipart uploads and artifact
# downloads. Anything else the binary can send must have a handler (a test checks).
NOT_SERVED = frozenset(
    {
        "ArtifactFileURLsByManifestEntries",
        "ArtifactManifest",
        "CompleteMultipartUploadArtifact",
        "CreateCustomChart",
        "CreateDefaultResourceConfig",
        "CreateRunQueue",
        "EnqueueSweepRun",
        "RewindRun",
        "RunConsoleLogPage",
        "RunConsoleLogTail",
        "StopRun",
        "SweepConfig",
        "SweepRunsWithHistory",
        "SweepWatchedRuns",
        "UpsertRunQueue",
        "UpsertSweepState",
    }
)


class GraphQLError(Exception):
    """Answered as `{"data": null, "errors": [{"message": ...}]}`."""


@dataclass
class Context:
    """What a handler may use: the state, the default entity, where uploads go."""

    store: Store
    entity: str
    base_url: str
    unknown_operations: list[str] = field(default_factory=list)


Handler = Callable[[Context, dict[str, Any], str], dict[str, Any] | None]


def operation_name(body: dict[str, Any]) -> str:
    """The operation's name; an anonymous one is named after its first field (`{viewer}`)."""
    name = body.get("operationName")
    if isinstance(name, str) and name:
        return name
    query = _COMMENT.sub("", str(body.get("query") or ""))
    match = _OPERATION.search(query)
    if match:
        return match.group(1)
    first = _FIRST_FIELD.match(query)
    return f"{{{first.group(1)}}}" if first else "(anonymous)"


def execute(handlers: dict[str, Handler], context: Context, body: dict[str, Any]) -> dict[str, Any]:
    """The JSON answer to one GraphQL request body."""
    name = operation_name(body)
    handler = handlers.get(name)
    if handler is None:
        with context.store.lock:
            context.unknown_operations.append(name)
        return {"data": None, "errors": [{"message": f"unknown operation {name}"}]}
    variables = body.get("variables") or {}
    try:
        return {"data": handler(context, variables, str(body.get("query") or ""))}
    except GraphQLError as error:
        return {"data": None, "errors": [{"message": str(error)}]}
