"""Unknown query parameters are refused on every operation, not only on listings: a mistyped
filter, or a parameter sent to the wrong operation, is an error the caller sees."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from casehub.web import PUBLIC_ENDPOINTS, _view_target
from tests.conftest import ALL_SCOPES, Factory
from tests.test_route_inventory import concrete_path, routes

OAUTH_FORMS = {"/oauth/token", "/oauth/introspect", "/oauth/revoke"}


def test_every_operation_refuses_an_unknown_query_parameter(
    app: Flask, client: FlaskClient, factory: Factory
) -> None:
    factory.agency("qs-police", "police", platform=True)  # platform-only routes are in reach
    partner = factory.partner("qs-police", ALL_SCOPES + " monitoring:read audit:read:all")
    headers = partner.headers()
    problems = []
    checked = 0
    for method, rule in routes(app):
        if rule.endpoint in PUBLIC_ENDPOINTS or _view_target(app, rule.endpoint, method) is None:
            continue
        if rule.rule.startswith("/docs"):
            continue  # the docs page and its files are not API operations (see below)
        path = concrete_path(app, rule, method)
        response = client.open(f"{path}?bogus=1", method=method, headers=headers)
        body = response.get_json(silent=True) or {}
        if rule.rule in OAUTH_FORMS:
            # OAuth endpoints answer in RFC 6749's error format, which OAuth clients read.
            ok = response.status_code == 400 and body.get("error") == "invalid_request"
        else:
            ok = (
                response.status_code == 422
                and response.mimetype == "application/problem+json"
                and body.get("errors", {}).get("query", {}).get("bogus") is not None
            )
        if not ok:
            problems.append(f"{method} {rule.rule}: {response.status_code} {body}")
        checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 40


def test_a_known_parameter_on_a_single_record_read_is_refused_too(
    client: FlaskClient, factory: Factory
) -> None:
    """`limit` means something on a list; on a single read it is a mistake, not ignored."""
    factory.agency("qs-platform", "other", platform=True)
    partner = factory.partner("qs-platform", "audit:read:all")
    response = client.get("/v1/audit/verify?limit=5", headers=partner.headers())
    assert response.status_code == 422
    assert response.get_json()["errors"] == {"query": {"limit": ["Unknown field."]}}


def test_the_query_check_comes_after_the_token_and_scope_checks(
    client: FlaskClient, factory: Factory
) -> None:
    assert client.get("/v1/audit/verify?bogus=1").status_code == 401
    partner = factory.partner("qs-police", "referrals:read")
    response = client.get("/v1/audit/verify?bogus=1", headers=partner.headers())
    assert response.status_code == 403


def test_the_docs_page_is_a_page_not_an_operation(client: FlaskClient) -> None:
    """A link to /docs with a query string (a tracking parameter, say) still opens the page."""
    assert client.get("/docs?from=intranet").status_code == 200
