"""deliver() against real HTTP(S) receivers on loopback: what is sent, where to, and what comes
back (status, redirects, Retry-After, timeouts, refusals, TLS, the response excerpt)."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from casehub.webhooks.targets import Target, check_url
from casehub.webhooks.transport import Outcome, deliver, parse_retry_after

BODY = b'{"id":"evt_1","type":"referral.shared","data":{"referral_id":"r1"}}'
HEADERS = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000", "webhook-signature": "v1,x"}
SHORT = {"connect_timeout": 0.5, "total_timeout": 0.5}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    server: ThreadingHTTPServer
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    server_names: list[str | None] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.server_address[1]


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every handler thread
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that has gone (timeouts, 1 KiB read) is expected here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        receiver.seen.append(Seen("POST", self.path, dict(self.headers.items()), body))
        route = self.path.split("?", 1)[0]
        if route == "/slow":
            receiver.release.wait(5)
            self._reply(200, b"late")
        elif route == "/drip":
            # A status line, then a header one byte at a time: every read succeeds well within
            # any per-read timeout, so only a deadline on the whole delivery stops it.
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Drip: ")
            while not receiver.release.wait(0.05):
                self.wfile.write(b"a")
                self.wfile.flush()
        elif route.startswith("/status/"):
            code = int(route.removeprefix("/status/"))
            headers = {"Location": "/ok"} if 300 <= code < 400 else {}
            self._reply(code, b"", headers)
        elif route == "/busy":
            self._reply(429, b"slow down", {"Retry-After": "120"})
        elif route == "/unavailable":
            later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)
            self._reply(503, b"", {"Retry-After": format_datetime(later, usegmt=True)})
        elif route == "/big":
            self._reply(200, "é".encode() * 40_000)
        elif route == "/binary":
            self._reply(200, b"\xff\xfe ok")
        else:
            self._reply(200, b"thanks")

    def _reply(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def start_receiver() -> Iterator[Callable[..., Receiver]]:
    started: list[tuple[Receiver, threading.Thread]] = []

    def start(
        host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ) -> Receiver:
        _Server.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server = _Server((host, port), _Handler)
        receiver = Receiver(server)
        server.receiver = receiver
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: receiver.server_names.append(name)
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        started.append((receiver, thread))
        return receiver

    yield start
    for receiver, thread in started:
        receiver.release.set()
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join()


@pytest.fixture
def receiver(start_receiver: Callable[..., Receiver]) -> Receiver:
    return start_receiver()


def resolving(zone: dict[str, Sequence[str]]) -> Callable[[str, int], Sequence[str]]:
    """A resolver that knows only `zone`: .test names do not exist in real DNS, so a delivery
    that reaches the receiver went to the checked address, not to a fresh lookup of the name."""

    def resolve(host: str, port: int) -> Sequence[str]:
        if host not in zone:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return zone[host]

    return resolve


def target(receiver: Receiver, path: str = "/ok", *, scheme: str = "http") -> Target:
    return check_url(
        f"{scheme}://receiver.test:{receiver.port}{path}",
        allow_private=True,
        resolver=resolving({"receiver.test": ["127.0.0.1"]}),
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_post_reaches_the_address_with_the_urls_host(receiver: Receiver) -> None:
    outcome = deliver(target(receiver, "/ok?agency=btp"), BODY, HEADERS)

    assert outcome.ok
    assert (outcome.status, outcome.error, outcome.excerpt) == (200, None, "thanks")
    assert outcome.retry_after is None
    [seen] = receiver.seen
    assert (seen.method, seen.path, seen.body) == ("POST", "/ok?agency=btp", BODY)
    assert seen.headers["Host"] == f"receiver.test:{receiver.port}"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Content-Length"] == str(len(BODY))
    for name, value in HEADERS.items():
        assert seen.headers[name] == value


def test_the_transport_owns_host_content_type_and_framing(receiver: Receiver) -> None:
    sneaky = {"Host": "evil.test", "content-type": "text/plain", "Content-Length": "1"}
    assert deliver(target(receiver), BODY, HEADERS | sneaky).ok
    [seen] = receiver.seen
    assert seen.headers["Host"] == f"receiver.test:{receiver.port}"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.body == BODY


@pytest.mark.parametrize("code", [200, 201, 202, 204])
def test_2xx_is_ok(receiver: Receiver, code: int) -> None:
    outcome = deliver(target(receiver, f"/status/{code}"), BODY, HEADERS)
    assert outcome.ok
    assert (outcome.status, outcome.error) == (code, None)


@pytest.mark.parametrize("code", [400, 404, 410, 500, 502])
def test_other_statuses_are_not_ok(receiver: Receiver, code: int) -> None:
    outcome = deliver(target(receiver, f"/status/{code}"), BODY, HEADERS)
    assert not outcome.ok
    assert (outcome.status, outcome.error) == (code, None)


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirects_are_not_followed(receiver: Receiver, code: int) -> None:
    outcome = deliver(target(receiver, f"/status/{code}"), BODY, HEADERS)
    assert not outcome.ok
    assert (outcome.status, outcome.error) == (code, "redirect not followed")
    assert [seen.path for seen in receiver.seen] == [f"/status/{code}"]


def test_retry_after_in_seconds(receiver: Receiver) -> None:
    outcome = deliver(target(receiver, "/busy"), BODY, HEADERS)
    assert (outcome.status, outcome.retry_after, outcome.excerpt) == (429, 120.0, "slow down")


def test_retry_after_as_an_http_date(receiver: Receiver) -> None:
    outcome = deliver(target(receiver, "/unavailable"), BODY, HEADERS)
    assert outcome.status == 503
    assert outcome.retry_after is not None
    assert 88 <= outcome.retry_after <= 90  # the date has whole seconds


NOW = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Sat, 01 Mar 2025 12:01:30 GMT", 90.0),
        ("Sat, 01 Mar 2025 11:00:00 GMT", 0.0),  # in the past: retry now
        ("Saturday, 01-Mar-25 12:00:05 GMT", 5.0),  # RFC 850, which HTTP still allows
        ("Sat Mar  1 12:00:07 2025", 7.0),  # asctime
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


def test_a_receiver_slower_than_the_total_timeout(receiver: Receiver) -> None:
    started = time.monotonic()
    outcome = deliver(target(receiver, "/slow"), BODY, HEADERS, **SHORT)
    elapsed = time.monotonic() - started

    assert (outcome.status, outcome.error, outcome.ok) == (None, "timeout", False)
    assert 0.4 <= elapsed < 1.0
    assert 400 <= outcome.duration_ms < 1000


def test_a_receiver_trickling_bytes_is_cut_off_at_the_total_timeout(receiver: Receiver) -> None:
    started = time.monotonic()
    outcome = deliver(target(receiver, "/drip"), BODY, HEADERS, **SHORT)
    elapsed = time.monotonic() - started

    assert (outcome.status, outcome.error) == (None, "timeout")
    assert 0.4 <= elapsed < 1.0


def test_connection_refused() -> None:
    port = closed_port()
    outcome = deliver(Target("http", "receiver.test", port, "/", ("127.0.0.1",)), BODY, HEADERS)
    assert (outcome.status, outcome.error, outcome.ok) == (None, "connection refused", False)
    assert outcome.duration_ms < 1000


def test_connect_timeout() -> None:
    # A listener whose accept queue is full: Linux drops further SYNs, so connecting hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued: list[socket.socket] = []
        try:
            for _ in range(8):
                client = socket.socket()
                queued.append(client)
                client.settimeout(0.2)
                try:
                    client.connect(("127.0.0.1", port))
                except TimeoutError:
                    break
            else:
                pytest.skip("this kernel accepts connections beyond a full backlog")
            target_ = Target("http", "receiver.test", port, "/", ("127.0.0.1",))
            started = time.monotonic()
            outcome = deliver(target_, BODY, HEADERS, connect_timeout=0.3, total_timeout=2)
            elapsed = time.monotonic() - started
        finally:
            for client in queued:
                client.close()
    assert (outcome.status, outcome.error) == (None, "connect timeout")
    assert 0.25 <= elapsed < 0.8


def test_the_next_address_is_tried_only_when_no_connection_is_made(
    start_receiver: Callable[..., Receiver],
) -> None:
    first = start_receiver("127.0.0.1")
    second = start_receiver("127.0.0.2", first.port)
    refusing = Target("http", "receiver.test", first.port, "/ok", ("127.0.0.3", "127.0.0.2"))
    failing = Target("http", "receiver.test", first.port, "/status/500", ("127.0.0.1", "127.0.0.2"))

    assert deliver(refusing, BODY, HEADERS).ok
    assert [seen.path for seen in second.seen] == ["/ok"]

    assert deliver(failing, BODY, HEADERS).status == 500
    assert [seen.path for seen in first.seen] == ["/status/500"]
    assert [seen.path for seen in second.seen] == ["/ok"]  # not tried again


def test_every_address_refusing() -> None:
    port = closed_port()
    outcome = deliver(Target("http", "h.test", port, "/", ("127.0.0.1", "127.0.0.2")), BODY, {})
    assert outcome.error == "connection refused"


def test_ipv6_host_header(start_receiver: Callable[..., Receiver]) -> None:
    try:
        receiver = start_receiver("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    outcome = deliver(check_url(f"http://[::1]:{receiver.port}/ok", allow_private=True), BODY, {})
    assert outcome.ok
    assert receiver.seen[0].headers["Host"] == f"[::1]:{receiver.port}"


def test_a_large_response_is_cut_to_a_short_excerpt(receiver: Receiver) -> None:
    outcome = deliver(target(receiver, "/big"), BODY, HEADERS)
    assert outcome.ok
    assert outcome.excerpt == "é" * 200


def test_the_excerpt_replaces_bytes_that_are_not_utf8(receiver: Receiver) -> None:
    assert deliver(target(receiver, "/binary"), BODY, HEADERS).excerpt == "\ufffd\ufffd ok"


def test_a_target_without_addresses_is_refused() -> None:
    with pytest.raises(ValueError, match="check_url"):
        deliver(Target("https", "example.test", 443, "/", ()), BODY, HEADERS)


def test_outcome_ok_needs_a_2xx_status() -> None:
    assert Outcome(status=299, error=None, duration_ms=1).ok
    assert not Outcome(status=300, error="redirect not followed", duration_ms=1).ok
    assert not Outcome(status=None, error="timeout", duration_ms=1).ok


# --- https: a throwaway CA and a certificate for receiver.test ---


@dataclass(frozen=True)
class Pki:
    ca_file: str
    server: ssl.SSLContext


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder: Path = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("casehub test CA"))
        .issuer_name(_name("casehub test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("receiver.test"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("receiver.test")]), False)
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = folder / "server.pem"
    chain.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + certificate.public_bytes(serialization.Encoding.PEM)
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(chain)
    return Pki(ca_file=str(ca_file), server=server)


@pytest.fixture
def https_receiver(start_receiver: Callable[..., Receiver], pki: Pki) -> Receiver:
    return start_receiver(tls=pki.server)


def https_target(receiver: Receiver, host: str) -> Target:
    return check_url(
        f"https://{host}:{receiver.port}/ok",
        allow_private=True,
        resolver=resolving({host: ["127.0.0.1"]}),
    )


def test_https_sends_sni_and_verifies_the_urls_host(https_receiver: Receiver, pki: Pki) -> None:
    target_ = https_target(https_receiver, "receiver.test")
    outcome = deliver(target_, BODY, HEADERS, ca_file=pki.ca_file)

    assert (outcome.status, outcome.error) == (200, None)
    assert https_receiver.server_names == ["receiver.test"]
    assert https_receiver.seen[0].headers["Host"] == f"receiver.test:{https_receiver.port}"


def test_https_refuses_a_certificate_for_another_name(https_receiver: Receiver, pki: Pki) -> None:
    target_ = https_target(https_receiver, "other.test")
    outcome = deliver(target_, BODY, HEADERS, ca_file=pki.ca_file)

    assert outcome.status is None
    assert outcome.error is not None
    assert outcome.error.startswith("tls: certificate verify failed (Hostname mismatch")
    assert https_receiver.seen == []


def test_https_trusts_the_system_store_by_default(https_receiver: Receiver) -> None:
    outcome = deliver(https_target(https_receiver, "receiver.test"), BODY, HEADERS)

    assert outcome.status is None
    assert (
        outcome.error == "tls: certificate verify failed (unable to get local issuer certificate)"
    )
    assert https_receiver.seen == []
