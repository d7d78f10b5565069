"""`casehub webhooks worker` processes side by side on one PostgreSQL database, delivering to a
receiver on loopback: 1,000 events each arrive once; then with one worker killed mid-delivery
every event still arrives, and only what it had in flight arrives twice."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from casehub import audit, create_app, migrate
from casehub.auth.actor import Actor
from casehub.db import get_db, session_scope, utcnow
from casehub.models import Event, WebhookDelivery
from casehub.services import agencies as agency_service
from casehub.services import events
from casehub.services import webhooks as webhook_service
from casehub.webhooks.secrets import load_key
from casehub.webhooks.worker import Worker
from tests.live_server import BIN, REPO, free_port, fresh_database, server_environment

pytestmark = pytest.mark.postgres_only

CONCURRENCY = 8  # the default
LEASE_SECONDS = 20  # the configuration's minimum
AGENCIES = [f"charity-{n}" for n in range(10)]  # each with a subscription


class Receiver:
    """Verifies and counts every delivery; while `stall` is set, holds each one unanswered."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}  # path: the secret of the subscription posting there
        self.ids: list[str] = []
        self.unverified = 0
        self.stall = threading.Event()
        self.release = threading.Event()
        self.stalled: list[str] = []
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.receiver = self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def seen(self) -> Counter[str]:
        with self.lock:
            return Counter(self.ids)


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a killed worker's connections break


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            StandardWebhook(receiver.secrets[self.path]).verify(body, headers)
            verified = True
        except (KeyError, WebhookVerificationError):
            verified = False
        msg_id = headers.get("webhook-id", "")
        with receiver.lock:
            receiver.ids.append(msg_id)
            receiver.unverified += not verified
            stalling = receiver.stall.is_set()
            if stalling:
                receiver.stalled.append(msg_id)
        if stalling:
            receiver.release.wait(30)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    if not os.environ.get("CASEHUB_TEST_DATABASE_URL", "").startswith("postgresql"):
        pytest.skip("needs PostgreSQL: set CASEHUB_TEST_DATABASE_URL")
    with fresh_database(tmp_path, "workers") as url:
        yield url


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[Flask]:
    application = create_app(
        {
            "DATABASE_URL": database_url,
            "SIGNING_KEYS_FILE": str(tmp_path / "test-signing-keys.json"),
            "WEBHOOK_KEY_FILE": str(tmp_path / "webhook-key"),
            "WEBHOOKS_ALLOW_PRIVATE": True,
            "AUDIT_SEQUENCER": False,
        }
    )
    engine = get_db(application).engine
    assert engine is not None
    migrate.upgrade(engine)
    yield application
    engine.dispose()


@pytest.fixture
def receiver(app: Flask) -> Iterator[Receiver]:
    server = Receiver()
    with session_scope(app) as session:
        for code in AGENCIES:
            agency_service.add_agency(session, code=code, name=code.title(), kind="charity")
            session.flush()
            actor = Actor(agency=code, agency_kind="charity", is_platform=False, client_id=code)
            new = webhook_service.create_webhook(
                session,
                actor=actor,
                data={"url": server.url(f"/{code}"), "events": ["referral.updated"]},
                key=load_key(app),
                allow_private=True,
                now=utcnow(),
            )
            server.secrets[f"/{code}"] = new.secret
        audit.discard_pending(session)
    thread = threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.server.shutdown()
        server.server.server_close()
        thread.join()


@pytest.fixture
def start_worker(database_url: str, tmp_path: Path) -> Iterator[Callable[[str], Worker_]]:
    env = server_environment(tmp_path, database_url, free_port())
    env.update(
        CASEHUB_WEBHOOK_KEY_FILE=str(tmp_path / "webhook-key"),
        CASEHUB_WEBHOOKS_ALLOW_PRIVATE="1",
        CASEHUB_WEBHOOK_CONCURRENCY=str(CONCURRENCY),
        CASEHUB_WEBHOOK_LEASE_SECONDS=str(LEASE_SECONDS),
        CASEHUB_WEBHOOK_POLL_INTERVAL_MS="50",
        CASEHUB_AUDIT_SEQUENCER="0",
    )
    started: list[Worker_] = []

    def start(name: str) -> Worker_:
        log = tmp_path / f"worker-{name}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [str(BIN / "casehub"), "webhooks", "worker"],
                cwd=REPO,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        worker = Worker_(process, log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


class Worker_:
    """A worker subprocess and its log."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def delivered(self) -> int:
        return len(re.findall(r"outcome delivered status 200", self.text()))

    def wait_ready(self, within: float = 30) -> None:
        until(lambda: "webhook worker started" in self.text(), within, self.text)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)


def until(condition: Callable[[], bool], within: float, explain: Callable[[], Any]) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {explain()}")
        time.sleep(0.05)


def emit_many(app: Flask, count: int) -> set[str]:
    """`count` events in one transaction, as changes seen by every agency (one per agency)."""
    ids: list[uuid.UUID] = []
    with session_scope(app) as session:
        for _ in range(count // len(AGENCIES)):
            ids += events.emit(
                session,
                type="referral.updated",
                recipients=AGENCIES,
                actor=None,
                data={"referral_id": uuid.uuid4()},
                now=utcnow(),
            )
    assert len(ids) == count
    return {str(i) for i in ids}


def undelivered(app: Flask) -> int:
    with session_scope(app) as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.status != "delivered")
            )
            or 0
        )


def test_workers_deliver_everything_once_and_survive_a_killed_worker(
    app: Flask, receiver: Receiver, start_worker: Callable[[str], Worker_]
) -> None:
    first, second = start_worker("a"), start_worker("b")  # they take a second to start

    # A change that rolls back emits nothing: no event, no delivery, nothing to send.
    with session_scope(app) as session:
        before = session.scalar(select(func.count()).select_from(Event))
    session = get_db(app).new_session()
    events.emit(
        session,
        type="referral.updated",
        recipients=AGENCIES,
        actor=None,
        data={"referral_id": uuid.uuid4()},
        now=utcnow(),
    )
    session.rollback()
    session.close()
    with session_scope(app) as session:
        assert session.scalar(select(func.count()).select_from(Event)) == before
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
    assert Worker(app).run(once=True) == 0

    first.wait_ready()
    second.wait_ready()

    # 1,000 events at once, to two workers: each arrives exactly once, verified.
    batch = emit_many(app, 1000)
    until(
        lambda: set(receiver.seen()) >= batch and undelivered(app) == 0,
        60,
        lambda: (len(set(receiver.seen()) & batch), undelivered(app), first.tail(), second.tail()),
    )
    seen = receiver.seen()
    assert set(seen) == batch
    assert max(seen.values()) == 1
    assert receiver.unverified == 0
    assert first.delivered() > 0 and second.delivered() > 0  # both took a share
    assert first.delivered() + second.delivered() == 1000

    # Stall the receiver until both workers are full, then kill one mid-delivery.
    receiver.stall.set()
    crash = emit_many(app, 200)
    until(lambda: len(receiver.stalled) == 2 * CONCURRENCY, 15, lambda: receiver.stalled)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=10)
    in_flight = set(receiver.stalled)
    receiver.stall.clear()
    receiver.release.set()
    replacement = start_worker("c")

    # The killed worker's deliveries come back when their lease runs out.
    until(
        lambda: set(receiver.seen()) >= batch | crash and undelivered(app) == 0,
        LEASE_SECONDS + 20,
        lambda: (len(set(receiver.seen()) & crash), undelivered(app)),
    )
    seen = receiver.seen()
    assert set(seen) == batch | crash  # the rolled-back event never was
    twice = {msg_id for msg_id, times in seen.items() if times > 1}
    assert twice <= in_flight
    assert len(twice) == CONCURRENCY  # exactly what the killed worker had in flight
    assert max(seen.values()) == 2
    assert receiver.unverified == 0
    with session_scope(app) as session:
        retried = session.scalars(
            select(Event.id)
            .join(WebhookDelivery, WebhookDelivery.event_pos == Event.pos)
            .where(WebhookDelivery.attempts > 1)
        ).all()
    assert {str(i) for i in retried} == twice

    # SIGTERM: the survivors finish what they hold and exit cleanly.
    assert second.stop() == 0 and replacement.stop() == 0
    for worker in (second, replacement):
        assert re.search(r"made \d+ delivery attempts?\b", worker.text()), worker.text()
