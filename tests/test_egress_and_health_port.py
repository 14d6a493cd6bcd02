"""Every outbound target passes one SSRF rule, webhooks and chat alike (one matrix of
addresses); the health port holds no socket for long under slow-loris clients and floods."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from bridge import health
from bridge.errors import ConfigError
from bridge.health import HealthServer, Verdict
from bridge.metrics import BridgeMetrics
from bridge.webhooks import HttpSender, TargetRefused, check_url, ping_event
from bridge.webhooks.egress import guarded
from bridge.webhooks.targets import ChatTarget, targets_from_settings
from tests.webhook_receiver import Receiver

# host (as written in a URL) -> a port-less address every outbound target must refuse.
MATRIX = [
    "127.0.0.1",
    "10.1.2.3",
    "169.254.169.254",
    "100.64.0.7",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "localhost",
    "0.0.0.0",
    "[fe80::1]",
    "192.168.1.1",
    "[fd00::1]",
    "[64:ff9b::7f00:1]",
]
CHAT_SCHEMES = ["json", "form", "xml"]


@pytest.mark.parametrize("host", MATRIX)
def test_webhooks_refuse_the_matrix(host: str) -> None:
    with pytest.raises(TargetRefused):
        check_url(f"http://{host}/hook", allow_private=False)


@pytest.mark.parametrize("host", MATRIX)
@pytest.mark.parametrize("scheme", CHAT_SCHEMES)
def test_chat_targets_refuse_the_matrix_at_configuration(scheme: str, host: str) -> None:
    with pytest.raises(ConfigError, match="FTBRIDGE_WEBHOOK_ALLOW_PRIVATE"):
        targets_from_settings(chat_urls=[f"{scheme}://{host}/notify"])
    assert targets_from_settings(chat_urls=[f"{scheme}://{host}/notify"], allow_private=True)


@pytest.mark.parametrize("host", MATRIX)
@pytest.mark.parametrize("scheme", CHAT_SCHEMES)
def test_chat_delivery_is_refused_where_apprise_connects(scheme: str, host: str) -> None:
    """A target that got past the configuration (built directly here) is still refused
    when Apprise connects: nothing leaves."""
    target = ChatTarget(name="c", url=SecretStr(f"{scheme}://{host}/notify"))
    sender = HttpSender(timeout=2, allow_private=False)
    try:
        result = sender.send_chat(target, ping_event(created_at=0, nonce="n"))
    finally:
        sender.close()
    assert result.outcome == "refused", result
    assert "FTBRIDGE_WEBHOOK_ALLOW_PRIVATE" in (result.error or "")


def test_a_loopback_chat_receives_nothing_unless_private_targets_are_allowed() -> None:
    with Receiver(secrets=()) as chat:
        target = ChatTarget(name="c", url=SecretStr(f"json://127.0.0.1:{chat.port}/n"))
        refused = HttpSender(timeout=2).send_chat(target, ping_event(created_at=0, nonce="a"))
        allowed = HttpSender(timeout=2, allow_private=True).send_chat(
            target, ping_event(created_at=0, nonce="b")
        )
        assert refused.outcome == "refused" and allowed.outcome == "delivered"
        assert len(chat.received) == 1


def test_the_guard_holds_only_inside_its_block() -> None:
    with Receiver(secrets=()) as receiver:
        with guarded(allow_private=False) as policy, pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", receiver.port), timeout=2)
        assert policy.refused
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=2):
            pass  # outside the block: untouched


def test_a_socket_connected_by_name_is_checked_after_resolution() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with guarded(allow_private=False), pytest.raises(ConnectionRefusedError, match="loop"):
            sock.connect(("localhost", 9))
    finally:
        sock.close()


# The health port
@pytest.fixture
def quick_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[HealthServer]:
    monkeypatch.setattr(health, "REQUEST_SECONDS", 1.0)
    monkeypatch.setattr(health._Handler, "timeout", 1.0)
    ticks = {"n": 0}
    stop = threading.Event()

    def polling() -> None:  # a poll loop going on meanwhile
        while not stop.wait(0.05):
            ticks["n"] += 1

    poller = threading.Thread(target=polling, daemon=True)
    poller.start()
    server = HealthServer(
        "127.0.0.1", 0, BridgeMetrics().registry, lambda: Verdict(True, "ok", {"n": ticks["n"]})
    )
    server.start()
    yield server
    server.stop()
    stop.set()
    assert ticks["n"] > 0


def ready(server: HealthServer) -> int:
    with urllib.request.urlopen(f"{server.url}/readyz", timeout=5) as response:  # noqa: S310
        assert json.loads(response.read())["status"] == "ready"
        return int(response.status)


def test_a_slow_loris_client_is_cut_off(quick_server: HealthServer) -> None:
    sock = socket.create_connection(("127.0.0.1", quick_server.port), timeout=5)
    started = time.monotonic()
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        closed = False
        while time.monotonic() - started < 4:
            try:
                sock.sendall(b"X-a: b\r\n")  # one header line at a time, never the end
            except OSError:
                closed = True
                break
            sock.settimeout(0.3)
            try:
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
        assert closed, "the server still holds a request that never ends"
        assert time.monotonic() - started < 3
    finally:
        sock.close()
    assert ready(quick_server) == 200


def test_a_flood_of_partial_requests_holds_a_bounded_number_of_threads(
    quick_server: HealthServer, capfd: pytest.CaptureFixture[str]
) -> None:
    before = threading.active_count()
    socks = []
    try:
        for _ in range(120):
            sock = socket.create_connection(("127.0.0.1", quick_server.port), timeout=5)
            sock.sendall(b"GET /readyz HTTP/1.1\r\n")
            socks.append(sock)
        time.sleep(0.3)
        assert threading.active_count() - before <= health.MAX_CONNECTIONS + 2
    finally:
        for sock in socks:
            sock.close()  # hang up, mid-request
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if ready(quick_server) == 200:
                break
        except OSError:
            time.sleep(0.2)
    assert ready(quick_server) == 200
    assert "Traceback" not in capfd.readouterr().err
