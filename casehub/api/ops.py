"""Operations: liveness, readiness, Prometheus metrics, and offline interactive docs."""

from __future__ import annotations

import time
from typing import Any

import swagger_ui_bundle
from flask import Flask, Response, current_app, g, request, send_from_directory
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from sqlalchemy import text

from casehub import migrate
from casehub.api.base import Blueprint, public
from casehub.db import get_db
from casehub.errors import problem

blp = Blueprint("ops", __name__, description="Operations")

_TEXT = {"content": {"application/json": {}}}


@blp.route("/healthz")
@blp.doc(summary="Liveness", responses={"200": {"description": "The process is up.", **_TEXT}})
@public
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@blp.route("/readyz")
@blp.doc(
    summary="Readiness",
    description="200 when the database answers and its schema is at the newest migration.",
    responses={
        "200": {"description": "Ready.", **_TEXT},
        "503": {"description": "Not ready.", "content": {"application/problem+json": {}}},
    },
)
@public
def readyz() -> Any:
    engine = get_db().engine
    assert engine is not None
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            current = migrate.current_revision(connection)
    except Exception:
        return problem(503, detail="The database is not reachable.")
    head = migrate.head_revision()
    if current != head:
        return problem(503, detail="The database schema is not at the newest migration.")
    return {"status": "ready", "schema": current}


@blp.route("/metrics")
@blp.requires("admin")
@blp.doc(
    summary="Prometheus metrics",
    description="Requests by route, method and status, and latency. Needs the `admin` scope.",
    responses={"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}},
)
def metrics() -> Response:
    registry: CollectorRegistry = current_app.extensions["casehub.metrics"]["registry"]
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST.split(";")[0])


@blp.route("/docs/assets/<path:filename>")
@blp.doc(hide=True)
@public
def docs_assets(filename: str) -> Response:
    return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename, max_age=3600)


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

    @app.before_request
    def _timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        requests.labels(route, request.method, str(response.status_code)).inc()
        started = g.get("metrics_started")
        if started is not None:
            latency.labels(route, request.method).observe(time.perf_counter() - started)
        return response
