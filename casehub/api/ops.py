"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os
import time
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
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from casehub import migrate
from casehub.api.base import Blueprint, public
from casehub.auth.keys import KeysUnavailable
from casehub.db import get_session
from casehub.errors import problem

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
@public
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@blp.route("/readyz")
@blp.doc(
    operationId="getReadiness",
    summary="Readiness",
    description="200 when the database answers and its schema is at the newest migration.",
    responses={
        "200": {"description": "Ready.", "content": {"application/json": {"schema": _READY}}},
        "503": {"description": "Not ready.", "content": _PROBLEM},
    },
)
@public
def readyz() -> Any:
    # The request's own session: readiness then means "a request can get a connection from
    # the pool and use it", and tests that bind sessions to one connection see their database.
    try:
        connection = get_session().connection()
        connection.execute(text("SELECT 1"))
        current = migrate.current_revision(connection)
    except SQLAlchemyError:
        return problem(503, detail="The database is not reachable.")
    head = migrate.head_revision()
    if current != head:
        return problem(503, detail="The database schema is not at the newest migration.")
    try:
        current_app.extensions["casehub.keys"].published()
    except KeysUnavailable:
        return problem(503, detail="No token-signing key is configured.")
    return {"status": "ready", "schema": current}


@blp.route("/metrics")
@blp.requires("admin")
@blp.doc(
    operationId="getMetrics",
    summary="Prometheus metrics",
    description="Requests by route, method and status, and latency. Needs the `admin` scope.",
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
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST.split(";")[0])


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
