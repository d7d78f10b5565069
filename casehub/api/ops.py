"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from casehub import migrate
from casehub.api.base import Blueprint, public
from casehub.auth.keys import KeysUnavailable
from casehub.db import get_session, utcnow
from casehub.errors import problem
from casehub.models import Webhook, WebhookAttemptCount, WebhookDelivery
from casehub.services import emergency
from casehub.webhooks import secrets as webhook_secrets

blp = Blueprint("ops", __name__, description="Operations")

_HEALTH = {
    "type": "object",
    "properties": {"status": {"type": "string", "enum": ["ok"]}},
    "required": ["status"],
}
_READY = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ready"]},
        "schema": {"type": "string", "description": "The database's migration revision."},
    },
    "required": ["status", "schema"],
}
_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


@blp.route("/healthz")
@blp.doc(
    operationId="getHealth",
    summary="Liveness",
    description="200 while the process can answer; it does not touch the database.",
    responses={
        "200": {
            "description": "The process is up.",
            "content": {"application/json": {"schema": _HEALTH}},
        }
    },
)
@blp.rate_class("none")
@public
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _not_ready(detail: str) -> Response:
    # An orchestrator (and a load balancer) asks again; Retry-After says when it is worth it.
    return problem(503, detail=detail, headers={"Retry-After": "5"})


@blp.route("/readyz")
@blp.doc(
    operationId="getReadiness",
    summary="Readiness",
    description="200 when the database answers, its schema is this release's or newer (during a "
    "rolling upgrade the previous release stays ready on the migrated schema), and the signing "
    "and webhook keys are there.",
    responses={
        "200": {"description": "Ready.", "content": {"application/json": {"schema": _READY}}},
        "503": {
            "description": "Not ready (no database, an old schema, no signing or webhook key).",
            "content": _PROBLEM,
            "headers": {"Retry-After": {"$ref": "#/components/headers/RETRY_AFTER"}},
        },
    },
)
@blp.rate_class("none")
@public
def readyz() -> Any:
    # The request's own session: readiness then means "a request can get a connection from
    # the pool and use it", and tests that bind sessions to one connection see their database.
    try:
        connection = get_session().connection()
        connection.execute(text("SELECT 1"))
        current = migrate.current_revision(connection)
    except SQLAlchemyError:
        return _not_ready("The database is not reachable.")
    if migrate.schema_behind(current):
        return _not_ready("The database schema is older than this release: run the migration.")
    try:
        current_app.extensions["casehub.keys"].published()
    except KeysUnavailable:
        return _not_ready("No token-signing key is configured.")
    try:
        webhook_secrets.load_key(current_app)
    except webhook_secrets.WebhookKeyError:
        return _not_ready("No webhook key is configured.")
    return {"status": "ready", "schema": current}


@blp.route("/metrics")
@blp.requires("monitoring:read")
@blp.doc(
    operationId="getMetrics",
    summary="Prometheus metrics",
    description="Requests by route, method and status, and latency; the webhook outbox "
    "(pending deliveries, the oldest one's age, attempts by outcome, disabled subscriptions); "
    "emergency accesses awaiting review, and those overdue (pending over 72 hours). "
    "Platform-wide figures: needs `monitoring:read`, which only the platform agency's clients "
    "may hold (a dedicated client for Prometheus).",
    responses={
        "200": {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
def metrics() -> Response:
    registry: CollectorRegistry = current_app.extensions["casehub.metrics"]["registry"]
    shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if shared:
        # Under gunicorn each worker counts its own requests into files in this folder (see
        # deploy/gunicorn.conf.py); a scrape lands on one worker and must report them all.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=shared)
    outbox = CollectorRegistry(auto_describe=False)
    outbox.register(_OutboxCollector(get_session()))
    outbox.register(_ReviewCollector(get_session()))
    body = generate_latest(registry) + generate_latest(outbox)
    return Response(body, mimetype=CONTENT_TYPE_LATEST.split(";")[0])


class _OutboxCollector(Collector):
    """The webhook outbox as the database holds it, so every API process reports the same
    figures whichever worker made the deliveries: three small queries per scrape (the pending
    count and the oldest pending use the partial index of due deliveries)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def collect(self) -> Iterator[Metric]:
        pending, oldest = self.session.execute(
            select(func.count(), func.min(WebhookDelivery.created_at)).where(
                WebhookDelivery.status == "pending"
            )
        ).one()
        counts = dict(
            self.session.execute(
                select(WebhookAttemptCount.outcome, WebhookAttemptCount.count)
            ).all()
        )
        disabled = self.session.execute(
            select(func.count()).where(
                Webhook.disabled_at.is_not(None), Webhook.deleted_at.is_(None)
            )
        ).scalar_one()
        yield GaugeMetricFamily(
            "casehub_webhook_deliveries_pending",
            "Webhook deliveries not yet made (the outbox backlog), retries included.",
            value=pending,
        )
        age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "casehub_webhook_oldest_pending_age_seconds",
            "Age of the oldest undelivered webhook delivery (0 when none is pending).",
            value=max(age, 0.0),
        )
        attempts = CounterMetricFamily(
            "casehub_webhook_attempts",
            "Webhook delivery attempts by outcome: delivered (2xx), failed (retried), gone (410).",
            labels=["outcome"],
        )
        for outcome in ("delivered", "failed", "gone"):
            attempts.add_metric([outcome], counts.get(outcome, 0))
        yield attempts
        yield GaugeMetricFamily(
            "casehub_webhooks_disabled",
            "Subscriptions disabled after a 410 or 24 hours of failure.",
            value=disabled,
        )


class _ReviewCollector(Collector):
    """The emergency-access review queue as the database holds it (one indexed count per
    scrape), so every process reports the same backlog."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def collect(self) -> Iterator[Metric]:
        pending, overdue = emergency.review_backlog(self.session, now=utcnow())
        yield GaugeMetricFamily(
            "casehub_emergency_access_reviews_pending",
            "Emergency accesses waiting for a partnership auditor's review.",
            value=pending,
        )
        yield GaugeMetricFamily(
            "casehub_emergency_access_reviews_overdue",
            "Emergency accesses pending review more than 72 hours after they were granted.",
            value=overdue,
        )


def init_metrics(app: Flask) -> None:
    registry = CollectorRegistry(auto_describe=True)
    requests = Counter(
        "casehub_http_requests",
        "HTTP requests by route template, method and status.",
        ["route", "method", "status"],
        registry=registry,
    )
    latency = Histogram(
        "casehub_http_request_duration_seconds",
        "Time spent handling requests, by route template and method.",
        ["route", "method"],
        registry=registry,
        buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    )
    app.extensions["casehub.metrics"] = {"registry": registry}

    @app.after_request
    def _observe(response: Response) -> Response:
        # Route templates, never concrete paths: bounded label sets and no ids in metrics.
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        requests.labels(route, request.method, str(response.status_code)).inc()
        # web.py's first before_request sets g.started, so refused requests (401/403) are
        # timed too; a timer registered here would be skipped when authorisation aborts.
        started = g.get("started")
        if started is not None:
            latency.labels(route, request.method).observe(time.perf_counter() - started)
        return response
