"""The webhook delivery worker (CONTRACT §6): claims due deliveries under a lease, posts each one
signed to its checked address, records every attempt, retries with back-off, and disables
subscriptions whose receiver is gone (410) or has failed for 24 hours.

A claim is one short transaction that moves the delivery's `next_attempt_at` past a lease: if
the worker dies mid-delivery, the delivery becomes due again when the lease runs out and any
worker retries it (so a receiver may see a delivery twice, with the same `webhook-id`). The HTTP
call happens outside any transaction; its result is recorded in a transaction of its own, which
only moves the delivery on if this worker's claim is still the latest one.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from flask import Flask
from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from casehub import audit
from casehub.db import get_db, session_scope, utcnow
from casehub.errors import Conflict, NotFound
from casehub.models import (
    Agency,
    Event,
    Webhook,
    WebhookAttempt,
    WebhookAttemptCount,
    WebhookDelivery,
)
from casehub.services import events
from casehub.services.webhooks import signing_secrets
from casehub.webhooks import secrets, transport
from casehub.webhooks.targets import Resolver, UnsafeTarget, check_url, system_resolver

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Transport = Callable[..., transport.Outcome]

USER_AGENT = "casehub-webhooks/1"
# Wait after the n-th failed attempt (the last repeats), each ±10 %.
RETRY_SCHEDULE = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
)
JITTER = 0.10
RETRY_FOR = timedelta(hours=24)  # a delivery is retried at least this long after it was queued
DISABLE_AFTER = timedelta(hours=24)  # a subscription failing this long is disabled
MAX_RETRY_AFTER = timedelta(hours=3)  # a receiver's Retry-After is honoured up to this
PURGE_EVERY = timedelta(minutes=10)
PURGE_BATCH = 1000
MAX_TEXT = 200  # the attempts log's error and response excerpt
_KIND_ORDER = {"delivered": 0, "failed": 1, "gone": 2}
SUCCESS_RESOLUTION = timedelta(seconds=1)  # how far last_success_at may lag behind


@dataclass(frozen=True)
class WorkerSettings:
    lease: timedelta
    poll_interval: float  # seconds
    concurrency: int
    allow_private: bool
    ca_file: str | None
    retention: timedelta
    connect_timeout: float = 5.0
    total_timeout: float = 15.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> WorkerSettings:
        return cls(
            lease=timedelta(seconds=config["WEBHOOK_LEASE_SECONDS"]),
            poll_interval=config["WEBHOOK_POLL_INTERVAL_MS"] / 1000,
            concurrency=max(1, config["WEBHOOK_CONCURRENCY"]),
            allow_private=bool(config["WEBHOOKS_ALLOW_PRIVATE"]),
            ca_file=config.get("WEBHOOKS_CA_FILE") or None,
            retention=timedelta(days=config["EVENTS_RETENTION_DAYS"]),
        )


@dataclass(frozen=True)
class Claim:
    """A delivery this worker holds the lease on, with all it needs to make the attempt."""

    delivery_id: uuid.UUID
    webhook_id: uuid.UUID
    attempt: int  # the delivery's attempt count once claimed: identifies this claim
    event_id: uuid.UUID
    event_type: str
    url: str = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False)
    body: bytes = field(repr=False)


@dataclass(frozen=True)
class Result:
    claim: Claim
    attempted_at: datetime
    outcome: transport.Outcome

    @property
    def kind(self) -> str:
        """The attempt's outcome as logged and counted: delivered, gone or failed."""
        if self.outcome.ok:
            return "delivered"
        return "gone" if self.outcome.status == 410 else "failed"


def delivery_body(event: Event) -> bytes:
    """The bytes posted for an event: the same on every attempt, so retries can be compared."""
    document = events.event_document(event)
    return json.dumps(document, separators=(",", ":")).encode()


def retry_delay(attempt: int, retry_after: float | None, rng: random.Random) -> timedelta:
    """How long to wait after failed attempt number `attempt` (1-based)."""
    base = RETRY_SCHEDULE[min(max(attempt, 1), len(RETRY_SCHEDULE)) - 1]
    delay = base * rng.uniform(1 - JITTER, 1 + JITTER)
    if retry_after is not None:
        delay = max(delay, min(timedelta(seconds=retry_after), MAX_RETRY_AFTER))
    return delay


class Worker:
    """Claims, delivers and records; `run` loops until stopped. `clock` is the time deliveries
    are scheduled by (tests advance it); signatures carry the real time of sending, which is what
    a receiver compares with its own clock."""

    def __init__(
        self,
        app: Flask,
        *,
        settings: WorkerSettings | None = None,
        clock: Clock = utcnow,
        resolver: Resolver = system_resolver,
        send: Transport = transport.deliver,
        rng: random.Random | None = None,
    ) -> None:
        self.app = app
        self.settings = settings or WorkerSettings.from_config(app.config)
        self.clock = clock
        self.resolver = resolver
        self.send = send
        self.rng = rng or random.Random()  # noqa: S311 - retry jitter, not a secret
        self.key = secrets.load_key(app)
        engine = get_db(app).engine
        assert engine is not None
        self.postgres = engine.dialect.name == "postgresql"
        self.stopping = threading.Event()
        self._last_purge: float | None = None

    # -- claim -------------------------------------------------------------------------------
    def claim(self, limit: int, *, due_by: datetime | None = None) -> list[Claim]:
        """Take the lease on up to `limit` deliveries due by `due_by` (default: now), in the
        order they fell due; cancel, instead, those whose subscription has stopped or whose
        agency was deactivated."""
        now = self.clock()
        stmt = (
            select(WebhookDelivery, Webhook, Event, Agency.active)
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .join(Event, Event.pos == WebhookDelivery.event_pos)
            .join(Agency, Agency.code == Webhook.agency_code)
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= (due_by or now),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        )
        if self.postgres:
            # Rows another worker is claiming or recording are skipped, not waited for.
            stmt = stmt.with_for_update(skip_locked=True, of=WebhookDelivery)
        claims: list[Claim] = []
        with session_scope(self.app) as session:
            for delivery, webhook, event, agency_active in session.execute(stmt).all():
                # Stopped since the delivery was queued (a deactivated agency is sent nothing).
                stopped = webhook.disabled_at is not None or webhook.deleted_at is not None
                if stopped or not agency_active:
                    delivery.status = "cancelled"
                    delivery.finished_at = now
                    continue
                delivery.attempts += 1
                delivery.next_attempt_at = now + self.settings.lease
                claims.append(
                    Claim(
                        delivery_id=delivery.id,
                        webhook_id=webhook.id,
                        attempt=delivery.attempts,
                        event_id=event.id,
                        event_type=event.type,
                        url=webhook.url,
                        secrets=tuple(signing_secrets(webhook, self.key, now)),
                        body=delivery_body(event),
                    )
                )
        return claims

    # -- deliver (outside any transaction; runs in the pool's threads) -----------------------
    def attempt(self, claim: Claim) -> Result:
        """One POST of the claimed delivery, to the URL checked again now. Never raises: a
        delivery that breaks the worker would break every worker that takes it after it."""
        attempted_at = self.clock()
        try:
            outcome = self._post(claim)
        except Exception:
            # The traceback names the delivery, never its payload or URL.
            log.exception("webhook delivery %s: the attempt raised", claim.delivery_id)
            outcome = transport.Outcome(status=None, error="internal error", duration_ms=0)
        return Result(claim, attempted_at, outcome)

    def _post(self, claim: Claim) -> transport.Outcome:
        try:
            target = check_url(
                claim.url, allow_private=self.settings.allow_private, resolver=self.resolver
            )
        except UnsafeTarget as error:  # refused without connecting
            return transport.Outcome(
                status=None, error=f"unsafe target: {error}"[:MAX_TEXT], duration_ms=0
            )
        sent_at = datetime.now(UTC)
        msg_id = str(claim.event_id)  # the same on every attempt: receivers dedupe by it
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": secrets.signature(
                claim.secrets, msg_id, sent_at, claim.body.decode()
            ),
        }
        return self.send(
            target,
            claim.body,
            headers,
            connect_timeout=self.settings.connect_timeout,
            total_timeout=self.settings.total_timeout,
            ca_file=self.settings.ca_file,
        )

    # -- record ------------------------------------------------------------------------------
    def record(self, results: Sequence[Result]) -> None:
        """Log the attempts and move their deliveries (and subscriptions) on, in one
        transaction: results that finish while one batch is being recorded make the next, so
        the commits (and the counter rows every attempt updates) are shared when busy."""
        if not results:
            return
        for result in results:
            _log_attempt(result)
        now = self.clock()
        # Successes first: a 410 in the same batch then cannot cancel what was delivered.
        ordered = sorted(results, key=lambda r: _KIND_ORDER[r.kind])
        troubled = {r.claim.webhook_id for r in results if r.kind != "delivered"}
        with session_scope(self.app) as session:
            # The subscriptions before their deliveries, as delete_webhook does, and each in id
            # order, so that two workers recording at once cannot deadlock.
            hooks: dict[uuid.UUID, Webhook] = {}
            for webhook_id in sorted({r.claim.webhook_id for r in results}):
                if webhook_id in troubled:
                    # Failures count towards disabling it: read and decide under its lock.
                    stmt = select(Webhook).where(Webhook.id == webhook_id)
                    if self.postgres:
                        stmt = stmt.with_for_update()
                    webhook = session.scalars(stmt).one_or_none()
                    if webhook is not None:
                        hooks[webhook_id] = webhook
                else:
                    _note_success(session, webhook_id, now)
            delivery_ids = {r.claim.delivery_id for r in results}
            stmt = select(WebhookDelivery).where(WebhookDelivery.id.in_(delivery_ids))
            if self.postgres:
                stmt = stmt.order_by(WebhookDelivery.id).with_for_update()
            owed = {delivery.id: delivery for delivery in session.scalars(stmt)}
            for result in ordered:
                delivery = owed.get(result.claim.delivery_id)
                if delivery is not None:  # else its event was purged meanwhile
                    webhook = hooks.get(result.claim.webhook_id)
                    self._apply(session, result, webhook, delivery, now)
            session.flush()
            # Last, so the counters' rows are locked only until the commit.
            for kind, count in sorted(Counter(r.kind for r in results).items()):
                _count_attempts(session, kind, count, postgres=self.postgres)

    def _apply(
        self,
        session: Session,
        result: Result,
        webhook: Webhook | None,  # loaded and locked when the batch has a failure for it
        delivery: WebhookDelivery,
        now: datetime,
    ) -> None:
        claim, outcome, kind = result.claim, result.outcome, result.kind
        session.add(
            WebhookAttempt(
                delivery_id=delivery.id,
                webhook_id=claim.webhook_id,
                event_id=claim.event_id,
                event_type=claim.event_type,
                attempt=claim.attempt,
                attempted_at=result.attempted_at,
                outcome=kind,
                http_status=outcome.status,
                error=outcome.error[:MAX_TEXT] if outcome.error else None,
                duration_ms=outcome.duration_ms,
                response_excerpt=outcome.excerpt[:MAX_TEXT] or None,
            )
        )
        if kind == "delivered" and webhook is not None:
            webhook.last_success_at = now
            webhook.failing_since = None
        # Another worker may have claimed the delivery since our lease ran out, or an operator
        # replayed it or a deletion cancelled it: then only the log records this attempt.
        if delivery.status != "pending" or delivery.attempts != claim.attempt:
            return
        if kind == "delivered":
            _finish(delivery, "delivered", now)
            return
        if webhook is None:
            return  # deleted outright (subscriptions are only ever soft-deleted)
        if kind == "gone":
            _finish(delivery, "failed", now)
            self._disable(session, webhook, "gone", now)
        else:
            if webhook.failing_since is None:
                webhook.failing_since = now
            if now - delivery.created_at >= RETRY_FOR:
                _finish(delivery, "failed", now)  # given up
            else:
                delay = retry_delay(claim.attempt, outcome.retry_after, self.rng)
                delivery.next_attempt_at = now + delay
            if now - webhook.failing_since >= DISABLE_AFTER:
                _finish(delivery, "failed", now)
                self._disable(session, webhook, "failing", now)

    @staticmethod
    def _disable(session: Session, webhook: Webhook, reason: str, now: datetime) -> None:
        """Stop the subscription, cancel what it still owes, and tell its agency."""
        if webhook.disabled_at is not None or webhook.deleted_at is not None:
            return
        webhook.disabled_at = now
        webhook.disabled_reason = reason
        session.flush()
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == webhook.id, WebhookDelivery.status == "pending")
            .values(status="cancelled", finished_at=now)
            # The batch's other deliveries of this webhook, loaded in this session, too.
            .execution_options(synchronize_session="evaluate")
        )
        log.warning("webhook %s disabled: %s", webhook.id, reason)
        events.emit(
            session,
            type="webhook.disabled",
            recipients={webhook.agency_code},
            actor=None,
            data={"webhook_id": webhook.id, "reason": reason},
            now=now,
        )

    # -- retention ---------------------------------------------------------------------------
    def purge_events(self) -> int:
        """Delete events older than the retention period, a bounded batch per transaction
        (their deliveries and attempts go with them)."""
        cutoff = self.clock() - self.settings.retention
        total = 0
        while True:
            oldest = (
                select(Event.pos)
                .where(Event.occurred_at < cutoff)
                .order_by(Event.occurred_at)
                .limit(PURGE_BATCH)
            )
            if self.postgres:
                oldest = oldest.with_for_update(skip_locked=True)  # another worker's batch
            with session_scope(self.app) as session:
                result = session.execute(
                    delete(Event)
                    .where(Event.pos.in_(oldest.scalar_subquery()))
                    .execution_options(synchronize_session=False)
                )
                deleted = int(result.rowcount)  # type: ignore[attr-defined]
            total += deleted
            if deleted < PURGE_BATCH:
                break
        if total:
            log.info("purged %d events older than %s", total, cutoff.isoformat())
        return total

    def _purge_if_due(self) -> None:
        started = time.monotonic()
        if self._last_purge is None or started - self._last_purge >= PURGE_EVERY.total_seconds():
            self._last_purge = started
            self.purge_events()

    # -- the loop ----------------------------------------------------------------------------
    def run(self, *, once: bool = False) -> int:
        """Claim, deliver and record until stopped (SIGTERM, SIGINT or `stop()`), or with
        `once` until nothing that was due at the start is left. Work in flight is always
        finished and recorded before returning. Returns the number of attempts made."""
        due_by = self.clock() if once else None
        attempts = 0
        failures = 0
        in_flight: dict[Future[Result], Claim] = {}
        size = self.settings.concurrency
        with self._signals(), ThreadPoolExecutor(size, thread_name_prefix="webhook") as pool:
            while True:
                try:
                    if not self.stopping.is_set():
                        self._purge_if_due()
                        if len(in_flight) < size:
                            for claim in self.claim(size - len(in_flight), due_by=due_by):
                                in_flight[pool.submit(self.attempt, claim)] = claim
                    if not in_flight:
                        if once or self.stopping.is_set():
                            break
                        self.stopping.wait(self.settings.poll_interval)
                        continue
                    done, _ = wait(
                        in_flight, timeout=self.settings.poll_interval, return_when=FIRST_COMPLETED
                    )
                    results = [future.result() for future in done]
                    for future in done:
                        del in_flight[future]
                    attempts += len(results)
                    self.record(results)
                    failures = 0
                except SQLAlchemyError:
                    if once:
                        raise
                    # The database is away: what was not recorded is retried when its lease ends.
                    failures += 1
                    log.exception("webhook worker: database error")
                    self.stopping.wait(min(30.0, self.settings.poll_interval * 2**failures))
        return attempts

    def stop(self) -> None:
        self.stopping.set()

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT finish the work in flight, then stop (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, _frame: FrameType | None) -> None:
            log.info("webhook worker: signal %d, finishing the deliveries in flight", signum)
            self.stop()

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _finish(delivery: WebhookDelivery, status: str, now: datetime) -> None:
    delivery.status = status
    delivery.finished_at = now


def _note_success(session: Session, webhook_id: uuid.UUID, now: datetime) -> None:
    """The subscription works: clear `failing_since` and move `last_success_at` on. Written
    only when that changes something beyond a second, so that busy workers delivering to
    one receiver do not queue up on its row's lock (last_success_at lags by under a second)."""
    session.execute(
        update(Webhook)
        .where(
            Webhook.id == webhook_id,
            or_(
                Webhook.failing_since.is_not(None),
                Webhook.last_success_at.is_(None),
                Webhook.last_success_at <= now - SUCCESS_RESOLUTION,
            ),
        )
        .values(last_success_at=now, failing_since=None)
        .execution_options(synchronize_session=False)
    )


def _count_attempts(session: Session, outcome: str, count: int, *, postgres: bool) -> None:
    """Add to the outcome's counter (an upsert, so no process needs to create the rows)."""
    dialect_insert = postgresql.insert if postgres else sqlite.insert
    stmt = dialect_insert(WebhookAttemptCount).values(outcome=outcome, count=count)
    stmt = stmt.on_conflict_do_update(
        index_elements=[WebhookAttemptCount.outcome],
        set_={"count": WebhookAttemptCount.count + count},
    )
    session.execute(stmt)


def _log_attempt(result: Result) -> None:
    """One line per attempt: ids, outcome and timing; never the payload or the URL."""
    claim, outcome = result.claim, result.outcome
    log.info(
        "webhook delivery %s webhook %s attempt %d outcome %s status %s duration_ms %d%s",
        claim.delivery_id,
        claim.webhook_id,
        claim.attempt,
        result.kind,
        outcome.status if outcome.status is not None else "-",
        outcome.duration_ms,
        f" error {outcome.error!r}" if outcome.error else "",
    )


def run(
    app: Flask,
    *,
    once: bool,
    clock: Clock = utcnow,
    resolver: Resolver = system_resolver,
) -> int:
    """The `casehub webhooks worker` loop; returns the number of attempts made."""
    worker = Worker(app, clock=clock, resolver=resolver)
    log.info(
        "webhook worker started: concurrency %d, lease %ds",
        worker.settings.concurrency,
        worker.settings.lease.total_seconds(),
    )
    return worker.run(once=once)


# -- replay -------------------------------------------------------------------------------------
def replay(
    session: Session,
    *,
    webhook_id: uuid.UUID,
    since: datetime | None,
    enable: bool,
    now: datetime,
) -> int:
    """Queue a subscription's failed and cancelled deliveries again, due now (of events since
    `since`, if given), and with `enable` re-enable it first. Returns how many were queued.

    A replayed delivery starts afresh: its 24 hours of retries count from now, and its attempt
    numbers from 1 (the attempts log keeps the earlier ones). Only events still retained can
    be replayed. An operator's action, audited without an actor."""
    lock = True if session.get_bind().dialect.name == "postgresql" else None
    webhook = session.get(Webhook, webhook_id, with_for_update=lock)
    if webhook is None or webhook.deleted_at is not None:
        raise NotFound("No such webhook.")
    if webhook.disabled_at is not None:
        if not enable:
            raise Conflict(
                f"The webhook is disabled ({webhook.disabled_reason}): "
                "re-enable it to replay its deliveries."
            )
        webhook.disabled_at = None
        webhook.disabled_reason = None
        webhook.failing_since = None
    session.flush()
    stmt = (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.webhook_id == webhook.id,
            WebhookDelivery.status.in_(("failed", "cancelled")),
        )
        .values(status="pending", next_attempt_at=now, created_at=now, attempts=0, finished_at=None)
        .execution_options(synchronize_session=False)
    )
    if since is not None:
        stmt = stmt.where(
            exists().where(Event.pos == WebhookDelivery.event_pos, Event.occurred_at >= since)
        )
    queued = int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]
    audit.record(session, None, "webhook.replay", resource_type="webhook", resource_id=webhook.id)
    return queued
