"""Requests and responses as plain values, so the routing code never touches a socket."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # path and query string
    headers: dict[str, str]  # lower-case names
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any) -> Response:
        return cls(status, json.dumps(payload).encode())


@dataclass
class Recorded:
    """One request as received, for tests that look at the traffic."""

    method: str
    path: str
    operation: str | None
    body: Any
