"""The delivery worker against a real HTTP receiver on loopback: signatures, retries with the same
webhook-id, no personal data, redirects, Retry-After, 410 and 24 hours of failure disabling a
subscription, secret rotation, a host that turns private, leases, replay and retention."""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from casehub import audit
from casehub.auth.actor import Actor
from casehub.cli import main
from casehub.errors import Conflict
from casehub.models import (
    Agency,
    Event,
    Webhook,
    WebhookAttempt,
    WebhookAttemptCount,
    WebhookDelivery,
)
from casehub.services import events
from casehub.services import webhooks as webhook_service
from casehub.webhooks import worker as worker_module
from casehub.webhooks.secrets import load_key
from casehub.webhooks.targets import system_resolver
from casehub.webhooks.worker import RETRY_SCHEDULE, Worker, WorkerSettings, retry_delay
from tests.helpers import referral_body, share_body

EVERY_TYPE = sorted(events.EVENT_TYPES)


# -- a receiver on loopback -------------------------------------------------------------------
@dataclass
class Seen:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    verified: bool


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"


class Receiver:
    """Answers each path from its queue of replies (then 200), records what it was sent, and
    checks every request's signature against the secrets it was told."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.seen: list[Seen] = []
        self.connections = 0
        self.secrets: list[str] = []
        self.replies: dict[str, deque[Reply]] = {}
        self.on_request: Callable[[Seen], None] | None = None
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def reply(self, path: str, *replies: Reply) -> None:
        self.replies.setdefault(path, deque()).extend(replies)

    def next_reply(self, path: str) -> Reply:
        with self.lock:
            queue = self.replies.get(path)
            return queue.popleft() if queue else Reply()

    def to(self, path: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.path.split("?")[0] == path]


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    receiver: Receiver

    def process_request(self, request: Any, client_address: Any) -> None:
        self.receiver.connections += 1
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        seen = Seen(self.path, headers, body, verified=_verifies(receiver.secrets, body, headers))
        receiver.seen.append(seen)
        if receiver.on_request is not None:
            receiver.on_request(seen)
        reply = receiver.next_reply(self.path.split("?")[0])
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)


def _verifies(secrets: Sequence[str], body: bytes, headers: dict[str, str]) -> bool:
    for secret in secrets:
        try:
            StandardWebhook(secret).verify(body, headers)
        except WebhookVerificationError:
            continue
        return True
    return False


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = _Server(("127.0.0.1", 0), _Handler)
    receiver = Receiver(server)
    server.receiver = receiver
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    # Every delivery the receiver got verified with a secret of its subscription.
    assert all(seen.verified for seen in receiver.seen), [s.path for s in receiver.seen]


# -- time, workers and subscriptions ------------------------------------------------------------
class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC) + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_worker(app, db_session, clock) -> Callable[..., Worker]:
    def make(resolver: Any = system_resolver, **settings: Any) -> Worker:
        base = replace(
            WorkerSettings.from_config(app.config),
            poll_interval=0.01,
            connect_timeout=1.0,
            total_timeout=3.0,
        )
        return Worker(app, settings=replace(base, **settings), clock=clock, resolver=resolver)

    return make


def actor_of(agency: str) -> Actor:
    return Actor(
        agency=agency,
        agency_kind="charity",
        is_platform=False,
        client_id=f"{agency}-client",
        scopes=frozenset({"webhooks:manage"}),
    )


@dataclass
class Subscription:
    id: uuid.UUID
    agency: str
    secret: str


@pytest.fixture
def subscribe(app, db_session, factory, clock, receiver) -> Callable[..., Subscription]:
    def make(
        agency: str = "tcs",
        path: str = "/hook",
        types: Sequence[str] = ("referral.updated",),
        *,
        url: str | None = None,
        **options: Any,
    ) -> Subscription:
        if db_session.get(Agency, agency) is None:
            factory.agency(agency, "charity")
        new = webhook_service.create_webhook(
            db_session,
            actor=actor_of(agency),
            data={"url": url or receiver.url(path), "events": list(types)},
            key=load_key(app),
            allow_private=options.pop("allow_private", True),
            now=clock(),
            **options,
        )
        audit.discard_pending(db_session)
        db_session.commit()
        receiver.secrets.append(new.secret)
        return Subscription(new.webhook.id, agency, new.secret)

    return make


def emit(db_session, clock, agency: str = "tcs", type: str = "referral.updated", **data: Any):
    [event_id] = events.emit(
        db_session,
        type=type,
        recipients={agency},
        actor=None,
        data=data or {"referral_id": uuid.uuid4()},
        now=clock(),
    )
    db_session.commit()
    return event_id


def fresh(db_session, model: type, id: Any) -> Any:
    db_session.expire_all()
    return db_session.get(model, id)


def deliveries_of(db_session, webhook_id: uuid.UUID) -> list[WebhookDelivery]:
    db_session.expire_all()
    stmt = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    return list(db_session.execute(stmt.order_by(WebhookDelivery.event_pos)).scalars())


def attempts_of(db_session, webhook_id: uuid.UUID) -> list[WebhookAttempt]:
    db_session.expire_all()
    stmt = select(WebhookAttempt).where(WebhookAttempt.webhook_id == webhook_id)
    return list(db_session.execute(stmt.order_by(WebhookAttempt.attempted_at)).scalars())


def counts(db_session) -> dict[str, int]:
    db_session.expire_all()
    rows = db_session.execute(select(WebhookAttemptCount.outcome, WebhookAttemptCount.count))
    return {outcome: count for outcome, count in rows}


def agency_events(db_session, agency: str, type: str) -> list[Event]:
    db_session.expire_all()
    stmt = select(Event).where(Event.agency_code == agency, Event.type == type)
    return list(db_session.execute(stmt).scalars())


# -- signing, body and headers ------------------------------------------------------------------
def test_every_delivery_is_signed_and_a_tampered_body_fails(
    db_session, clock, subscribe, receiver, make_worker, caplog
):
    caplog.set_level(logging.INFO, logger="casehub.webhooks.worker")
    hook = subscribe(url=receiver.url("/hook?token=QUERY-SECRET"))
    event_ids = [emit(db_session, clock) for _ in range(3)]
    before = counts(db_session)

    assert make_worker().run(once=True) == 3

    assert sorted(seen.headers["webhook-id"] for seen in receiver.seen) == sorted(
        str(i) for i in event_ids
    )
    for seen in receiver.seen:
        assert seen.path == "/hook?token=QUERY-SECRET"
        assert seen.headers["content-type"] == "application/json"
        assert seen.headers["user-agent"] == "casehub-webhooks/1"
        document = StandardWebhook(hook.secret).verify(seen.body, seen.headers)
        event = db_session.execute(
            select(Event).where(Event.id == uuid.UUID(seen.headers["webhook-id"]))
        ).scalar_one()
        assert document == events.event_document(event)
        assert seen.body == json.dumps(document, separators=(",", ":")).encode()
        tampered = seen.body.replace(b"referral.updated", b"referral.erased")
        with pytest.raises(WebhookVerificationError):
            StandardWebhook(hook.secret).verify(tampered, seen.headers)
        with pytest.raises(WebhookVerificationError):
            StandardWebhook(load_key_secret_of_another()).verify(seen.body, seen.headers)

    assert {d.status for d in deliveries_of(db_session, hook.id)} == {"delivered"}
    attempts = attempts_of(db_session, hook.id)
    assert [(a.outcome, a.http_status, a.attempt) for a in attempts] == [("delivered", 200, 1)] * 3
    assert all(a.response_excerpt == "ok" for a in attempts)
    assert counts(db_session).get("delivered", 0) == before.get("delivered", 0) + 3
    webhook = fresh(db_session, Webhook, hook.id)
    assert webhook.last_success_at == clock.now and webhook.failing_since is None
    # One log line per attempt, naming ids and the outcome; never the URL's query or the body.
    lines = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert len(lines) == 3
    assert all(str(hook.id) in line and "outcome delivered status 200" in line for line in lines)
    assert "QUERY-SECRET" not in caplog.text and "referral_id" not in caplog.text


def load_key_secret_of_another() -> str:
    from casehub.webhooks.secrets import WebhookKey

    return WebhookKey(b"k" * 32).secret("salt")


def test_a_failed_delivery_is_retried_with_the_same_id_and_body(
    db_session, clock, subscribe, receiver, make_worker
):
    hook = subscribe()
    receiver.reply("/hook", Reply(500, body=b"x" * 500))
    emit(db_session, clock)
    worker = make_worker()

    assert worker.run(once=True) == 1
    [delivery] = deliveries_of(db_session, hook.id)
    assert delivery.status == "pending" and delivery.attempts == 1
    wait = delivery.next_attempt_at - clock.now
    assert timedelta(seconds=4.5) <= wait <= timedelta(seconds=5.5)
    assert fresh(db_session, Webhook, hook.id).failing_since == clock.now
    assert worker.run(once=True) == 0  # not due yet

    clock.advance(seconds=6)
    assert worker.run(once=True) == 1
    first, second = receiver.seen
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    [delivery] = deliveries_of(db_session, hook.id)
    assert delivery.status == "delivered" and delivery.finished_at == clock.now
    failed, delivered = attempts_of(db_session, hook.id)
    assert (failed.outcome, failed.http_status, failed.attempt) == ("failed", 500, 1)
    assert failed.response_excerpt == "x" * 200 and failed.error is None
    assert (delivered.outcome, delivered.attempt) == ("delivered", 2)
    assert fresh(db_session, Webhook, hook.id).failing_since is None


def test_retry_delays_back_off_with_jitter_and_honour_retry_after():
    import random

    rng = random.Random(7)
    for attempt, base in enumerate(RETRY_SCHEDULE + (RETRY_SCHEDULE[-1],) * 3, start=1):
        for _ in range(20):
            delay = retry_delay(attempt, None, rng)
            assert base * 0.9 <= delay <= base * 1.1
    assert retry_delay(1, 600, rng) == timedelta(seconds=600)
    assert retry_delay(1, 10 * 86400, rng) == timedelta(hours=3)
    assert timedelta(hours=9) <= retry_delay(6, 60, rng) <= timedelta(hours=11)


# -- what a receiver may answer -----------------------------------------------------------------
def test_a_redirect_is_a_failure_and_is_not_followed(
    db_session, clock, subscribe, receiver, make_worker
):
    hook = subscribe()
    receiver.reply("/hook", Reply(302, {"Location": "/elsewhere"}, b""))
    emit(db_session, clock)

    make_worker().run(once=True)

    assert [seen.path for seen in receiver.seen] == ["/hook"]
    [attempt] = attempts_of(db_session, hook.id)
    assert (attempt.outcome, attempt.http_status) == ("failed", 302)
    assert attempt.error == "redirect not followed"
    [delivery] = deliveries_of(db_session, hook.id)
    assert delivery.status == "pending" and delivery.next_attempt_at > clock.now


def test_retry_after_is_honoured_up_to_three_hours(
    db_session, clock, subscribe, receiver, make_worker
):
    busy = subscribe(path="/busy")
    later = subscribe(path="/later")
    receiver.reply("/busy", Reply(429, {"Retry-After": "600"}))
    receiver.reply("/later", Reply(503, {"Retry-After": "864000"}))
    emit(db_session, clock)

    assert make_worker().run(once=True) == 2

    [waiting] = deliveries_of(db_session, busy.id)
    assert waiting.next_attempt_at - clock.now == timedelta(seconds=600)
    [capped] = deliveries_of(db_session, later.id)
    assert capped.next_attempt_at - clock.now == timedelta(hours=3)
    clock.advance(seconds=599)
    assert make_worker().run(once=True) == 0
    clock.advance(seconds=1)
    assert make_worker().run(once=True) == 1
    assert [d.status for d in deliveries_of(db_session, busy.id)] == ["delivered"]


def test_410_disables_the_subscription_and_tells_its_agency(
    db_session, clock, subscribe, receiver, make_worker
):
    gone = subscribe(path="/gone")
    watcher = subscribe(path="/watcher", types=["webhook.disabled"])
    receiver.reply("/gone", Reply(410, body=b"unsubscribed"))
    emit(db_session, clock)
    emit(db_session, clock)

    make_worker(concurrency=1).run(once=True)

    assert len(receiver.to("/gone")) == 1
    webhook = fresh(db_session, Webhook, gone.id)
    assert webhook.disabled_at == clock.now and webhook.disabled_reason == "gone"
    statuses = sorted(d.status for d in deliveries_of(db_session, gone.id))
    assert statuses == ["cancelled", "failed"]
    [attempt] = attempts_of(db_session, gone.id)
    assert (attempt.outcome, attempt.http_status) == ("gone", 410)
    [event] = agency_events(db_session, "tcs", "webhook.disabled")
    assert event.data == {"webhook_id": str(gone.id), "reason": "gone"}
    # The agency's other subscription is told, signed like any delivery.
    [notice] = receiver.to("/watcher")
    assert StandardWebhook(watcher.secret).verify(notice.body, notice.headers)["data"] == {
        "webhook_id": str(gone.id),
        "reason": "gone",
    }
    # Nothing more goes to a disabled subscription.
    emit(db_session, clock)
    clock.advance(hours=1)
    make_worker().run(once=True)
    assert len(receiver.to("/gone")) == 1


def test_24_hours_of_failure_gives_up_and_disables(
    db_session, clock, subscribe, receiver, make_worker
):
    hook = subscribe(path="/down")
    receiver.reply("/down", *[Reply(500)] * 20)
    queued_at = clock.now
    emit(db_session, clock)
    worker = make_worker()

    attempt_times = []
    while fresh(db_session, Webhook, hook.id).disabled_at is None:
        attempt_times.append(clock.now)
        assert worker.run(once=True) == 1
        [delivery] = deliveries_of(db_session, hook.id)
        if delivery.status == "pending":
            clock.now = delivery.next_attempt_at
        assert len(attempt_times) < 20

    gaps = [later - earlier for earlier, later in itertools.pairwise(attempt_times)]
    expected = [*RETRY_SCHEDULE, RETRY_SCHEDULE[-1]]
    assert len(gaps) == len(expected)
    for gap, base in zip(gaps, expected, strict=True):
        assert base * 0.9 <= gap <= base * 1.1
    assert attempt_times[-2] - queued_at < timedelta(hours=24) <= attempt_times[-1] - queued_at
    [delivery] = deliveries_of(db_session, hook.id)
    assert delivery.status == "failed" and delivery.attempts == len(attempt_times)
    webhook = fresh(db_session, Webhook, hook.id)
    assert webhook.disabled_reason == "failing" and webhook.failing_since == queued_at
    [event] = agency_events(db_session, "tcs", "webhook.disabled")
    assert event.data == {"webhook_id": str(hook.id), "reason": "failing"}
    assert len(receiver.to("/down")) == len(attempt_times)


def test_a_batch_of_410s_disables_once(db_session, clock, subscribe, receiver, make_worker):
    gone = subscribe(path="/gone")
    receiver.reply("/gone", *[Reply(410)] * 3)
    for _ in range(3):
        emit(db_session, clock)

    assert make_worker().run(once=True) == 3  # all three in flight at once

    statuses = sorted(d.status for d in deliveries_of(db_session, gone.id))
    assert statuses == ["cancelled", "cancelled", "failed"]
    assert len(agency_events(db_session, "tcs", "webhook.disabled")) == 1
    assert [a.outcome for a in attempts_of(db_session, gone.id)] == ["gone"] * 3


def test_an_attempt_that_raises_is_a_failure_not_a_dead_worker(
    db_session, clock, subscribe, receiver, make_worker, caplog
):
    url = f"http://hooks.partner.test:{receiver.port}/hook"
    hook = subscribe(url=url, resolver=lambda host, port: ["127.0.0.1"])
    emit(db_session, clock)

    def broken(host: str, port: int) -> list[str]:
        raise RuntimeError("resolver bug")

    assert make_worker(broken).run(once=True) == 1

    [attempt] = attempts_of(db_session, hook.id)
    assert (attempt.outcome, attempt.error) == ("failed", "internal error")
    assert [d.status for d in deliveries_of(db_session, hook.id)] == ["pending"]
    assert "the attempt raised" in caplog.text


# -- secrets, targets and leases ----------------------------------------------------------------
def test_both_secrets_sign_during_a_rotation_then_only_the_new_one(
    app, db_session, clock, subscribe, receiver, make_worker
):
    hook = subscribe()
    rotated = webhook_service.rotate_secret(
        db_session, actor=actor_of("tcs"), webhook_id=hook.id, key=load_key(app), now=clock()
    )
    audit.discard_pending(db_session)
    db_session.commit()
    receiver.secrets.append(rotated.secret)
    emit(db_session, clock)
    make_worker().run(once=True)

    [during] = receiver.seen
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    for secret in (hook.secret, rotated.secret):
        StandardWebhook(secret).verify(during.body, during.headers)

    clock.advance(hours=24, seconds=1)
    emit(db_session, clock)
    make_worker().run(once=True)
    after = receiver.seen[1]
    StandardWebhook(rotated.secret).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        StandardWebhook(hook.secret).verify(after.body, after.headers)


INTERNAL_ADDRESSES = [
    "10.0.0.5",
    "172.16.3.4",
    "192.168.1.1",
    "127.0.0.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "fe80::1",
    "fd00::1",
]


@pytest.mark.parametrize("address", INTERNAL_ADDRESSES)
def test_a_host_that_now_resolves_to_a_private_address_is_not_connected_to(
    db_session, clock, subscribe, receiver, make_worker, address
):
    zone = {"hooks.partner.test": ["93.184.215.14"]}

    def resolve(host: str, port: int) -> list[str]:
        if host not in zone:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return zone[host]

    url = f"https://hooks.partner.test:{receiver.port}/hook"
    hook = subscribe(url=url, allow_private=False, resolver=resolve)  # public when registered
    emit(db_session, clock)
    zone["hooks.partner.test"] = [address]  # ...and now it is not (DNS rebinding)

    assert make_worker(resolve, allow_private=False).run(once=True) == 1

    assert receiver.connections == 0
    [attempt] = attempts_of(db_session, hook.id)
    assert attempt.outcome == "failed" and attempt.http_status is None
    assert attempt.error == (
        "unsafe target: The URL resolves to a private, loopback, link-local or otherwise "
        "internal address."
    )
    assert attempt.duration_ms == 0
    [delivery] = deliveries_of(db_session, hook.id)
    assert delivery.status == "pending"


def test_when_a_lease_runs_out_another_worker_takes_the_delivery(
    db_session, clock, subscribe, receiver, make_worker
):
    hook = subscribe()
    emit(db_session, clock)
    crashed, other = make_worker(), make_worker()

    [held] = crashed.claim(8)
    assert held.attempt == 1
    assert other.claim(8) == []  # leased
    clock.advance(seconds=crashed.settings.lease.total_seconds() - 1)
    assert other.claim(8) == []
    clock.advance(seconds=1)
    [taken] = other.claim(8)
    assert (taken.delivery_id, taken.attempt) == (held.delivery_id, 2)
    other.record([other.attempt(taken)])
    assert [d.status for d in deliveries_of(db_session, hook.id)] == ["delivered"]

    # The first worker's late result is logged, but moves nothing.
    late = crashed.attempt(held)
    crashed.record([replace(late, outcome=replace(late.outcome, status=503))])
    [delivery] = deliveries_of(db_session, hook.id)
    assert delivery.status == "delivered" and delivery.attempts == 2
    assert sorted((a.attempt, a.http_status) for a in attempts_of(db_session, hook.id)) == [
        (1, 503),
        (2, 200),
    ]
    assert fresh(db_session, Webhook, hook.id).failing_since is None


def test_deliveries_of_a_stopped_subscription_are_cancelled_when_claimed(
    db_session, clock, subscribe, receiver, make_worker
):
    disabled, deleted = subscribe(path="/a"), subscribe(path="/b")
    inactive = subscribe("derby-cs", path="/c")
    emit(db_session, clock)
    emit(db_session, clock, agency="derby-cs")
    # As if each stopped after the delivery was queued (deleting cancels pending ones itself).
    db_session.get(Webhook, disabled.id).disabled_at = clock.now
    db_session.get(Webhook, deleted.id).deleted_at = clock.now
    db_session.get(Agency, "derby-cs").active = False
    db_session.commit()

    assert make_worker().claim(8) == []

    for hook in (disabled, deleted, inactive):
        assert [d.status for d in deliveries_of(db_session, hook.id)] == ["cancelled"]
    assert receiver.seen == []


# -- personal data ------------------------------------------------------------------------------
CANARY = "Quokkacanary"


def test_no_personal_data_reaches_a_receiver_or_the_log(
    client, factory, db_session, clock, subscribe, receiver, make_worker, caplog
):
    caplog.set_level(logging.DEBUG)
    btp = factory.partner("btp")
    tcs = factory.partner("tcs", kind="charity")
    subscribe("btp", "/btp", EVERY_TYPE)
    subscribe("tcs", "/tcs", EVERY_TYPE)
    personal = {
        "given_name": f"{CANARY}given",
        "family_name": f"{CANARY}family",
        "aliases": [f"{CANARY}alias"],
        "summary": f"{CANARY} summary",
        "narrative": f"{CANARY} narrative",
        "description": f"{CANARY} platform",
        "hub": f"{CANARY} station",
        "line": f"1 {CANARY} Street",
        "town": f"{CANARY}ton",
        "note": f"{CANARY} note",
        "reason": f"{CANARY} reason",
        "nhs": "9434765919",
        "postcode": "ZE2 9QQ",
    }
    body = referral_body(
        subject={
            "given_name": personal["given_name"],
            "family_name": personal["family_name"],
            "aliases": personal["aliases"],
            "date_of_birth": "2011-04-02",
            "identifiers": [{"system": "nhs_number", "value": personal["nhs"]}],
            "address": {
                "line": personal["line"],
                "town": personal["town"],
                "postcode": personal["postcode"],
            },
        },
        summary=personal["summary"],
        narrative=personal["narrative"],
        location={
            "description": personal["description"],
            "postcode": personal["postcode"],
            "transport_hub": personal["hub"],
        },
    )
    created = client.post("/v1/referrals", json=body, headers=btp.headers())
    assert created.status_code == 201, created.get_json()
    rid = created.get_json()["id"]
    shared = client.post(
        f"/v1/referrals/{rid}/shares",
        json=share_body("tcs", "contribute", necessity=f"{CANARY} necessity"),
        headers=btp.headers(),
    )
    assert shared.status_code == 201, shared.get_json()
    etag = client.get(f"/v1/referrals/{rid}", headers=btp.headers()).headers["ETag"]
    patched = client.patch(
        f"/v1/referrals/{rid}",
        json={"summary": f"{CANARY} new summary", "immediate_action": f"{CANARY} action"},
        headers=btp.headers(**{"If-Match": etag}),
    )
    assert patched.status_code == 200, patched.get_json()
    for partner in (btp, tcs):
        noted = client.post(
            f"/v1/referrals/{rid}/notes",
            json={"body": personal["note"], "visibility": "shared"},
            headers=partner.headers(),
        )
        assert noted.status_code == 201, noted.get_json()
    acknowledged = client.post(
        f"/v1/referrals/{rid}/shares/{shared.get_json()['id']}/acknowledge", headers=tcs.headers()
    )
    assert acknowledged.status_code == 200
    moved = client.post(
        f"/v1/referrals/{rid}/transitions",
        json={"to": "acknowledged", "reason": personal["reason"]},
        headers=btp.headers(**{"If-Match": patched.headers["ETag"]}),
    )
    assert moved.status_code == 200, moved.get_json()

    clock.now = datetime.now(UTC) + timedelta(seconds=1)  # the API queued by the real time
    make_worker().run(once=True)

    types = sorted(json.loads(seen.body)["type"] for seen in receiver.seen)
    assert types == [
        "note.added",
        "note.added",
        "referral.shared",
        "referral.status_changed",
        "referral.updated",
        "share.acknowledged",
    ]
    values = [v for v in personal.values() if isinstance(v, str)] + personal["aliases"]
    values += [CANARY, "ZE29QQ", "2011-04-02"]
    for seen in receiver.seen:
        text = seen.body.decode() + json.dumps(seen.headers)
        assert not [value for value in values if value.lower() in text.lower()], text
    stored = json.dumps([e.data for e in db_session.execute(select(Event)).scalars()])
    assert CANARY.lower() not in stored.lower()
    assert CANARY.lower() not in caplog.text.lower()


# -- replay, retention, rollback and the loop ---------------------------------------------------
def test_replay_requeues_and_re_enables(app, db_session, clock, subscribe, receiver, make_worker):
    hook = subscribe()
    receiver.reply("/hook", Reply(410))
    emit(db_session, clock)
    clock.advance(minutes=1)
    emit(db_session, clock)
    make_worker(concurrency=1).run(once=True)
    assert [d.status for d in deliveries_of(db_session, hook.id)] == ["failed", "cancelled"]

    with pytest.raises(Conflict):
        worker_module.replay(
            db_session, webhook_id=hook.id, since=None, enable=False, now=clock.now
        )
    db_session.rollback()
    queued = worker_module.replay(
        db_session, webhook_id=hook.id, since=clock.now, enable=True, now=clock.now
    )
    assert queued == 1  # only the later event's delivery
    db_session.rollback()

    runner = app.test_cli_runner()
    result = runner.invoke(main, ["webhooks", "replay", str(hook.id), "--enable"])
    assert result.exit_code == 0, result.output
    assert result.output == f"queued 2 deliveries of webhook {hook.id}\n"
    webhook = fresh(db_session, Webhook, hook.id)
    assert webhook.disabled_at is None and webhook.disabled_reason is None
    assert webhook.failing_since is None
    replayed = deliveries_of(db_session, hook.id)
    assert all(d.status == "pending" and d.attempts == 0 for d in replayed)

    clock.advance(seconds=1)
    assert make_worker().run(once=True) == 2
    assert [d.status for d in deliveries_of(db_session, hook.id)] == ["delivered"] * 2
    first = receiver.seen[0].headers["webhook-id"]
    assert first in {seen.headers["webhook-id"] for seen in receiver.seen[1:]}

    naive = runner.invoke(main, ["webhooks", "replay", str(hook.id), "--since", "2025-01-01"])
    assert naive.exit_code == 2 and "time zone" in naive.output
    missing = runner.invoke(main, ["webhooks", "replay", str(uuid.uuid4())])
    assert missing.exit_code == 2 and "No such webhook" in missing.output


def test_events_past_retention_are_purged_with_their_deliveries(
    db_session, clock, subscribe, make_worker
):
    hook = subscribe()
    worker = make_worker()
    kept_for = worker.settings.retention
    old = clock.now - kept_for - timedelta(minutes=1)
    [old_id] = events.emit(
        db_session,
        type="referral.updated",
        recipients={"tcs"},
        actor=None,
        data={"referral_id": uuid.uuid4()},
        now=old,
    )
    db_session.commit()
    recent_id = emit(db_session, clock)

    assert worker.purge_events() == 1

    remaining = db_session.execute(select(Event.id)).scalars().all()
    assert old_id not in remaining and recent_id in remaining
    assert len(deliveries_of(db_session, hook.id)) == 1


def test_a_change_that_rolls_back_emits_nothing(db_session, clock, subscribe, make_worker):
    hook = subscribe()
    before = db_session.scalar(select(func.count()).select_from(Event))
    change = db_session.begin_nested()
    events.emit(
        db_session,
        type="referral.updated",
        recipients={"tcs"},
        actor=None,
        data={"referral_id": uuid.uuid4()},
        now=clock(),
    )
    change.rollback()

    assert db_session.scalar(select(func.count()).select_from(Event)) == before
    assert deliveries_of(db_session, hook.id) == []
    assert make_worker().run(once=True) == 0


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals need it"
)
def test_sigterm_finishes_the_delivery_in_flight_then_stops(
    db_session, clock, subscribe, receiver, make_worker
):
    hook = subscribe()
    for _ in range(3):
        emit(db_session, clock)
    receiver.on_request = lambda _seen: os.kill(os.getpid(), signal.SIGTERM)
    before = signal.getsignal(signal.SIGTERM)

    assert make_worker(concurrency=1).run() == 1  # not `once`: only the signal stops it

    assert signal.getsignal(signal.SIGTERM) is before
    statuses = sorted(d.status for d in deliveries_of(db_session, hook.id))
    assert statuses == ["delivered", "pending", "pending"]


@pytest.mark.parametrize("address", INTERNAL_ADDRESSES)
def test_an_internal_address_registered_while_allowed_is_refused_once_it_is_not(
    db_session, clock, subscribe, receiver, make_worker, address
):
    """A subscription made while a deployment allowed private targets (a demo turned into a
    pilot, say) is not delivered to once the setting is off: the check runs at every attempt."""
    host = f"[{address}]" if ":" in address else address
    hook = subscribe(url=f"https://{host}:{receiver.port}/hook", allow_private=True)
    emit(db_session, clock)
    assert make_worker(allow_private=False).run(once=True) == 1
    assert receiver.connections == 0
    [attempt] = attempts_of(db_session, hook.id)
    assert attempt.outcome == "failed" and attempt.error.startswith("unsafe target: ")
