"""One webhook POST to a Target from check_url, connecting to the address check_url returned.

The worker calls check_url again at delivery time (that is when the name is resolved) and then
deliver, which connects to the checked address itself and never resolves the name again, so a DNS
answer that changes between the check and the connection (rebinding) cannot move a delivery to
another address. The URL's host goes in the Host header and, for https, in TLS SNI and the
certificate check. Redirects are never followed (a 3xx is a failure), nothing is retried here,
at most 1 KiB of the response is read, and total_timeout is a hard deadline for the whole delivery.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import re
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError
from urllib3.response import BaseHTTPResponse

from casehub.webhooks.targets import Target

MAX_RESPONSE_BYTES = 1024
MAX_EXCERPT_CHARS = 200
# Framing and routing are the transport's to decide, whatever the caller passes.
_TRANSPORT_HEADERS = frozenset(
    {"host", "content-type", "content-length", "transfer-encoding", "connection"}
)
_DEFAULT_PORTS = {"https": 443, "http": 80}
_DELTA_SECONDS = re.compile(r"[0-9]+")
_CONNECT_ERRORS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ECONNRESET: "connection reset",
}


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt came to, as the deliveries log records it."""

    status: int | None
    error: str | None  # short, and names no address the URL does not
    duration_ms: int
    retry_after: float | None = None  # seconds, from a Retry-After header
    excerpt: str = ""  # the start of the response body

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class _Deadline:
    """Shuts the current connection's socket down when the delivery's time is up. Socket
    timeouts apply to each read, so without this a receiver trickling a byte at a time could
    hold a worker far beyond total_timeout (and past its lease on the outbox row)."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.expired = threading.Event()
        self._connection: HTTPConnection | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def met(self) -> bool:
        """Whether the deadline has not passed; asked once the response's head is read, since
        http.client takes the end of the stream that the shutdown causes for the end of the
        headers (a trickled response would otherwise pass for a complete one)."""
        with self._lock:
            return not self.expired.is_set()

    def watch(self, connection: HTTPConnection) -> None:
        with self._lock:
            self._connection = connection

    def _expire(self) -> None:
        with self._lock:
            self.expired.set()
            sock = self._connection.sock if self._connection is not None else None
            if sock is not None:
                # socket.socket's own shutdown, not SSLSocket's, which would also drop its SSL
                # object from under the thread that is reading.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Joined before any socket is closed, so the timer never shuts down a reused descriptor.
        self._timer.cancel()
        self._timer.join()


def deliver(
    target: Target,
    body: bytes,
    headers: Mapping[str, str],
    *,
    connect_timeout: float = 5.0,
    total_timeout: float = 15.0,
    ca_file: str | None = None,
) -> Outcome:
    """POST `body` to `target` by its checked address. `ca_file` replaces the system's trusted
    certificates (for tests); the default verifies against the system store."""
    if not target.addresses:
        raise ValueError("The target has no checked address: call check_url first.")
    request_headers = {
        name: value for name, value in headers.items() if name.lower() not in _TRANSPORT_HEADERS
    }
    request_headers |= {
        "Host": _host_header(target),
        "Content-Type": "application/json",
        "Connection": "close",
    }
    started = time.monotonic()
    connections: list[HTTPConnection] = []
    response: BaseHTTPResponse | None = None
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    excerpt = ""
    try:
        with _Deadline(total_timeout) as deadline:
            try:
                connection = _connect(target, deadline, connections, connect_timeout, ca_file)
                connection.timeout = max(deadline.remaining(), 0.001)
                connection.request(
                    "POST",
                    target.path,
                    body=body,
                    headers=request_headers,
                    preload_content=False,
                    decode_content=False,
                )
                response = connection.getresponse()
                if not deadline.met():
                    raise TimeoutError("the response's head came too late")
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                excerpt = _read_excerpt(response)
            except (OSError, HTTPError, http.client.HTTPException) as failure:
                error = "timeout" if deadline.expired.is_set() else _describe(failure)
    finally:
        if response is not None:
            response.close()
        for opened in connections:
            opened.close()
    if status is not None and 300 <= status < 400:
        error = "redirect not followed"
    return Outcome(
        status=status,
        error=error,
        duration_ms=round((time.monotonic() - started) * 1000),
        retry_after=retry_after,
        excerpt=excerpt,
    )


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP-date), or None."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port == _DEFAULT_PORTS[target.scheme] else f"{host}:{target.port}"


def _connect(
    target: Target,
    deadline: _Deadline,
    connections: list[HTTPConnection],
    connect_timeout: float,
    ca_file: str | None,
) -> HTTPConnection:
    """A connection to the first address that accepts one; the next is tried only when a
    connection cannot be made at all (a TLS or HTTP failure is the receiver's answer)."""
    failure: ConnectTimeoutError | None = None
    for address in target.addresses:
        remaining = deadline.remaining()
        if remaining <= 0:
            break
        timeout = min(connect_timeout, remaining)
        connection: HTTPConnection
        if target.scheme == "https":
            connection = HTTPSConnection(
                address,
                target.port,
                timeout=timeout,
                server_hostname=target.host,
                cert_reqs="CERT_REQUIRED",
                ca_certs=ca_file,
            )
        else:
            connection = HTTPConnection(address, target.port, timeout=timeout)
        connections.append(connection)
        deadline.watch(connection)
        try:
            connection.connect()
        except ConnectTimeoutError as error:  # and its subclass NewConnectionError (refused...)
            failure = error
            continue
        return connection
    if failure is None:
        raise TimeoutError("no time left to connect")
    raise failure


def _read_excerpt(response: BaseHTTPResponse) -> str:
    try:
        data = response.read(MAX_RESPONSE_BYTES, decode_content=False)
    except (OSError, HTTPError, http.client.HTTPException):
        return ""  # the status has arrived; a broken body changes nothing
    return data.decode("utf-8", errors="replace")[:MAX_EXCERPT_CHARS]


def _describe(failure: BaseException) -> str:
    """A short reason for the deliveries log; exception texts are not used, as they name the
    address connected to."""
    if isinstance(failure, NewConnectionError):
        cause = failure.__cause__
        if isinstance(cause, OSError) and cause.errno in _CONNECT_ERRORS:
            return _CONNECT_ERRORS[cause.errno]
        return "connection failed"
    if isinstance(failure, ConnectTimeoutError):
        return "connect timeout"
    if isinstance(failure, ssl.SSLCertVerificationError):
        reason = failure.verify_message or "certificate verify failed"
        return f"tls: certificate verify failed ({reason})"
    if isinstance(failure, ssl.SSLError):
        reason = (failure.reason or "handshake failed").lower().replace("_", " ")
        return f"tls: {reason}"
    if isinstance(failure, TimeoutError):
        return "timeout"
    if isinstance(failure, http.client.RemoteDisconnected):
        return "connection closed without a response"
    if isinstance(failure, http.client.HTTPException):
        return "invalid HTTP response"
    if isinstance(failure, ConnectionError):
        return "connection reset"
    return "connection failed"
