"""An Idempotency-Key replay discloses what the first response did, so it is authorised again
and audited (issue 9): after a referral was transferred away and the retained share revoked,
replaying its creating POST returned the narrative with no audit event."""

from __future__ import annotations

from sqlalchemy import select

from casehub.models import AuditEvent
from tests.helpers import referral_body


def _events(db_session, agency):
    return (
        db_session.execute(
            select(AuditEvent).where(AuditEvent.actor_agency == agency).order_by(AuditEvent.pos)
        )
        .scalars()
        .all()
    )


def test_a_replay_is_audited_like_the_original(client, db_session, factory):
    btp = factory.partner("btp", kind="police")
    headers = {**btp.headers(), "Idempotency-Key": "niche-4471"}
    body = referral_body()
    first = client.post("/v1/referrals", json=body, headers=headers)
    again = client.post("/v1/referrals", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    replayed = _events(db_session, "btp")[-1]
    assert replayed.action == "referral.create.replay" and replayed.outcome == "allowed"
    assert str(replayed.referral_id) == first.get_json()["id"]
    assert replayed.subject_ids == [first.get_json()["subject_id"]]
    assert replayed.basis == "lead" and replayed.request_status == 201


def test_a_replay_after_losing_access_is_404_and_audited_as_denied(client, db_session, factory):
    btp = factory.partner("btp", kind="police")
    notts = factory.partner("notts-cs", kind="local_authority")
    headers = {**btp.headers(), "Idempotency-Key": "niche-4472"}
    body = referral_body(narrative="Disclosed only to whoever may see it.")
    created = client.post("/v1/referrals", json=body, headers=headers)
    referral = created.get_json()
    moved = client.post(
        f"/v1/referrals/{referral['id']}/transfer",
        json={"agency": "notts-cs", "reason": "s47", "lawful_basis": {"article_6": "public_task"}},
        headers={**btp.headers(), "If-Match": created.headers["ETag"]},
    )
    assert moved.status_code == 200
    shares = client.get(f"/v1/referrals/{referral['id']}/shares", headers=notts.headers())
    retained = next(s for s in shares.get_json()["items"] if s["agency"] == "btp")
    revoked = client.post(
        f"/v1/referrals/{referral['id']}/shares/{retained['id']}/revoke",
        json={"reason": "BTP's part is done."},
        headers=notts.headers(),
    )
    assert revoked.status_code == 200

    replay = client.post("/v1/referrals", json=body, headers=headers)
    assert replay.status_code == 404
    assert "Disclosed only" not in replay.get_data(as_text=True)
    last = _events(db_session, "btp")[-1]
    assert (last.action, last.outcome, str(last.referral_id)) == (
        "access.denied",
        "denied",
        referral["id"],
    )
