"""Injected failures: a stall before every answer, and a status for the next N requests.

They apply to what a W&B client sends (GraphQL, file_stream, uploads), never to the `/_test`
read and control API, so a test can always look at the state and clear the faults.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class FaultState:
    stall: float = 0.0  # seconds every request waits before it is answered
    status: int | None = None  # answer this status instead of serving ...
    remaining: int | None = None  # ... to this many more requests (None: until cleared)

    def as_json(self) -> dict[str, object]:
        return asdict(self)


class Faults:
    """Thread-safe: request threads draw, tests set."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = FaultState()

    @property
    def state(self) -> FaultState:
        with self._lock:
            return self._state

    def stall(self, seconds: float) -> None:
        with self._lock:
            self._state = FaultState(seconds, self._state.status, self._state.remaining)

    def fail(self, status: int = 500, count: int | None = None) -> None:
        with self._lock:
            if count is not None and count <= 0:
                self._state = FaultState(self._state.stall)
            else:
                self._state = FaultState(self._state.stall, status, count)

    def clear(self) -> None:
        with self._lock:
            self._state = FaultState()

    def draw(self) -> tuple[float, int | None]:
        """(seconds to wait, status to answer instead of serving, if any) for one request."""
        with self._lock:
            state = self._state
            if state.status is None:
                return state.stall, None
            if state.remaining is not None:
                left = state.remaining - 1
                self._state = (
                    FaultState(state.stall, state.status, left)
                    if left > 0
                    else FaultState(state.stall)
                )
            return state.stall, state.status
