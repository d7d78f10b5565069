"""RFC 7523: `private_key_jwt` client authentication and the jwt-bearer grant for a user,
with freshly generated keys and authlib's real client."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest
from authlib.oauth2.rfc7523 import JWTBearerGrant, PrivateKeyJWT
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from joserfc import jws
from joserfc.jwk import ECKey, OKPKey, RSAKey
from sqlalchemy import delete
from sqlalchemy.orm import Session

from casehub.auth import assertions
from casehub.models import Agency, UsedAssertion, User
from casehub.services import agencies as agency_service
from tests.oauth_support import (
    BEARER_INVALID,
    JWT_BEARER,
    RESOURCE,
    OAuthError,
    audit_events,
    b64,
    basic,
    http,
    segments,
)

__all__ = ["http"]  # the fixture, imported for pytest

ISSUER = "http://casehub.test"
TOKEN_URL = f"{ISSUER}/oauth/token"
CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLIENT_SCOPES = (
    "referrals:read referrals:write subjects:read subjects:write audit:read webhooks:manage admin"
)


def new_key(alg: str) -> Any:
    if alg == "ES256":
        return ECKey.generate_key("P-256", auto_kid=True)
    if alg == "RS256":
        return RSAKey.generate_key(2048, auto_kid=True)
    return OKPKey.generate_key("Ed25519", auto_kid=True)


def public_jwk(key: Any, **members: Any) -> dict[str, Any]:
    return {**key.as_dict(private=False), **members}


def sign(key: Any, claims: dict[str, Any], *, alg: str = "ES256", **header: Any) -> str:
    """A compact JWS over any claims and header (including ones authlib would not make)."""
    fields = {"alg": alg, "kid": key.kid, **header}
    fields = {k: v for k, v in fields.items() if v is not None}
    if alg == "EdDSA":
        # Signed by hand: joserfc warns on the deprecated name, and the point of the test is
        # that a partner's library still using it works without casehub warning.
        signing_input = f"{b64(json.dumps(fields).encode())}.{b64(json.dumps(claims).encode())}"
        signature = key.get_op_key("sign").sign(signing_input.encode())
        return f"{signing_input}.{b64(signature)}"
    return jws.serialize_compact(fields, json.dumps(claims), key, algorithms=[alg])


def user_assertion(
    key: Any, issuer: str, subject: str, *, lifetime: int = 300, **overrides: Any
) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": TOKEN_URL,
        "iat": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return sign(key, {k: v for k, v in claims.items() if v is not None}, alg=_alg_of(key))


def client_assertion(key: Any, client_id: str, **overrides: Any) -> str:
    return user_assertion(key, client_id, client_id, **overrides)


def _alg_of(key: Any) -> str:
    return {"EC": "ES256", "RSA": "RS256", "OKP": "Ed25519"}[key.key_type]


class KeyedClient:
    """A partner system with a registered JWKS (and a secret unless told otherwise)."""

    def __init__(self, client_id: str, secret: str | None, keys: list[Any], agency: str) -> None:
        self.client_id = client_id
        self.secret = secret
        self.keys = keys
        self.key = keys[0]
        self.agency = agency


@pytest.fixture
def keyed(db_session, factory):
    def make(
        agency: str = "btp",
        *,
        keys: list[Any] | None = None,
        scopes: str = CLIENT_SCOPES,
        with_secret: bool = True,
        jwks: dict[str, Any] | None = None,
        stored_jwks: dict[str, Any] | None = None,
    ) -> KeyedClient:
        if db_session.get(Agency, agency) is None:
            factory.agency(agency)
        keys = keys or [new_key("ES256")]
        row, secret = agency_service.add_client(
            db_session,
            agency_code=agency,
            name=f"{agency} case system",
            scope=scopes,
            jwks=jwks or {"keys": [public_jwk(k) for k in keys]},
            with_secret=with_secret,
            scrypt_n=2**10,
        )
        if stored_jwks is not None:  # as if registered before today's checks existed
            row.jwks = stored_jwks
        db_session.commit()
        return KeyedClient(row.client_id, secret, keys, agency)

    return make


@pytest.fixture
def person(db_session, factory):
    def make(agency: str = "btp", roles: str = "caseworker", email: str | None = None) -> User:
        if db_session.get(Agency, agency) is None:
            factory.agency(agency)
        user = agency_service.add_user(
            db_session,
            agency_code=agency,
            email=email or f"{uuid.uuid4().hex[:10]}@{agency}.example",
            name="A Caseworker",
            roles=roles.split(),
        )
        db_session.commit()
        return user

    return make


def grant(client, partner: KeyedClient, assertion: str, **data: str):
    """A jwt-bearer token request, the client authenticating with its secret."""
    return client.post(
        "/oauth/token",
        data={"grant_type": JWT_BEARER, "assertion": assertion, **data},
        headers={"Authorization": _basic(partner)},
    )


def _basic(partner: KeyedClient) -> str:
    assert partner.secret is not None
    return basic(partner.client_id, partner.secret)


# -- private_key_jwt ----------------------------------------------------------------------------
@pytest.mark.parametrize("alg", ["ES256", "RS256", "Ed25519"])
def test_private_key_jwt_with_authlibs_client(http, db_session, keyed, alg):
    partner = keyed(keys=[new_key(alg)], with_secret=False)
    oauth = http(
        client_id=partner.client_id,
        client_secret=partner.key,
        token_endpoint_auth_method=PrivateKeyJWT(TOKEN_URL, alg=alg),
    )
    token = oauth.fetch_token("/oauth/token", grant_type="client_credentials")
    _, claims = segments(token["access_token"])
    assert claims["sub"] == claims["client_id"] == partner.client_id
    assert oauth.get(RESOURCE).status_code == 200
    (event,) = audit_events(db_session, "token.issue")
    assert event.actor_client_id == partner.client_id


def test_private_key_jwt_under_the_deprecated_name_eddsa(client, keyed):
    """EdDSA with an Ed25519 key is accepted as Ed25519 (and nothing warns: warnings are
    errors in this suite, so a warning would have been a 500)."""
    key = new_key("Ed25519")
    partner = keyed(keys=[key], jwks={"keys": [public_jwk(key, alg="EdDSA", use="sig")]})
    now = int(time.time())
    assertion = sign(
        key,
        {"iss": partner.client_id, "sub": partner.client_id, "aud": ISSUER, "iat": now,
         "exp": now + 60, "jti": uuid.uuid4().hex},
        alg="EdDSA",
    )
    response = client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION,
            "client_assertion": assertion,
        },
    )
    assert response.status_code == 200, response.get_json()


def _with_client_assertion(client, assertion: str, **data: str):
    return client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION,
            "client_assertion": assertion,
            **data,
        },
    )


def test_a_client_assertion_is_accepted_once(client, db_session, keyed):
    partner = keyed()
    assertion = client_assertion(partner.key, partner.client_id)
    assert _with_client_assertion(client, assertion).status_code == 200
    replay = _with_client_assertion(client, assertion)
    assert replay.status_code == 401
    assert replay.get_json()["error"] == "invalid_client"
    assert "already used" in replay.get_json()["error_description"]
    (failure,) = audit_events(db_session, "auth.client_failed")
    assert failure.actor_client_id == partner.client_id
    assert failure.outcome == "denied"


def test_client_assertion_audience_may_be_the_issuer(client, keyed):
    partner = keyed()
    assertion = client_assertion(partner.key, partner.client_id, aud=ISSUER)
    assert _with_client_assertion(client, assertion).status_code == 200


def _bad_client_assertion(partner: KeyedClient, case: str) -> tuple[str, dict[str, str]]:
    cid, key = partner.client_id, partner.key
    now = int(time.time())
    if case == "wrong aud":
        return client_assertion(key, cid, aud="https://elsewhere.example/token"), {}
    if case == "unregistered key":
        return client_assertion(new_key("ES256"), cid), {}
    if case == "unregistered key with a registered kid":
        stranger = ECKey.import_key({**new_key("ES256").as_dict(private=True), "kid": key.kid})
        return client_assertion(stranger, cid), {}
    if case == "iss is not sub":
        return client_assertion(key, cid, iss="someone-else"), {}
    if case == "expired":
        return client_assertion(key, cid, iat=now - 600, exp=now - 120), {}
    if case == "exp more than an hour ahead":
        return client_assertion(key, cid, exp=now + 3600 + 120), {}
    if case == "no jti":
        return client_assertion(key, cid, jti=None), {}
    if case == "no exp":
        return client_assertion(key, cid, exp=None), {}
    if case == "alg none":
        header = {"alg": "none"}
        claims = {"iss": cid, "sub": cid, "aud": TOKEN_URL, "exp": now + 60, "jti": "x"}
        return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.", {}
    if case == "jku header":
        claims = {"iss": cid, "sub": cid, "aud": TOKEN_URL, "exp": now + 60, "jti": "y"}
        return sign(key, claims, jku="https://attacker.example/jwks"), {}
    if case == "client_id differs from sub":
        return client_assertion(key, cid), {"client_id": "chc_" + "1" * 24}
    if case == "unknown client":
        return client_assertion(key, "chc_" + "2" * 24), {}
    if case == "not a JWT":
        return "this.is.not-a-jwt", {}
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "because"),
    [
        ("wrong aud", "aud is not valid"),
        ("unregistered key", "No registered key"),
        ("unregistered key with a registered kid", "signature or header is not valid"),
        ("iss is not sub", "iss and sub must be the client id"),
        ("expired", "has expired"),
        ("exp more than an hour ahead", "at most 3600 s ahead"),
        ("no jti", "lacks jti"),
        ("no exp", "lacks exp"),
        ("alg none", "algorithm is not accepted"),
        ("jku header", "client's registration only"),
        ("client_id differs from sub", "client_id and the assertion's sub differ"),
        ("unknown client", "does not exist"),
        ("not a JWT", "not a signed JWT"),
    ],
)
def test_bad_client_assertions_are_401_invalid_client(client, db_session, keyed, case, because):
    partner = keyed()
    assertion, extra = _bad_client_assertion(partner, case)
    response = _with_client_assertion(client, assertion, **extra)
    assert response.status_code == 401, response.get_json()
    assert response.get_json()["error"] == "invalid_client"
    assert because in response.get_json()["error_description"]
    assert len(audit_events(db_session, "auth.client_failed")) == 1
    assert audit_events(db_session, "token.issue") == []


def test_private_key_jwt_needs_a_registered_jwks(client, factory):
    partner = factory.partner("btp")  # secret only
    key = new_key("ES256")
    response = _with_client_assertion(client, client_assertion(key, partner.client_id))
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"


def test_weak_rsa_keys_are_refused(client, keyed):
    # Made with `cryptography` directly: joserfc itself refuses to touch such a key quietly.
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    numbers = weak.public_key().public_numbers()
    jwk = {
        "kty": "RSA",
        "kid": "weak",
        "n": b64(numbers.n.to_bytes(128, "big")),
        "e": b64(numbers.e.to_bytes(3, "big")),
    }
    partner = keyed(stored_jwks={"keys": [jwk]})
    now = int(time.time())
    header = {"alg": "RS256", "kid": "weak"}
    claims = {"iss": partner.client_id, "sub": partner.client_id, "aud": TOKEN_URL,
              "exp": now + 60, "jti": uuid.uuid4().hex}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = weak.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    response = _with_client_assertion(client, f"{signing_input}.{b64(signature)}")
    assert response.status_code == 401
    assert "2048" in response.get_json()["error_description"]


def test_several_keys_need_a_kid(client, keyed):
    first, second = new_key("ES256"), new_key("ES256")
    partner = keyed(keys=[first, second])
    now = int(time.time())
    claims = {"iss": partner.client_id, "sub": partner.client_id, "aud": TOKEN_URL,
              "exp": now + 60, "jti": uuid.uuid4().hex}
    without_kid = sign(second, claims, kid=None)
    assert _with_client_assertion(client, without_kid).status_code == 401
    with_kid = sign(second, {**claims, "jti": uuid.uuid4().hex})
    assert _with_client_assertion(client, with_kid).status_code == 200


def test_introspection_and_revocation_with_private_key_jwt(http, keyed):
    partner = keyed(with_secret=False)
    auth = PrivateKeyJWT(TOKEN_URL, alg="ES256")
    oauth = http(
        client_id=partner.client_id,
        client_secret=partner.key,
        token_endpoint_auth_method=auth,
        revocation_endpoint_auth_method=auth,
    )
    token = oauth.fetch_token("/oauth/token", grant_type="client_credentials")["access_token"]
    assert oauth.introspect_token("/oauth/introspect", token=token).json()["active"] is True
    assert oauth.revoke_token("/oauth/revoke", token=token).status_code == 200
    assert oauth.introspect_token("/oauth/introspect", token=token).json() == {"active": False}
    refused = oauth.get(RESOURCE)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == BEARER_INVALID


# -- the jwt-bearer grant -------------------------------------------------------------------------
def test_jwt_bearer_with_authlibs_client(http, db_session, keyed, person):
    partner = keyed()
    caseworker = person(roles="caseworker")
    oauth = http(client_id=partner.client_id, client_secret=partner.secret)
    token = oauth.fetch_token(
        "/oauth/token",
        grant_type=JWT_BEARER,
        assertion=JWTBearerGrant.sign(
            partner.key,
            issuer=partner.client_id,
            audience=TOKEN_URL,
            subject=str(caseworker.id),
            expires_at=int(time.time()) + 120,
            header={"kid": partner.key.kid},
            alg="ES256",
        ),
    )
    assert 0 < token["expires_in"] <= 900
    assert token["scope"] == "referrals:read referrals:write subjects:read subjects:write"
    header, claims = segments(token["access_token"])
    assert header["typ"] == "at+jwt"
    assert claims["sub"] == str(caseworker.id)
    assert claims["client_id"] == partner.client_id
    assert claims["roles"] == ["caseworker"]
    assert claims["agency"] == "btp"
    assert oauth.get(RESOURCE).status_code == 200
    (event,) = audit_events(db_session, "token.issue")
    assert event.actor_user_id == caseworker.id
    assert event.resource_id == claims["jti"]


@pytest.mark.parametrize("alg", ["ES256", "RS256", "Ed25519", "EdDSA"])
def test_jwt_bearer_algorithms(client, keyed, person, alg):
    key = new_key("Ed25519" if alg == "EdDSA" else alg)
    partner = keyed(keys=[key])
    user = person()
    now = int(time.time())
    claims = {"iss": partner.client_id, "sub": str(user.id), "aud": TOKEN_URL,
              "exp": now + 120, "jti": uuid.uuid4().hex}
    response = grant(client, partner, sign(key, claims, alg=alg))
    assert response.status_code == 200, response.get_json()


def test_the_user_may_be_named_by_email(client, keyed, person):
    partner = keyed()
    user = person(email="Lead.Officer@btp.example", roles="safeguarding_lead")
    response = grant(client, partner, user_assertion(partner.key, partner.client_id,
                                                     "lead.officer@BTP.example"))
    assert response.status_code == 200, response.get_json()
    _, claims = segments(response.get_json()["access_token"])
    assert claims["sub"] == str(user.id)


def test_an_auditor_gets_audit_read_only_whatever_the_client_holds(client, keyed, person):
    partner = keyed()
    auditor = person(roles="auditor")
    response = grant(client, partner, user_assertion(partner.key, partner.client_id,
                                                     str(auditor.id)))
    assert response.status_code == 200
    assert response.get_json()["scope"] == "audit:read"
    asked = grant(
        client,
        partner,
        user_assertion(partner.key, partner.client_id, str(auditor.id)),
        scope="audit:read referrals:read",
    )
    assert asked.status_code == 400
    assert asked.get_json()["error"] == "invalid_scope"


def test_granted_scope_is_requested_within_client_and_roles(client, keyed, person):
    partner = keyed(scopes="referrals:read subjects:read")
    lead = person(roles="safeguarding_lead")  # could share, but the client may not
    default = grant(client, partner, user_assertion(partner.key, partner.client_id, str(lead.id)))
    assert default.get_json()["scope"] == "referrals:read subjects:read"
    narrower = grant(
        client,
        partner,
        user_assertion(partner.key, partner.client_id, str(lead.id)),
        scope="subjects:read",
    )
    assert narrower.get_json()["scope"] == "subjects:read"
    wider = grant(
        client,
        partner,
        user_assertion(partner.key, partner.client_id, str(lead.id)),
        scope="referrals:read referrals:share",
    )
    assert wider.status_code == 400
    assert wider.get_json()["error"] == "invalid_scope"


def test_exp_five_minutes_ahead_is_the_limit(client, keyed, person):
    partner = keyed()
    user = person()
    at_limit = user_assertion(partner.key, partner.client_id, str(user.id), lifetime=300)
    assert grant(client, partner, at_limit).status_code == 200
    beyond = user_assertion(partner.key, partner.client_id, str(user.id), lifetime=330)
    response = grant(client, partner, beyond)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_grant"


def _bad_user_assertion(partner: KeyedClient, user: User, stranger: User, case: str) -> str:
    cid, key, sub = partner.client_id, partner.key, str(user.id)
    now = int(time.time())
    if case == "expired":
        return user_assertion(key, cid, sub, iat=now - 600, exp=now - 60)
    if case == "wrongly signed":
        return user_assertion(new_key("ES256"), cid, sub)
    if case == "unknown user id":
        return user_assertion(key, cid, str(uuid.uuid4()))
    if case == "unknown email":
        return user_assertion(key, cid, "nobody@btp.example")
    if case == "another agency's user":
        return user_assertion(key, cid, str(stranger.id))
    if case == "another agency's user by email":
        return user_assertion(key, cid, stranger.email)
    if case == "iss is another client":
        return user_assertion(key, "chc_" + "3" * 24, sub)
    if case == "wrong aud":
        return user_assertion(key, cid, sub, aud="https://elsewhere.example")
    if case == "no jti":
        return user_assertion(key, cid, sub, jti=None)
    if case == "no sub":
        return user_assertion(key, cid, sub, sub=None)
    if case == "no exp":
        return user_assertion(key, cid, sub, exp=None)
    if case == "issued in the future":
        return user_assertion(key, cid, sub, iat=now + 120, exp=now + 240)
    if case == "not yet valid":
        return user_assertion(key, cid, sub, nbf=now + 120)
    if case == "alg none":
        header = {"alg": "none"}
        claims = {"iss": cid, "sub": sub, "aud": TOKEN_URL, "exp": now + 60, "jti": "z"}
        return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."
    if case == "jwk header":
        claims = {"iss": cid, "sub": sub, "aud": TOKEN_URL, "exp": now + 60, "jti": "w"}
        return sign(key, claims, jwk=public_jwk(key))
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "because"),
    [
        ("expired", "has expired"),
        ("wrongly signed", "No registered key"),
        ("unknown user id", "not an active user"),
        ("unknown email", "not an active user"),
        ("another agency's user", "not an active user"),
        ("another agency's user by email", "not an active user"),
        ("iss is another client", "iss must be the client id"),
        ("wrong aud", "aud is not valid"),
        ("no jti", "lacks jti"),
        ("no sub", "lacks sub"),
        ("no exp", "lacks exp"),
        ("issued in the future", "iat is not valid"),
        ("not yet valid", "nbf is not valid"),
        ("alg none", "algorithm is not accepted"),
        ("jwk header", "client's registration only"),
    ],
)
def test_bad_user_assertions_are_invalid_grant(client, db_session, keyed, person, case, because):
    partner = keyed()
    user = person()
    stranger = person(agency="nca")
    response = grant(client, partner, _bad_user_assertion(partner, user, stranger, case))
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"] == "invalid_grant"
    assert because in response.get_json()["error_description"]
    (refused,) = audit_events(db_session, "token.refused")
    assert (refused.actor_client_id, refused.outcome) == (partner.client_id, "denied")
    assert audit_events(db_session, "token.issue") == []


def test_a_user_assertion_is_accepted_once(client, keyed, person):
    partner = keyed()
    user = person()
    assertion = user_assertion(partner.key, partner.client_id, str(user.id))
    assert grant(client, partner, assertion).status_code == 200
    replay = grant(client, partner, assertion)
    assert replay.status_code == 400
    assert replay.get_json()["error"] == "invalid_grant"


def test_an_inactive_user_gets_no_token_and_loses_the_ones_held(client, db_session, keyed, person):
    partner = keyed()
    user = person()
    issued = grant(client, partner, user_assertion(partner.key, partner.client_id, str(user.id)))
    auth = {"Authorization": f"Bearer {issued.get_json()['access_token']}"}
    assert client.get(RESOURCE, headers=auth).status_code == 200
    db_session.get(User, user.id).active = False
    db_session.commit()
    refused = client.get(RESOURCE, headers=auth)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == BEARER_INVALID
    again = grant(client, partner, user_assertion(partner.key, partner.client_id, str(user.id)))
    assert again.get_json()["error"] == "invalid_grant"


def test_a_role_taken_away_narrows_the_users_live_token(client, db_session, keyed, person):
    partner = keyed()
    admin = person(roles="agency_admin caseworker")
    issued = grant(client, partner, user_assertion(partner.key, partner.client_id, str(admin.id)))
    auth = {"Authorization": f"Bearer {issued.get_json()['access_token']}"}
    assert client.get("/v1/admin/clients", headers=auth).status_code == 200
    db_session.get(User, admin.id).roles = "caseworker"
    db_session.commit()
    assert client.get("/v1/admin/clients", headers=auth).status_code == 403


def test_the_assertion_alone_does_not_authenticate_the_client(client, db_session, keyed, person):
    partner = keyed()
    user = person()
    response = client.post(
        "/oauth/token",
        data={
            "grant_type": JWT_BEARER,
            "assertion": user_assertion(partner.key, partner.client_id, str(user.id)),
        },
    )
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"
    assert len(audit_events(db_session, "auth.client_failed")) == 1


def test_jwt_bearer_needs_a_client_with_a_jwks(client, factory, person):
    partner = factory.partner("btp")  # secret only, no JWKS
    user = person()
    response = client.post(
        "/oauth/token",
        data={
            "grant_type": JWT_BEARER,
            "assertion": user_assertion(new_key("ES256"), partner.client_id, str(user.id)),
        },
        headers={"Authorization": partner.basic()},
    )
    assert response.status_code == 400
    assert response.get_json()["error"] == "unauthorized_client"


def test_jwt_bearer_without_an_assertion(client, keyed):
    partner = keyed()
    response = client.post(
        "/oauth/token", data={"grant_type": JWT_BEARER}, headers={"Authorization": _basic(partner)}
    )
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


def test_jwt_bearer_with_private_key_jwt_client_authentication(http, keyed, person):
    """A client without a secret: two JWTs, each with its own jti, signed by the same key."""
    partner = keyed(with_secret=False)
    user = person()
    oauth = http(
        client_id=partner.client_id,
        client_secret=partner.key,
        token_endpoint_auth_method=PrivateKeyJWT(TOKEN_URL, alg="ES256"),
    )
    token = oauth.fetch_token(
        "/oauth/token",
        grant_type=JWT_BEARER,
        assertion=user_assertion(partner.key, partner.client_id, user.email),
        scope="referrals:read",
    )
    assert token["scope"] == "referrals:read"
    assert segments(token["access_token"])[1]["sub"] == str(user.id)


def test_authlib_client_reports_a_replayed_assertion(http, keyed, person):
    partner = keyed()
    user = person()
    oauth = http(client_id=partner.client_id, client_secret=partner.secret)
    assertion = user_assertion(partner.key, partner.client_id, str(user.id))
    oauth.fetch_token("/oauth/token", grant_type=JWT_BEARER, assertion=assertion)
    with pytest.raises(OAuthError) as replay:
        oauth.fetch_token("/oauth/token", grant_type=JWT_BEARER, assertion=assertion)
    assert replay.value.error == "invalid_grant"


# -- one use across workers ---------------------------------------------------------------------
def test_a_jti_is_accepted_once_across_concurrent_transactions(app, engine):
    """Two workers racing with one assertion: the second waits for the first to commit and
    is then refused by the primary key (no rolled-back test transaction here: real commits)."""
    issuer, jti = "chc_race_" + uuid.uuid4().hex[:8], uuid.uuid4().hex
    exp = time.time() + 60
    first = Session(engine)
    results: dict[str, bool] = {}
    try:
        assert assertions.consume_jti(first, issuer=issuer, jti=jti, exp=exp)
        first.flush()

        def second_worker() -> None:
            with Session(engine) as second:
                results["second"] = assertions.consume_jti(second, issuer=issuer, jti=jti, exp=exp)
                second.commit()

        racer = threading.Thread(target=second_worker)
        racer.start()
        racer.join(timeout=0.5)
        assert racer.is_alive(), "the second insert should wait for the first transaction"
        first.commit()
        racer.join(timeout=30)
        assert results == {"second": False}
    finally:
        first.close()
        with Session(engine) as cleanup:
            cleanup.execute(delete(UsedAssertion).where(UsedAssertion.issuer == issuer))
            cleanup.commit()
