"""Retention (CONTRACT §11): legal hold, `casehub retention run` and what erasure leaves — a
tombstone that answers 410 to the agencies that could see the referral and 404 to others,
`referral.erased` to every agency it was shared with, an audit chain that still verifies —
and the pruning of expired technical records."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, text, update
from sqlalchemy.orm import Session

from casehub.audit.chain import sequence_pending
from casehub.audit.verify import verify
from casehub.cli import main
from casehub.db import utcnow
from casehub.models import (
    AuditEvent,
    Event,
    IdempotencyRecord,
    Note,
    Referral,
    ReferralCategory,
    ReferralHistory,
    ReferralIndicator,
    RevokedToken,
    Share,
    SharingDecision,
    Subject,
    SubjectIdentifier,
    SubjectNameKey,
    UsedAssertion,
)
from casehub.services.retention import ERASED
from tests.helpers import referral_body, share_body, subject_body

CANARY = "Kestrel-7781"  # in every free-text field the erasure must empty
RETENTION_DAYS = 2190
LONG_AGO = timedelta(days=RETENTION_DAYS + 1)


@dataclass
class Case:
    lead: Any
    recipient: Any  # an open contribute share
    former: Any  # a share since revoked
    stranger: Any  # never shared with
    declined: str  # the agency the lead decided not to share with
    referral: dict[str, Any]
    etag: str

    @property
    def id(self) -> str:
        return str(self.referral["id"])


def _referral(client: Any, partner: Any, **overrides: Any) -> tuple[dict[str, Any], str]:
    body = referral_body(**overrides)
    if "subject_id" in body:
        del body["subject"]
    created = client.post("/v1/referrals", json=body, headers=partner.headers())
    assert created.status_code == 201, created.get_json()
    return created.get_json(), created.headers["ETag"]


def _close(db_session: Session, referral_id: str, ago: timedelta = LONG_AGO) -> None:
    db_session.execute(
        update(Referral)
        .where(Referral.id == uuid.UUID(referral_id))
        .values(status="closed", closed_at=utcnow() - ago)
    )
    db_session.commit()


def _run(app: Any, *args: str) -> str:
    result = app.test_cli_runner().invoke(main, ["retention", "run", *args])
    assert result.exit_code == 0, result.output
    return str(result.output)


@pytest.fixture
def case(client, factory, db_session) -> Case:
    lead = factory.partner("btp", kind="police")
    recipient = factory.partner("notts-cs", kind="local_authority")
    former = factory.partner("tcs", kind="charity")
    stranger = factory.partner("leics-police", kind="police")
    declined = factory.agency("derby-cs", "local_authority")
    subject = subject_body(
        aliases=[f"J {CANARY}"],
        identifiers=[{"system": "nhs_number", "value": "9434765919"}],
        address={"line": f"1 {CANARY} Street", "town": "Nottingham", "postcode": "NG1 1AA"},
    )
    referral, etag = _referral(
        client,
        lead,
        subject=subject,
        summary=f"Summary {CANARY}",
        narrative=f"Narrative {CANARY}",
        location={"description": f"Platform {CANARY}", "postcode": "NG2 3AQ"},
        risk_level="immediate",
        immediate_action=f"999 called {CANARY}",
    )
    rid = referral["id"]
    shares = {}
    for partner, access in ((recipient, "contribute"), (former, "read")):
        body = share_body(partner.agency, access, necessity=f"Necessary {CANARY}")
        body["lawful_basis"]["gateway"] = f"Children Act {CANARY}"
        body["consent"]["rationale"] = f"Rationale {CANARY}"
        made = client.post(f"/v1/referrals/{rid}/shares", json=body, headers=lead.headers())
        assert made.status_code == 201, made.get_json()
        shares[partner.agency] = made.get_json()["id"]
    revoked = client.post(
        f"/v1/referrals/{rid}/shares/{shares['tcs']}/revoke",
        json={"reason": f"Revoked {CANARY}"},
        headers=lead.headers(),
    )
    assert revoked.status_code == 200
    for partner, visibility in ((lead, "shared"), (recipient, "agency")):
        note = client.post(
            f"/v1/referrals/{rid}/notes",
            json={"body": f"Note {CANARY}", "visibility": visibility},
            headers=partner.headers(),
        )
        assert note.status_code == 201, note.get_json()
    decided = client.post(
        f"/v1/referrals/{rid}/decisions",
        json={"agency": declined, "reason": f"Declined {CANARY}", "purpose": "mash_triage"},
        headers=lead.headers(),
    )
    assert decided.status_code == 201, decided.get_json()
    db_session.add(
        ReferralHistory(
            referral_id=uuid.UUID(rid),
            kind="transition",
            from_status="no_further_action",
            to_status="closed",
            reason=f"Closed {CANARY}",
            actor_agency="btp",
            actor_client_id=lead.client_id,
            occurred_at=utcnow() - LONG_AGO,
        )
    )
    db_session.commit()
    _close(db_session, rid)
    return Case(lead, recipient, former, stranger, declined, referral, etag)


def _canary_rows(db_session: Session) -> list[str]:
    """Every table's rows, as text, that still hold the canary."""
    found = []
    for table in inspect(db_session.get_bind()).get_table_names():
        for row in db_session.execute(text(f'SELECT * FROM "{table}"')):
            if CANARY in repr(tuple(row)):
                found.append(table)
    return found


# -- erasure and its tombstone ------------------------------------------------------------------
def test_erasure_empties_the_referral_and_keeps_its_tombstone(app, client, db_session, case):
    assert _canary_rows(db_session)  # the scenario really holds it
    output = _run(app)
    assert f"erased {case.referral['reference']} {case.id}" in output
    assert "erased 1 referrals" in output and "1 children's records" in output
    assert CANARY not in output and "Okafor" not in output
    assert _canary_rows(db_session) == []

    rid = uuid.UUID(case.id)
    referral = db_session.execute(select(Referral).where(Referral.id == rid)).scalar_one()
    db_session.refresh(referral)
    assert referral.erased_at is not None
    assert (referral.summary, referral.narrative, referral.immediate_action) == ("", None, None)
    assert referral.location_description is referral.location_postcode is None
    assert referral.discoverable is False
    assert (referral.reference, referral.lead_agency) == (case.referral["reference"], "btp")
    for model in (ReferralCategory, ReferralIndicator, Note):
        count = select(func.count()).select_from(model).where(model.referral_id == rid)
        assert db_session.execute(count).scalar_one() == 0
    shares = db_session.execute(select(Share).where(Share.referral_id == rid)).scalars().all()
    assert len(shares) == 2 and all(s.ended_at is not None for s in shares)
    assert {(s.necessity, s.gateway, s.consent_rationale, s.revoked_reason) for s in shares} == {
        ("", None, None, None)
    }
    reasons = db_session.execute(
        select(ReferralHistory.reason).where(ReferralHistory.referral_id == rid)
    ).scalars()
    assert set(reasons) == {None}
    decisions = db_session.execute(
        select(SharingDecision).where(SharingDecision.referral_id == rid)
    ).scalars()
    assert [(d.reason, d.agency_code, d.purpose) for d in decisions] == [
        (ERASED, "derby-cs", "mash_triage")
    ]

    sid = uuid.UUID(case.referral["subject_id"])
    child = db_session.get(Subject, sid)
    assert child is not None
    db_session.refresh(child)
    assert child.erased_at is not None
    assert (child.given_name, child.family_name, child.aliases) == ("", "", [])
    assert child.date_of_birth is None and child.identifiers == []
    assert child.address_line is child.address_postcode is None
    for model in (SubjectNameKey, SubjectIdentifier):
        count = select(func.count()).select_from(model).where(model.subject_id == sid)
        assert db_session.execute(count).scalar_one() == 0


def test_a_decision_not_to_share_changes_only_by_erasure(db_session, case):
    """The append-only rule (0015) still refuses every other change (0017 allows one)."""
    rid = uuid.UUID(case.id)
    for values in ({"reason": "Rewritten"}, {"reason": ERASED}):  # not erased yet: refused
        with pytest.raises(Exception, match="append-only"), db_session.begin_nested():
            db_session.execute(
                update(SharingDecision).where(SharingDecision.referral_id == rid).values(**values)
            )
    db_session.rollback()


def test_the_tombstone_answers_410_to_those_who_could_see_it_and_404_to_others(
    app, client, db_session, case
):
    _run(app)
    for partner in (case.lead, case.recipient, case.former):
        response = client.get(f"/v1/referrals/{case.id}", headers=partner.headers())
        assert response.status_code == 410, (partner.agency, response.get_json())
        body = response.get_json()
        assert response.mimetype == "application/problem+json"
        assert body["status"] == 410 and body["type"] == "urn:casehub:problem:gone"
        assert set(body["tombstone"]) == {"id", "reference", "lead_agency", "erased_at"}
        assert body["tombstone"]["id"] == case.id
        assert body["tombstone"]["reference"] == case.referral["reference"]
        assert body["tombstone"]["lead_agency"] == "btp"
    stranger = client.get(f"/v1/referrals/{case.id}", headers=case.stranger.headers())
    assert stranger.status_code == 404
    assert stranger.get_json()["detail"] == "No such referral."
    assert case.referral["reference"] not in stranger.get_data(as_text=True)
    # Each answer is audited as a refusal, with its status.
    refusals = db_session.execute(
        select(AuditEvent.actor_agency, AuditEvent.request_status)
        .where(AuditEvent.action == "access.denied", AuditEvent.referral_id == uuid.UUID(case.id))
        .order_by(AuditEvent.pos)
    ).all()
    assert [tuple(r) for r in refusals] == [
        ("btp", 410),
        ("notts-cs", 410),
        ("tcs", 410),
        ("leics-police", 404),
    ]


PER_REFERRAL = [
    ("GET", "/history", None),
    ("GET", "/notes", None),
    ("POST", "/notes", {"body": "Again", "visibility": "shared"}),
    ("GET", "/shares", None),
    ("POST", "/shares", share_body("derby-cs")),
    ("GET", "/accesses", None),
    ("GET", "/decisions", None),
    ("POST", "/decisions", {"agency": "derby-cs", "reason": "No", "purpose": "mash_triage"}),
    ("PATCH", "", {"risk_level": "low"}),
    ("POST", "/transitions", {"to": "in_assessment", "reason": "Reopened"}),
    ("POST", "/transfer", {"agency": "notts-cs", "reason": "s47", "lawful_basis": {}}),
    ("PUT", "/legal-hold", {"reason": "Proceedings"}),
    ("DELETE", "/legal-hold", {"reason": "Over"}),
]


def test_every_per_referral_route_answers_410_after_erasure(app, client, case):
    _run(app)
    for method, suffix, body in PER_REFERRAL:
        for partner, status in ((case.lead, 410), (case.former, 410), (case.stranger, 404)):
            headers = partner.headers(**{"If-Match": case.etag})
            if suffix == "/transfer":
                body = {**body, "lawful_basis": {"article_6": "public_task"}}  # type: ignore[dict-item]
            response = client.open(
                f"/v1/referrals/{case.id}{suffix}", method=method, json=body, headers=headers
            )
            assert response.status_code == status, (method, suffix, partner.agency)


def test_erased_referrals_and_children_leave_lists_and_searches(app, client, db_session, case):
    kept, _ = _referral(client, case.lead)  # another child, still open
    for partner, before in ((case.lead, {case.id, kept["id"]}), (case.recipient, {case.id})):
        listed = client.get("/v1/referrals", headers=partner.headers()).get_json()
        assert {r["id"] for r in listed["items"]} == before
    _run(app)
    for partner, after in ((case.lead, {kept["id"]}), (case.recipient, set())):
        for query in ("", "?status=closed", "?shared_with_me=true", "?category=county_lines"):
            listed = client.get(f"/v1/referrals{query}", headers=partner.headers()).get_json()
            assert {r["id"] for r in listed["items"]} <= after, query
    sid = case.referral["subject_id"]
    found = client.get("/v1/subjects?q=okafor", headers=case.lead.headers()).get_json()
    assert [s["id"] for s in found["items"]] == [kept["subject_id"]]
    assert client.get(f"/v1/subjects/{sid}", headers=case.lead.headers()).status_code == 404


def test_recipients_hear_referral_erased_and_the_lead_does_not(app, client, db_session, case):
    hook = client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hooks", "events": ["referral.erased"]},
        headers=case.recipient.headers(),
    )
    assert hook.status_code == 201
    _run(app)
    told = db_session.execute(
        select(Event.agency_code, Event.data).where(Event.type == "referral.erased")
    ).all()
    assert sorted(agency for agency, _ in told) == ["notts-cs", "tcs"]
    assert all(data == {"referral_id": case.id} for _, data in told)
    feed = client.get("/v1/events?type=referral.erased", headers=case.recipient.headers())
    assert [e["data"] for e in feed.get_json()["items"]] == [{"referral_id": case.id}]
    from casehub.models import WebhookDelivery

    queued = db_session.execute(select(func.count()).select_from(WebhookDelivery)).scalar_one()
    assert queued == 1
    _run(app)  # idempotent: nobody hears it twice
    again = db_session.execute(
        select(func.count()).select_from(Event).where(Event.type == "referral.erased")
    ).scalar_one()
    assert again == 2


def test_a_second_run_erases_nothing_new(app, case):
    assert "erased 1 referrals" in _run(app)
    second = _run(app)
    assert "erased 0 referrals" in second and case.id not in second


def test_a_dry_run_changes_nothing(app, client, db_session, case):
    def state() -> dict[str, Any]:
        tables = inspect(db_session.get_bind()).get_table_names()
        return {
            table: db_session.execute(text(f'SELECT * FROM "{table}"')).all()
            for table in sorted(tables)
        }

    before = state()
    output = _run(app, "--dry-run")
    assert f"would erase {case.referral['reference']} {case.id}" in output
    assert "would erase 1 referrals" in output and "would prune expired" in output
    assert state() == before
    assert client.get(f"/v1/referrals/{case.id}", headers=case.lead.headers()).status_code == 200


def test_only_what_has_passed_its_retention_date_is_erased(app, client, db_session, case):
    recent, _ = _referral(client, case.lead)
    _close(db_session, recent["id"], ago=timedelta(days=RETENTION_DAYS - 1))
    still_open, _ = _referral(client, case.lead)
    output = _run(app)
    assert case.id in output and recent["id"] not in output and still_open["id"] not in output
    for kept in (recent, still_open):
        read = client.get(f"/v1/referrals/{kept['id']}", headers=case.lead.headers())
        assert read.status_code == 200


# -- legal hold ---------------------------------------------------------------------------------
def test_legal_hold_keeps_a_referral_until_it_is_released(app, client, db_session, case):
    url = f"/v1/referrals/{case.id}/legal-hold"
    reason = {"reason": "Civil claim: preserve until judgment"}
    assert client.put(url, json=reason, headers=case.recipient.headers()).status_code == 403
    assert client.put(url, json=reason, headers=case.stranger.headers()).status_code == 404
    not_held = client.delete(url, json={"reason": "x"}, headers=case.lead.headers())
    assert not_held.status_code == 409
    held = client.put(url, json=reason, headers=case.lead.headers())
    assert held.status_code == 200, held.get_json()
    hold = held.get_json()["legal_hold"]
    assert hold["reason"] == reason["reason"] and hold["agency"] == "btp" and hold["since"]
    assert held.headers["ETag"] != case.etag
    # A recipient sees the hold too (it keeps its own copy while the lead keeps the referral).
    seen = client.get(f"/v1/referrals/{case.id}", headers=case.recipient.headers()).get_json()
    assert seen["legal_hold"] == hold
    again = client.put(url, json={"reason": "Appeal lodged"}, headers=case.lead.headers())
    assert again.get_json()["legal_hold"]["since"] == hold["since"]

    output = _run(app)
    assert "erased 0 referrals" in output and "1 kept by legal hold" in output
    assert client.get(f"/v1/referrals/{case.id}", headers=case.lead.headers()).status_code == 200

    released = client.delete(url, json={"reason": "Judgment given"}, headers=case.lead.headers())
    assert released.status_code == 200 and released.get_json()["legal_hold"] is None
    history = client.get(f"/v1/referrals/{case.id}/history", headers=case.lead.headers())
    kinds = [(e["kind"], e["reason"]) for e in history.get_json()["items"]][-3:]
    assert kinds == [
        ("legal_hold", reason["reason"]),
        ("legal_hold", "Appeal lodged"),
        ("legal_hold_released", "Judgment given"),
    ]
    actions = db_session.execute(
        select(AuditEvent.action, AuditEvent.outcome)
        .where(AuditEvent.action.like("referral.legal_hold%"))
        .order_by(AuditEvent.pos)
    ).all()
    assert [tuple(a) for a in actions] == [
        ("referral.legal_hold", "denied"),
        ("referral.legal_hold", "allowed"),
        ("referral.legal_hold", "allowed"),
        ("referral.legal_hold_release", "allowed"),
    ]
    assert "erased 1 referrals" in _run(app)


# -- children's records -------------------------------------------------------------------------
def test_the_child_stays_while_another_referral_needs_it(app, client, db_session, case):
    sid = case.referral["subject_id"]
    other, _ = _referral(client, case.lead, subject_id=sid)
    output = _run(app)
    assert "erased 1 referrals" in output and "0 children's records" in output
    child = client.get(f"/v1/subjects/{sid}", headers=case.lead.headers())
    assert child.status_code == 200 and child.get_json()["family_name"] == "Okafor"
    _close(db_session, other["id"])
    assert "1 children's records" in _run(app)
    assert client.get(f"/v1/subjects/{sid}", headers=case.lead.headers()).status_code == 404


def test_a_merged_pair_is_one_child(app, client, db_session, case):
    """A duplicate merged into a survivor that an open referral is about is still needed."""
    survivor, _ = _referral(client, case.lead, subject=subject_body(given_name="Jay"))
    duplicate = uuid.UUID(case.referral["subject_id"])
    db_session.execute(
        update(Subject)
        .where(Subject.id == duplicate)
        .values(merged_into=uuid.UUID(survivor["subject_id"]))
    )
    db_session.commit()
    assert "0 children's records" in _run(app)
    assert (
        db_session.execute(select(Subject.erased_at).where(Subject.id == duplicate)).scalar_one()
        is None
    )
    _close(db_session, survivor["id"])
    assert "2 children's records" in _run(app)


# -- the audit trail ----------------------------------------------------------------------------
def test_the_audit_chain_still_verifies_and_holds_ids_only(app, db_session, case):
    connection = db_session.connection()
    sequence_pending(connection, limit=1_000_000)
    assert verify(connection, key=None).ok
    _run(app)
    sequence_pending(connection, limit=1_000_000)
    result = verify(connection, key=None)
    assert result.ok, result.problem
    erasures = db_session.execute(
        select(AuditEvent).where(AuditEvent.action.in_(["referral.erase", "subject.erase"]))
    ).scalars()
    rows = {
        (e.action, e.resource_id, e.actor_agency, e.basis, tuple(e.subject_ids)) for e in erasures
    }
    sid = case.referral["subject_id"]
    assert rows == {
        ("referral.erase", case.id, None, "retention", (sid,)),
        ("subject.erase", sid, None, "retention", (sid,)),
    }
    run = select(func.count()).where(AuditEvent.action == "retention.run")
    assert db_session.execute(run).scalar_one() == 1


# -- pruning ------------------------------------------------------------------------------------
def test_expired_technical_records_are_pruned(app, db_session):
    now = utcnow()
    for n, expires in enumerate((now - timedelta(minutes=1), now + timedelta(hours=1))):
        db_session.add_all(
            [
                IdempotencyRecord(
                    client_id="c1",
                    key=f"k{n}",
                    request_hash="h",
                    status=201,
                    headers={},
                    body=b"{}",
                    expires_at=expires,
                ),
                UsedAssertion(issuer="c1", jti=f"j{n}", expires_at=expires),
                RevokedToken(jti=f"t{n}", expires_at=expires),
            ]
        )
    db_session.commit()
    dry = _run(app, "--dry-run", "--batch-size", "1")
    assert "would prune expired idempotency records 1, used assertions 1, revoked tokens 1" in dry
    assert db_session.execute(select(func.count()).select_from(RevokedToken)).scalar_one() == 2
    real = _run(app, "--batch-size", "1")
    assert "pruned expired idempotency records 1, used assertions 1, revoked tokens 1" in real
    for model, key in (
        (IdempotencyRecord, IdempotencyRecord.key),
        (UsedAssertion, UsedAssertion.jti),
        (RevokedToken, RevokedToken.jti),
    ):
        left = db_session.execute(select(key)).scalars().all()
        assert [v[-1] for v in left] == ["1"], model
    assert "revoked tokens 0" in _run(app)


# -- configuration ------------------------------------------------------------------------------
def test_the_retention_period_comes_from_casehub_retention_days(app, client, db_session, case):
    from casehub import config

    assert config.load(environ={})["RETENTION_DAYS"] == 2190
    assert config.load(environ={"CASEHUB_RETENTION_DAYS": "30"})["RETENTION_DAYS"] == 30
    with pytest.raises(config.ConfigError, match="CASEHUB_RETENTION_DAYS"):
        config.load(environ={"CASEHUB_RETENTION_DAYS": "0"})
    month_old, _ = _referral(client, case.lead)
    _close(db_session, month_old["id"], ago=timedelta(days=31))
    assert month_old["id"] not in _run(app, "--dry-run")
    app.config["RETENTION_DAYS"] = 30
    try:
        output = _run(app)
    finally:
        app.config["RETENTION_DAYS"] = RETENTION_DAYS
    assert "erased 2 referrals" in output and "(30 days)" in output and month_old["id"] in output
