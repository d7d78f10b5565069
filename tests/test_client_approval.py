"""Four eyes on case access: case scopes on a client a person registers wait for a second
administrator (of the agency or the platform) before any token carries them."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from casehub.auth import scopes as scope_registry
from casehub.cli import main
from casehub.models import AuditEvent, Client
from casehub.services import agencies as agency_service
from tests.conftest import Factory, Partner
from tests.helpers import referral_body
from tests.oauth_support import JWT_BEARER, basic
from tests.test_jwt_bearer import new_key, public_jwk, user_assertion

CASEWORK = "referrals:read referrals:write subjects:read subjects:write"


@dataclass
class Person:
    """An administrator acting in person through their agency's admin console (jwt-bearer)."""

    agency: str
    user_id: uuid.UUID
    console_id: str
    console_secret: str
    key: Any
    http: FlaskClient

    def headers(self) -> dict[str, str]:
        assertion = user_assertion(self.key, self.console_id, str(self.user_id))
        response = self.http.post(
            "/oauth/token",
            data={"grant_type": JWT_BEARER, "assertion": assertion},
            headers={"Authorization": basic(self.console_id, self.console_secret)},
        )
        assert response.status_code == 200, response.get_json()
        return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


class People:
    """Administrators of an agency, each acting through the agency's one admin console."""

    def __init__(self, session: Session, factory: Factory, http: FlaskClient, agency: str) -> None:
        self.session, self.http, self.agency = session, http, agency
        self.key = new_key("ES256")
        console, secret = agency_service.add_client(
            session,
            agency_code=agency,
            name=f"{agency} admin console",
            scope="admin webhooks:manage",
            jwks={"keys": [public_jwk(self.key)]},
            scrypt_n=2**10,
        )
        assert secret is not None
        self.console_id, self.console_secret = console.client_id, secret
        session.commit()

    def admin(self, name: str) -> Person:
        user = agency_service.add_user(
            self.session,
            agency_code=self.agency,
            email=f"{name}@{self.agency}.example",
            name=name.title(),
            roles=["agency_admin"],
        )
        self.session.commit()
        return Person(
            self.agency, user.id, self.console_id, self.console_secret, self.key, self.http
        )


@pytest.fixture
def btp(factory: Factory) -> Partner:
    """BTP's case system (registered by the operator), which leads a referral."""
    return factory.partner("btp", CASEWORK, kind="police")


@pytest.fixture
def referral(btp: Partner, client: FlaskClient) -> dict[str, Any]:
    created = client.post("/v1/referrals", json=referral_body(), headers=btp.headers())
    assert created.status_code == 201, created.get_json()
    return dict(created.get_json())


@pytest.fixture
def btp_admins(db_session, factory, client, btp) -> People:
    return People(db_session, factory, client, "btp")


def token(client: FlaskClient, created: dict[str, Any], scope: str | None = None):
    data = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
    return client.post(
        "/oauth/token",
        data=data,
        headers={"Authorization": basic(created["client_id"], created["client_secret"])},
    )


def read_referral(client: FlaskClient, created: dict[str, Any], referral_id: str):
    issued = token(client, created)
    assert issued.status_code == 200, issued.get_json()
    bearer = {"Authorization": f"Bearer {issued.get_json()['access_token']}"}
    return client.get(f"/v1/referrals/{referral_id}", headers=bearer)


def register(client: FlaskClient, person_or_partner: Any, scopes: list[str], name="Niche RMS"):
    return client.post(
        "/v1/admin/clients",
        json={"name": name, "scopes": scopes},
        headers=person_or_partner.headers(),
    )


def approve(client: FlaskClient, approver: Any, client_id: str, scopes: list[str]):
    return client.post(
        f"/v1/admin/clients/{client_id}/approval",
        json={"scopes": scopes},
        headers=approver.headers(),
    )


def events(db_session: Session, action: str) -> list[AuditEvent]:
    db_session.expire_all()
    return list(
        db_session.execute(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.pos)
        ).scalars()
    )


# -- the finding -------------------------------------------------------------------------------
def test_case_scopes_a_person_asks_for_wait_for_a_second_administrator(
    client, db_session, btp_admins, referral
):
    alice, bob = btp_admins.admin("alice"), btp_admins.admin("bob")

    created = register(client, alice, ["referrals:read", "webhooks:manage"])
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["scopes"] == ["webhooks:manage"]
    assert body["pending_scopes"] == ["referrals:read"]
    assert body["created_by"] == {
        "agency": "btp",
        "client_id": btp_admins.console_id,
        "user_id": str(alice.user_id),
    }
    assert body["approved_by"] is None

    # Until approved, no token carries the case scope, asked for or not.
    assert token(client, body).get_json()["scope"] == "webhooks:manage"
    asked = token(client, body, "referrals:read")
    assert asked.status_code == 400
    assert asked.get_json()["error"] == "invalid_scope"
    assert read_referral(client, body, referral["id"]).status_code == 403

    approved = approve(client, bob, body["client_id"], ["referrals:read"])
    assert approved.status_code == 200, approved.get_json()
    assert approved.get_json()["scopes"] == ["webhooks:manage", "referrals:read"]
    assert approved.get_json()["pending_scopes"] == []
    assert approved.get_json()["approved_by"] == {
        "agency": "btp",
        "client_id": btp_admins.console_id,
        "user_id": str(bob.user_id),
    }
    assert token(client, body).get_json()["scope"] == "referrals:read webhooks:manage"
    assert read_referral(client, body, referral["id"]).status_code == 200

    [creation] = events(db_session, "admin.client.create")
    assert (creation.outcome, creation.resource_id, creation.actor_user_id, creation.basis) == (
        "allowed",
        body["client_id"],
        alice.user_id,
        "approval_pending",
    )
    [approval] = events(db_session, "admin.client.approve")
    assert (approval.outcome, approval.resource_id, approval.actor_user_id) == (
        "allowed",
        body["client_id"],
        bob.user_id,
    )
    assert approval.request_status == 200


# -- who may approve -----------------------------------------------------------------------------
def _still_pending(client, created: dict[str, Any]) -> None:
    asked = token(client, created, "referrals:read")
    assert asked.get_json()["error"] == "invalid_scope"
    assert "awaiting approval: referrals:read" in asked.get_json()["error_description"]


def test_the_person_who_asked_cannot_approve(client, db_session, btp_admins):
    alice = btp_admins.admin("alice")
    created = register(client, alice, ["referrals:read"]).get_json()
    assert created["scopes"] == []
    assert token(client, created).get_json()["error"] == "invalid_scope"  # nothing granted yet

    refused = approve(client, alice, created["client_id"], ["referrals:read"])
    assert refused.status_code == 403
    assert refused.get_json()["type"] == "urn:casehub:problem:forbidden"
    assert "Another administrator" in refused.get_json()["detail"]
    _still_pending(client, created)
    [denied] = events(db_session, "admin.client.approve")
    assert (denied.outcome, denied.resource_id, denied.actor_user_id, denied.request_status) == (
        "denied",
        created["client_id"],
        alice.user_id,
        403,
    )


def test_a_system_acting_as_itself_cannot_approve(client, db_session, factory, btp_admins):
    alice = btp_admins.admin("alice")
    created = register(client, alice, ["referrals:read"]).get_json()
    machine = factory.partner("btp", "admin")

    refused = approve(client, machine, created["client_id"], ["referrals:read"])
    assert refused.status_code == 403
    assert "approved by a person" in refused.get_json()["detail"]
    _still_pending(client, created)
    [denied] = events(db_session, "admin.client.approve")
    assert (denied.outcome, denied.actor_client_id, denied.actor_user_id) == (
        "denied",
        machine.client_id,
        None,
    )


def test_another_agencys_administrator_is_told_no_such_client(
    client, db_session, factory, btp_admins
):
    alice = btp_admins.admin("alice")
    created = register(client, alice, ["referrals:read"]).get_json()
    factory.agency("notts-cs", "local_authority")
    stranger = People(db_session, factory, client, "notts-cs").admin("sam")

    refused = approve(client, stranger, created["client_id"], ["referrals:read"])
    assert refused.status_code == 404
    missing = approve(client, stranger, "chc_nosuchclient", ["referrals:read"])
    assert missing.get_json() == refused.get_json()  # another agency's is as if absent
    _still_pending(client, created)
    denied = events(db_session, "admin.client.approve")
    assert [(e.outcome, e.resource_id, e.actor_agency) for e in denied] == [
        ("denied", created["client_id"], "notts-cs"),
        ("denied", "chc_nosuchclient", "notts-cs"),
    ]
    listed = client.get("/v1/admin/clients", headers=stranger.headers()).get_json()["items"]
    assert created["client_id"] not in [c["client_id"] for c in listed]


def test_a_platform_administrator_may_approve(client, db_session, factory, btp_admins, referral):
    alice = btp_admins.admin("alice")
    created = register(client, alice, ["referrals:read"]).get_json()
    factory.agency("partnership", "other", platform=True)
    platform = People(db_session, factory, client, "partnership").admin("pat")

    approved = approve(client, platform, created["client_id"], ["referrals:read"])
    assert approved.status_code == 200, approved.get_json()
    assert approved.get_json()["approved_by"]["agency"] == "partnership"
    assert approved.get_json()["agency"] == "btp"
    assert read_referral(client, created, referral["id"]).status_code == 200
    [event] = events(db_session, "admin.client.approve")
    assert (event.outcome, event.actor_agency, event.actor_user_id) == (
        "allowed",
        "partnership",
        platform.user_id,
    )


# -- what is approved ----------------------------------------------------------------------------
def test_scopes_without_case_content_are_granted_at_once(client, db_session, btp_admins):
    alice = btp_admins.admin("alice")
    created = register(client, alice, ["admin", "webhooks:manage", "audit:read"])
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert (body["scopes"], body["pending_scopes"]) == (
        ["admin", "webhooks:manage", "audit:read"],
        [],
    )
    assert token(client, body).get_json()["scope"] == "audit:read webhooks:manage admin"
    bearer = {"Authorization": f"Bearer {token(client, body).get_json()['access_token']}"}
    assert client.get("/v1/webhooks", headers=bearer).status_code == 200
    [creation] = events(db_session, "admin.client.create")
    assert (creation.outcome, creation.basis) == ("allowed", None)
    refused = approve(client, btp_admins.admin("bob"), body["client_id"], ["admin"])
    assert refused.status_code == 409


def test_part_of_a_request_may_be_approved_and_the_rest_waits(client, db_session, btp_admins):
    alice, bob = btp_admins.admin("alice"), btp_admins.admin("bob")
    created = register(client, alice, ["referrals:read", "subjects:read", "referrals:write"])
    body = created.get_json()
    assert body["pending_scopes"] == ["referrals:read", "subjects:read", "referrals:write"]

    wrong = approve(client, bob, body["client_id"], ["referrals:share"])
    assert wrong.status_code == 422
    assert set(wrong.get_json()["errors"]["json"]) == {"scopes"}
    first = approve(client, bob, body["client_id"], ["subjects:read"])
    assert first.status_code == 200
    assert (first.get_json()["scopes"], first.get_json()["pending_scopes"]) == (
        ["subjects:read"],
        ["referrals:read", "referrals:write"],
    )
    assert token(client, body).get_json()["scope"] == "subjects:read"

    listed = client.get("/v1/admin/clients", headers=bob.headers()).get_json()["items"]
    [shown] = [c for c in listed if c["client_id"] == body["client_id"]]
    assert shown["pending_scopes"] == ["referrals:read", "referrals:write"]
    assert shown["created_by"]["user_id"] == str(alice.user_id)
    assert shown["approved_by"]["user_id"] == str(bob.user_id)
    assert shown["approved_at"] is not None

    rest = approve(client, bob, body["client_id"], ["referrals:write", "referrals:read"])
    assert rest.status_code == 200
    assert rest.get_json()["pending_scopes"] == []
    again = approve(client, bob, body["client_id"], ["referrals:read"])
    assert again.status_code == 409
    assert [e.outcome for e in events(db_session, "admin.client.approve")] == ["allowed"] * 2


@pytest.mark.parametrize(
    "body", [{}, {"scopes": []}, {"scopes": ["referrals:delete"]}, {"scopes": "referrals:read"}]
)
def test_an_approval_names_known_scopes(client, btp_admins, body):
    alice, bob = btp_admins.admin("alice"), btp_admins.admin("bob")
    created = register(client, alice, ["referrals:read"]).get_json()
    response = client.post(
        f"/v1/admin/clients/{created['client_id']}/approval", json=body, headers=bob.headers()
    )
    assert response.status_code == 422
    assert set(response.get_json()["errors"]["json"]) == {"scopes"}


# -- systems acting as themselves ----------------------------------------------------------------
def test_a_system_passes_on_only_the_case_scopes_it_holds(client, db_session, factory):
    machine = factory.partner("btp", "admin referrals:read")
    passed_on = register(client, machine, ["referrals:read", "webhooks:manage"])
    assert passed_on.status_code == 201
    assert passed_on.get_json()["scopes"] == ["referrals:read", "webhooks:manage"]
    assert passed_on.get_json()["pending_scopes"] == []

    # Held back, its request could be approved by whoever holds the system's secret: refused.
    more = register(client, machine, ["referrals:read", "subjects:read"], name="More")
    assert more.status_code == 422
    assert "subjects:read" in more.get_json()["errors"]["json"]["scopes"][0]
    names = [
        c["name"]
        for c in client.get("/v1/admin/clients", headers=machine.headers()).get_json()["items"]
    ]
    assert "More" not in names
    admin_only = factory.partner("btp", "admin")
    assert register(client, admin_only, ["subjects:read"], name="Other").status_code == 422


def test_the_operators_cli_needs_no_approval(app, db_session, factory):
    factory.agency("btp", "police")
    result = app.test_cli_runner().invoke(
        main, ["clients", "add", "--agency", "btp", "--name", "RMS", "--scopes", CASEWORK, "--json"]
    )
    assert result.exit_code == 0, result.output
    row = db_session.get(Client, json.loads(result.output)["client_id"])
    assert (row.scope, row.pending_scope, row.created_by_client_id) == (CASEWORK, "", None)


# -- which scopes are case scopes ----------------------------------------------------------------
def test_every_scope_is_a_case_scope_unless_declared_without_case_content():
    without = {
        "admin",
        "webhooks:manage",
        "audit:read",
        "audit:read:all",
        "monitoring:read",
        "statistics:read",  # suppressed aggregates: never a record (CONTRACT §12)
    }
    assert without == scope_registry.WITHOUT_CASE_CONTENT
    assert set(scope_registry.SCOPES) - without == scope_registry.CASE_SCOPES
    assert {"referrals:read", "referrals:write", "referrals:share"} <= scope_registry.CASE_SCOPES
    assert {"subjects:read", "subjects:write"} <= scope_registry.CASE_SCOPES
    assert "subjects:sar" in scope_registry.CASE_SCOPES
