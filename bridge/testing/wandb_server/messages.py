"""Requests and responses as plain values, so the routing code never touches a socket."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Recorded:
    """One request as received, for tests that look at the traffic."""

    method: str
    path: str
    operation: str | None
    body: Any
