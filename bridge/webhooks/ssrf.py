"""The SSRF guard: resolve a target once, refuse addresses that are not public, and pin the
connection to the address checked.

Refused unless private targets are allowed: loopback, private (RFC 1918, ULA), link-local
(169.254.0.0/16, which holds the cloud metadata address 169.254.169.254), CGNAT 100.64.0.0/10,
reserved, multicast, unspecified, IPv4-mapped IPv6 and anything else Python does not call
global; for 6to4, Teredo and NAT64 addresses the embedded IPv4 address is checked too.

Pinning: the request goes to ``scheme://<checked ip>:<port>/path`` with the ``Host`` header of
the original URL and, for https, ``sni_hostname`` set to the original host, so TLS still
verifies the certificate against the name. No second DNS lookup happens. (HTTP proxies from the
environment are not used for the same reason.)
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from bridge.errors import BridgeError, RetryableError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_DENIED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "::ffff:0:0/96",
        "64:ff9b:1::/48",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class TargetRefused(BridgeError):
    """The target's address is not public (loopback, private, link-local, CGNAT, reserved or
    metadata); set FTBRIDGE_WEBHOOK_ALLOW_PRIVATE=true to allow it."""


class TargetUnresolved(RetryableError):
    """The target's host name could not be resolved."""


@dataclass(frozen=True)
class CheckedAddress:
    scheme: str
    host: str
    port: int
    ip: IPAddress


def refusal_reason(ip: IPAddress) -> str | None:
    """Why an address is refused, or None when it is public."""
    for embedded in _embedded_ipv4(ip):
        reason = refusal_reason(embedded)
        if reason:
            return f"{reason} (embedded in {ip})"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"{ip} is not public (IPv4-mapped IPv6)"
    for kind, flag in (
        ("loopback", ip.is_loopback),
        ("CGNAT", ip in _CGNAT),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return f"{ip} is not public ({kind})"
    if any(ip in net for net in _DENIED) or not ip.is_global:
        return f"{ip} is not a public address"
    return None


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = [a for a in (ip.sixtofour, ip.teredo[1] if ip.teredo else None) if a is not None]
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (one lookup)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise TargetUnresolved(f"cannot resolve {host}: {error}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def check_url(
    url: str, *, allow_private: bool, resolve: Resolver = system_resolver
) -> CheckedAddress:
    """Resolve the URL's host once; every address must be public unless private ones are
    allowed. Returns the address to connect to."""
    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80)
    ip = literal_ip(host)
    addresses = [ip] if ip is not None else [_parse(a) for a in resolve(host, port)]
    if not addresses:
        raise TargetUnresolved(f"{host} resolved to no address")
    if not allow_private:
        for address in addresses:
            reason = refusal_reason(address)
            if reason:
                raise TargetRefused(
                    f"refused {host}: {reason}; set FTBRIDGE_WEBHOOK_ALLOW_PRIVATE=true to allow"
                )
    return CheckedAddress(scheme=parsed.scheme, host=host, port=port, ip=addresses[0])


def _parse(address: str) -> IPAddress:
    return ipaddress.ip_address(address.split("%", maxsplit=1)[0])


def pinned_request(
    url: str, checked: CheckedAddress, *, headers: dict[str, str], content: bytes
) -> httpx.Request:
    """A POST that connects to ``checked.ip`` while naming the original host (Host, SNI)."""
    original = httpx.URL(url)
    target = original.copy_with(host=str(checked.ip))
    host_header = original.netloc.decode("ascii")
    extensions = {"sni_hostname": checked.host} if checked.scheme == "https" else {}
    return httpx.Request(
        "POST",
        target,
        headers={**headers, "host": host_header},
        content=content,
        extensions=extensions,
    )
