"""Injected failures: a seeded share of errors, an outage, latency."""

from __future__ import annotations

import random
import threading

from pydantic import BaseModel, ConfigDict, Field

from bridge.emulator.errors import ApiError, server_fault


class Faults(BaseModel):
    """What to break; the default breaks nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    status: int = Field(default=500, ge=400, le=599)
    retry_after: float | None = Field(default=None, ge=0)
    down: bool = False
    latency: float = Field(default=0.0, ge=0.0)
    # Seconds more each chat completion takes (any provider's): slow samples.
    chat_latency: float = Field(default=0.0, ge=0.0)


class FaultInjector:
    """Decides, request by request and reproducibly from a seed, which requests fail."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._lock = threading.Lock()
        self.faults = Faults()
        self._random = random.Random(seed)

    def set(self, faults: Faults) -> None:
        """Replace the faults; the draw sequence restarts from the seed."""
        with self._lock:
            self.faults = faults
            self._random = random.Random(self._seed)

    def draw(self) -> ApiError | None:
        """The error to answer this request with, if any."""
        with self._lock:
            faults = self.faults
            fails = faults.error_rate > 0 and self._random.random() < faults.error_rate
        if not (faults.down or fails):
            return None
        error = server_fault(503 if faults.down else faults.status)
        if faults.retry_after is not None:
            error.headers["retry-after"] = f"{faults.retry_after:g}"
        return error
