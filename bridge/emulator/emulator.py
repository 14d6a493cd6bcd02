"""`Emulator`: the OpenAI fine-tuning API, served from a scenario in a background thread."""

from __future__ import annotations

import threading
import time
from collections import Counter
from types import TracebackType
from typing import Self

from bridge.emulator.account import Account, Clock
from bridge.emulator.api import Api
from bridge.emulator.faults import FaultInjector, Faults
from bridge.emulator.providers import provider_apis
from bridge.emulator.scenario import JobScenario, Scenario
from bridge.emulator.server import HttpServer
from bridge.httpserve import serve_in_thread, stop_serving


class Emulator:
    """Serves `scenario` at `base_url`; `api_key=None` accepts any key.

    `time_scale` (default: the scenario's) is emulated seconds per real second.
    """

    def __init__(
        self,
        scenario: Scenario,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        *,
        time_scale: float | None = None,
    ) -> None:
        self.scenario = scenario
        self.host = host
        self._port = port
        start = scenario.start_time if scenario.start_time is not None else time.time()
        scale = scenario.time_scale if time_scale is None else time_scale
        self.clock = Clock(start, scale)
        self.account = Account(scenario, self.clock)
        self.faults = FaultInjector(scenario.seed)
        self.api = Api(self.account, api_key, self.faults, provider_apis(self.account))
        self._server: HttpServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve in a daemon thread; emulated time starts now."""
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._server = HttpServer((self.host, self._port), self.api)
        self._port = self._server.server_address[1]
        self.clock.restart()
        self._thread = serve_in_thread(self._server, "ftbridge-emulator")

    def stop(self) -> None:
        """Stop serving and drop open connections."""
        server, self._server = self._server, None
        if server is None:
            return
        stop_serving(server, self._thread)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self._port}/v1"

    def add_job(self, job: JobScenario) -> str:
        """Add a job created now; returns its id."""
        return self.account.add(job)

    def set_faults(
        self,
        error_rate: float = 0.0,
        status: int = 500,
        retry_after: float | None = None,
        down: bool = False,
        latency: float = 0.0,
        *,
        chat_latency: float = 0.0,
    ) -> None:
        """Fail a seeded share of requests, or all of them (`down`, 503), after `latency` s
        (chat completions `chat_latency` s more)."""
        self.faults.set(
            Faults(
                error_rate=error_rate,
                status=status,
                retry_after=retry_after,
                down=down,
                latency=latency,
                chat_latency=chat_latency,
            )
        )

    @property
    def request_count(self) -> int:
        """API requests received (control requests excluded)."""
        return self.api.request_count

    @property
    def counts(self) -> Counter[str]:
        """API requests received per kind (`list_jobs`, `list_events`, `retrieve`, ...)."""
        with self.api.lock:
            return Counter(self.api.counts)

    def now(self) -> float:
        """Emulated Unix time."""
        return self.clock.now()

    def advance(self, seconds: float) -> None:
        """Jump emulated time forward by `seconds`."""
        self.clock.advance(seconds)
