"""The committed OpenAPI document is what the service serves, and it documents the contract."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from casehub.auth.scopes import SCOPES
from casehub.cli import main as casehub_cli
from casehub.openapi import render_spec, spec_dict
from casehub.web import endpoint_policy

COMMITTED = Path(__file__).resolve().parent.parent / "openapi" / "casehub.json"
REGENERATE = "Regenerate it with: casehub openapi export openapi/casehub.json"
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
# String formats whose values have a fixed, short length.
BOUNDED_FORMATS = {"uuid", "date", "date-time", "time", "ipv4", "ipv6"}


def _committed_text() -> str:
    assert COMMITTED.exists(), f"{COMMITTED} is missing. {REGENERATE}"
    return COMMITTED.read_text()


def _stale(actual: str, source: str) -> str:
    """The failure message: what to run, then the start of the difference."""
    diff = difflib.unified_diff(
        _committed_text().splitlines(),
        actual.splitlines(),
        "openapi/casehub.json",
        source,
        lineterm="",
        n=2,
    )
    return f"openapi/casehub.json is stale. {REGENERATE}\n" + "\n".join(list(diff)[:60])


@pytest.fixture(scope="module")
def spec(app: Flask) -> dict[str, Any]:
    return spec_dict(app)


def openapi_path(rule: str) -> str:
    """/v1/referrals/<uuid:referral_id> → /v1/referrals/{referral_id}, as apispec writes it."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def route_policies(app: Flask) -> dict[tuple[str, str], tuple[str, tuple[str, ...] | None]]:
    """{(openapi path, method): endpoint_policy} for every route the app serves."""
    policies = {}
    for rule in app.url_map.iter_rules():
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            key = (openapi_path(rule.rule), method.lower())
            policies[key] = endpoint_policy(app, rule.endpoint, method)
    return policies


# -- the committed file -------------------------------------------------------------------------
def test_committed_document_is_what_the_code_generates(app: Flask) -> None:
    generated = render_spec(app)
    assert _committed_text() == generated, _stale(generated, "render_spec(app)")


def test_committed_document_is_what_the_cli_exports(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        casehub_cli,
        ["openapi", "export"],
        env={
            "CASEHUB_DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}",
            "CASEHUB_SIGNING_KEYS_FILE": str(tmp_path / "keys.json"),
        },
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == _committed_text(), _stale(result.stdout, "casehub openapi export")


def test_committed_document_is_what_the_service_serves(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    served = response.get_json()
    assert served == json.loads(_committed_text()), _stale(
        json.dumps(served, indent=2, sort_keys=True, ensure_ascii=False) + "\n", "GET /openapi.json"
    )


# -- its content --------------------------------------------------------------------------------
def test_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    validate(spec)


def test_security_scheme_lists_every_scope_with_its_description(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert list(schemes) == ["oauth2"]
    flows = schemes["oauth2"]["flows"]
    assert schemes["oauth2"]["type"] == "oauth2"
    assert flows["clientCredentials"]["tokenUrl"].endswith("/oauth/token")
    assert flows["clientCredentials"]["scopes"] == SCOPES


def test_every_route_is_documented_and_every_operation_is_a_route(
    app: Flask, spec: dict[str, Any]
) -> None:
    policies = route_policies(app)
    documented = {(path, method) for path, method, _ in operations(spec)}
    protected = {key for key, (kind, _) in policies.items() if kind != "public"}
    assert protected - documented == set(), (
        f"routes that need a token but are missing from the document: {protected - documented}"
    )
    assert documented - set(policies) == set(), (
        f"documented operations the service does not serve: {documented - set(policies)}"
    )


def test_protected_operations_document_their_scope_and_auth_errors(
    app: Flask, spec: dict[str, Any]
) -> None:
    policies = route_policies(app)
    problems = []
    for path, method, operation in operations(spec):
        kind, accepted = policies[(path, method)]
        where = f"{method.upper()} {path}"
        if kind == "public":
            if operation.get("security"):
                problems.append(f"{where} is public but documents a security requirement")
            continue
        expected = [{"oauth2": [scope]} for scope in accepted or ()] or [{"oauth2": []}]
        if operation.get("security") != expected:
            problems.append(f"{where}: security {operation.get('security')}, want {expected}")
        for status in ("401", "403"):
            response = operation["responses"].get(status)
            if response is None:
                problems.append(f"{where} does not document {status}")
            elif "application/problem+json" not in response.get("content", {}):
                problems.append(f"{where}: {status} is not documented as problem+json")
    assert not problems, "\n".join(problems)


class _Walker:
    """Finds string schemas without a documented maximum length, following $refs once."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.unbounded: list[str] = []
        self._seen: set[str] = set()

    def resolve(self, schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        ref = schema.get("$ref")
        if ref is None:
            return schema, True
        if ref in self._seen:
            return schema, False
        self._seen.add(ref)
        target: Any = self.spec
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        return target, True

    def walk(self, schema: Any, where: str) -> None:
        if not isinstance(schema, dict):
            return
        schema, fresh = self.resolve(schema)
        if not fresh:
            return
        types = schema.get("type", [])
        types = [types] if isinstance(types, str) else types
        if "string" in types and not (
            "maxLength" in schema
            or "enum" in schema
            or "const" in schema
            or schema.get("format") in BOUNDED_FORMATS
        ):
            self.unbounded.append(where)
        for name, sub in schema.get("properties", {}).items():
            self.walk(sub, f"{where}.{name}")
        for key in ("items", "additionalProperties", "not"):
            self.walk(schema.get(key), f"{where}[]" if key == "items" else f"{where}.<{key}>")
        for key in ("allOf", "anyOf", "oneOf", "prefixItems"):
            for index, sub in enumerate(schema.get(key, [])):
                self.walk(sub, f"{where}.{key}[{index}]")


def test_every_input_string_has_a_maximum_length(spec: dict[str, Any]) -> None:
    walker = _Walker(spec)
    for path, method, operation in operations(spec):
        where = f"{method.upper()} {path}"
        for parameter in operation.get("parameters", []):
            parameter, _ = walker.resolve(parameter)
            location = parameter.get("in")
            if location in ("query", "header"):
                walker.walk(parameter.get("schema"), f"{where} {location} {parameter['name']}")
        body = operation.get("requestBody")
        if body is not None:
            body, _ = walker.resolve(body)
            for media_type, content in body.get("content", {}).items():
                walker.walk(content.get("schema"), f"{where} body ({media_type})")
        walker._seen.clear()  # each operation is checked in full, whatever it shares
    assert not walker.unbounded, (
        "request strings without maxLength (add validate.Length(max=...) or an enum):\n"
        + "\n".join(walker.unbounded)
    )


# -- what a generated client is built from ------------------------------------------------------
# A generated client names its functions after these: renaming one breaks every partner's code.
# Change an entry only with a new contract version; add one with each new operation.
OPERATION_IDS = {
    ("get", "/.well-known/jwks.json"): "getJwks",
    ("get", "/.well-known/oauth-authorization-server"): "getAuthorizationServerMetadata",
    ("get", "/healthz"): "getHealth",
    ("get", "/readyz"): "getReadiness",
    ("get", "/metrics"): "getMetrics",
    ("get", "/v1/webhooks"): "listWebhooks",
    ("post", "/v1/webhooks"): "createWebhook",
    ("get", "/v1/webhooks/{webhook_id}"): "getWebhook",
    ("delete", "/v1/webhooks/{webhook_id}"): "deleteWebhook",
    ("post", "/v1/webhooks/{webhook_id}/rotate-secret"): "rotateWebhookSecret",
    ("get", "/v1/webhooks/{webhook_id}/deliveries"): "listWebhookDeliveries",
    ("get", "/v1/events"): "listEvents",
    ("post", "/oauth/token"): "requestToken",
    ("post", "/oauth/introspect"): "introspectToken",
    ("post", "/oauth/revoke"): "revokeToken",
    ("get", "/v1/agencies"): "listAgencies",
    ("post", "/v1/admin/agencies"): "createAgency",
    ("patch", "/v1/admin/agencies/{code}"): "updateAgency",
    ("get", "/v1/admin/clients"): "listClients",
    ("post", "/v1/admin/clients"): "createClient",
    ("delete", "/v1/admin/clients/{client_id}"): "deactivateClient",
    ("post", "/v1/admin/clients/{client_id}/approval"): "approveClientScopes",
    ("get", "/v1/admin/users"): "listUsers",
    ("post", "/v1/admin/users"): "createUser",
    ("patch", "/v1/admin/users/{user_id}"): "updateUser",
    ("get", "/v1/indicators"): "listIndicators",
    ("get", "/v1/subjects"): "searchSubjects",
    ("post", "/v1/subjects"): "createSubject",
    ("get", "/v1/subjects/{subject_id}"): "getSubject",
    ("patch", "/v1/subjects/{subject_id}"): "updateSubject",
    ("post", "/v1/subjects/{subject_id}/merge"): "mergeSubject",
    ("post", "/v1/subjects/{subject_id}/unmerge"): "unmergeSubject",
    ("get", "/v1/subjects/{subject_id}/merges"): "listSubjectMerges",
    ("get", "/v1/subjects/{subject_id}/sar"): "getSubjectAccessPack",
    ("post", "/v1/matches"): "createMatch",
    ("get", "/v1/statistics/referrals"): "getReferralStatistics",
    ("get", "/v1/referrals"): "listReferrals",
    ("post", "/v1/referrals"): "createReferral",
    ("get", "/v1/referrals/{referral_id}"): "getReferral",
    ("patch", "/v1/referrals/{referral_id}"): "updateReferral",
    ("post", "/v1/referrals/{referral_id}/transitions"): "transitionReferral",
    ("get", "/v1/referrals/{referral_id}/history"): "listReferralHistory",
    ("get", "/v1/referrals/{referral_id}/notes"): "listNotes",
    ("post", "/v1/referrals/{referral_id}/notes"): "createNote",
    ("get", "/v1/referrals/{referral_id}/shares"): "listShares",
    ("post", "/v1/referrals/{referral_id}/shares"): "shareReferral",
    ("post", "/v1/referrals/{referral_id}/shares/{share_id}/acknowledge"): "acknowledgeShare",
    ("post", "/v1/referrals/{referral_id}/shares/{share_id}/revoke"): "revokeShare",
    ("post", "/v1/referrals/{referral_id}/transfer"): "transferReferral",
    ("put", "/v1/referrals/{referral_id}/legal-hold"): "placeLegalHold",
    ("delete", "/v1/referrals/{referral_id}/legal-hold"): "releaseLegalHold",
    ("get", "/v1/referrals/{referral_id}/accesses"): "listReferralAccesses",
    ("get", "/v1/referrals/{referral_id}/decisions"): "listSharingDecisions",
    ("post", "/v1/referrals/{referral_id}/decisions"): "createSharingDecision",
    ("get", "/v1/access-requests"): "listAccessRequests",
    ("post", "/v1/access-requests"): "createAccessRequest",
    ("get", "/v1/access-requests/{request_id}"): "getAccessRequest",
    ("post", "/v1/access-requests/{request_id}/withdraw"): "withdrawAccessRequest",
    ("post", "/v1/access-requests/{request_id}/decision"): "decideAccessRequest",
    ("get", "/v1/audit/events"): "listAuditEvents",
    ("get", "/v1/audit/events/export"): "exportAuditEvents",
    ("get", "/v1/audit/subjects/{subject_id}/accesses"): "listSubjectAccesses",
    ("get", "/v1/audit/verify"): "verifyAuditChain",
    ("post", "/v1/emergency-access"): "createEmergencyAccess",
    ("get", "/v1/emergency-access/{emergency_access_id}"): "getEmergencyAccess",
    ("post", "/v1/emergency-access/{emergency_access_id}/end"): "endEmergencyAccess",
    ("get", "/v1/audit/reviews"): "listReviews",
    ("post", "/v1/audit/reviews/{emergency_access_id}"): "reviewEmergencyAccess",
}


def test_operation_ids_are_unique_and_stable(spec: dict[str, Any]) -> None:
    found = {(method, path): op.get("operationId") for path, method, op in operations(spec)}
    assert found == OPERATION_IDS
    assert len(set(found.values())) == len(found), "operationIds must be unique"


def _view_targets(app: Flask) -> Iterator[tuple[str, str, Any]]:
    """(openapi path, method, the function serving it) for every documented route."""
    from casehub.web import _view_target

    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            target = _view_target(app, rule.endpoint, method)
            if target is not None:
                yield openapi_path(rule.rule), method.lower(), target


def _honoured_query_names(target: Any) -> set[str]:
    """The query parameters a view's `arguments(location="query")` schema accepts."""
    names: set[str] = set()
    for parameter in getattr(target, "_apidoc", {}).get("arguments", {}).get("parameters", []):
        if parameter.get("in") != "query":
            continue
        schema = parameter["schema"]
        schema = schema() if isinstance(schema, type) else schema
        names |= {f.data_key or n for n, f in schema.fields.items() if not f.dump_only}
    return names


def _documented(operation: dict[str, Any], location: str) -> set[str]:
    return {p["name"] for p in operation.get("parameters", []) if p.get("in") == location}


def test_every_honoured_query_parameter_and_header_is_documented(
    app: Flask, spec: dict[str, Any]
) -> None:
    problems = []
    checked = 0
    for path, method, target in _view_targets(app):
        operation = spec["paths"].get(path, {}).get(method)
        if operation is None:
            continue  # not an API operation (docs pages); test_every_route_is_documented covers
        where = f"{method.upper()} {path}"
        honoured, query = _honoured_query_names(target), _documented(operation, "query")
        if honoured != query:
            problems.append(f"{where}: honours query {sorted(honoured)}, documents {sorted(query)}")
        headers = _documented(operation, "header")
        expected = set()
        if getattr(target, "_casehub_scope", None) is not None:
            expected.add("Purpose-Of-Use")
        if getattr(target, "_casehub_idempotent", False):
            expected.add("Idempotency-Key")
        if getattr(target, "_casehub_if_match", False):
            expected.add("If-Match")
        if expected - headers:
            problems.append(f"{where}: honours headers {sorted(expected - headers)} undocumented")
        for status, response in operation["responses"].items():
            if "$ref" not in response and "X-Request-Id" not in response.get("headers", {}):
                problems.append(f"{where}: {status} does not document X-Request-Id")
        if "422" not in operation["responses"]:
            problems.append(f"{where}: 422 (unknown query parameters) is not documented")
        checked += 1
    assert not problems, "\n".join(problems)
    assert checked == len(OPERATION_IDS)


def test_listings_document_their_filters(spec: dict[str, Any]) -> None:
    """What a partner looks for first: the contract's filters, limit and cursor."""
    referrals = _documented(spec["paths"]["/v1/referrals"]["get"], "query")
    assert referrals == {
        "limit",
        "cursor",
        "status",
        "risk_level",
        "category",
        "indicator",
        "subject_id",
        "lead_agency",
        "shared_with_me",
        "updated_since",
    }
    assert {"q", "date_of_birth", "limit", "cursor"} <= _documented(
        spec["paths"]["/v1/subjects"]["get"], "query"
    )
    audit = {"agency", "client_id", "user_id", "action", "outcome", "referral_id", "subject_id"}
    assert audit | {"from", "to", "limit", "cursor"} == _documented(
        spec["paths"]["/v1/audit/events"]["get"], "query"
    )
    assert audit | {"from", "to", "format"} == _documented(
        spec["paths"]["/v1/audit/events/export"]["get"], "query"
    )
    limit = next(
        p for p in spec["paths"]["/v1/referrals"]["get"]["parameters"] if p["name"] == "limit"
    )
    assert limit["schema"] == {"type": "integer", "default": 50, "minimum": 1, "maximum": 200}


NAMED_ENUMS = {
    "Category",
    "RiskLevel",
    "ReferralStatus",
    "SharePurpose",
    "PurposeOfUse",
    "ConsentStatus",
    "ProcessingCondition",
    "Article6Basis",
    "ShareAccess",
    "NoteVisibility",
    "ShareStatus",
}


def _inline_enums(node: Any, where: str = "") -> Iterator[str]:
    """Where an enum is spelled out other than as a named component of its own."""
    if isinstance(node, dict):
        is_component = where.startswith("components.schemas.") and where.count(".") == 2
        if "enum" in node and not is_component:
            yield where
        for key, value in node.items():
            yield from _inline_enums(value, f"{where}.{key}" if where else key)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _inline_enums(value, f"{where}[{index}]")


def test_shared_enums_are_named_components_used_by_requests_and_responses(
    spec: dict[str, Any],
) -> None:
    schemas = spec["components"]["schemas"]
    assert set(schemas) >= NAMED_ENUMS
    text = json.dumps(spec)
    for name in NAMED_ENUMS:
        assert f'"#/components/schemas/{name}"' in text, f"{name} is never used"
    # Requests and responses name the same component.
    create, update = (
        schemas["ReferralCreate"]["properties"],
        schemas["ReferralUpdate"]["properties"],
    )
    assert (
        create["risk_level"] == update["risk_level"] == {"$ref": "#/components/schemas/RiskLevel"}
    )
    shares_create = schemas["ShareCreate"]["properties"]
    assert shares_create["purpose"] == {"$ref": "#/components/schemas/SharePurpose"}
    # Responses type their codes as precisely as requests do.
    referral = schemas["Referral"]["properties"]
    assert referral["status"] == {"$ref": "#/components/schemas/ReferralStatus"}
    assert referral["categories"]["items"] == {"$ref": "#/components/schemas/Category"}
    assert schemas["Share"]["properties"]["purpose"] == {
        "$ref": "#/components/schemas/SharePurpose"
    }
    basis = schemas["HistoryEntry"]["properties"]["lawful_basis"]["anyOf"]
    assert {"$ref": "#/components/schemas/LawfulBasis"} in basis
    # A list of codes lives in its component only, never copied inline into a field. The few
    # inline enums left are one-value constants or lists no other field shares.
    allowed = {"token_type", "token_type_hint", "status"}
    stray = [w for w in _inline_enums(spec) if w.rsplit(".", 1)[-1] not in allowed]
    assert not stray, f"inline enums (name them in casehub/schemas/enums.py): {stray}"


def test_public_operations_say_so_and_the_document_names_its_server(spec: dict[str, Any]) -> None:
    assert spec["servers"] and spec["servers"][0]["url"]
    assert spec["info"]["license"]["name"] and spec["info"]["contact"]["name"]
    assert spec["paths"]["/oauth/token"]["post"]["security"] == []
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    token = spec["paths"]["/oauth/token"]["post"]["responses"]
    assert token["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Token"
    }
    assert token["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OAuthError"
    }
    assert "PaginationMetadata" not in spec["components"]["schemas"]


def test_no_description_points_at_a_file_partners_do_not_have(spec: dict[str, Any]) -> None:
    text = json.dumps(spec)
    assert not re.findall(r"[\w/.-]+\.(?:md|py|txt)\b", text)
