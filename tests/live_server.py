"""casehub served by gunicorn as in production, on a fresh database of its own, seeded with the
`casehub` command: for tests that talk to it over real HTTP from outside the process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the virtualenv running the tests has casehub and gunicorn
READY_WITHIN = 30.0  # seconds
STOP_WITHIN = 10.0


@contextmanager
def fresh_database(folder: Path, label: str = "live") -> Iterator[str]:
    """A new empty database: on the PostgreSQL server named by CASEHUB_TEST_DATABASE_URL
    (dropped afterwards, whoever is still connected), else a SQLite file in `folder`."""
    base = os.environ.get("CASEHUB_TEST_DATABASE_URL")
    if not base:
        yield f"sqlite:///{folder / f'casehub-{label}.db'}"
        return
    url = make_url(base)
    name = f"casehub_{label}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_environment(folder: Path, database_url: str, port: int) -> dict[str, str]:
    """What the server and the `casehub` command both run with, so they share keys and data."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASEHUB_")}
    env.update(
        {
            "CASEHUB_ENV": "development",
            "CASEHUB_BIND": f"127.0.0.1:{port}",
            "CASEHUB_WORKERS": "2",
            "CASEHUB_DATABASE_URL": database_url,
            "CASEHUB_ISSUER": f"http://127.0.0.1:{port}",
            "CASEHUB_SIGNING_KEYS_FILE": str(folder / "signing-keys.json"),
            "CASEHUB_AUDIT_CHECKPOINT_KEY_FILE": str(folder / "audit-checkpoint-key.pem"),
            "CASEHUB_CLIENT_SECRET_SCRYPT_N": "1024",  # a cheap hash: nothing here is secret
            "CASEHUB_WEBHOOK_KEY_FILE": str(folder / "webhook-key"),
            "CASEHUB_WEBHOOKS_ALLOW_PRIVATE": "1",  # receivers in tests listen on loopback
        }
    )
    return env


class CommandFailed(AssertionError):
    pass


def casehub(env: dict[str, str], *commands: Sequence[str]) -> list[str]:
    """Run `casehub` commands side by side (each costs ~1 s, mostly imports) and return what
    each printed, in order. Commands in one call must not depend on each other."""
    processes = [
        subprocess.Popen(
            [str(BIN / "casehub"), *command],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    outputs = [process.communicate(timeout=60) for process in processes]
    for command, process, (_, err) in zip(commands, processes, outputs, strict=True):
        if process.returncode != 0:
            raise CommandFailed(f"casehub {' '.join(command)} exited {process.returncode}: {err}")
    return [out for out, _ in outputs]


def casehub_json(env: dict[str, str], *commands: Sequence[str]) -> list[dict[str, str]]:
    return [json.loads(out) for out in casehub(env, *commands)]


@dataclass
class LiveServer:
    base_url: str
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/oauth/token"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def gunicorn(env: dict[str, str], folder: Path) -> Iterator[LiveServer]:
    """`gunicorn -c deploy/gunicorn.conf.py wsgi:app`, ready when /readyz says so; stopped with
    SIGTERM (then SIGKILL to its process group) on the way out."""
    log = folder / "gunicorn.log"
    metrics = folder / "metrics"  # the workers' prometheus counters; gunicorn.conf.py creates it
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", str(REPO / "deploy" / "gunicorn.conf.py"), "wsgi:app"],
            cwd=REPO,
            env={**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics)},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so its workers can be stopped too
        )
    server = LiveServer(env["CASEHUB_ISSUER"], log, process)
    try:
        _wait_until_ready(server)
        yield server
    finally:
        _stop(process)


def _wait_until_ready(server: LiveServer) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited {server.process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn not ready within {READY_WITHIN}s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_WITHIN)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
