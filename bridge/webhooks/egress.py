"""The SSRF guard for what Apprise sends: chat targets connect by themselves, so the check sits
where every connection is made.

Apprise's plugins open their own connections (``requests`` for the HTTP ones, ``smtplib`` for
email, sockets for the rest), so a guard on the URL alone would check one address and let the
plugin connect to another after its own DNS lookup. Instead, inside :func:`guarded`, every
``connect``, ``connect_ex`` and ``sendto`` of a Python socket checks the address it is about to
reach with :func:`bridge.webhooks.ssrf.refusal_reason`, the same rule as webhooks:

- an IP address is checked as is, and the connection goes to that very address;
- a host name (a socket connected by name resolves it itself) is resolved once here, every
  address must pass, and the socket connects to the checked one;
- a local (Unix) socket cannot be checked and is refused.

A refused connection raises :class:`EgressRefused` (a ``ConnectionRefusedError``, which every
library treats as a failed connection) and is recorded, so the delivery is marked ``refused``.
Private addresses pass when ``FTBRIDGE_WEBHOOK_ALLOW_PRIVATE=true``.

The guard is a ``contextvars.ContextVar``: Apprise copies the context into its worker threads,
and nothing outside :func:`guarded` (wandb, the SDK, the store) is affected.
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import BridgeError
from bridge.webhooks.ssrf import literal_ip, refusal_reason, system_resolver

_INET = (socket.AF_INET, socket.AF_INET6)
_UNIX = getattr(socket, "AF_UNIX", None)


class EgressRefused(ConnectionRefusedError):
    """The SSRF guard refused to connect to this address."""


@dataclass
class Policy:
    allow_private: bool
    refused: list[str] = field(default_factory=list)

    def check(self, family: int, address: Any) -> Any:
        """The address to connect to (checked), or raise :class:`EgressRefused`."""
        if _UNIX is not None and family == _UNIX:
            if self.allow_private:
                return address
            return self._refuse(f"refused the local socket {address!r}: it cannot be checked")
        if family not in _INET or not isinstance(address, tuple) or len(address) < 2:
            return self._refuse(f"refused a connection of family {family}: it cannot be checked")
        host, port = str(address[0]), int(address[1])
        ip = literal_ip(host)
        if ip is None:
            try:
                resolved = system_resolver(host, port)
            except BridgeError as error:
                raise OSError(str(error)) from None
            if not resolved:
                raise OSError(f"{host} resolved to no address")
            checked = [self._checked(host, literal_ip(a)) for a in resolved]
            return (str(checked[0]), port, *address[2:])
        self._checked(host, ip)
        return address

    def _checked(self, host: str, ip: Any) -> Any:
        if ip is None:
            self._refuse(f"refused {host}: its address cannot be read")
        if not self.allow_private:
            reason = refusal_reason(ip)
            if reason:
                self._refuse(
                    f"refused {host}: {reason}; set FTBRIDGE_WEBHOOK_ALLOW_PRIVATE=true to allow"
                )
        return ip

    def _refuse(self, reason: str) -> Any:
        self.refused.append(reason)
        raise EgressRefused(reason)


_POLICY: contextvars.ContextVar[Policy | None] = contextvars.ContextVar(
    "ftbridge_egress_policy", default=None
)
_installed = threading.Lock()
_done = False


def _family(sock: socket.socket) -> int:
    return int(sock.family)


def _install() -> None:
    """Wrap the socket methods that reach an address (once per process); outside
    :func:`guarded` they behave exactly as before."""
    global _done  # noqa: PLW0603 - the patch is made once per process
    with _installed:
        if _done:
            return
        original_connect = socket.socket.connect
        original_connect_ex = socket.socket.connect_ex
        original_sendto = socket.socket.sendto

        def connect(self: Any, address: Any) -> None:
            policy = _POLICY.get()
            if policy is not None:
                address = policy.check(_family(self), address)
            original_connect(self, address)

        def connect_ex(self: Any, address: Any) -> int:
            policy = _POLICY.get()
            if policy is not None:
                address = policy.check(_family(self), address)
            return original_connect_ex(self, address)

        def sendto(self: Any, data: Any, *args: Any) -> int:
            policy = _POLICY.get()
            if policy is not None and args:
                args = (*args[:-1], policy.check(_family(self), args[-1]))
            return int(original_sendto(self, data, *args))

        setattr(socket.socket, "connect", connect)  # noqa: B010 - a patch of the class
        setattr(socket.socket, "connect_ex", connect_ex)  # noqa: B010
        setattr(socket.socket, "sendto", sendto)  # noqa: B010
        _done = True


@contextlib.contextmanager
def guarded(*, allow_private: bool) -> Iterator[Policy]:
    """Every connection made in this block (and in threads Apprise starts from it) passes
    the SSRF check; the policy's ``refused`` lists what was refused."""
    _install()
    policy = Policy(allow_private)
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)


def chat_host(url: str) -> str | None:
    """The host an Apprise URL names, when it names one (``json://host/``, ``ntfy://host/``):
    services reached through their own host (``slack://TOKEN/...``) name none."""
    import apprise  # noqa: PLC0415 - only where chat targets are checked

    plugin = apprise.Apprise.instantiate(url)
    host = getattr(plugin, "host", None) if plugin is not None else None
    if not isinstance(host, str) or not host:
        return None
    if literal_ip(host) is not None or "." in host or host.lower() == "localhost":
        return host.strip("[]")
    return None
