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
        _committed_text().splitlines(), actual.splitlines(), "openapi/casehub.json", source,
        lineterm="", n=2,
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
