"""Fault injection for tests that run casehub against PostgreSQL: a private PostgreSQL cluster
the test may kill and restart (never the shared server other tests use), and a recorded load of
partner calls driven at a live server while it does."""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.helpers import referral_body

PG_BIN = Path(os.environ.get("CASEHUB_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_OWNER = "postgres"  # initdb and the server refuse to run as root


def postgres_missing() -> str | None:
    """Why a private cluster cannot be started here, or None when it can."""
    for tool in ("initdb", "pg_ctl", "pg_isready"):
        if not (PG_BIN / tool).is_file():
            return f"{PG_BIN / tool} is missing"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "runuser is missing (needed to run PostgreSQL as a non-root user)"
        try:
            pwd.getpwnam(PG_OWNER)
        except KeyError:
            return f"there is no {PG_OWNER!r} OS user to run PostgreSQL as"
    return None


class PrivatePostgres:
    """A throw-away PostgreSQL cluster in a temporary folder, on its own port and unix-socket
    folder. Durability settings are left at their defaults (fsync and synchronous_commit on):
    what it acknowledges must survive its restarts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="casehub-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam(PG_OWNER)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as_owner = ["runuser", "-u", PG_OWNER, "--"]
        # Nothing from the caller's environment (PGDATA, PGPORT...) may point elsewhere.
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self._env["LC_ALL"] = "C"

    # -- the server ----------------------------------------------------------------------------
    def _pg(self, tool: str, *args: str, timeout: float = 60) -> str:
        result = subprocess.run(
            [*self._as_owner, str(PG_BIN / tool), *args],
            cwd=self.root,
            env=self._env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} exited {result.returncode}: "
                f"{result.stdout}{result.stderr}\n{self.log_tail()}"
            )
        return result.stdout

    def init(self) -> None:
        self._pg(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-instructions",
        )

    def start(self) -> None:
        """Start and wait until it accepts connections (after crash recovery, if any)."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
            " -c max_connections=60 -c shared_buffers=32MB"
        )
        self._pg(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60",
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """`fast` rolls back open transactions and checkpoints; `immediate` is a crash (the next
        start replays the WAL)."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def is_ready(self) -> bool:
        result = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            env=self._env,
            capture_output=True,
            timeout=10,
            check=False,
        )
        return result.returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        )

    def create_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def terminate_backends(
        self, database: str, *, using: psycopg.Connection[Any] | None = None
    ) -> int:
        """pg_terminate_backend every session on `database` (through `using`, a connection
        opened earlier, or a new one); returns how many were ended."""
        with contextlib.ExitStack() as stack:
            conn = using if using is not None else stack.enter_context(self.connect())
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).fetchone()
        return int(row[0]) if row else 0

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The postmaster stopped with SIGSTOP: the kernel still accepts TCP connections on its
        port, but nobody answers them, like a hung host or a dead path behind a proxy. Sessions
        already open keep working."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def destroy(self) -> None:
        """Stop the server however it can be stopped, and delete its files."""
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


# -- the load ----------------------------------------------------------------------------------
@dataclass
class Call:
    """One HTTP exchange as the client saw it (times from time.monotonic())."""

    kind: str  # write, read, list, token
    started: float
    ended: float
    status: int | None = None
    retry_after: str | None = None
    error: str | None = None  # the transport error, when there was no response
    key: str | None = None
    referral_id: str | None = None
    replayed: bool = False
    request_id: str | None = None


@dataclass
class Load:
    """Partner systems calling casehub at once: writers each raise referrals one after another
    (one Idempotency-Key and a distinct summary each), retrying the same key after a 503, a
    409 or a failed exchange until it is answered 201, as a partner honouring Retry-After
    would (faster, to keep the pressure on); readers list, fetch acknowledged referrals and
    take tokens. Every exchange is recorded."""

    base_url: str
    client_id: str
    client_secret: str
    timeout: float
    retry_pause: float = 0.1
    drain_within: float = 30.0
    calls: list[Call] = field(default_factory=list)
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)  # key: body
    acknowledged: dict[str, str] = field(default_factory=dict)  # key: referral id
    abandoned: list[str] = field(default_factory=list)  # keys given up on, and why
    mismatched: list[str] = field(default_factory=list)  # reads that disagreed with a write
    crashes: list[str] = field(default_factory=list)  # a load thread's own failures

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stopped_at = 0.0
        self._threads: list[threading.Thread] = []

    # -- running -------------------------------------------------------------------------------
    def start(self, *, writers: int, readers: int) -> None:
        tokens = [self.token() for _ in range(writers + readers)]
        bodies: list[Callable[[str], None]] = [self._writer] * writers + [self._reader] * readers
        for n, (body, token) in enumerate(zip(bodies, tokens, strict=True)):
            thread = threading.Thread(target=self._guard, args=(body, token), name=f"load-{n}")
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop starting new work; writers finish the key they hold, then every thread ends."""
        self._stopped_at = time.monotonic()
        self._stop.set()
        for thread in self._threads:
            thread.join(self.drain_within + 2 * self.timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            self.crashes.append(f"load threads still running: {alive}")

    def _guard(self, body: Callable[[str], None], token: str) -> None:
        try:
            body(token)
        except Exception:  # recorded and failed on by the test, never a thread warning
            self.crashes.append(traceback.format_exc())

    def token(self) -> str:
        response = httpx.post(
            f"{self.base_url}/oauth/token",
            data={"grant_type": "client_credentials", "scope": "referrals:read referrals:write"},
            auth=(self.client_id, self.client_secret),
            timeout=self.timeout,
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    def _exchange(
        self, http: httpx.Client, kind: str, method: str, url: str, **kwargs: Any
    ) -> tuple[Call, httpx.Response | None]:
        started = time.monotonic()
        response: httpx.Response | None = None
        error: str | None = None
        try:
            response = http.request(method, url, **kwargs)
        except httpx.TimeoutException:
            error = "timeout"
        except httpx.TransportError as exc:
            error = type(exc).__name__
        ended = time.monotonic()
        if ended - started > self.timeout:
            error = "timeout"  # httpx times each phase; the whole exchange must fit too
        call = Call(kind, started, ended, error=error)
        if response is not None:
            call.status = response.status_code
            call.retry_after = response.headers.get("Retry-After")
            call.request_id = response.headers.get("X-Request-Id")
        with self._lock:
            self.calls.append(call)
        return call, response

    def _client(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            timeout=self.timeout,
            headers={"Authorization": f"Bearer {token}"},
        )

    # -- writers -------------------------------------------------------------------------------
    def _writer(self, token: str) -> None:
        with self._client(token) as http:
            while not self._stop.is_set():
                key = uuid.uuid4().hex
                body = referral_body(
                    summary=f"Fault run referral {key}",
                    narrative=f"Raised under load; its key is {key}.",
                    risk_level=random.choice(["low", "medium", "high"]),
                )
                with self._lock:
                    self.sent[key] = body
                self._write_until_answered(http, key, body)

    def _write_until_answered(self, http: httpx.Client, key: str, body: dict[str, Any]) -> None:
        while True:
            call, response = self._exchange(
                http, "write", "POST", "/v1/referrals", json=body, headers={"Idempotency-Key": key}
            )
            call.key = key
            if response is not None and call.status == 201:
                call.referral_id = str(response.json()["id"])
                call.replayed = response.headers.get("Idempotent-Replayed") == "true"
                with self._lock:
                    known = self.acknowledged.setdefault(key, call.referral_id)
                if known != call.referral_id:
                    self.mismatched.append(f"key {key} answered {known} then {call.referral_id}")
                return
            retryable = call.status in (503, 409) or call.status is None
            if not retryable:
                self.abandoned.append(f"{key}: {call.status}")
                return
            if self._stop.is_set() and time.monotonic() > self._stopped_at + self.drain_within:
                self.abandoned.append(f"{key}: still {call.status or call.error} when draining")
                return
            time.sleep(self.retry_pause)

    # -- readers -------------------------------------------------------------------------------
    def _reader(self, token: str) -> None:
        with self._client(token) as http:
            turn = 0
            while not self._stop.is_set():
                turn += 1
                self._exchange(http, "list", "GET", "/v1/referrals", params={"limit": 5})
                with self._lock:
                    written = list(self.acknowledged.items())
                if written:
                    key, referral_id = random.choice(written)
                    call, response = self._exchange(
                        http, "read", "GET", f"/v1/referrals/{referral_id}"
                    )
                    call.key, call.referral_id = key, referral_id
                    got = response.json() if response is not None and call.status == 200 else None
                    if got is not None and got["summary"] != self.sent[key]["summary"]:
                        self.mismatched.append(f"{referral_id} read back another summary")
                if turn % 10 == 0:
                    self._exchange(
                        http,
                        "token",
                        "POST",
                        "/oauth/token",
                        data={"grant_type": "client_credentials", "scope": "referrals:read"},
                        auth=(self.client_id, self.client_secret),  # replaces the bearer
                    )
                time.sleep(0.05)
