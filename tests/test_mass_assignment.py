"""Mass assignment: a field the server owns (an id, the lead agency, a status, a version, a
secret...) added to a valid body is refused with 422 naming it, and nothing is done — at every
route that takes a JSON body. The fields come from the OpenAPI document (what a response shows
but a request may not set) and a list of names an attacker would try."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from casehub.models import AuditEvent
from tests import test_audit_routes
from tests.test_audit_routes import ROUTES, World

world = test_audit_routes.world  # the walk's fixture: one valid call of every route

TRIED_EVERYWHERE = (
    "id",
    "agency_code",
    "lead_agency",
    "created_at",
    "updated_at",
    "created_by_agency",
    "version",
    "status",
    "reference",
    "is_platform",
    "active",
    "secret_hash",
    "client_secret",
    "scopes_approved",
    "deleted_at",
    "revoked_at",
    "author",
)
BODY_ROUTES = sorted(key for key, (call, _) in ROUTES.items() if key[0] in ("POST", "PATCH", "PUT"))


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _operation(spec: dict[str, Any], method: str, rule: str) -> dict[str, Any]:
    path = rule
    for converter in ("uuid:", "string:"):
        path = path.replace(f"<{converter}", "{")
    path = path.replace(">", "}")
    return spec["paths"][path][method.lower()]


def _server_owned(spec: dict[str, Any], operation: dict[str, Any]) -> set[str]:
    """Fields the response shows that the request schema does not accept."""
    accepted: set[str] = set()
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body:
        accepted = set(_resolve(spec, body["schema"]).get("properties", {}))
    shown: set[str] = set()
    for status, response in operation["responses"].items():
        content = response.get("content", {}) if isinstance(response, dict) else {}
        if status.startswith("2") and "application/json" in content:
            shown |= set(
                _resolve(spec, content["application/json"]["schema"]).get("properties", {})
            )
    return (shown | set(TRIED_EVERYWHERE)) - accepted


@pytest.mark.parametrize(("method", "rule"), BODY_ROUTES)
def test_a_server_owned_field_in_a_body_is_refused_and_nothing_is_done(
    app, client, db_session, world: World, method, rule, record_property
):
    spec = app.extensions["casehub.api"].spec.to_dict()
    operation = _operation(spec, method, rule)
    call, _ = ROUTES[(method, rule)]
    partner, path, kwargs = call(world)
    valid = kwargs.get("json") or {}
    headers = {**partner.headers(), **kwargs.get("headers", {})}  # one token (its issue is audited)
    accepted = []
    fields = sorted(_server_owned(spec, operation))
    for field in fields:
        before = db_session.execute(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.outcome == "allowed")
        ).scalar_one()
        attempt = {**valid, field: "chc_attacker" if "agency" not in field else "btp"}
        response = client.open(path, method=method, headers=headers, json=attempt)
        after = db_session.execute(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.outcome == "allowed")
        ).scalar_one()
        if response.status_code != 422 or after != before:
            accepted.append((field, response.status_code))
            continue
        errors = response.get_json().get("errors", {}).get("json", {})
        if field not in errors:
            accepted.append((field, "422 without naming it"))
    record_property(
        "figures",
        ("mass assignment", {"attempts": len(fields), "accepted": len(accepted)}),
    )
    assert accepted == []
