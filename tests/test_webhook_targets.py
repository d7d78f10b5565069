"""Which webhook URLs are refused (SSRF) and which admitted, with a fake resolver (no real DNS)."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import pytest

from casehub.webhooks.targets import Target, UnsafeTarget, address_is_public, check_url

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"

ZONE = {
    "example.test": [PUBLIC_V4],
    "dual.test": [PUBLIC_V6, PUBLIC_V4],
    "v6.test": [PUBLIC_V6],
    "repeats.test": [PUBLIC_V4, PUBLIC_V4],
    "localhost": ["127.0.0.1", "::1"],
    "intranet.test": ["10.1.2.3"],
    "router.test": ["192.168.0.1"],
    "docker.test": ["172.17.0.2"],
    "loopback.test": ["127.0.0.1"],
    "v6-loopback.test": ["::1"],
    "metadata.test": ["169.254.169.254"],
    "aws-v6-metadata.test": ["fd00:ec2::254"],
    "link-local6.test": ["fe80::1"],
    "ula.test": ["fd12:3456:789a::1"],
    "cgnat.test": ["100.64.0.1"],
    "zero.test": ["0.0.0.0"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "nat64-metadata.test": ["64:ff9b::a9fe:a9fe"],
    "multicast.test": ["224.0.0.1"],
    # one public and one private answer: a rebinding-friendly name
    "mixed.test": [PUBLIC_V4, "10.0.0.1"],
    "mixed6.test": [PUBLIC_V6, "::1"],
    "scoped.test": ["fe80::1%eth0"],
    "not-an-address.test": ["localhost"],
    "empty.test": [],
}


class FakeResolver:
    """Answers from ZONE and remembers what it was asked; an unknown name does not resolve."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        if host not in ZONE:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return ZONE[host]


def check(url: str, *, allow_private: bool = False) -> Target:
    return check_url(url, allow_private=allow_private, resolver=FakeResolver())


REFUSED = [
    # schemes
    ("http://example.test/hook", "must be https"),
    ("HTTP://example.test/hook", "must be https"),
    ("file:///etc/passwd", "must be https"),
    ("ftp://example.test/hook", "must be https"),
    ("gopher://example.test:70/_", "must be https"),
    ("javascript:alert(1)", "must be https"),
    ("data:text/plain,hello", "must be https"),
    ("ws://example.test/", "must be https"),
    ("wss://example.test/", "must be https"),
    ("dict://example.test:11211/", "must be https"),
    ("ldap://example.test/", "must be https"),
    ("//example.test/hook", "must be https"),
    ("example.test/hook", "must be https"),
    ("", "must be https"),
    # credentials, fragments, no host, ports
    ("https://user:secret@example.test/", "credentials"),
    ("https://user@example.test/", "credentials"),
    ("https://@example.test/", "credentials"),
    ("https://example.test:443@10.0.0.1/", "credentials"),
    ("https://example.test/hook#part", "fragment"),
    ("https://example.test/hook#", "fragment"),
    ("https:///hook", "no host"),
    ("https://:443/hook", "no host"),
    ("https://example.test:0/", "port"),
    ("https://example.test:65536/", "not valid"),
    ("https://example.test:https/", "not valid"),
    # spellings that urlsplit or a browser would rewrite
    ("https://example.test/a b", "printable ASCII"),
    ("https://exa\tmple.test/", "printable ASCII"),
    ("https://example.test/\r\nX-Injected: 1", "printable ASCII"),
    ("https://example.test\\@10.0.0.1/", "printable ASCII"),
    ("https://bücher.test/", "printable ASCII"),
    ("https://[10.0.0.1]/", "not valid"),
    ("https://[fe80::1%25eth0]/", "not a valid IP address"),
    ("https://exa$mple.test/", "not a valid DNS name"),
    ("https://example..test/", "not a valid DNS name"),
    ("https://" + "a" * 64 + ".test/", "not a valid DNS name"),
    ("https://example.test/" + "a" * 2000, "longer than"),
    # IPv4 spellings that inet_aton (and so getaddrinfo) reads as an address
    ("https://2130706433/", "four decimal numbers"),  # 127.0.0.1
    ("https://0x7f000001/", "four decimal numbers"),
    ("https://0x7f.1/", "four decimal numbers"),
    ("https://017700000001/", "four decimal numbers"),
    ("https://0177.0.0.1/", "four decimal numbers"),
    ("https://127.1/", "four decimal numbers"),
    ("https://127.0.1/", "four decimal numbers"),
    ("https://127.0.0.01/", "four decimal numbers"),
    ("https://0x7f.0x0.0x0.0x1/", "four decimal numbers"),
    ("https://10.1/", "four decimal numbers"),
    ("https://3232235777/", "four decimal numbers"),  # 192.168.1.1
    ("https://2852039166/", "four decimal numbers"),  # 169.254.169.254
    ("https://134744072/", "four decimal numbers"),  # 8.8.8.8: the spelling is refused anyway
    ("https://2130706433./", "four decimal numbers"),
    ("https://1.2.3.4.5/", "four decimal numbers"),
    ("https://example.0x10/", "four decimal numbers"),
]

INTERNAL_V4 = [
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",  # cloud metadata
    "169.254.0.1",
    "0.0.0.0",
    "0.1.2.3",
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "192.0.0.9",
    "192.0.2.1",  # documentation
    "198.51.100.1",
    "203.0.113.1",
    "198.18.0.1",  # benchmarking
    "192.88.99.1",  # 6to4 relay anycast
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "255.255.255.255",
]

INTERNAL_V6 = [
    "::1",
    "::",
    "fe80::1",
    "febf::1",
    "fec0::1",  # site-local (deprecated)
    "fc00::1",
    "fd12:3456:789a::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "ff02::1",
    "ff0e::1",  # global-scope multicast
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:0.0.0.0",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "::8.8.8.8",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::808:808",  # local-use NAT64
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:808:808::1",  # 6to4 of 8.8.8.8: deprecated, refused whatever it embeds
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:db8::1",  # documentation
    "3fff::1",
    "100::1",  # discard-only
    "4000::1",  # outside 2000::/3: unallocated
]

INTERNAL_NAMES = [
    "localhost",
    "intranet.test",
    "router.test",
    "docker.test",
    "loopback.test",
    "v6-loopback.test",
    "metadata.test",
    "aws-v6-metadata.test",
    "link-local6.test",
    "ula.test",
    "cgnat.test",
    "zero.test",
    "mapped.test",
    "nat64-metadata.test",
    "multicast.test",
    "mixed.test",
    "mixed6.test",
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_refused_urls(url: str, reason: str) -> None:
    with pytest.raises(UnsafeTarget, match=reason):
        check(url)


@pytest.mark.parametrize("address", INTERNAL_V4)
def test_internal_ipv4_literals_are_refused(address: str) -> None:
    assert not address_is_public(address)
    with pytest.raises(UnsafeTarget, match="internal address"):
        check(f"https://{address}/hook")


@pytest.mark.parametrize("address", INTERNAL_V6)
def test_internal_ipv6_literals_are_refused(address: str) -> None:
    assert not address_is_public(address)
    with pytest.raises(UnsafeTarget, match="internal address"):
        check(f"https://[{address}]/hook")


@pytest.mark.parametrize("name", INTERNAL_NAMES)
def test_names_resolving_to_an_internal_address_are_refused(name: str) -> None:
    with pytest.raises(UnsafeTarget, match="internal address"):
        check(f"https://{name}/hook")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://nowhere.test/", "does not resolve"),
        ("https://empty.test/", "does not resolve"),
        ("https://not-an-address.test/", "not an IP address"),
        ("https://scoped.test/", "not an IP address"),
    ],
)
def test_names_without_a_usable_answer_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeTarget, match=reason):
        check(url)


def test_an_ip_literal_is_not_sent_to_the_resolver() -> None:
    resolver = FakeResolver()
    check_url("https://1.1.1.1/", allow_private=False, resolver=resolver)
    with pytest.raises(UnsafeTarget):
        check_url("https://[::ffff:127.0.0.1]/", allow_private=False, resolver=resolver)
    assert resolver.asked == []


def test_the_resolver_is_asked_for_the_host_and_port() -> None:
    resolver = FakeResolver()
    check_url("https://Example.TEST.:8443/x", allow_private=False, resolver=resolver)
    assert resolver.asked == [("example.test", 8443)]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.test/hook", Target("https", "example.test", 443, "/hook", (PUBLIC_V4,))),
        ("https://example.test", Target("https", "example.test", 443, "/", (PUBLIC_V4,))),
        ("https://example.test?a=1", Target("https", "example.test", 443, "/?a=1", (PUBLIC_V4,))),
        (
            "HTTPS://Example.TEST.:8443/hooks/casehub?agency=btp&v=2",
            Target("https", "example.test", 8443, "/hooks/casehub?agency=btp&v=2", (PUBLIC_V4,)),
        ),
        (
            "https://example.test/a%20b/%E2%9C%93",
            Target("https", "example.test", 443, "/a%20b/%E2%9C%93", (PUBLIC_V4,)),
        ),
        ("https://v6.test/", Target("https", "v6.test", 443, "/", (PUBLIC_V6,))),
        ("https://dual.test/", Target("https", "dual.test", 443, "/", (PUBLIC_V6, PUBLIC_V4))),
        ("https://repeats.test/", Target("https", "repeats.test", 443, "/", (PUBLIC_V4,))),
        ("https://1.1.1.1/", Target("https", "1.1.1.1", 443, "/", ("1.1.1.1",))),
        (
            "https://[2606:4700:4700:0:0:0:0:1111]:8443/",
            Target("https", "2606:4700:4700::1111", 8443, "/", ("2606:4700:4700::1111",)),
        ),
        # IPv4-mapped and well-known NAT64 (DNS64) addresses are as public as what they embed
        (
            "https://[::ffff:8.8.8.8]/",
            Target("https", "::ffff:808:808", 443, "/", ("::ffff:808:808",)),
        ),
        (
            "https://[64:ff9b::808:808]/",
            Target("https", "64:ff9b::808:808", 443, "/", ("64:ff9b::808:808",)),
        ),
    ],
)
def test_public_urls_are_admitted(url: str, expected: Target) -> None:
    assert check(url) == expected


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", PUBLIC_V4, PUBLIC_V6, "2a00:1450::1"])
def test_public_addresses(address: str) -> None:
    assert address_is_public(address)


@pytest.mark.parametrize("raw", ["", "localhost", "127.1", "2130706433", "fe80::1%eth0", "1.2.3"])
def test_an_address_that_does_not_parse_strictly_is_not_public(raw: str) -> None:
    assert not address_is_public(raw)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8025/hook", Target("http", "127.0.0.1", 8025, "/hook", ("127.0.0.1",))),
        ("http://[::1]:8025/", Target("http", "::1", 8025, "/", ("::1",))),
        (
            "http://localhost:8025/",
            Target("http", "localhost", 8025, "/", ("127.0.0.1", "::1")),
        ),
        ("https://intranet.test/", Target("https", "intranet.test", 443, "/", ("10.1.2.3",))),
        (
            "http://metadata.test/",
            Target("http", "metadata.test", 80, "/", ("169.254.169.254",)),
        ),
        ("https://mixed.test/", Target("https", "mixed.test", 443, "/", (PUBLIC_V4, "10.0.0.1"))),
        ("https://example.test/", Target("https", "example.test", 443, "/", (PUBLIC_V4,))),
    ],
)
def test_allow_private_admits_http_and_private_addresses(url: str, expected: Target) -> None:
    assert check(url, allow_private=True) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "must be http or https"),
        ("ftp://127.0.0.1/", "must be http or https"),
        ("gopher://127.0.0.1:6379/_", "must be http or https"),
        ("http://user:secret@127.0.0.1:8025/", "credentials"),
        ("http://127.0.0.1:8025/#x", "fragment"),
        ("http://2130706433:8025/", "four decimal numbers"),
        ("http://0x7f.1:8025/", "four decimal numbers"),
        ("http://0.0.0.0:8025/", "unspecified, multicast or broadcast"),
        ("http://[::]:8025/", "unspecified, multicast or broadcast"),
        ("http://[::ffff:0.0.0.0]:8025/", "unspecified, multicast or broadcast"),
        ("http://zero.test:8025/", "unspecified, multicast or broadcast"),
        ("http://224.0.0.1/", "unspecified, multicast or broadcast"),
        ("http://[ff02::1]/", "unspecified, multicast or broadcast"),
        ("http://255.255.255.255/", "unspecified, multicast or broadcast"),
        ("http://nowhere.test/", "does not resolve"),
        ("http://not-an-address.test/", "not an IP address"),
    ],
)
def test_allow_private_still_refuses(url: str, reason: str) -> None:
    with pytest.raises(UnsafeTarget, match=reason):
        check(url, allow_private=True)


def test_the_message_names_no_address() -> None:
    with pytest.raises(UnsafeTarget) as refused:
        check("https://mixed.test/")
    assert "10.0.0.1" not in str(refused.value)
    assert PUBLIC_V4 not in str(refused.value)
