"""PostgreSQL for the tests: a fresh database per test on the server CI starts, and a TCP
proxy that can cut the connection to it (an outage without stopping the server)."""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest

SERVER = os.environ.get(
    "FTBRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _admin() -> object:
    import psycopg  # noqa: PLC0415 - only where PostgreSQL is wanted

    return psycopg.connect(SERVER, autocommit=True, connect_timeout=3)


def skip_unless_postgres() -> None:
    try:
        _admin().close()  # type: ignore[attr-defined]
    except Exception as error:  # noqa: BLE001 - any failure means: not here
        pytest.skip(
            f"PostgreSQL is not reachable at {SERVER} ({type(error).__name__}); "
            "CI starts it (set FTBRIDGE_TEST_POSTGRES_URL to use another server)"
        )


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database; dropped afterwards. Yields its URL."""
    skip_unless_postgres()
    name = f"ftbridge_test_{secrets.token_hex(4)}"
    admin = _admin()
    admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[attr-defined]
    try:
        yield SERVER.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[attr-defined]
        admin.close()  # type: ignore[attr-defined]


class Proxy:
    """Forwards 127.0.0.1:<port> to the PostgreSQL server; ``cut()`` refuses and drops every
    connection (the database looks gone), ``restore()`` serves again on the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for conn in self._conns:
                with suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def url_for(self, database_url: str) -> str:
        return database_url.replace("127.0.0.1:5432", f"127.0.0.1:{self.port}")
