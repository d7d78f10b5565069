"""Subject access (CONTRACT §12): GET /v1/subjects/{id}/sar over HTTP with real tokens — what
the pack holds about a child shared with two agencies and refused to a third, who is refused,
how it is audited, merged records, summary shares, and its cost at any size."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import event, select, update

from casehub.audit.chain import sequence_pending
from casehub.auth.actor import Actor
from casehub.db import utcnow
from casehub.models import AuditEvent, Referral, Share, Subject
from casehub.services import audit_queries, subject_access
from tests.helpers import referral_body, share_body

DPO = "referrals:read subjects:read subjects:sar"


def chain_now(db_session) -> int:
    """What the background sequencer does within a second, inside the test's transaction."""
    return sequence_pending(db_session.connection(), limit=1_000_000)


def ok(response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    return response.get_json()


@pytest.fixture
def child(client, factory, db_session) -> dict[str, Any]:
    """A police force's referral about a boy, shared with a charity and children's services
    (contribute) and refused to a neighbouring force; each recipient has used it, and children's
    services leads a referral of its own about him, shared with the force."""
    btp = factory.partner("btp", kind="police")
    tcs = factory.partner("tcs", kind="charity")
    notts = factory.partner("notts-cs", kind="local_authority")
    leics = factory.partner("leics-police", kind="police")
    dpo = factory.partner("btp", DPO)
    referral = ok(client.post("/v1/referrals", json=referral_body(), headers=btp.headers()), 201)
    rid, sid = referral["id"], referral["subject_id"]
    charity_body = share_body(
        "tcs",
        purpose="support_service",
        lawful_basis={
            "article_6": "legitimate_interests",
            "condition": "dpa2018_sch1_para18_safeguarding",
            "gateway": "Children Act 2004 s11",
        },
    )
    to_charity = ok(
        client.post(f"/v1/referrals/{rid}/shares", json=charity_body, headers=btp.headers()), 201
    )
    to_notts = ok(
        client.post(
            f"/v1/referrals/{rid}/shares",
            json=share_body("notts-cs", access="contribute"),
            headers=btp.headers(),
        ),
        201,
    )
    refused = ok(
        client.post(
            f"/v1/referrals/{rid}/decisions",
            json={
                "agency": "leics-police",
                "reason": "No policing purpose in Leicestershire.",
                "purpose": "investigation",
            },
            headers=btp.headers(),
        ),
        201,
    )
    notes = {}
    for who, partner, visibility in (
        ("btp shared", btp, "shared"),
        ("btp agency", btp, "agency"),
        ("notts shared", notts, "shared"),
        ("notts agency", notts, "agency"),
    ):
        body = {"body": f"{who} note", "visibility": visibility}
        notes[who] = ok(
            client.post(f"/v1/referrals/{rid}/notes", json=body, headers=partner.headers()), 201
        )["id"]
    etag = client.get(f"/v1/referrals/{rid}", headers=btp.headers()).headers["ETag"]
    ok(
        client.post(
            f"/v1/referrals/{rid}/transitions",
            json={"to": "acknowledged"},
            headers=btp.headers(**{"If-Match": etag}),
        )
    )
    ok(client.get(f"/v1/referrals/{rid}", headers=tcs.headers()))
    ok(client.get(f"/v1/referrals/{rid}/notes", headers=notts.headers()))
    assert client.get(f"/v1/referrals/{rid}", headers=leics.headers()).status_code == 404
    theirs = ok(
        client.post(
            "/v1/referrals",
            json={
                **{k: v for k, v in referral_body().items() if k != "subject"},
                "subject_id": sid,
            },
            headers=btp.headers(),
        ),
        201,
    )
    # Children's services' own referral about him: transferred to it, then shared back.
    ok(
        client.post(
            f"/v1/referrals/{theirs['id']}/transfer",
            json={
                "agency": "notts-cs",
                "reason": "Section 47 enquiry",
                "lawful_basis": {"article_6": "public_task"},
            },
            headers=btp.headers(
                **{
                    "If-Match": client.get(
                        f"/v1/referrals/{theirs['id']}", headers=btp.headers()
                    ).headers["ETag"]
                }
            ),
        )
    )
    ok(client.get(f"/v1/referrals/{theirs['id']}", headers=notts.headers()))
    # The child's record: the charity reads it under the force's share; children's services
    # reads it as the lead of its own referral, and lists its referrals (naming none).
    ok(client.get(f"/v1/subjects/{sid}", headers=tcs.headers()))
    ok(client.get(f"/v1/subjects/{sid}", headers=notts.headers()))
    ok(client.get("/v1/referrals", headers=notts.headers()))
    chain_now(db_session)
    return {
        "btp": btp,
        "tcs": tcs,
        "notts": notts,
        "leics": leics,
        "dpo": dpo,
        "referral": referral,
        "theirs": theirs,
        "to_charity": to_charity,
        "to_notts": to_notts,
        "refused": refused,
        "notes": notes,
    }


def pack_of(client, partner, subject_id: str, **headers: str) -> dict[str, Any]:
    response = client.get(f"/v1/subjects/{subject_id}/sar", headers=partner.headers(**headers))
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.is_streamed and response.mimetype == "application/json"
    return json.loads(response.get_data(as_text=True))


def test_the_pack_lists_both_shares_the_refusal_and_the_recipients_reads(client, child):
    rid, sid = child["referral"]["id"], child["referral"]["subject_id"]
    pack = pack_of(client, child["dpo"], sid)

    assert pack["generated_by"] == {
        "agency": "btp",
        "client_id": child["dpo"].client_id,
        "user_id": None,
    }
    assert pack["subject_id"] == sid
    (record,) = pack["subjects"]
    assert record["id"] == sid and record["profile"] == "full"
    assert record["given_name"] == "Jayden" and record["merged_into"] is None

    # Only the referral the force leads: the one it handed to children's services is theirs.
    (held,) = pack["referrals"]
    assert held["id"] == rid and held["lead_agency"] == "btp"
    assert held["narrative"] == referral_body()["narrative"]
    assert held["location"]["description"] == "Platform 4"
    assert [n["body"] for n in held["notes"]] == [
        "btp shared note",
        "btp agency note",
        "notts shared note",
    ]
    assert [(h["kind"], h["to_status"]) for h in held["history"]] == [
        ("created", "submitted"),
        ("transition", "acknowledged"),
    ]

    shares = {s["agency"]: s for s in pack["disclosures"]["shares"]}
    assert set(shares) == {"tcs", "notts-cs"}
    assert shares["tcs"]["id"] == child["to_charity"]["id"]
    assert shares["tcs"]["purpose"] == "support_service"
    assert shares["tcs"]["lawful_basis"] == {
        "article_6": "legitimate_interests",
        "condition": "dpa2018_sch1_para18_safeguarding",
        "gateway": "Children Act 2004 s11",
    }
    assert shares["tcs"]["consent"]["status"] == "not_sought"
    assert shares["notts-cs"]["access"] == "contribute"
    assert shares["notts-cs"]["lawful_basis"]["article_6"] == "public_task"
    assert shares["notts-cs"]["purpose"] == "safeguard_assess"
    for share in shares.values():
        assert share["profile"] == "full"
        assert share["status"] == "active" and share["ended_at"] is None
        assert share["referral_id"] == rid and share["created_by_agency"] == "btp"
    (decision,) = pack["disclosures"]["decisions_not_to_share"]
    assert decision["id"] == child["refused"]["id"]
    assert decision["agency"] == "leics-police"
    assert decision["reason"] == "No policing purpose in Leicestershire."
    assert decision["purpose"] == "investigation"
    assert decision["decided_by"]["agency"] == "btp"

    reads = pack["reads_by_other_agencies"]
    seen = {(r["actor"]["agency"], r["action"], r["basis"]) for r in reads}
    assert ("tcs", "referral.read", f"share:{child['to_charity']['id']}") in seen
    assert ("notts-cs", "note.list", f"share:{child['to_notts']['id']}") in seen
    assert ("notts-cs", "note.create", f"share:{child['to_notts']['id']}") in seen
    # The caller's own agency's work, a refusal and the other agency's own referral: not here.
    assert {r["actor"]["agency"] for r in reads} == {"tcs", "notts-cs"}
    assert all(r["outcome"] == "allowed" for r in reads)
    on_referral = [r for r in reads if r["referral_id"] is not None]
    assert {r["referral_id"] for r in on_referral} == {rid}
    # Then the child's record as the shares disclosed it: the charity's read under its share,
    # not children's services' read as a lead or its list (which names no share).
    (record_read,) = reads[len(on_referral) :]
    assert record_read["action"] == "subject.read" and record_read["referral_id"] is None
    assert record_read["actor"]["agency"] == "tcs"
    assert record_read["basis"] == f"share:{child['to_charity']['id']}"
    assert record_read["resource"] == {"type": "subject", "id": sid}
    assert [r["seq"] for r in on_referral] == sorted(r["seq"] for r in on_referral)
    by_tcs = next(r for r in reads if r["actor"]["agency"] == "tcs")
    assert by_tcs["actor"]["client_id"] == child["tcs"].client_id
    assert by_tcs["purpose"] == "support_service"
    assert pack["audit_trail_upto_seq"] >= max(r["seq"] for r in reads)
    assert child["theirs"]["id"] not in json.dumps(pack)


def test_a_caller_without_the_scope_is_refused(client, child, db_session):
    sid = child["referral"]["subject_id"]
    response = client.get(
        f"/v1/subjects/{sid}/sar", headers=child["btp"].headers("referrals:read subjects:read")
    )
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_an_agency_that_cannot_see_the_child_gets_404_and_is_audited(
    client, child, factory, db_session
):
    stranger = factory.partner("leics-police", DPO)
    sid = child["referral"]["subject_id"]
    response = client.get(f"/v1/subjects/{sid}/sar", headers=stranger.headers())
    missing = client.get(f"/v1/subjects/{uuid.uuid4()}/sar", headers=stranger.headers())
    assert response.status_code == missing.status_code == 404
    assert response.get_json()["detail"] == missing.get_json()["detail"]
    refusals = db_session.execute(
        select(
            AuditEvent.action, AuditEvent.outcome, AuditEvent.resource_id, AuditEvent.subject_ids
        )
        .where(AuditEvent.actor_agency == "leics-police", AuditEvent.request_status == 404)
        .order_by(AuditEvent.pos)
    ).all()
    assert [(r.action, r.outcome) for r in refusals][-2:] == [("access.denied", "denied")] * 2
    assert refusals[-2].resource_id == sid and refusals[-2].subject_ids == []


def test_the_pack_is_audited_as_one_subject_sar_event(client, child, db_session):
    sid = child["referral"]["subject_id"]

    def sar_events() -> list[Any]:
        return list(
            db_session.execute(
                select(AuditEvent)
                .where(AuditEvent.action == "subject.sar")
                .order_by(AuditEvent.pos)
            ).scalars()
        )

    pack_of(client, child["dpo"], sid)
    (recorded,) = sar_events()
    assert recorded.actor_agency == "btp" and recorded.actor_client_id == child["dpo"].client_id
    assert recorded.outcome == "allowed" and recorded.request_status == 200
    assert recorded.resource_type == "subject" and recorded.resource_id == sid
    assert recorded.subject_ids == [sid]
    assert recorded.basis == "subjects:sar" and recorded.purpose == "audit"
    assert recorded.request_path == f"/v1/subjects/{sid}/sar"
    pack_of(client, child["dpo"], sid, **{"Purpose-Of-Use": "safeguard_assess"})
    assert sar_events()[-1].purpose == "safeguard_assess"


def test_a_merged_duplicates_referrals_are_in_the_pack_of_either_record(client, child, db_session):
    """One child, two records: the pack of either holds the referrals about both."""
    sid = child["referral"]["subject_id"]
    duplicate = ok(
        client.post(
            "/v1/referrals",
            json=referral_body(subject={"given_name": "Jaydon", "family_name": "Okafor"}),
            headers=child["btp"].headers(),
        ),
        201,
    )
    db_session.execute(
        update(Subject)
        .where(Subject.id == uuid.UUID(duplicate["subject_id"]))
        .values(merged_into=uuid.UUID(sid))
    )
    db_session.commit()
    for asked in (sid, duplicate["subject_id"]):
        pack = pack_of(client, child["dpo"], asked)
        assert pack["subjects"][0]["id"] == asked
        assert {s["id"] for s in pack["subjects"]} == {sid, duplicate["subject_id"]}
        assert [r["id"] for r in pack["referrals"]] == [
            child["referral"]["id"],
            duplicate["id"],
        ]
    by_duplicate = next(s for s in pack["subjects"] if s["id"] == duplicate["subject_id"])
    assert by_duplicate["merged_into"] == sid
    (recorded,) = db_session.execute(
        select(AuditEvent.subject_ids)
        .where(AuditEvent.action == "subject.sar")
        .order_by(AuditEvent.pos.desc())
        .limit(1)
    ).scalars()
    assert sorted(recorded) == sorted([sid, duplicate["subject_id"]])


def test_a_duplicate_the_agency_cannot_see_stays_out_of_its_pack(client, child, db_session):
    """Merging gives nobody sight of a record or referral it could not see before."""
    sid = child["referral"]["subject_id"]
    hidden = ok(
        client.post(
            "/v1/referrals",
            json=referral_body(narrative="Known to the youth offending team."),
            headers=child["notts"].headers(),
        ),
        201,
    )
    db_session.execute(
        update(Subject)
        .where(Subject.id == uuid.UUID(hidden["subject_id"]))
        .values(merged_into=uuid.UUID(sid))
    )
    db_session.commit()
    pack = pack_of(client, child["dpo"], sid)
    text = json.dumps(pack)
    assert hidden["subject_id"] not in text and hidden["id"] not in text
    assert "youth offending" not in text
    assert [s["id"] for s in pack["subjects"]] == [sid]


def test_a_recipient_s_pack_holds_the_child_as_its_share_shows_it_and_no_referral(
    client, child, factory, db_session
):
    """A referral shared with an agency is the lead's to answer for; under a summary share the
    recipient's view of the child has no address or identifiers."""
    sid = child["referral"]["subject_id"]
    db_session.execute(
        update(Subject)
        .where(Subject.id == uuid.UUID(sid))
        .values(address_line="1 Station Street", address_postcode="NG2 3AQ")
    )
    db_session.execute(
        update(Share)
        .where(Share.id == uuid.UUID(child["to_charity"]["id"]))
        .values(profile="summary")
    )
    db_session.commit()
    charity_dpo = factory.partner("tcs", DPO)
    pack = pack_of(client, charity_dpo, sid)
    (record,) = pack["subjects"]
    assert record["profile"] == "summary"
    assert record["address"] is None and record["identifiers"] == []
    assert "1 Station Street" not in json.dumps(pack)
    assert pack["referrals"] == [] and pack["reads_by_other_agencies"] == []
    assert pack["disclosures"] == {"shares": [], "decisions_not_to_share": []}
    lead = pack_of(client, child["dpo"], sid)
    assert lead["subjects"][0]["address"]["line"] == "1 Station Street"
    assert {s["agency"]: s["profile"] for s in lead["disclosures"]["shares"]} == {
        "tcs": "summary",
        "notts-cs": "full",
    }


def test_a_revoked_share_and_its_reads_stay_in_the_disclosure_log(client, child, db_session):
    rid, sid = child["referral"]["id"], child["referral"]["subject_id"]
    share_id = child["to_charity"]["id"]
    ok(
        client.post(
            f"/v1/referrals/{rid}/shares/{share_id}/revoke",
            json={"reason": "Support has ended."},
            headers=child["btp"].headers(),
        )
    )
    chain_now(db_session)
    pack = pack_of(client, child["dpo"], sid)
    revoked = next(s for s in pack["disclosures"]["shares"] if s["id"] == share_id)
    assert revoked["status"] == "revoked" and revoked["revoked_reason"] == "Support has ended."
    assert revoked["revoked_at"] is not None and revoked["ended_at"] is not None
    assert any(r["basis"] == f"share:{share_id}" for r in pack["reads_by_other_agencies"])


def test_the_reads_stream_in_chunks_and_still_make_one_document(
    client, child, db_session, monkeypatch
):
    rid, sid = child["referral"]["id"], child["referral"]["subject_id"]
    for _ in range(4):
        ok(client.get(f"/v1/referrals/{rid}", headers=child["tcs"].headers()))
    chain_now(db_session)
    whole = pack_of(client, child["dpo"], sid)["reads_by_other_agencies"]
    monkeypatch.setattr(audit_queries, "READS_CHUNK", 2)
    response = client.get(f"/v1/subjects/{sid}/sar", headers=child["dpo"].headers())
    chunks = list(response.response)
    assert len(chunks) >= 2 + len(whole) // 2  # the head, each chunk of reads, the end
    assert (
        json.loads("".join(c.decode() if isinstance(c, bytes) else c for c in chunks))[
            "reads_by_other_agencies"
        ]
        == whole
    )


def _statements_for(db_session, subject_id: uuid.UUID, agency: str) -> int:
    count = 0

    def counted(*_: Any) -> None:
        nonlocal count
        count += 1

    engine = db_session.get_bind()
    event.listen(engine, "before_cursor_execute", counted)
    try:
        actor = Actor(agency=agency, agency_kind="police", is_platform=False, client_id="dpo")
        pack = subject_access.assemble_pack(
            db_session, actor=actor, subject_id=subject_id, now=utcnow()
        )
        assert pack.document["referrals"]
    finally:
        event.remove(engine, "before_cursor_execute", counted)
    return count


def test_the_pack_costs_the_same_statements_for_one_referral_or_many(client, child, db_session):
    sid = uuid.UUID(child["referral"]["subject_id"])
    one = _statements_for(db_session, sid, "btp")
    for _ in range(5):
        ok(
            client.post(
                "/v1/referrals",
                json={
                    **{k: v for k, v in referral_body().items() if k != "subject"},
                    "subject_id": str(sid),
                },
                headers=child["btp"].headers(),
            ),
            201,
        )
    led = db_session.execute(
        select(Referral.id).where(Referral.subject_id == sid, Referral.lead_agency == "btp")
    ).all()
    assert len(led) == 6
    assert _statements_for(db_session, sid, "btp") == one
