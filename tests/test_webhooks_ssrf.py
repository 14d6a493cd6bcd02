"""The SSRF guard: refusals on the resolved address, and the connection pinned to it."""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from bridge.webhooks import HttpSender, TargetRefused, check_url, events, refusal_reason
from bridge.webhooks.targets import WebhookTarget
from tests.webhook_receiver import SECRET, Receiver


def target(url: str) -> WebhookTarget:
    return WebhookTarget(name="t", url=url, secrets=[SecretStr(SECRET)])


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.7/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://localhost/hook",
        "http://0.0.0.0/hook",
        "http://[fe80::1]/hook",
        "http://192.168.1.1/hook",
        "http://[fd00::1]/hook",
    ],
)
def test_non_public_targets_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused, match="FTBRIDGE_WEBHOOK_ALLOW_PRIVATE"):
        check_url(url, allow_private=False)
    assert check_url(url, allow_private=True).ip is not None


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    def resolve(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.5"]  # one bad answer is enough

    with pytest.raises(TargetRefused, match=r"10\.0\.0\.5 is not public \(private\)"):
        check_url("https://hooks.example/x", allow_private=False, resolve=resolve)


def test_public_addresses_pass() -> None:
    for text in ("93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"):
        assert refusal_reason(ipaddress.ip_address(text)) is None
    checked = check_url(
        "https://hooks.example:8443/x", allow_private=False, resolve=lambda h, p: ["8.8.8.8"]
    )
    assert (checked.host, checked.port, str(checked.ip)) == ("hooks.example", 8443, "8.8.8.8")


def test_a_refused_target_receives_nothing() -> None:
    with Receiver() as receiver:
        sender = HttpSender(timeout=2, allow_private=False)
        url = f"http://localhost:{receiver.port}/hook"
        result = sender.send_webhook(target(url), "evt_1", b"{}")
        sender.close()
    assert result.outcome == "refused"
    assert result.error is not None
    assert "127.0.0.1" in result.error or "::1" in result.error
    assert receiver.received == []


def test_the_connection_goes_to_the_checked_address() -> None:
    """``hook.invalid`` exists nowhere but in our resolver: a second lookup would fail."""
    lookups: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    with Receiver() as receiver:
        sender = HttpSender(timeout=2, allow_private=True, resolve=resolve)
        url = f"http://hook.invalid:{receiver.port}/hook?x=1"
        result = sender.send_webhook(target(url), "evt_1", b'{"id":"evt_1"}')
        sender.close()
    assert result.outcome == "delivered", result
    assert lookups == ["hook.invalid"]
    (request,) = receiver.received
    assert request.headers["host"] == f"hook.invalid:{receiver.port}"
    assert request.path == "/hook?x=1"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=hook.test",
            "-addext",
            "subjectAltName=DNS:hook.test",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_pinned_to_the_address_still_verifies_the_name(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    with Receiver(tls=server_tls, host="hook.test") as receiver:
        sender = HttpSender(
            timeout=3, allow_private=True, verify=client_tls, resolve=lambda h, p: ["127.0.0.1"]
        )
        body = events.ping_event(created_at=int(time.time()), nonce="tls").body()
        result = sender.send_webhook(target(receiver.url), "evt_tls", body)
        sender.close()
        # The same certificate does not hold for the bare address: the name check is real.
        with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
            httpx.post(f"https://127.0.0.1:{receiver.port}/hook", verify=client_tls)
    assert result.outcome == "delivered", result
    (request,) = receiver.received
    assert request.verified, request.problem
    assert request.headers["host"] == f"hook.test:{receiver.port}"
