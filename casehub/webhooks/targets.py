"""Where a webhook may be delivered: https URLs whose every resolved address is public, checked
at registration and again at delivery, and connected to by the address that was checked (so a
DNS answer that changes between the check and the connection cannot redirect a delivery)."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

Resolver = Callable[[str, int], Sequence[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2000

# Printable ASCII without space or backslash. urlsplit silently drops tabs and newlines,
# http.client refuses spaces and controls only when sending, and browsers read a backslash as "/":
# refusing them here keeps the stored URL, the checked URL and the request that is sent alike.
_URL_CHARACTERS = re.compile(r"[!-\[\]-~]*")
_DNS_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# inet_aton, and so getaddrinfo, reads 2130706433, 0x7f.1, 017700000001 and 127.1 as 127.0.0.1;
# WHATWG URL parsers treat any host whose last label is a number as an IPv4 address. A host like
# that which is not a plain dotted quad is refused, whatever it would resolve to.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")

# Public as far as `ipaddress` (and the Python version) is concerned, but not a place a partner's
# receiver lives: internal, shared, deprecated or special-purpose ranges.
_BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "100.64.0.0/10",  # carrier-grade NAT (shared address space)
        "192.0.0.0/24",  # IETF protocol assignments
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "198.18.0.0/15",  # benchmarking
        "2001::/32",  # Teredo: embeds an (obfuscated) IPv4 address
        "2002::/16",  # 6to4: deprecated (RFC 7526), embeds an IPv4 address
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215), embeds an IPv4 address anywhere
        "3fff::/20",  # documentation (RFC 9637)
    )
)
# The only IPv6 forms judged by the IPv4 address they carry: a mapped address reaches that IPv4
# address directly, and the well-known NAT64 prefix is what DNS64 answers with on IPv6-only hosts.
_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class UnsafeTarget(ValueError):
    """The URL may not receive webhooks; the message says why (and names no address)."""


@dataclass(frozen=True)
class Target:
    """A checked URL and the addresses it resolved to, to connect to by address."""

    scheme: str
    host: str  # lower case, no trailing dot; an IPv6 address without brackets
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]  # canonical IP addresses, in the resolver's order


def _parse_address(raw: str) -> IPAddress | None:
    """The address `raw` spells in canonical notation, or None (a scoped IPv6 address too)."""
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return None
    return address


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return _is_public(embedded)
        # Everything outside 2000::/3 (loopback, unspecified, IPv4-compatible ::/96, ULA
        # fc00::/7, link-local fe80::/10, site-local, multicast ff00::/8...) is refused outright.
        if address not in _IPV6_GLOBAL_UNICAST:
            return False
    if address.is_multicast or not address.is_global:
        return False
    return not any(address in network for network in _BLOCKED_NETWORKS)


def _is_unicast(address: IPAddress) -> bool:
    """Whether a TCP connection to `address` means anything (even to a private address)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return _is_unicast(embedded)
    return not (address.is_unspecified or address.is_multicast or address == _LIMITED_BROADCAST)


def address_is_public(raw: str) -> bool:
    """Whether one IP address is an ordinary public unicast address."""
    address = _parse_address(raw)
    return address is not None and _is_public(address)


def system_resolver(host: str, port: int) -> Sequence[str]:
    """The host's addresses from getaddrinfo, in its order of preference, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _host_literal(host: str) -> IPAddress | None:
    """The IP address `host` is, None for a DNS name, or UnsafeTarget for an odd spelling."""
    address = _parse_address(host)
    if address is not None:
        return address
    if "%" in host or ":" in host:
        raise UnsafeTarget("The URL's host is not a valid IP address.")
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        raise UnsafeTarget("Write an IPv4 address as four decimal numbers, such as 192.0.2.1.")
    if len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in host.split(".")):
        raise UnsafeTarget("The URL's host is not a valid DNS name.")
    return None


def check_url(url: str, *, allow_private: bool, resolver: Resolver = system_resolver) -> Target:
    """The target for `url`, or UnsafeTarget. `allow_private` (demos and tests only) admits
    http and private addresses; nothing admits other schemes, credentials or fragments."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeTarget(f"The URL is longer than {MAX_URL_LENGTH} characters.")
    if not _URL_CHARACTERS.fullmatch(url):
        raise UnsafeTarget(
            "The URL may contain only printable ASCII, without spaces or backslashes "
            "(percent-encode the rest, and write an internationalised name in punycode)."
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise UnsafeTarget("The URL is not valid.") from error
    allowed = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in allowed:
        raise UnsafeTarget(
            "The URL must be http or https." if allow_private else "The URL must be https."
        )
    if "@" in parts.netloc:
        raise UnsafeTarget("The URL must not carry credentials.")
    if "#" in url:
        raise UnsafeTarget("The URL must not have a fragment.")
    host = (parts.hostname or "").removesuffix(".")
    if not host:
        raise UnsafeTarget("The URL has no host.")
    if port == 0:
        raise UnsafeTarget("The URL's port must be between 1 and 65535.")
    port = port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    literal = _host_literal(host)
    if literal is not None:
        host = str(literal)
        answers: Sequence[str] = (host,)
    else:
        try:
            answers = resolver(host, port)
        except (OSError, UnicodeError) as error:
            raise UnsafeTarget("The host name does not resolve.") from error
    addresses = [_parse_address(answer) for answer in answers]
    if not addresses:
        raise UnsafeTarget("The host name does not resolve.")
    if any(address is None for address in addresses):
        raise UnsafeTarget("The host name resolves to something that is not an IP address.")
    checked = [address for address in addresses if address is not None]
    # Every address must pass: with one private answer among public ones, a delivery could be
    # made to reach the private one.
    if not allow_private and not all(_is_public(address) for address in checked):
        raise UnsafeTarget(
            "The URL resolves to a private, loopback, link-local or otherwise internal address."
        )
    if not all(_is_unicast(address) for address in checked):
        raise UnsafeTarget("The URL resolves to an unspecified, multicast or broadcast address.")
    return Target(
        scheme=parts.scheme,
        host=host,
        port=port,
        path=path,
        addresses=tuple(dict.fromkeys(str(address) for address in checked)),
    )
