"""Administration over HTTP with real tokens: agencies (platform), own clients and users."""

from __future__ import annotations

import base64
import time
import uuid

import pytest
from sqlalchemy import select

from casehub.auth.actor import load_actor
from casehub.errors import Unauthorized
from casehub.models import AuditEvent, Client, IdempotencyRecord, User

ADMIN_ROUTES = [
    ("post", "/v1/admin/agencies", {"code": "nca", "name": "NCA", "kind": "police"}),
    ("patch", "/v1/admin/agencies/btp", {"name": "BTP"}),
    ("get", "/v1/admin/clients", None),
    ("post", "/v1/admin/clients", {"name": "Case system", "scopes": ["referrals:read"]}),
    ("delete", "/v1/admin/clients/chc_000000000000000000000000", None),
    ("get", "/v1/admin/users", None),
    ("post", "/v1/admin/users", {"email": "a@example.org", "name": "A", "roles": ["auditor"]}),
    ("patch", "/v1/admin/users/958bb11a-c877-4506-ad6f-78b38fd815f1", {"name": "B"}),
]


@pytest.fixture
def platform(factory):
    factory.agency("platform", "other", platform=True)
    return factory.partner("platform", "admin audit:read:all")


@pytest.fixture
def btp(factory):
    return factory.partner("btp", "admin referrals:read", kind="police")


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def token_for(http, client_id: str, secret: str, scope: str | None = None):
    data = {"grant_type": "client_credentials"}
    if scope:
        data["scope"] = scope
    return http.post("/oauth/token", data=data, headers={"Authorization": basic(client_id, secret)})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def events(db_session, action: str) -> list[AuditEvent]:
    db_session.expire_all()
    return list(db_session.execute(select(AuditEvent).where(AuditEvent.action == action)).scalars())


def assert_refused(response) -> None:
    assert response.status_code == 401, response.get_json()
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def wait_for_next_second() -> None:
    # Token `iat`s are whole seconds; a fresh token must be issued after the cut-off second.
    time.sleep(1.02 - time.time() % 1)


# -- scope and platform checks ----------------------------------------------------------------
@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_every_admin_route_needs_the_admin_scope(factory, client, method, path, body):
    reader = factory.partner("btp", "referrals:read audit:read")
    kwargs = {"json": body} if body is not None else {}
    response = getattr(client, method)(path, headers=reader.headers(), **kwargs)
    assert response.status_code == 403
    assert response.get_json()["type"] == "urn:casehub:problem:insufficient-scope"
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert 'scope="admin"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_every_admin_route_refuses_a_missing_token(client, db_session, method, path, body):
    kwargs = {"json": body} if body is not None else {}
    assert_refused(getattr(client, method)(path, **kwargs))


def test_platform_admin_adds_and_changes_an_agency(platform, client, db_session):
    created = client.post(
        "/v1/admin/agencies",
        json={
            "code": "notts-cs",
            "name": "Nottingham Children's Services",
            "kind": "local_authority",
            "area": "Nottingham",
        },
        headers=platform.headers(),
    )
    assert created.status_code == 201, created.get_json()
    assert created.get_json() == {
        "code": "notts-cs",
        "name": "Nottingham Children's Services",
        "kind": "local_authority",
        "area": "Nottingham",
        "active": True,
    }

    changed = client.patch(
        "/v1/admin/agencies/notts-cs",
        json={"name": "Nottingham City Children's Services", "area": None, "kind": "other"},
        headers=platform.headers(),
    )
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json() == {
        "code": "notts-cs",
        "name": "Nottingham City Children's Services",
        "kind": "other",
        "area": None,
        "active": True,
    }
    listed = client.get("/v1/agencies", headers=platform.headers()).get_json()["items"]
    assert {
        "code": "notts-cs",
        "name": "Nottingham City Children's Services",
        "kind": "other",
        "area": None,
        "active": True,
    } in listed
    assert [e.resource_id for e in events(db_session, "admin.agency.create")] == ["notts-cs"]
    assert [e.resource_id for e in events(db_session, "admin.agency.update")] == ["notts-cs"]


def test_an_agency_code_is_permanent_and_unique(platform, client):
    headers = platform.headers()
    renamed = client.patch("/v1/admin/agencies/platform", json={"code": "other"}, headers=headers)
    assert renamed.status_code == 422
    assert "code" in renamed.get_json()["errors"]["json"]
    again = client.post(
        "/v1/admin/agencies",
        json={"code": "platform", "name": "Again", "kind": "other"},
        headers=headers,
    )
    assert again.status_code == 409


def test_unknown_agency_is_404_for_the_platform(platform, client):
    response = client.patch(
        "/v1/admin/agencies/nowhere", json={"name": "X"}, headers=platform.headers()
    )
    assert response.status_code == 404


def test_other_agencies_admins_cannot_administer_agencies(btp, client, db_session):
    created = client.post(
        "/v1/admin/agencies",
        json={"code": "rogue", "name": "Rogue", "kind": "other"},
        headers=btp.headers(),
    )
    assert created.status_code == 403
    assert created.get_json()["type"] == "urn:casehub:problem:forbidden"
    own = client.patch("/v1/admin/agencies/btp", json={"name": "Renamed"}, headers=btp.headers())
    assert own.status_code == 403
    listed = client.get("/v1/agencies", headers=btp.headers()).get_json()["items"]
    assert [(a["code"], a["name"]) for a in listed] == [("btp", "Btp")]
    denied = events(db_session, "admin.agency.create") + events(db_session, "admin.agency.update")
    assert sorted((e.outcome, e.resource_id) for e in denied) == [
        ("denied", "btp"),
        ("denied", "rogue"),
    ]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"code": "X", "name": "N", "kind": "police"}, {"code"}),
        ({"code": "-ab", "name": "N", "kind": "police"}, {"code"}),
        ({"code": "a" * 41, "name": "N", "kind": "police"}, {"code"}),
        ({"code": "ok", "name": "N" * 201, "kind": "fire"}, {"name", "kind"}),
        ({"code": "ok", "name": "N", "kind": "police", "area": "A" * 201}, {"area"}),
        ({"code": "ok", "name": " ", "kind": "police"}, {"name"}),
        ({"code": "ok", "kind": "police"}, {"name"}),
        ({"code": "ok", "name": "N", "kind": "police", "is_platform": True}, {"is_platform"}),
    ],
)
def test_agency_fields_are_validated(platform, client, body, fields):
    response = client.post("/v1/admin/agencies", json=body, headers=platform.headers())
    assert response.status_code == 422
    assert set(response.get_json()["errors"]["json"]) == fields


def test_an_empty_change_is_refused(platform, client):
    response = client.patch("/v1/admin/agencies/platform", json={}, headers=platform.headers())
    assert response.status_code == 422


def test_deactivating_an_agency_refuses_its_tokens_at_once(platform, factory, client):
    nca = factory.partner("nca", "referrals:read", kind="police")
    old_token = nca.token()
    assert client.get("/v1/agencies", headers=bearer(old_token)).status_code == 200

    off = client.patch("/v1/admin/agencies/nca", json={"active": False}, headers=platform.headers())
    assert off.status_code == 200
    assert off.get_json()["active"] is False
    assert_refused(client.get("/v1/agencies", headers=bearer(old_token)))
    refused = token_for(client, nca.client_id, nca.client_secret)
    assert refused.status_code == 401
    assert refused.get_json()["error"] == "invalid_client"

    on = client.patch("/v1/admin/agencies/nca", json={"active": True}, headers=platform.headers())
    assert on.status_code == 200
    assert_refused(client.get("/v1/agencies", headers=bearer(old_token)))
    wait_for_next_second()
    assert client.get("/v1/agencies", headers=nca.headers()).status_code == 200


def test_the_platform_agency_cannot_be_deactivated(platform, client):
    response = client.patch(
        "/v1/admin/agencies/platform", json={"active": False}, headers=platform.headers()
    )
    assert response.status_code == 409
    assert client.get("/v1/agencies", headers=platform.headers()).status_code == 200


# -- clients -----------------------------------------------------------------------------------
def test_a_new_clients_secret_is_shown_once_and_gets_tokens(btp, client, db_session):
    created = client.post(
        "/v1/admin/clients",
        json={"name": "Niche RMS", "scopes": ["referrals:read", "webhooks:manage"]},
        headers=btp.headers(),
    )
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    secret = body["client_secret"]
    assert secret.startswith("chs_")
    assert body["agency"] == "btp"
    assert body["scopes"] == ["referrals:read", "webhooks:manage"]
    assert body["pending_scopes"] == []  # a system passing on a case scope it holds
    assert body["created_by"] == {"agency": "btp", "client_id": btp.client_id, "user_id": None}
    assert body["active"] is True
    assert body["jwks"] is None
    assert created.headers["Cache-Control"] == "no-store"

    issued = token_for(client, body["client_id"], secret)
    assert issued.status_code == 200, issued.get_json()
    assert issued.get_json()["scope"] == "referrals:read webhooks:manage"
    access = bearer(issued.get_json()["access_token"])
    assert client.get("/v1/agencies", headers=access).status_code == 200
    too_much = token_for(client, body["client_id"], secret, "admin")
    assert too_much.get_json()["error"] == "invalid_scope"

    stored = db_session.get(Client, body["client_id"])
    assert stored.secret_hash.startswith("scrypt$")
    assert secret not in stored.secret_hash

    listed = client.get("/v1/admin/clients", headers=btp.headers())
    assert listed.status_code == 200
    assert secret not in listed.get_data(as_text=True)
    items = listed.get_json()["items"]
    assert [i["client_id"] for i in items] == [btp.client_id, body["client_id"]]
    for item in items:
        assert set(item) == {
            "client_id",
            "agency",
            "name",
            "scopes",
            "pending_scopes",
            "created_by",
            "approved_by",
            "approved_at",
            "jwks",
            "active",
            "created_at",
        }

    [event] = events(db_session, "admin.client.create")
    assert (event.resource_type, event.resource_id, event.outcome) == (
        "client",
        body["client_id"],
        "allowed",
    )
    assert len(events(db_session, "admin.client.list")) == 1


def test_replaying_a_client_creation_creates_nothing_and_never_reveals_the_secret_again(
    btp, client, db_session
):
    headers = btp.headers(**{"Idempotency-Key": "new-client-1"})
    body = {"name": "Mosaic", "scopes": ["referrals:read"]}
    first = client.post("/v1/admin/clients", json=body, headers=headers)
    assert first.status_code == 201
    secret = first.get_json()["client_secret"]
    replay = client.post("/v1/admin/clients", json=body, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json() == {**first.get_json(), "client_secret": None}
    names = db_session.execute(select(Client.name).where(Client.agency_code == "btp")).scalars()
    assert sorted(names) == ["Mosaic", "btp system"]
    kept = db_session.execute(select(IdempotencyRecord.body)).scalars().all()
    assert len(kept) == 1
    assert secret.encode() not in kept[0]


def test_only_the_platform_may_grant_audit_read_all(btp, platform, client):
    body = {"name": "Auditor tool", "scopes": ["audit:read:all"]}
    refused = client.post("/v1/admin/clients", json=body, headers=btp.headers())
    assert refused.status_code == 422
    assert set(refused.get_json()["errors"]["json"]) == {"scopes"}
    granted = client.post("/v1/admin/clients", json=body, headers=platform.headers())
    assert granted.status_code == 201
    assert granted.get_json()["agency"] == "platform"


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"name": "X", "scopes": ["referrals:delete"]}, {"scopes"}),
        ({"name": "X", "scopes": []}, {"scopes"}),
        ({"name": "X", "scopes": "admin"}, {"scopes"}),
        ({"name": "X" * 201, "scopes": ["admin"]}, {"name"}),
        ({"scopes": ["admin"]}, {"name"}),
        ({"name": "X", "scopes": ["admin"], "client_secret": "mine"}, {"client_secret"}),
        ({"name": "X", "scopes": ["admin"], "jwks": {"keys": []}}, {"jwks"}),
        (
            {"name": "X", "scopes": ["admin"], "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}},
            {"jwks"},
        ),
    ],
)
def test_client_fields_are_validated(btp, client, body, fields):
    response = client.post("/v1/admin/clients", json=body, headers=btp.headers())
    assert response.status_code == 422, response.get_json()
    assert set(response.get_json()["errors"]["json"]) == fields


def _ec_key() -> dict[str, str]:
    from joserfc.jwk import ECKey

    return ECKey.generate_key("P-256").as_dict(private=True)


def test_a_client_registers_public_keys_only(btp, client):
    private = _ec_key()
    public = {k: v for k, v in private.items() if k != "d"}
    refused = client.post(
        "/v1/admin/clients",
        json={"name": "Keyed", "scopes": ["referrals:read"], "jwks": {"keys": [private]}},
        headers=btp.headers(),
    )
    assert refused.status_code == 422
    assert refused.get_json()["errors"]["json"] == {"jwks": ["Public keys only."]}
    assert private["d"] not in refused.get_data(as_text=True)

    created = client.post(
        "/v1/admin/clients",
        json={"name": "Keyed", "scopes": ["referrals:read"], "jwks": {"keys": [public]}},
        headers=btp.headers(),
    )
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["jwks"] == {"keys": [public]}


def test_deleting_a_client_refuses_its_tokens_at_once(btp, client, db_session):
    created = client.post(
        "/v1/admin/clients",
        json={"name": "Old RMS", "scopes": ["referrals:read"]},
        headers=btp.headers(),
    ).get_json()
    token = token_for(client, created["client_id"], created["client_secret"]).get_json()
    assert client.get("/v1/agencies", headers=bearer(token["access_token"])).status_code == 200

    deleted = client.delete(f"/v1/admin/clients/{created['client_id']}", headers=btp.headers())
    assert deleted.status_code == 204
    assert deleted.get_data() == b""
    assert_refused(client.get("/v1/agencies", headers=bearer(token["access_token"])))
    again = token_for(client, created["client_id"], created["client_secret"])
    assert again.status_code == 401
    assert again.get_json()["error"] == "invalid_client"

    assert (
        client.delete(
            f"/v1/admin/clients/{created['client_id']}", headers=btp.headers()
        ).status_code
        == 204
    )
    inactive = client.get("/v1/admin/clients?active=false", headers=btp.headers()).get_json()
    assert [(c["client_id"], c["active"]) for c in inactive["items"]] == [
        (created["client_id"], False)
    ]
    active = client.get("/v1/admin/clients?active=true", headers=btp.headers()).get_json()
    assert [c["client_id"] for c in active["items"]] == [btp.client_id]
    assert len(events(db_session, "admin.client.deactivate")) == 2


def test_another_agencys_clients_are_invisible(btp, factory, client, db_session):
    other = factory.partner("notts-cs", "admin referrals:read", kind="local_authority")
    other_token = other.token()

    response = client.delete(f"/v1/admin/clients/{other.client_id}", headers=btp.headers())
    assert response.status_code == 404
    assert (
        response.get_json()["detail"]
        == client.delete("/v1/admin/clients/chc_nosuchclient", headers=btp.headers()).get_json()[
            "detail"
        ]
    )
    assert client.get("/v1/agencies", headers=bearer(other_token)).status_code == 200
    listed = client.get("/v1/admin/clients", headers=btp.headers()).get_json()["items"]
    assert [c["client_id"] for c in listed] == [btp.client_id]
    denied = events(db_session, "admin.client.deactivate")
    assert {(e.outcome, e.resource_id) for e in denied} == {
        ("denied", other.client_id),
        ("denied", "chc_nosuchclient"),
    }


def test_client_listing_pages_through_every_client_once(btp, client):
    for n in range(4):
        assert (
            client.post(
                "/v1/admin/clients",
                json={"name": f"System {n}", "scopes": ["referrals:read"]},
                headers=btp.headers(),
            ).status_code
            == 201
        )
    headers = btp.headers()
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "/v1/admin/clients?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(query, headers=headers).get_json()
        seen += [c["name"] for c in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["btp system", "System 0", "System 1", "System 2", "System 3"]
    assert pages == 3
    typo = client.get("/v1/admin/clients?actve=true", headers=headers)
    assert typo.status_code == 422
    assert "actve" in typo.get_json()["errors"]["query"]


# -- users -------------------------------------------------------------------------------------
def _add_user(client, partner, email="sam.jones@btp.example", roles=("caseworker",)):
    return client.post(
        "/v1/admin/users",
        json={"email": email, "name": "Sam Jones", "roles": list(roles)},
        headers=partner.headers(),
    )


def test_admin_adds_lists_and_changes_users(btp, client, db_session):
    created = _add_user(client, btp, email="Sam.Jones@BTP.example")
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["email"] == "sam.jones@btp.example"
    assert body["roles"] == ["caseworker"]
    assert body["agency"] == "btp"
    assert body["active"] is True
    user_id = body["id"]
    assert uuid.UUID(user_id)

    second = _add_user(client, btp, email="alex@btp.example", roles=["auditor"]).get_json()
    listed = client.get("/v1/admin/users", headers=btp.headers()).get_json()
    assert [u["id"] for u in listed["items"]] == [user_id, second["id"]]
    assert listed["next_cursor"] is None
    first_page = client.get("/v1/admin/users?limit=1", headers=btp.headers()).get_json()
    assert [u["id"] for u in first_page["items"]] == [user_id]
    rest = client.get(
        f"/v1/admin/users?limit=1&cursor={first_page['next_cursor']}", headers=btp.headers()
    ).get_json()
    assert [u["id"] for u in rest["items"]] == [second["id"]]
    assert rest["next_cursor"] is None

    changed = client.patch(
        f"/v1/admin/users/{user_id}",
        json={"name": "Sam Jones-Smith", "roles": ["safeguarding_lead", "caseworker"]},
        headers=btp.headers(),
    )
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json()["name"] == "Sam Jones-Smith"
    assert changed.get_json()["roles"] == ["safeguarding_lead", "caseworker"]

    off = client.patch(f"/v1/admin/users/{user_id}", json={"active": False}, headers=btp.headers())
    assert off.get_json()["active"] is False
    inactive = client.get("/v1/admin/users?active=false", headers=btp.headers()).get_json()
    assert [u["id"] for u in inactive["items"]] == [user_id]

    assert [e.resource_id for e in events(db_session, "admin.user.create")] == [
        user_id,
        second["id"],
    ]
    assert len(events(db_session, "admin.user.update")) == 2


def test_a_users_email_is_unique_across_agencies(btp, factory, client):
    other = factory.partner("notts-cs", "admin", kind="local_authority")
    assert _add_user(client, btp).status_code == 201
    assert _add_user(client, btp, email="SAM.JONES@btp.example").status_code == 409
    assert _add_user(client, other).status_code == 409


def test_creating_a_user_is_idempotent(btp, client, db_session):
    headers = btp.headers(**{"Idempotency-Key": "user-1"})
    body = {"email": "kim@btp.example", "name": "Kim", "roles": ["auditor"]}
    first = client.post("/v1/admin/users", json=body, headers=headers)
    replay = client.post("/v1/admin/users", json=body, headers=headers)
    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay.get_json() == first.get_json()
    other_body = client.post("/v1/admin/users", json={**body, "name": "Kim Lee"}, headers=headers)
    assert other_body.status_code == 422
    assert db_session.execute(select(User.email)).scalars().all() == ["kim@btp.example"]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"email": "not-an-email", "name": "N", "roles": ["caseworker"]}, {"email"}),
        ({"email": "a" * 250 + "@x.org", "name": "N", "roles": ["caseworker"]}, {"email"}),
        ({"email": "a@x.org", "name": "N" * 201, "roles": ["caseworker"]}, {"name"}),
        ({"email": "a@x.org", "name": "N", "roles": ["superuser"]}, {"roles"}),
        ({"email": "a@x.org", "name": "N", "roles": []}, {"roles"}),
        ({"email": "a@x.org", "name": "N"}, {"roles"}),
        ({"email": "a@x.org", "name": "N", "roles": ["auditor"], "agency": "nca"}, {"agency"}),
    ],
)
def test_user_fields_are_validated(btp, client, body, fields):
    response = client.post("/v1/admin/users", json=body, headers=btp.headers())
    assert response.status_code == 422
    assert set(response.get_json()["errors"]["json"]) == fields


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"email": "new@btp.example"}, {"email"}),
        ({"roles": ["root"]}, {"roles"}),
        ({"active": "maybe"}, {"active"}),
        ({"name": None}, {"name"}),
    ],
)
def test_user_changes_are_validated(btp, client, body, fields):
    user_id = _add_user(client, btp).get_json()["id"]
    response = client.patch(f"/v1/admin/users/{user_id}", json=body, headers=btp.headers())
    assert response.status_code == 422
    assert set(response.get_json()["errors"]["json"]) == fields


def test_another_agencys_users_are_invisible(btp, factory, client, db_session):
    other = factory.partner("notts-cs", "admin", kind="local_authority")
    theirs = _add_user(client, other, email="pat@notts.example").get_json()["id"]

    response = client.patch(
        f"/v1/admin/users/{theirs}", json={"active": False}, headers=btp.headers()
    )
    assert response.status_code == 404
    missing = client.patch(
        f"/v1/admin/users/{uuid.uuid4()}", json={"active": False}, headers=btp.headers()
    )
    assert missing.get_json() == response.get_json()
    assert (
        client.patch(
            "/v1/admin/users/not-a-uuid", json={"name": "X"}, headers=btp.headers()
        ).status_code
        == 404
    )
    assert client.get("/v1/admin/users", headers=btp.headers()).get_json()["items"] == []
    db_session.expire_all()
    assert db_session.get(User, uuid.UUID(theirs)).active is True
    denied = [e for e in events(db_session, "admin.user.update") if e.resource_id == theirs]
    assert [e.outcome for e in denied] == ["denied"]


def _user_claims(partner, user_id: str) -> dict[str, object]:
    """The claims of a token a partner system obtained for one of its users (jwt-bearer)."""
    return {
        "sub": user_id,
        "client_id": partner.client_id,
        "agency": partner.agency,
        "scope": "referrals:read",
        "roles": ["caseworker"],
        "jti": uuid.uuid4().hex,
        "iat": int(time.time()),
    }


def test_deactivating_a_user_refuses_their_tokens_at_once(btp, client, db_session):
    user_id = _add_user(client, btp).get_json()["id"]
    claims = _user_claims(btp, user_id)
    assert load_actor(db_session, claims).user_id == uuid.UUID(user_id)

    client.patch(f"/v1/admin/users/{user_id}", json={"active": False}, headers=btp.headers())
    db_session.expire_all()
    with pytest.raises(Unauthorized):
        load_actor(db_session, claims)

    client.patch(f"/v1/admin/users/{user_id}", json={"active": True}, headers=btp.headers())
    db_session.expire_all()
    with pytest.raises(Unauthorized):
        load_actor(db_session, claims)  # reactivation does not revive the earlier token
    wait_for_next_second()
    assert load_actor(db_session, _user_claims(btp, user_id)).user_id == uuid.UUID(user_id)


def test_taking_a_role_away_refuses_the_users_earlier_tokens(btp, client, db_session):
    user_id = _add_user(client, btp, roles=["safeguarding_lead"]).get_json()["id"]
    claims = _user_claims(btp, user_id)
    for harmless in ({"name": "S. Jones"}, {"roles": ["safeguarding_lead", "auditor"]}):
        changed = client.patch(f"/v1/admin/users/{user_id}", json=harmless, headers=btp.headers())
        assert changed.status_code == 200
        db_session.expire_all()
        assert load_actor(db_session, claims).user_id == uuid.UUID(user_id)

    client.patch(f"/v1/admin/users/{user_id}", json={"roles": ["auditor"]}, headers=btp.headers())
    db_session.expire_all()
    with pytest.raises(Unauthorized):
        load_actor(db_session, claims)


def test_deactivating_an_agency_refuses_its_users_tokens(platform, factory, client, db_session):
    nca = factory.partner("nca", "admin", kind="police")
    user_id = _add_user(client, nca, email="lee@nca.example").get_json()["id"]
    claims = _user_claims(nca, user_id)
    assert load_actor(db_session, claims).user_id == uuid.UUID(user_id)
    client.patch("/v1/admin/agencies/nca", json={"active": False}, headers=platform.headers())
    db_session.expire_all()
    with pytest.raises(Unauthorized):
        load_actor(db_session, claims)


def test_admin_audit_events_never_carry_secrets(btp, client, db_session):
    created = client.post(
        "/v1/admin/clients", json={"name": "S", "scopes": ["admin"]}, headers=btp.headers()
    ).get_json()
    secret = created["client_secret"]
    rows = db_session.execute(select(AuditEvent)).scalars().all()
    assert rows
    for row in rows:
        assert secret not in repr(
            {c.key: getattr(row, c.key) for c in AuditEvent.__table__.columns}
        )


def test_weak_rsa_keys_are_refused_at_registration(client, factory):
    import base64

    from cryptography.hazmat.primitives.asymmetric import rsa

    def b64(value: int) -> str:
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    numbers = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_numbers()
    )
    weak = {"kty": "RSA", "n": b64(numbers.n), "e": b64(numbers.e)}
    admin = factory.partner("btp", scopes="admin")
    response = client.post(
        "/v1/admin/clients",
        json={"name": "Weak key system", "scopes": ["webhooks:manage"], "jwks": {"keys": [weak]}},
        headers=admin.headers(),
    )
    assert response.status_code == 422
    assert "2048" in response.get_json()["errors"]["json"]["jwks"][0]
