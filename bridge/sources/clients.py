"""SDK clients lent to one request at a time, each with its own connection pool.

The bridge reads the API from dozens of threads. Through one ``openai`` client they share one
HTTP connection pool, guarded by one lock; its holder probes every idle connection's socket
(a system call each, giving up the GIL each time) on every request and every response. With
64 threads, reads spent nine tenths of their time queued on that lock. Here each request
borrows a client of its own: a copy of the configured one (same key, endpoint, timeout and
retries) with a pool of one kept-alive connection, sharing one TLS context. Clients are kept
for reuse, most recently returned first (its connection is the one most likely still open),
so there are as many as requests ever ran at once, and connections live across cycles.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import httpx2
import openai

C = TypeVar("C")


class ClientPool(Generic[C]):
    """Clients made by ``make`` on demand, lent one borrower at a time."""

    def __init__(self, make: Callable[[], C], first: C | None = None) -> None:
        self._make = make
        self._idle: list[C] = [] if first is None else [first]
        self._lock = threading.Lock()

    @contextmanager
    def lend(self) -> Iterator[C]:
        with self._lock:
            client = self._idle.pop() if self._idle else None
        if client is None:
            client = self._make()
        try:
            yield client
        finally:
            with self._lock:
                self._idle.append(client)


def openai_pool(client: openai.OpenAI) -> ClientPool[openai.OpenAI]:
    """A pool of copies of ``client`` (an ``OpenAI`` or ``AzureOpenAI``), ``client`` first."""
    tls = httpx2.create_ssl_context()

    def make() -> openai.OpenAI:
        http = openai.DefaultHttpxClient(
            verify=tls, limits=httpx2.Limits(max_connections=4, max_keepalive_connections=1)
        )
        return client.copy(http_client=http)

    return ClientPool(make, client)
