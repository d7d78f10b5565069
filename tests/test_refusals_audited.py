"""Refusals that used to leave no trace (issue 9) each write one denied audit event."""

from __future__ import annotations

from sqlalchemy import func, select

from casehub.models import AuditEvent
from tests.helpers import referral_body, share_body


def _denied(db_session, agency):
    return db_session.execute(
        select(AuditEvent.action, AuditEvent.resource_type, AuditEvent.resource_id).where(
            AuditEvent.actor_agency == agency, AuditEvent.outcome == "denied"
        )
    ).all()


def _world(client, factory):
    btp = factory.partner("btp", kind="police")
    notts = factory.partner("notts-cs", kind="local_authority")
    tcs = factory.partner("tcs", kind="charity")
    referral = client.post("/v1/referrals", json=referral_body(), headers=btp.headers()).get_json()
    to_notts = client.post(
        f"/v1/referrals/{referral['id']}/shares", json=share_body("notts-cs"), headers=btp.headers()
    ).get_json()
    to_tcs = client.post(
        f"/v1/referrals/{referral['id']}/shares",
        json=share_body(
            "tcs",
            lawful_basis={"article_6": "legitimate_interests", "condition": None, "gateway": None},
        ),
        headers=btp.headers(),
    ).get_json()
    return btp, notts, tcs, referral, to_notts, to_tcs


def test_acknowledging_someone_elses_share_is_audited(client, db_session, factory):
    btp, _notts, tcs, referral, to_notts, _ = _world(client, factory)
    path = f"/v1/referrals/{referral['id']}/shares/{to_notts['id']}/acknowledge"
    assert client.post(path, headers=tcs.headers()).status_code == 404
    assert _denied(db_session, "tcs") == [("share.acknowledge", "share", to_notts["id"])]
    assert client.post(path, headers=btp.headers()).status_code == 403
    assert _denied(db_session, "btp") == [("share.acknowledge", "share", to_notts["id"])]


def test_a_recipient_revoking_another_recipients_share_is_audited(client, db_session, factory):
    _, _notts, tcs, referral, to_notts, _ = _world(client, factory)
    response = client.post(
        f"/v1/referrals/{referral['id']}/shares/{to_notts['id']}/revoke",
        json={"reason": "Not mine to revoke"},
        headers=tcs.headers(),
    )
    assert response.status_code == 404
    assert _denied(db_session, "tcs") == [("share.revoke", "share", to_notts["id"])]


def test_raising_a_referral_about_another_agencys_child_is_audited(client, db_session, factory):
    btp, *_ = _world(client, factory)
    stranger = factory.partner("leics-police", kind="police")
    theirs = client.post(
        "/v1/subjects",
        json={
            "given_name": "Ana",
            "family_name": "Roe",
            "gender": "female",
            "estimated_birth_year": 2011,
        },
        headers=btp.headers(),
    ).get_json()
    body = referral_body()
    del body["subject"]
    response = client.post(
        "/v1/referrals", json={**body, "subject_id": theirs["id"]}, headers=stranger.headers()
    )
    assert response.status_code == 422
    assert _denied(db_session, "leics-police") == [("access.denied", "subject", theirs["id"])]


def test_an_unknown_purpose_of_use_is_audited(client, db_session, factory):
    btp, _, _, referral, _, _ = _world(client, factory)
    headers = {**btp.headers(), "Purpose-Of-Use": "curiosity"}
    before = db_session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    response = client.get(f"/v1/referrals/{referral['id']}", headers=headers)
    assert response.status_code == 422
    assert _denied(db_session, "btp") == [("access.denied", "referral", referral["id"])]
    after = db_session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    assert after == before + 1
