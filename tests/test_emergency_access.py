"""Emergency (break-glass) access, CONTRACT §10: who may break the glass, what it opens (read
only, for four hours), how it ends, what the holder hears and sees, and the auditors' review."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from casehub.audit.chain import sequence_pending
from casehub.db import utcnow
from casehub.models import AuditEvent, EmergencyAccess, Referral, Share
from tests.conftest import ALL_SCOPES, Partner
from tests.emergency_support import REASON, add_match, grant_body, held_referral
from tests.helpers import referral_body, share_body, subject_body


@dataclass
class Parties:
    police: Partner  # breaks the glass
    holder: Partner  # a charity leading referrals about the child
    outsider: Partner  # an unrelated force
    auditor: Partner  # the partnership's (platform agency)
    referrals: list[dict[str, Any]]  # two the holder leads about one child
    match_id: str


@pytest.fixture
def parties(client, factory, db_session) -> Parties:
    police = factory.partner("notts-police", kind="police")
    holder = factory.partner("tcs", kind="charity")
    outsider = factory.partner("leics-police", kind="police")
    factory.agency("partnership", "other", platform=True)
    auditor = factory.partner("partnership", scopes="audit:read:all monitoring:read")
    first = held_referral(client, holder)
    # A second referral about the same child.
    body = {**referral_body(summary="Seen again."), "subject_id": first["subject_id"]}
    del body["subject"]
    response = client.post("/v1/referrals", json=body, headers=holder.headers())
    assert response.status_code == 201, response.get_json()
    second = response.get_json()
    match_id = add_match(db_session, agency=police.agency, found={"tcs": [first["subject_id"]]})
    return Parties(police, holder, outsider, auditor, [first, second], match_id)


def _charity_share(agency: str) -> dict[str, Any]:
    """A share by the holder (a charity, which cannot rely on public_task)."""
    lawful = {"article_6": "legitimate_interests", "condition": "dpa2018_sch1_para18_safeguarding"}
    return share_body(agency, lawful_basis=lawful)


def _grant(client, parties: Parties, partner: Partner | None = None, **overrides: Any) -> Any:
    partner = partner or parties.police
    body = {**grant_body(parties.match_id, parties.holder.agency), **overrides}
    return client.post("/v1/emergency-access", json=body, headers=partner.headers())


def _granted(client, parties: Parties) -> dict[str, Any]:
    response = _grant(client, parties)
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json())


def _last_event(db_session, action: str, **where: Any) -> AuditEvent:
    stmt = select(AuditEvent).where(AuditEvent.action == action)
    for name, value in where.items():
        stmt = stmt.where(getattr(AuditEvent, name) == value)
    event = db_session.execute(stmt.order_by(AuditEvent.pos.desc()).limit(1)).scalar_one()
    return event


def _move_back(db_session, emergency_access_id: str, delta: timedelta) -> None:
    """Move an emergency access (and its shares) `delta` into the past, as if that much time
    had gone by since it was granted."""
    eid = uuid.UUID(emergency_access_id)
    access = db_session.get(EmergencyAccess, eid)
    db_session.execute(
        update(EmergencyAccess)
        .where(EmergencyAccess.id == eid)
        .values(created_at=access.created_at - delta, expires_at=access.expires_at - delta)
    )
    for share in db_session.execute(
        select(Share).where(Share.emergency_access_id == eid)
    ).scalars():
        share.created_at -= delta
        share.expires_at -= delta
    db_session.commit()
    db_session.expire_all()


# -- who may break the glass --------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["police", "local_authority"])
def test_police_and_local_authorities_break_the_glass_and_read_at_once(
    client, factory, db_session, kind
):
    grantee = factory.partner(f"em-{kind.replace('_', '-')}", kind=kind)
    holder = factory.partner("tcs", kind="charity")
    referral = held_referral(client, holder)
    rid = referral["id"]
    match_id = add_match(db_session, agency=grantee.agency, found={"tcs": [referral["subject_id"]]})
    assert client.get(f"/v1/referrals/{rid}", headers=grantee.headers()).status_code == 404

    before = utcnow()
    response = client.post(
        "/v1/emergency-access", json=grant_body(match_id, "tcs"), headers=grantee.headers()
    )

    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert set(body) == {"id", "referral_ids", "expires_at"}
    assert body["referral_ids"] == [rid]
    expires = datetime.fromisoformat(body["expires_at"])
    assert before + timedelta(hours=4) <= expires <= utcnow() + timedelta(hours=4)
    assert response.headers["Location"].endswith(f"/v1/emergency-access/{body['id']}")
    read = client.get(f"/v1/referrals/{rid}", headers=grantee.headers())
    assert read.status_code == 200
    assert read.get_json()["narrative"] == referral["narrative"]
    event = _last_event(db_session, "referral.read", referral_id=uuid.UUID(rid))
    assert (event.actor_agency, event.basis) == (grantee.agency, f"emergency:{body['id']}")
    assert event.purpose == "safeguard_assess"


@pytest.mark.parametrize("kind", ["charity", "probation", "health"])
def test_other_kinds_of_agency_are_refused(client, factory, db_session, parties, kind):
    asker = factory.partner(f"asker-{kind}", kind=kind)
    parties.match_id = add_match(db_session, agency=asker.agency, found={"tcs": ["x"]})

    response = _grant(client, parties, asker)

    assert response.status_code == 403
    assert "police and local-authority agencies only" in response.get_json()["detail"]
    assert db_session.execute(select(EmergencyAccess)).first() is None
    refused = _last_event(db_session, "emergency_access.grant")
    assert (refused.outcome, refused.actor_agency) == ("denied", asker.agency)


def test_without_the_emergency_scope_the_caller_is_refused(client, parties):
    scopes = " ".join(s for s in ALL_SCOPES.split() if s != "referrals:emergency")
    body = grant_body(parties.match_id, "tcs")
    response = client.post(
        "/v1/emergency-access", json=body, headers=parties.police.headers(scopes)
    )
    assert response.status_code == 403
    assert 'scope="referrals:emergency"' in response.headers["WWW-Authenticate"]


def test_a_reason_shorter_than_twenty_characters_is_refused(client, parties):
    response = _grant(client, parties, reason="Urgent, trust me.")
    assert response.status_code == 422
    assert "reason" in response.get_json()["errors"]["json"]


def test_an_unknown_purpose_is_refused(client, parties):
    response = _grant(client, parties, purpose="curiosity")
    assert response.status_code == 422
    assert "purpose" in response.get_json()["errors"]["json"]


def test_another_agencys_or_an_expired_match_is_refused(client, db_session, parties):
    theirs = add_match(db_session, agency=parties.outsider.agency, found={"tcs": ["x"]})
    old = add_match(
        db_session,
        agency=parties.police.agency,
        found={"tcs": [parties.referrals[0]["subject_id"]]},
        expires_at=utcnow() - timedelta(seconds=1),
    )
    for match_id in (theirs, old, str(uuid.uuid4())):
        response = _grant(client, parties, match_id=match_id)
        assert response.status_code == 422, match_id
        assert "match_id" in response.get_json()["errors"]["json"]
    # The same answer for each, and every attempt is left for the auditors.
    denied = db_session.execute(
        select(AuditEvent).where(
            AuditEvent.action == "emergency_access.grant", AuditEvent.outcome == "denied"
        )
    ).all()
    assert len(denied) == 3


def test_an_agency_the_match_did_not_list_is_refused(client, factory, parties):
    factory.agency("derby-cs", "local_authority")
    response = _grant(client, parties, agency="derby-cs")
    assert response.status_code == 422
    assert "agency" in response.get_json()["errors"]["json"]


# -- what it opens --------------------------------------------------------------------------
def test_it_opens_every_discoverable_referral_about_the_child_read_only(
    client, db_session, parties
):
    granted = _granted(client, parties)
    eid = granted["id"]
    rids = [r["id"] for r in parties.referrals]
    assert granted["referral_ids"] == rids
    police = parties.police
    rid = rids[0]
    etag = client.get(f"/v1/referrals/{rid}", headers=parties.holder.headers()).headers["ETag"]

    reads = {
        "referral": client.get(f"/v1/referrals/{rid}", headers=police.headers()),
        "notes": client.get(f"/v1/referrals/{rid}/notes", headers=police.headers()),
        "history": client.get(f"/v1/referrals/{rid}/history", headers=police.headers()),
        "subject": client.get(
            f"/v1/subjects/{parties.referrals[0]['subject_id']}", headers=police.headers()
        ),
        "list": client.get("/v1/referrals?shared_with_me=true", headers=police.headers()),
    }
    assert {name: r.status_code for name, r in reads.items()} == dict.fromkeys(reads, 200)
    assert [r["id"] for r in reads["list"].get_json()["items"]] == rids
    for action, resource in (("referral.read", rid), ("note.list", rid)):
        event = _last_event(db_session, action, referral_id=uuid.UUID(resource))
        assert event.basis == f"emergency:{eid}"
    assert _last_event(db_session, "subject.read").basis == f"emergency:{eid}"

    changes = {
        "patch": client.patch(
            f"/v1/referrals/{rid}",
            json={"risk_level": "medium"},
            headers=police.headers(**{"If-Match": etag}),
        ),
        "note": client.post(
            f"/v1/referrals/{rid}/notes",
            json={"body": "Seen him at the station.", "visibility": "shared"},
            headers=police.headers(),
        ),
        "transition": client.post(
            f"/v1/referrals/{rid}/transitions",
            json={"to": "acknowledged"},
            headers=police.headers(**{"If-Match": etag}),
        ),
        "share": client.post(
            f"/v1/referrals/{rid}/shares", json=share_body("leics-police"), headers=police.headers()
        ),
        "transfer": client.post(
            f"/v1/referrals/{rid}/transfer",
            json={
                "agency": "notts-police",
                "reason": "Take over",
                "lawful_basis": {"article_6": "public_task"},
            },
            headers=police.headers(**{"If-Match": etag}),
        ),
    }
    assert {name: r.status_code for name, r in changes.items()} == dict.fromkeys(changes, 403)
    assert (
        client.get(f"/v1/referrals/{rid}", headers=parties.holder.headers()).headers["ETag"] == etag
    )
    # An outsider still sees nothing.
    assert client.get(f"/v1/referrals/{rid}", headers=parties.outsider.headers()).status_code == 404


def test_the_holder_sees_who_broke_the_glass_in_its_shares(client, parties):
    granted = _granted(client, parties)
    rid = parties.referrals[0]["id"]

    listed = client.get(f"/v1/referrals/{rid}/shares", headers=parties.holder.headers())

    assert listed.status_code == 200
    (share,) = listed.get_json()["items"]
    assert share["emergency_access_id"] == granted["id"]
    assert share["agency"] == share["created_by_agency"] == "notts-police"
    assert (share["access"], share["purpose"], share["status"]) == (
        "read",
        "safeguard_assess",
        "active",
    )
    assert share["necessity"] == REASON
    assert share["lawful_basis"]["article_6"] == "vital_interests"
    assert share["lawful_basis"]["condition"] == "uk_gdpr_9_2_c_vital_interests"
    assert share["consent"]["status"] == "not_possible" and share["consent"]["rationale"]
    assert share["expires_at"] == granted["expires_at"]
    own = client.get(f"/v1/referrals/{rid}/shares", headers=parties.police.headers())
    assert [s["id"] for s in own.get_json()["items"]] == [share["id"]]
    # A share the lead made says so.
    made = client.post(
        f"/v1/referrals/{rid}/shares",
        json=_charity_share("leics-police"),
        headers=parties.holder.headers(),
    )
    assert made.get_json()["emergency_access_id"] is None


def test_a_referral_already_shared_is_not_opened_again(client, parties):
    first, second = (r["id"] for r in parties.referrals)
    shared = client.post(
        f"/v1/referrals/{first}/shares",
        json=_charity_share("notts-police"),
        headers=parties.holder.headers(),
    )
    assert shared.status_code == 201

    assert _granted(client, parties)["referral_ids"] == [second]
    again = _grant(client, parties)
    assert again.status_code == 409
    assert "already has an active share" in again.get_json()["detail"]


def test_a_referral_that_is_not_discoverable_is_not_opened(client, db_session, parties):
    db_session.execute(update(Referral).values(discoverable=False))
    db_session.commit()
    response = _grant(client, parties)
    assert response.status_code == 409
    assert db_session.execute(select(Share)).first() is None


def test_the_holder_is_told_at_once_with_ids_only(client, parties):
    granted = _granted(client, parties)

    feed = client.get("/v1/events?type=emergency_access.granted", headers=parties.holder.headers())

    assert feed.status_code == 200
    (event,) = feed.get_json()["items"]
    assert event["data"] == {"emergency_access_id": granted["id"], "agency": "notts-police"}
    text = feed.get_data(as_text=True)
    child = subject_body()
    for personal in (child["given_name"], child["family_name"], child["date_of_birth"], REASON):
        assert personal not in text
    mine = client.get("/v1/events?type=emergency_access.granted", headers=parties.police.headers())
    assert mine.get_json()["items"] == []


def test_the_grant_is_audited_per_referral_in_the_holders_reach(client, db_session, parties):
    granted = _granted(client, parties)
    events = (
        db_session.execute(select(AuditEvent).where(AuditEvent.action == "emergency_access.grant"))
        .scalars()
        .all()
    )
    assert sorted(str(e.referral_id) for e in events) == sorted(r["id"] for r in parties.referrals)
    assert {e.basis for e in events} == {f"emergency:{granted['id']}"}
    assert {e.resource_id for e in events} == {granted["id"]}
    assert {tuple(e.subject_ids) for e in events} == {(parties.referrals[0]["subject_id"],)}


# -- how it ends ------------------------------------------------------------------------------
def test_after_four_hours_reads_are_refused(client, db_session, parties):
    granted = _granted(client, parties)
    rid = parties.referrals[0]["id"]
    _move_back(db_session, granted["id"], timedelta(hours=3, minutes=59))
    assert client.get(f"/v1/referrals/{rid}", headers=parties.police.headers()).status_code == 200

    _move_back(db_session, granted["id"], timedelta(minutes=2))

    assert client.get(f"/v1/referrals/{rid}", headers=parties.police.headers()).status_code == 404
    listed = client.get("/v1/referrals", headers=parties.police.headers())
    assert listed.get_json()["items"] == []
    seen = client.get(f"/v1/emergency-access/{granted['id']}", headers=parties.police.headers())
    assert seen.get_json()["status"] == "expired"
    ended = client.post(
        f"/v1/emergency-access/{granted['id']}/end", headers=parties.police.headers()
    )
    assert ended.status_code == 409


@pytest.mark.parametrize("side", ["grantee", "holder"])
def test_either_side_ends_it_early(client, db_session, parties, side):
    granted = _granted(client, parties)
    partner = parties.police if side == "grantee" else parties.holder
    scope = "referrals:emergency" if side == "grantee" else "referrals:share"

    ended = client.post(f"/v1/emergency-access/{granted['id']}/end", headers=partner.headers(scope))

    assert ended.status_code == 200, ended.get_json()
    body = ended.get_json()
    assert (body["status"], body["ended_by_agency"]) == ("ended", partner.agency)
    assert body["ended_at"] is not None
    for referral in parties.referrals:
        read = client.get(f"/v1/referrals/{referral['id']}", headers=parties.police.headers())
        assert read.status_code == 404
        shares = client.get(
            f"/v1/referrals/{referral['id']}/shares", headers=parties.holder.headers()
        ).get_json()["items"]
        assert [s["status"] for s in shares] == ["revoked"]
    again = client.post(f"/v1/emergency-access/{granted['id']}/end", headers=partner.headers())
    assert again.status_code == 409
    other = parties.holder if side == "grantee" else parties.police
    heard = client.get("/v1/events?type=share.revoked", headers=other.headers()).get_json()
    assert sorted(e["data"]["referral_id"] for e in heard["items"]) == sorted(
        r["id"] for r in parties.referrals
    )
    # Ending does not take it out of the review queue.
    queue = client.get("/v1/audit/reviews?status=pending", headers=parties.auditor.headers())
    assert [item["id"] for item in queue.get_json()["items"]] == [granted["id"]]


def test_ending_needs_the_scope_of_the_callers_side(client, parties):
    granted = _granted(client, parties)
    path = f"/v1/emergency-access/{granted['id']}/end"
    # The holder's token with referrals:emergency only, the grantee's with referrals:share only.
    holder = client.post(path, headers=parties.holder.headers("referrals:emergency"))
    grantee = client.post(path, headers=parties.police.headers("referrals:share"))
    assert (holder.status_code, grantee.status_code) == (403, 403)
    assert 'scope="referrals:share"' in holder.headers["WWW-Authenticate"]
    assert 'scope="referrals:emergency"' in grantee.headers["WWW-Authenticate"]
    outsider = client.post(path, headers=parties.outsider.headers())
    assert outsider.status_code == 404


def test_the_lead_revoking_one_share_ends_it_for_that_referral(client, db_session, parties):
    granted = _granted(client, parties)
    first, second = (r["id"] for r in parties.referrals)
    holder = parties.holder
    share_id = client.get(f"/v1/referrals/{first}/shares", headers=holder.headers()).get_json()[
        "items"
    ][0]["id"]

    revoked = client.post(
        f"/v1/referrals/{first}/shares/{share_id}/revoke",
        json={"reason": "The child is safe; we will share what is needed."},
        headers=holder.headers(),
    )

    assert revoked.status_code == 200
    assert client.get(f"/v1/referrals/{first}", headers=parties.police.headers()).status_code == 404
    assert (
        client.get(f"/v1/referrals/{second}", headers=parties.police.headers()).status_code == 200
    )
    path = f"/v1/emergency-access/{granted['id']}"
    assert client.get(path, headers=holder.headers()).get_json()["status"] == "active"
    last = client.get(f"/v1/referrals/{second}/shares", headers=holder.headers()).get_json()
    client.post(
        f"/v1/referrals/{second}/shares/{last['items'][0]['id']}/revoke",
        json={"reason": "Done."},
        headers=holder.headers(),
    )
    seen = client.get(path, headers=holder.headers()).get_json()
    assert (seen["status"], seen["ended_by_agency"]) == ("ended", "tcs")


def test_a_share_by_the_lead_replaces_the_emergency_one(client, db_session, parties):
    granted = _granted(client, parties)
    first = parties.referrals[0]["id"]

    shared = client.post(
        f"/v1/referrals/{first}/shares",
        json=_charity_share("notts-police"),
        headers=parties.holder.headers(),
    )

    assert shared.status_code == 201, shared.get_json()
    client.get(f"/v1/referrals/{first}", headers=parties.police.headers())
    event = _last_event(db_session, "referral.read", referral_id=uuid.UUID(first))
    assert event.basis == f"share:{shared.get_json()['id']}"
    shares = client.get(f"/v1/referrals/{first}/shares", headers=parties.holder.headers())
    statuses = {s["emergency_access_id"]: s["status"] for s in shares.get_json()["items"]}
    assert statuses == {granted["id"]: "ended", None: "active"}
    # The other referral is still open under the emergency access.
    seen = client.get(f"/v1/emergency-access/{granted['id']}", headers=parties.police.headers())
    assert seen.get_json()["status"] == "active"


def test_the_grantee_acknowledges_its_emergency_share(client, parties):
    _granted(client, parties)
    rid = parties.referrals[0]["id"]
    (share,) = client.get(
        f"/v1/referrals/{rid}/shares", headers=parties.police.headers()
    ).get_json()["items"]
    done = client.post(
        f"/v1/referrals/{rid}/shares/{share['id']}/acknowledge", headers=parties.police.headers()
    )
    assert done.status_code == 200
    assert done.get_json()["acknowledged_at"] is not None


# -- reading it -------------------------------------------------------------------------------
def test_both_sides_read_it_and_nobody_else(client, db_session, parties):
    granted = _granted(client, parties)
    path = f"/v1/emergency-access/{granted['id']}"

    for partner, basis in (
        (parties.police, f"emergency:{granted['id']}"),
        (parties.holder, "lead"),
    ):
        seen = client.get(path, headers=partner.headers())
        assert seen.status_code == 200
        body = seen.get_json()
        assert (body["agency"], body["holder_agency"]) == ("notts-police", "tcs")
        assert body["granted_by"]["agency"] == "notts-police"
        assert body["granted_by"]["client_id"] == parties.police.client_id
        assert (body["reason"], body["purpose"], body["status"]) == (
            REASON,
            "safeguard_assess",
            "active",
        )
        assert body["referral_ids"] == granted["referral_ids"]
        assert (body["review_status"], body["review_outcome"]) == ("pending", None)
        event = _last_event(db_session, "emergency_access.read", actor_agency=partner.agency)
        assert event.basis == basis

    for unknown in (path, f"/v1/emergency-access/{uuid.uuid4()}"):
        refused = client.get(unknown, headers=parties.outsider.headers())
        assert refused.status_code == 404
        event = _last_event(db_session, "access.denied", actor_agency="leics-police")
        assert event.resource_type == "emergency_access"


def test_a_repeated_request_with_the_same_idempotency_key_grants_once(client, db_session, parties):
    headers = parties.police.headers(**{"Idempotency-Key": "glass-1"})
    body = grant_body(parties.match_id, "tcs")
    first = client.post("/v1/emergency-access", json=body, headers=headers)
    again = client.post("/v1/emergency-access", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.get_json() == again.get_json()
    assert len(db_session.execute(select(EmergencyAccess)).all()) == 1


# -- the review queue -------------------------------------------------------------------------
def _sample(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


def test_every_emergency_access_waits_for_review(client, db_session, parties):
    granted = _granted(client, parties)
    auditor = parties.auditor

    queue = client.get("/v1/audit/reviews?status=pending", headers=auditor.headers())

    assert queue.status_code == 200
    (item,) = queue.get_json()["items"]
    assert item["id"] == granted["id"]
    assert (item["agency"], item["holder_agency"], item["reason"]) == (
        "notts-police",
        "tcs",
        REASON,
    )
    assert (item["referral_count"], item["referral_ids"]) == (2, granted["referral_ids"])
    assert (item["status"], item["access_status"], item["overdue"]) == ("pending", "active", False)
    assert (item["outcome"], item["note"], item["reviewed_at"], item["reviewed_by"]) == (
        None,
        None,
        None,
        None,
    )
    assert item["expires_at"] == granted["expires_at"]
    assert _last_event(db_session, "emergency_access.review_list").basis == "audit:read:all"


def test_a_review_after_seventy_two_hours_is_overdue_and_counted(client, db_session, parties):
    granted = _granted(client, parties)
    _granted_again = client.post(
        "/v1/emergency-access",
        json=grant_body(
            add_match(
                db_session,
                agency="notts-police",
                found={"tcs": [held_referral(client, parties.holder)["subject_id"]]},
            ),
            "tcs",
        ),
        headers=parties.police.headers(),
    )
    assert _granted_again.status_code == 201
    metrics = client.get("/metrics", headers=parties.auditor.headers()).get_data(as_text=True)
    assert _sample(metrics, "casehub_emergency_access_reviews_pending") == 2
    assert _sample(metrics, "casehub_emergency_access_reviews_overdue") == 0

    _move_back(db_session, granted["id"], timedelta(hours=72, minutes=1))

    queue = client.get("/v1/audit/reviews", headers=parties.auditor.headers()).get_json()
    overdue = {item["id"]: (item["overdue"], item["access_status"]) for item in queue["items"]}
    assert overdue == {
        granted["id"]: (True, "expired"),
        _granted_again.get_json()["id"]: (False, "active"),
    }
    metrics = client.get("/metrics", headers=parties.auditor.headers()).get_data(as_text=True)
    assert _sample(metrics, "casehub_emergency_access_reviews_pending") == 2
    assert _sample(metrics, "casehub_emergency_access_reviews_overdue") == 1
    reviewed = client.post(
        f"/v1/audit/reviews/{granted['id']}",
        json={"outcome": "justified", "note": "Late, but the risk was real."},
        headers=parties.auditor.headers(),
    )
    assert reviewed.status_code == 200
    assert reviewed.get_json()["overdue"] is False
    metrics = client.get("/metrics", headers=parties.auditor.headers()).get_data(as_text=True)
    assert _sample(metrics, "casehub_emergency_access_reviews_pending") == 1
    assert _sample(metrics, "casehub_emergency_access_reviews_overdue") == 0


def test_a_review_is_recorded_once(client, db_session, parties):
    granted = _granted(client, parties)
    auditor = parties.auditor
    path = f"/v1/audit/reviews/{granted['id']}"

    reviewed = client.post(
        path,
        json={"outcome": "not_justified", "note": "A routine share request would have done."},
        headers=auditor.headers(),
    )

    assert reviewed.status_code == 200, reviewed.get_json()
    body = reviewed.get_json()
    assert (body["status"], body["outcome"]) == ("reviewed", "not_justified")
    assert body["note"] == "A routine share request would have done."
    assert body["reviewed_at"] is not None
    assert body["reviewed_by"]["client_id"] == auditor.client_id
    event = _last_event(db_session, "emergency_access.review")
    assert (event.resource_id, event.basis) == (granted["id"], "audit:read:all")
    again = client.post(
        path, json={"outcome": "justified", "note": "Second thoughts."}, headers=auditor.headers()
    )
    assert again.status_code == 409
    pending = client.get("/v1/audit/reviews?status=pending", headers=auditor.headers())
    assert pending.get_json()["items"] == []
    done = client.get("/v1/audit/reviews?status=reviewed", headers=auditor.headers())
    assert [i["id"] for i in done.get_json()["items"]] == [granted["id"]]
    # The two sides see the outcome, not the auditor's note.
    seen = client.get(f"/v1/emergency-access/{granted['id']}", headers=parties.holder.headers())
    assert (seen.get_json()["review_status"], seen.get_json()["review_outcome"]) == (
        "reviewed",
        "not_justified",
    )
    assert "note" not in seen.get_json()
    unknown = client.post(
        f"/v1/audit/reviews/{uuid.uuid4()}",
        json={"outcome": "justified", "note": "?"},
        headers=auditor.headers(),
    )
    assert unknown.status_code == 404


def test_a_review_needs_an_outcome_and_a_note(client, parties):
    granted = _granted(client, parties)
    path = f"/v1/audit/reviews/{granted['id']}"
    for body in ({"outcome": "justified"}, {"outcome": "fine", "note": "ok"}):
        response = client.post(path, json=body, headers=parties.auditor.headers())
        assert response.status_code == 422


def test_the_queue_is_only_for_the_partnerships_auditors(client, parties):
    granted = _granted(client, parties)
    # An agency's own auditor (audit:read) and the parties themselves are refused.
    for partner in (parties.holder, parties.police):
        listed = client.get("/v1/audit/reviews", headers=partner.headers())
        assert listed.status_code == 403
        assert 'scope="audit:read:all"' in listed.headers["WWW-Authenticate"]
        review = client.post(
            f"/v1/audit/reviews/{granted['id']}",
            json={"outcome": "justified", "note": "Ours was fine."},
            headers=partner.headers(),
        )
        assert review.status_code == 403


def test_the_queue_pages_in_grant_order(client, db_session, parties):
    ids = [_granted(client, parties)["id"]]
    for _ in range(2):
        referral = held_referral(client, parties.holder)
        parties.match_id = add_match(
            db_session, agency="notts-police", found={"tcs": [referral["subject_id"]]}
        )
        ids.append(_granted(client, parties)["id"])
    seen: list[str] = []
    cursor = None
    while True:
        query = "/v1/audit/reviews?limit=1" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(query, headers=parties.auditor.headers()).get_json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    unknown = client.get("/v1/audit/reviews?state=pending", headers=parties.auditor.headers())
    assert unknown.status_code == 422


def test_the_holders_access_feed_shows_the_break_glass_and_every_read(client, db_session, parties):
    granted = _granted(client, parties)
    rid = parties.referrals[0]["id"]
    client.get(f"/v1/referrals/{rid}", headers=parties.police.headers())
    sequence_pending(db_session.connection(), limit=1_000_000)  # the background sequencer's work

    feed = client.get(f"/v1/referrals/{rid}/accesses", headers=parties.holder.headers())

    assert feed.status_code == 200
    theirs = [
        (item["action"], item["basis"])
        for item in feed.get_json()["items"]
        if item["actor"]["agency"] == "notts-police"
    ]
    basis = f"emergency:{granted['id']}"
    assert theirs == [("emergency_access.grant", basis), ("referral.read", basis)]


def _transfer(client, holder: Partner, referral_id: str, agency: str) -> None:
    etag = client.get(f"/v1/referrals/{referral_id}", headers=holder.headers()).headers["ETag"]
    response = client.post(
        f"/v1/referrals/{referral_id}/transfer",
        json={
            "agency": agency,
            "reason": "The police investigation takes the lead.",
            "lawful_basis": {"article_6": "legitimate_interests"},
        },
        headers=holder.headers(**{"If-Match": etag}),
    )
    assert response.status_code == 200, response.get_json()


def test_a_transfer_of_the_lead_to_the_grantee_ends_its_emergency_share(client, parties):
    granted = _granted(client, parties)
    first, second = (r["id"] for r in parties.referrals)
    _transfer(client, parties.holder, first, "notts-police")

    read = client.get(f"/v1/referrals/{first}", headers=parties.police.headers())
    assert read.status_code == 200  # as the lead now
    shares = client.get(f"/v1/referrals/{first}/shares", headers=parties.police.headers())
    statuses = {s["agency"]: s["status"] for s in shares.get_json()["items"]}
    assert statuses == {"notts-police": "ended", "tcs": "active"}
    seen = client.get(f"/v1/emergency-access/{granted['id']}", headers=parties.police.headers())
    assert seen.get_json()["status"] == "active"  # the second referral is still open under it
    _transfer(client, parties.holder, second, "notts-police")
    seen = client.get(f"/v1/emergency-access/{granted['id']}", headers=parties.police.headers())
    assert seen.get_json()["status"] == "ended"


def test_the_glass_may_be_broken_again_once_it_has_expired(client, db_session, parties):
    first = _granted(client, parties)
    assert _grant(client, parties).status_code == 409  # still open: nothing more to open
    _move_back(db_session, first["id"], timedelta(hours=4, seconds=1))

    second = _granted(client, parties)

    assert second["id"] != first["id"]
    assert second["referral_ids"] == first["referral_ids"]
    rid = parties.referrals[0]["id"]
    assert client.get(f"/v1/referrals/{rid}", headers=parties.police.headers()).status_code == 200
    event = _last_event(db_session, "referral.read", referral_id=uuid.UUID(rid))
    assert event.basis == f"emergency:{second['id']}"


def test_an_agency_does_not_review_its_own_emergency_access(client, factory, db_session, parties):
    """A platform agency that is also a police force may break the glass, and its auditors may
    review others' emergency accesses, but never one its own agency is party to."""
    factory.agency("btp-platform", "police", platform=True)
    both = factory.partner(
        "btp-platform", scopes="referrals:read referrals:emergency subjects:match audit:read:all"
    )
    match_id = add_match(
        db_session, agency=both.agency, found={"tcs": [parties.referrals[0]["subject_id"]]}
    )
    body = grant_body(match_id, parties.holder.agency)
    granted = client.post("/v1/emergency-access", json=body, headers=both.headers())
    assert granted.status_code == 201, granted.get_json()
    own = client.post(
        f"/v1/audit/reviews/{granted.get_json()['id']}",
        json={"outcome": "justified", "note": "We were right to."},
        headers=both.headers(),
    )
    assert own.status_code == 403
    assert _last_event(db_session, "emergency_access.review").outcome == "denied"
    other = _granted(client, parties)  # notts-police's: btp-platform's auditors may review it
    reviewed = client.post(
        f"/v1/audit/reviews/{other['id']}",
        json={"outcome": "justified", "note": "A child at risk at 2 a.m."},
        headers=both.headers(),
    )
    assert reviewed.status_code == 200, reviewed.get_json()
