"""OAuth 2 token endpoint (client_credentials), access-token refusals on resource routes,
introspection (RFC 7662) and revocation (RFC 7009), driven over HTTP and with authlib's client."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import pytest
from authlib.oauth2.rfc6750.errors import InvalidTokenError
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc.jwk import ECKey
from sqlalchemy import select

from casehub.models import Agency, AuditEvent, Client, RevokedToken
from tests.oauth_support import (
    BEARER_INVALID,
    RESOURCE,
    OAuthError,
    audit_events,
    b64,
    basic,
    http,
    segments,
)

__all__ = ["http"]  # the fixture, imported for pytest


def service_key(app) -> ECKey:
    return app.extensions["casehub.keys"].signing_keys().keys[0]


def claims_for(app, partner, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": app.config["ISSUER"],
        "aud": app.config["AUDIENCE"],
        "sub": partner.client_id,
        "client_id": partner.client_id,
        "scope": "referrals:read",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 300,
        "agency": partner.agency,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def mint(app, claims: dict[str, Any], *, key: ECKey | None = None, **header: Any) -> str:
    """A token signed like casehub's own (or with `key`), with any header and claims."""
    signing = service_key(app)
    fields = {"alg": "ES256", "typ": "at+jwt", "kid": signing.kid, **header}
    fields = {k: v for k, v in fields.items() if v is not None}
    return jws.serialize_compact(fields, json.dumps(claims), key or signing, algorithms=["ES256"])


def unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."


def hs256_with_public_key(app, claims: dict[str, Any]) -> str:
    """Key confusion: HS256 whose secret is the service's *public* key."""
    public_pem = service_key(app).as_pem(private=False)
    header = {"alg": "HS256", "typ": "at+jwt", "kid": service_key(app).kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def assert_invalid_token(response) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.headers["WWW-Authenticate"] == BEARER_INVALID
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["status"] == 401


@pytest.fixture
def btp(factory):
    return factory.partner("btp", "referrals:read referrals:write subjects:read")


# -- issuing ------------------------------------------------------------------------------------
def test_client_credentials_issues_an_rfc9068_token(app, client, btp):
    response = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": btp.basic()},
    )
    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= 900
    assert body["scope"] == "referrals:read referrals:write subjects:read"
    assert "refresh_token" not in body

    header, claims = segments(body["access_token"])
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"
    published = client.get("/.well-known/jwks.json").get_json()["keys"]
    assert header["kid"] in {k["kid"] for k in published}
    assert all("d" not in k for k in published)  # public halves only
    assert claims["iss"] == app.config["ISSUER"]
    assert claims["aud"] == app.config["AUDIENCE"]
    assert claims["sub"] == claims["client_id"] == btp.client_id
    assert claims["agency"] == "btp"
    assert claims["scope"] == body["scope"]
    assert claims["jti"]
    assert 0 < claims["exp"] - claims["iat"] <= 900
    assert "roles" not in claims


def test_client_secret_post_and_a_narrower_scope(client, btp):
    response = client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": btp.client_id,
            "client_secret": btp.client_secret,
            "scope": "subjects:read referrals:read subjects:read",
        },
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["scope"] == "subjects:read referrals:read"


def test_metadata_describes_the_server(app, client):
    meta = client.get("/.well-known/oauth-authorization-server").get_json()
    assert meta["issuer"] == app.config["ISSUER"]
    assert meta["token_endpoint"] == app.config["ISSUER"] + "/oauth/token"
    assert set(meta["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    }
    assert "urn:ietf:params:oauth:grant-type:jwt-bearer" in meta["grant_types_supported"]
    assert {"ES256", "RS256", "Ed25519"} <= set(
        meta["token_endpoint_auth_signing_alg_values_supported"]
    )


def test_token_issue_is_audited_without_the_token(client, db_session, btp):
    token = btp.token()
    _, claims = segments(token)
    events = audit_events(db_session, "token.issue")
    assert [(e.actor_agency, e.actor_client_id, e.outcome) for e in events] == [
        ("btp", btp.client_id, "allowed")
    ]
    assert events[0].resource_id == claims["jti"]
    assert events[0].request_path == "/oauth/token"


# -- refusals at the token endpoint ------------------------------------------------------------
def _token_request(client, btp, case: str):
    data: dict[str, str] = {"grant_type": "client_credentials"}
    headers: dict[str, str] = {"Authorization": btp.basic()}
    if case == "bad secret (basic)":
        headers = {"Authorization": basic(btp.client_id, "chs_wrong")}
    elif case == "bad secret (post)":
        headers = {}
        data |= {"client_id": btp.client_id, "client_secret": "chs_wrong"}
    elif case == "unknown client (basic)":
        headers = {"Authorization": basic("chc_" + "0" * 24, btp.client_secret)}
    elif case == "unknown client (post)":
        headers = {}
        data |= {"client_id": "chc_" + "0" * 24, "client_secret": btp.client_secret}
    elif case == "no client authentication":
        headers = {}
    elif case == "two authentication methods":
        data |= {"client_id": btp.client_id, "client_secret": btp.client_secret}
    elif case == "undecodable basic credentials":
        headers = {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()}
    return client.post("/oauth/token", data=data, headers=headers)


@pytest.mark.parametrize(
    "case",
    [
        "bad secret (basic)",
        "bad secret (post)",
        "unknown client (basic)",
        "unknown client (post)",
        "no client authentication",
        "two authentication methods",
        "undecodable basic credentials",
    ],
)
def test_failed_client_authentication_is_401_invalid_client(client, db_session, btp, case):
    response = _token_request(client, btp, case)
    assert response.status_code == 401, response.get_json()
    assert response.get_json()["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert audit_events(db_session, "token.issue") == []
    failures = audit_events(db_session, "auth.client_failed")
    assert len(failures) == 1
    assert failures[0].outcome == "denied"
    assert failures[0].request_status == 401


def test_failed_client_authentication_audit_names_the_client_not_the_secret(
    client, db_session, btp
):
    _token_request(client, btp, "bad secret (basic)")
    (event,) = audit_events(db_session, "auth.client_failed")
    assert (event.actor_agency, event.actor_client_id) == ("btp", btp.client_id)
    stored = json.dumps([str(getattr(event, c.key)) for c in AuditEvent.__table__.columns])
    assert "chs_wrong" not in stored
    assert btp.client_secret not in stored


@pytest.mark.parametrize(
    ("scope", "why"),
    [
        ("referrals:read superpowers", "unknown scope"),
        ("referrals:read admin", "a scope outside the client's"),
        ("audit:read:all", "a scope outside the client's"),
    ],
)
def test_scope_outside_what_may_be_granted_is_invalid_scope(client, db_session, btp, scope, why):
    response = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": scope},
        headers={"Authorization": btp.basic()},
    )
    assert response.status_code == 400, why
    assert response.get_json()["error"] == "invalid_scope"
    assert audit_events(db_session, "token.issue") == []
    assert [e.outcome for e in audit_events(db_session, "token.refused")] == ["denied"]


@pytest.mark.parametrize("grant_type", ["password", "authorization_code", "refresh_token", ""])
def test_unsupported_grant_type(client, btp, grant_type):
    response = client.post(
        "/oauth/token", data={"grant_type": grant_type}, headers={"Authorization": btp.basic()}
    )
    assert response.status_code == 400
    assert response.get_json()["error"] == "unsupported_grant_type"


def test_plain_http_to_a_public_host_is_refused_cleanly(client, btp):
    response = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": btp.basic()},
        base_url="http://casehub.test",
    )
    assert response.status_code == 400
    assert response.get_json()["error"] == "insecure_transport"


def test_oauth_parameters_in_the_url_are_refused(client, btp):
    response = client.post(
        f"/oauth/token?client_id={btp.client_id}&client_secret={btp.client_secret}",
        data={"grant_type": "client_credentials"},
    )
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


@pytest.mark.parametrize("what", ["client", "agency"])
def test_deactivated_client_or_agency_gets_no_token(client, db_session, btp, what):
    if what == "client":
        db_session.get(Client, btp.client_id).active = False
    else:
        db_session.get(Agency, "btp").active = False
    db_session.commit()
    response = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": btp.basic()},
    )
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"


# -- refusals at resource routes -----------------------------------------------------------------
def _bad_token(app, btp, case: str) -> tuple[str | None, str]:
    """(Authorization header value or None, query string) for one refusal case."""
    real = btp.token("referrals:read")
    claims = claims_for(app, btp)
    if case == "no token":
        return None, ""
    if case == "garbage":
        return "Bearer not-a-jwt", ""
    if case == "tampered payload":
        header, _, signature = real.split(".")
        _, original = segments(real)
        original["scope"] = "referrals:read admin"
        return f"Bearer {header}.{b64(json.dumps(original).encode())}.{signature}", ""
    if case == "expired":
        now = int(time.time())
        return "Bearer " + mint(app, claims_for(app, btp, iat=now - 1000, exp=now - 100)), ""
    if case == "alg none":
        return "Bearer " + unsigned(claims, {"alg": "none", "typ": "at+jwt"}), ""
    if case == "HS256 signed with the public key":
        return "Bearer " + hs256_with_public_key(app, claims), ""
    if case == "foreign key, same kid":
        return "Bearer " + mint(app, claims, key=ECKey.generate_key("P-256")), ""
    if case == "unknown kid":
        return "Bearer " + mint(app, claims, kid="no-such-key"), ""
    if case == "no kid":
        return "Bearer " + mint(app, claims, kid=None), ""
    if case == "jku header":
        return "Bearer " + mint(app, claims, jku="https://attacker.example/jwks.json"), ""
    if case == "missing typ":
        return "Bearer " + mint(app, claims, typ=None), ""
    if case == "typ JWT":
        return "Bearer " + mint(app, claims, typ="JWT"), ""
    if case == "wrong aud":
        return "Bearer " + mint(app, claims_for(app, btp, aud="https://other.example")), ""
    if case == "no aud":
        return "Bearer " + mint(app, claims_for(app, btp, aud=None)), ""
    if case == "wrong iss":
        return "Bearer " + mint(app, claims_for(app, btp, iss="https://other.example")), ""
    if case == "issued in the future":
        now = int(time.time())
        return "Bearer " + mint(app, claims_for(app, btp, iat=now + 120, exp=now + 400)), ""
    if case == "no agency claim":
        return "Bearer " + mint(app, claims_for(app, btp, agency=None)), ""
    if case == "another agency's claim":
        return "Bearer " + mint(app, claims_for(app, btp, agency="nca")), ""
    if case == "unknown client":
        other = "chc_" + "f" * 24
        return "Bearer " + mint(app, claims_for(app, btp, sub=other, client_id=other)), ""
    if case == "token in the query string":
        return None, f"?access_token={real}"
    if case == "Basic credentials":
        return btp.basic(), ""
    if case == "bearer scheme without a token":
        return "Bearer", ""
    raise AssertionError(case)


BAD_TOKENS = [
    "no token",
    "garbage",
    "tampered payload",
    "expired",
    "alg none",
    "HS256 signed with the public key",
    "foreign key, same kid",
    "unknown kid",
    "no kid",
    "jku header",
    "missing typ",
    "typ JWT",
    "wrong aud",
    "no aud",
    "wrong iss",
    "issued in the future",
    "no agency claim",
    "another agency's claim",
    "unknown client",
    "token in the query string",
    "Basic credentials",
    "bearer scheme without a token",
]


@pytest.mark.parametrize("case", BAD_TOKENS)
def test_resource_routes_refuse_bad_tokens(app, client, btp, case, record_property):
    authorization, query = _bad_token(app, btp, case)
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get(RESOURCE + query, headers=headers)
    challenged = 'error="invalid_token"' in response.headers.get("WWW-Authenticate", "")
    record_property(
        "figures",
        (
            "forged and malformed tokens",
            {
                "cases": 1,
                "accepted": int(response.status_code < 400),
                "401 without WWW-Authenticate": int(response.status_code == 401 and not challenged),
            },
        ),
    )
    assert_invalid_token(response)


def test_the_same_claims_properly_signed_are_accepted(app, client, btp):
    """The refusal cases above differ from a working token in one respect each."""
    token = mint(app, claims_for(app, btp))
    response = client.get(RESOURCE, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.get_json()


def test_revocation_takes_effect_on_the_very_next_call(client, db_session, btp):
    token = btp.token()
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get(RESOURCE, headers=auth).status_code == 200  # now in the claims cache
    response = client.post(
        "/oauth/revoke", data={"token": token}, headers={"Authorization": btp.basic()}
    )
    assert response.status_code == 200
    assert response.get_json() == {}
    _, claims = segments(token)
    assert db_session.get(RevokedToken, claims["jti"]) is not None
    assert_invalid_token(client.get(RESOURCE, headers=auth))
    assert [e.resource_id for e in audit_events(db_session, "token.revoke")] == [claims["jti"]]


def test_deactivated_client_is_refused_at_once(client, db_session, btp):
    auth = btp.headers()
    assert client.get(RESOURCE, headers=auth).status_code == 200
    db_session.get(Client, btp.client_id).active = False
    db_session.commit()
    assert_invalid_token(client.get(RESOURCE, headers=auth))


def test_scope_taken_from_the_client_stops_its_live_tokens(client, db_session, factory):
    ops = factory.partner("btp", "referrals:read admin")
    auth = ops.headers("referrals:read admin")
    assert client.get("/v1/admin/clients", headers=auth).status_code == 200
    db_session.get(Client, ops.client_id).scope = "referrals:read"
    db_session.commit()
    introspected = client.post(
        "/oauth/introspect",
        data={"token": auth["Authorization"].split()[1]},
        headers={"Authorization": ops.basic()},
    ).get_json()
    assert (introspected["active"], introspected["scope"]) == (True, "referrals:read")
    # The token still says admin, but the actor has only what the client has now.
    response = client.get("/v1/admin/clients", headers=auth)
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert client.get(RESOURCE, headers=auth).status_code == 200


def test_missing_scope_is_403_insufficient_scope(client, btp):
    response = client.get("/v1/admin/clients", headers=btp.headers("referrals:read"))
    assert response.status_code == 403
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="casehub", error="insufficient_scope", scope="admin"'
    )
    assert response.mimetype == "application/problem+json"


@settings(max_examples=200, deadline=None)
@given(
    token=st.one_of(
        st.text(max_size=300),
        st.lists(st.text(max_size=60), min_size=1, max_size=5).map(".".join),
        st.lists(st.binary(max_size=80).map(b64), min_size=3, max_size=3).map(".".join),
    )
)
def test_validator_refuses_any_malformed_token_cleanly(app, token):
    """Whatever arrives, the validator answers InvalidTokenError (a 401), never a crash."""
    with pytest.raises(InvalidTokenError):
        app.extensions["casehub.validator"].verify(token)


# -- introspection ------------------------------------------------------------------------------
def _introspect(client, partner, token: str):
    return client.post(
        "/oauth/introspect", data={"token": token}, headers={"Authorization": partner.basic()}
    )


def test_introspection_of_an_own_agency_token(client, factory, btp):
    sibling = factory.partner("btp", "referrals:read")  # another system of the same agency
    token = btp.token("referrals:read")
    body = _introspect(client, sibling, token).get_json()
    _, claims = segments(token)
    assert body["active"] is True
    for name in ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "agency"):
        assert body[name] == claims[name]


def test_introspection_reports_inactive_tokens(app, client, factory, btp):
    other_agency = factory.partner("nca", "referrals:read")
    revoked = btp.token()
    client.post("/oauth/revoke", data={"token": revoked}, headers={"Authorization": btp.basic()})
    now = int(time.time())
    expired = mint(app, claims_for(app, btp, iat=now - 1000, exp=now - 100))
    cases = {
        "revoked": revoked,
        "expired": expired,
        "another agency's": other_agency.token(),
        "garbage": "garbage",
        "forged": mint(app, claims_for(app, btp), key=ECKey.generate_key("P-256")),
    }
    for case, token in cases.items():
        response = _introspect(client, btp, token)
        assert response.status_code == 200, case
        assert response.get_json() == {"active": False}, case


def test_introspection_needs_client_authentication(client, db_session, btp):
    token = btp.token()
    response = client.post("/oauth/introspect", data={"token": token})
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"
    response = client.post(
        "/oauth/introspect",
        data={"token": token},
        headers={"Authorization": basic(btp.client_id, "chs_wrong")},
    )
    assert response.status_code == 401
    assert len(audit_events(db_session, "auth.client_failed")) == 2


def test_introspection_after_the_client_is_deactivated(client, db_session, factory, btp):
    sibling = factory.partner("btp", "referrals:read")
    token = btp.token()
    db_session.get(Client, btp.client_id).active = False
    db_session.commit()
    assert _introspect(client, sibling, token).get_json() == {"active": False}


# -- revocation ---------------------------------------------------------------------------------
def test_revoking_another_clients_token_does_nothing(client, db_session, factory, btp):
    sibling = factory.partner("btp", "referrals:read")
    stranger = factory.partner("nca", "referrals:read")
    token = btp.token()
    for other in (sibling, stranger):
        response = client.post(
            "/oauth/revoke", data={"token": token}, headers={"Authorization": other.basic()}
        )
        assert response.status_code == 200
        assert response.get_json() == {}
    assert client.get(RESOURCE, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert db_session.execute(select(RevokedToken)).first() is None


def test_revocation_of_unknown_expired_or_revoked_tokens_is_a_quiet_200(app, client, btp):
    token = btp.token()
    now = int(time.time())
    expired = mint(app, claims_for(app, btp, iat=now - 1000, exp=now - 100))
    for candidate in ("garbage", expired, token, token):
        response = client.post(
            "/oauth/revoke", data={"token": candidate}, headers={"Authorization": btp.basic()}
        )
        assert response.status_code == 200


def test_revocation_needs_client_authentication(client, btp):
    token = btp.token()
    response = client.post("/oauth/revoke", data={"token": token})
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"
    assert client.get(RESOURCE, headers={"Authorization": f"Bearer {token}"}).status_code == 200


# -- with a real OAuth client library ---------------------------------------------------------
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_authlib_client_full_cycle(http, btp, method):
    oauth = http(
        client_id=btp.client_id,
        client_secret=btp.client_secret,
        token_endpoint_auth_method=method,
        revocation_endpoint_auth_method=method,
    )
    token = oauth.fetch_token(
        "/oauth/token", grant_type="client_credentials", scope="referrals:read"
    )
    assert token["scope"] == "referrals:read"
    assert oauth.get(RESOURCE).status_code == 200

    introspected = oauth.introspect_token("/oauth/introspect", token=token["access_token"])
    assert introspected.json()["active"] is True

    assert oauth.revoke_token("/oauth/revoke", token=token["access_token"]).status_code == 200
    refused = oauth.get(RESOURCE)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == BEARER_INVALID


def test_authlib_client_sees_oauth_errors(http, btp):
    oauth = http(client_id=btp.client_id, client_secret="chs_wrong")
    with pytest.raises(OAuthError) as refused:
        oauth.fetch_token("/oauth/token", grant_type="client_credentials")
    assert refused.value.error == "invalid_client"
    oauth = http(client_id=btp.client_id, client_secret=btp.client_secret)
    with pytest.raises(OAuthError) as refused:
        oauth.fetch_token("/oauth/token", grant_type="client_credentials", scope="admin")
    assert refused.value.error == "invalid_scope"


@pytest.mark.parametrize("lifetime", [901, 3600, 86400 * 365])
def test_a_token_living_longer_than_the_configured_ttl_is_refused(app, client, btp, lifetime):
    """Signed with casehub's own key and otherwise perfect, but casehub never issues a token
    that lives this long (issue 9): whoever minted it is not casehub's token endpoint."""
    now = int(time.time())
    token = mint(app, claims_for(app, btp, iat=now, exp=now + lifetime))
    assert_invalid_token(client.get(RESOURCE, headers={"Authorization": f"Bearer {token}"}))


def test_a_token_within_the_ttl_is_accepted(app, client, btp):
    now = int(time.time())
    token = mint(app, claims_for(app, btp, iat=now, exp=now + app.config["TOKEN_TTL"]))
    assert client.get(RESOURCE, headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_agency_auditors_cannot_verify_the_whole_chain(client, factory):
    auditor = factory.partner("btp", "audit:read")
    response = client.get("/v1/audit/verify", headers=auditor.headers())
    assert response.status_code == 403
    assert 'scope="audit:read:all"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("method", ["basic", "post"])
def test_an_unknown_client_id_costs_what_a_wrong_secret_costs(client, btp, monkeypatch, method):
    """Issue 9: a wrong secret for a known client ran scrypt, an unknown id did not, so the time
    of the refusal told an attacker which client ids exist. Both now run it exactly once."""
    import hashlib

    calls: list[int] = []
    real = hashlib.scrypt

    def counting(*args, **kwargs):
        calls.append(kwargs.get("n", 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)

    def attempt(client_id: str) -> int:
        calls.clear()
        data = {"grant_type": "client_credentials"}
        headers = {}
        if method == "basic":
            raw = f"{client_id}:chs_wrong".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        else:
            data.update(client_id=client_id, client_secret="chs_wrong")
        response = client.post("/oauth/token", data=data, headers=headers)
        assert response.status_code == 401
        return len(calls)

    assert attempt(btp.client_id) == attempt("chc_000000000000000000000000") == 1
