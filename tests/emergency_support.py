"""Matches and emergency accesses for tests: a Match row written as `POST /v1/matches` would
leave it, and a break-glass over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from casehub.auth.actor import Actor
from casehub.db import get_db, utcnow
from casehub.models import Agency, Match
from casehub.services import emergency
from tests.helpers import referral_body

REASON = "Child missing overnight, believed held at an address linked to a county line."


def add_match(
    session: Session,
    *,
    agency: str,
    found: dict[str, Iterable[str]],
    confidence: str = "strong",
    expires_at: datetime | None = None,
) -> str:
    """A match of `agency`'s that found, per holder agency, these children; committed."""
    now = utcnow()
    match = Match(
        id=uuid.uuid4(),
        agency_code=agency,
        client_id="test-client",
        found={
            holder: {"confidence": confidence, "subject_ids": [str(s) for s in subject_ids]}
            for holder, subject_ids in found.items()
        },
        created_at=now,
        expires_at=expires_at or now + timedelta(hours=24),
    )
    session.add(match)
    session.commit()
    return str(match.id)


def app_session(client: FlaskClient) -> Session:
    """A session on the test's connection, for code that has a client but no db_session
    (the route walk's call functions): the app's request sessions are bound to it."""
    return get_db(client.application).sessionmaker()  # type: ignore[no-any-return]


def grant_body(match_id: str, agency: str, **overrides: Any) -> dict[str, Any]:
    """A body for `POST /v1/emergency-access`."""
    body: dict[str, Any] = {
        "match_id": match_id,
        "agency": agency,
        "reason": REASON,
        "purpose": "safeguard_assess",
    }
    body.update(overrides)
    return body


def held_referral(client: FlaskClient, holder: Any, **overrides: Any) -> dict[str, Any]:
    """A referral led by `holder` (a tests.conftest.Partner), created over HTTP."""
    response = client.post(
        "/v1/referrals", json=referral_body(**overrides), headers=holder.headers()
    )
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json())


def break_glass(client: FlaskClient, grantee: Any, holder: Any) -> dict[str, Any]:
    """A fresh referral led by `holder`, a match of `grantee`'s finding its child, and an
    emergency access over it: `{"id", "referral_id", "subject_id", "match_id"}`."""
    referral = held_referral(client, holder)
    with app_session(client) as session:
        match_id = add_match(
            session, agency=grantee.agency, found={holder.agency: [referral["subject_id"]]}
        )
    response = client.post(
        "/v1/emergency-access", json=grant_body(match_id, holder.agency), headers=grantee.headers()
    )
    assert response.status_code == 201, response.get_json()
    return {
        "id": response.get_json()["id"],
        "referral_id": referral["id"],
        "subject_id": referral["subject_id"],
        "match_id": match_id,
    }


def grant_directly(client: FlaskClient, grantee: Any, holder: Any) -> str:
    """As `break_glass`, with the grant made by the service rather than over HTTP (so the
    grantee's client spends no request budget on it): the emergency access's id."""
    referral = held_referral(client, holder)
    with app_session(client) as session:
        match_id = add_match(
            session, agency=grantee.agency, found={holder.agency: [referral["subject_id"]]}
        )
        agency = session.get(Agency, grantee.agency)
        assert agency is not None
        actor = Actor(
            agency=agency.code,
            agency_kind=agency.kind,
            is_platform=agency.is_platform,
            client_id=grantee.client_id,
            scopes=frozenset({emergency.EMERGENCY_SCOPE}),
        )
        access = emergency.grant_emergency_access(
            session,
            actor=actor,
            data={**grant_body(match_id, holder.agency), "match_id": uuid.UUID(match_id)},
            now=utcnow(),
        )
        session.commit()
        return str(access.id)
