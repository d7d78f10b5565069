"""Shared by the audit benchmarks: run casehub under gunicorn (deploy/gunicorn.conf.py) on
127.0.0.1, register a partner system, fetch tokens, and read a process's memory high-water mark.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]


RATE_LIMITS = (
    "RATE_LIMIT_READ",
    "RATE_LIMIT_WRITE",
    "RATE_LIMIT_SEARCH",
    "RATE_LIMIT_AUDIT",
    "RATE_LIMIT_PUBLIC",
)


def casehub_env(database_url: str, port: int, workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CASEHUB_DATABASE_URL=database_url,
        CASEHUB_ISSUER=f"http://127.0.0.1:{port}",
        CASEHUB_SIGNING_KEYS_FILE=str(workdir / "signing-keys.json"),
        CASEHUB_AUDIT_CHECKPOINT_KEY_FILE=str(workdir / "audit-key.pem"),
        CASEHUB_CLIENT_SECRET_SCRYPT_N="1024",
        CASEHUB_ACCESS_LOG="",
        CASEHUB_LOG_LEVEL="warning",
    )
    # One client making thousands of requests a minute is the point of a load test: its limits
    # are set out of reach (the limiter still counts every request).
    env.update({f"CASEHUB_{key}": "100000000/minute" for key in RATE_LIMITS})
    return env


@contextmanager
def gunicorn(
    app: str, env: dict[str, str], port: int, *, workers: int, threads: int
) -> Iterator[Server]:
    env = dict(env)
    env.update(
        CASEHUB_BIND=f"127.0.0.1:{port}",
        CASEHUB_WORKERS=str(workers),
        CASEHUB_THREADS=str(threads),
        CASEHUB_TIMEOUT="600",
    )
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "deploy" / "gunicorn.conf.py"),
        app,
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    server = Server(port, process, env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = server.connection()
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("gunicorn did not come up")
            time.sleep(0.2)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def register_client(
    env: dict[str, str], agency: str, scopes: str, *, platform: bool
) -> tuple[str, str]:
    """Create (or reuse) an agency and a new client in the database the server uses."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        from casehub import create_app
        from casehub.db import session_scope
        from casehub.models import Agency
        from casehub.services import agencies

        app = create_app()
        with app.app_context(), session_scope() as session:
            if session.get(Agency, agency) is None:
                agencies.add_agency(
                    session, code=agency, name=agency.title(), kind="other", is_platform=platform
                )
            client, secret = agencies.add_client(
                session, agency_code=agency, name="bench", scope=scopes, scrypt_n=1024
            )
            assert secret is not None
            return client.client_id, secret
    finally:
        os.environ.clear()
        os.environ.update(saved)


def token(server: Server, client_id: str, secret: str) -> str:
    return token_over(server.connection(), client_id, secret)


def token_over(conn: http.client.HTTPConnection, client_id: str, secret: str) -> str:
    """A client_credentials access token from /oauth/token over `conn`."""
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    conn.request(
        "POST",
        "/oauth/token",
        body=urllib.parse.urlencode({"grant_type": "client_credentials"}),
        headers={
            "Authorization": f"Basic {basic}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 200, body
    return str(body["access_token"])


def peak_rss_mb(pid: int) -> float:
    """The process's resident-memory high-water mark (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="casehub-bench-"))
