"""The auditor API and the lead's access feed, over HTTP with real tokens."""

from __future__ import annotations

import csv
import io
import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from casehub import audit
from casehub.audit.chain import sequence_pending
from casehub.models.audit import AuditEvent, AuditPending
from tests.helpers import referral_body


def share_body(agency: str) -> dict:
    return {
        "agency": agency,
        "access": "read",
        "purpose": "safeguard_assess",
        "necessity": "The charity supports the child and needs the context.",
        "lawful_basis": {
            "article_6": "legitimate_interests",
            "condition": "dpa2018_sch1_para18_safeguarding",
            "gateway": "Children Act 2004 s11",
        },
        "consent": {"status": "not_sought", "rationale": "Seeking consent would put him at risk."},
    }


def chain_now(db_session) -> int:
    """What the background sequencer does within a second, inside the test's transaction."""
    return sequence_pending(db_session.connection(), limit=1_000_000)


def events(client, partner, scope=None, **params):
    response = client.get("/v1/audit/events", query_string=params, headers=partner.headers(scope))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.fixture
def trail(client, factory, db_session):
    """A police lead, a charity it shares with, an unrelated force and a platform auditor."""
    btp = factory.partner("btp", kind="police")
    charity = factory.partner("tcs", kind="charity")
    other = factory.partner("leics-police", kind="police")
    factory.agency("partnership", "other", platform=True)
    auditor = factory.partner("partnership", scopes="audit:read:all")
    created = client.post("/v1/referrals", json=referral_body(), headers=btp.headers())
    assert created.status_code == 201, created.get_json()
    referral = created.get_json()
    shared = client.post(
        f"/v1/referrals/{referral['id']}/shares",
        json=share_body("tcs"),
        headers=btp.headers(),
    )
    assert shared.status_code == 201, shared.get_json()
    rid = referral["id"]
    assert client.get(f"/v1/referrals/{rid}", headers=charity.headers()).status_code == 200
    assert client.get(f"/v1/referrals/{rid}", headers=other.headers()).status_code == 404
    chain_now(db_session)
    return {
        "btp": btp,
        "charity": charity,
        "other": other,
        "auditor": auditor,
        "referral": referral,
        "share_id": shared.get_json()["id"],
    }


def test_an_event_has_the_contract_shape_and_links_into_the_chain(client, trail):
    items = events(client, trail["auditor"], "audit:read:all")["items"]
    assert [e["seq"] for e in items] == list(range(1, len(items) + 1))
    for earlier, later in itertools.pairwise(items):
        assert later["prev_hash"] == earlier["hash"]
    reads = [e for e in items if e["action"] == "referral.read"]
    read = next(e for e in reads if e["actor"]["agency"] == "tcs")
    assert set(read) == {
        "id",
        "seq",
        "occurred_at",
        "actor",
        "action",
        "outcome",
        "resource",
        "referral_id",
        "subject_ids",
        "basis",
        "purpose",
        "request",
        "prev_hash",
        "hash",
    }
    rid = trail["referral"]["id"]
    assert read["outcome"] == "allowed"
    assert read["resource"] == {"type": "referral", "id": rid}
    assert read["referral_id"] == rid
    assert read["subject_ids"] == [trail["referral"]["subject_id"]]
    assert read["basis"] == f"share:{trail['share_id']}"
    assert read["purpose"] == "safeguard_assess"
    assert read["actor"]["client_id"] == trail["charity"].client_id
    assert read["request"]["method"] == "GET"
    assert read["request"]["path"] == f"/v1/referrals/{rid}"
    assert read["request"]["status"] == 200
    assert read["request"]["id"]
    assert datetime.fromisoformat(read["occurred_at"]).tzinfo is not None


def test_audit_read_sees_its_own_actors_and_its_led_referrals_only(client, trail):
    rid = trail["referral"]["id"]
    seen_by_lead = events(client, trail["btp"])["items"]
    assert {e["actor"]["agency"] for e in seen_by_lead} >= {"btp", "tcs", "leics-police"}
    assert all(e["actor"]["agency"] == "btp" or e["referral_id"] == rid for e in seen_by_lead)
    denied = [e for e in seen_by_lead if e["outcome"] == "denied"]
    assert [(e["actor"]["agency"], e["action"]) for e in denied] == [
        ("leics-police", "access.denied")
    ]

    seen_by_charity = events(client, trail["charity"])["items"]
    assert seen_by_charity and {e["actor"]["agency"] for e in seen_by_charity} == {"tcs"}

    seen_by_other = events(client, trail["other"])["items"]
    assert {e["actor"]["agency"] for e in seen_by_other} == {"leics-police"}


def test_audit_read_all_sees_every_event_and_a_token_with_only_that_scope_works(
    client, trail, db_session
):
    everything = events(client, trail["auditor"], "audit:read:all", limit=200)["items"]
    total = db_session.scalar(select(func.count()).select_from(AuditEvent))
    pending = db_session.scalar(select(func.count()).select_from(AuditPending))
    # Every chained event; the token issue and this very list are not chained yet.
    assert pending == 2
    assert len(everything) == total - pending
    assert {"btp", "tcs", "leics-police"} <= {e["actor"]["agency"] for e in everything}


def test_a_token_without_an_audit_scope_is_refused_before_its_arguments(client, trail):
    response = client.get(
        "/v1/audit/events?bogus=1", headers=trail["btp"].headers("referrals:read")
    )
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert response.mimetype == "application/problem+json"


@pytest.mark.parametrize(
    "query",
    ["bogus=1", "outcome=maybe", "user_id=not-a-uuid", "from=2026-01-01T00:00:00", "limit=0"],
)
def test_bad_filters_are_422(client, trail, query):
    response = client.get(f"/v1/audit/events?{query}", headers=trail["auditor"].headers())
    assert response.status_code == 422, response.get_json()


def test_every_filter_narrows_the_list(client, trail, db_session):
    auditor = trail["auditor"]
    rid = trail["referral"]["id"]
    everything = events(client, auditor, limit=200)["items"]
    sample = next(e for e in everything if e["action"] == "referral.read")
    cases = {
        "agency": ("tcs", lambda e: e["actor"]["agency"] == "tcs"),
        "client_id": (auditor.client_id, lambda e: e["actor"]["client_id"] == auditor.client_id),
        "action": ("access.denied", lambda e: e["action"] == "access.denied"),
        "outcome": ("denied", lambda e: e["outcome"] == "denied"),
        "referral_id": (rid, lambda e: e["referral_id"] == rid),
        "subject_id": (
            trail["referral"]["subject_id"],
            lambda e: trail["referral"]["subject_id"] in e["subject_ids"],
        ),
        "from": (sample["occurred_at"], lambda e: e["occurred_at"] >= sample["occurred_at"]),
        "to": (sample["occurred_at"], lambda e: e["occurred_at"] < sample["occurred_at"]),
    }
    for name, (value, matches) in cases.items():
        chain_now(db_session)
        everything = events(client, auditor, limit=200)["items"]
        expected = [e["seq"] for e in everything if matches(e)]
        got = [e["seq"] for e in events(client, auditor, limit=200, **{name: value})["items"]]
        assert got == expected, name
        assert 0 < len(got) < len(everything), name

    user_id = str(uuid.uuid4())
    actor = type("Actor", (), {"agency": "btp", "client_id": "c-x", "user_id": uuid.UUID(user_id)})
    audit.record(db_session, actor(), "referral.list")
    audit.write_pending(db_session, None, status=200)
    chain_now(db_session)
    by_user = events(client, auditor, user_id=user_id)["items"]
    assert [(e["actor"]["user_id"], e["action"]) for e in by_user] == [(user_id, "referral.list")]


def test_a_cursor_walk_returns_every_event_once_in_seq_order(client, trail):
    auditor = trail["auditor"]
    first = events(client, auditor, limit=200)["items"]
    walked, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = events(client, auditor, **params)
        walked.extend(e["seq"] for e in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert walked == [e["seq"] for e in first]
    bad = client.get("/v1/audit/events?cursor=zzz", headers=auditor.headers())
    assert bad.status_code == 422


def test_auditors_reads_are_themselves_audited(client, trail, db_session):
    auditor = trail["auditor"]
    client.get(
        "/v1/audit/events?action=referral.read",
        headers=auditor.headers("audit:read:all", **{"Purpose-Of-Use": "statistics"}),
    )
    chain_now(db_session)
    mine = events(client, auditor, client_id=auditor.client_id, action="audit.list")["items"]
    first = mine[0]
    assert first["outcome"] == "allowed"
    assert first["basis"] == "audit:read:all"
    assert first["purpose"] == "statistics"
    assert first["request"]["path"] == "/v1/audit/events"
    assert first["subject_ids"] == []


def test_events_appear_only_once_chained(client, trail, db_session):
    before = events(client, trail["auditor"], action="referral.read")["items"]
    rid = trail["referral"]["id"]
    client.get(f"/v1/referrals/{rid}", headers=trail["btp"].headers())
    assert events(client, trail["auditor"], action="referral.read")["items"] == before
    chain_now(db_session)
    after = events(client, trail["auditor"], action="referral.read")["items"]
    assert len(after) == len(before) + 1
    assert after[-1]["actor"]["agency"] == "btp"


# -- accesses ----------------------------------------------------------------------------------
def test_subject_accesses_say_who_saw_the_child_when_and_on_what_basis(client, trail):
    subject_id = trail["referral"]["subject_id"]
    response = client.get(
        f"/v1/audit/subjects/{subject_id}/accesses", headers=trail["auditor"].headers()
    )
    assert response.status_code == 200, response.get_json()
    items = response.get_json()["items"]
    by_agency = {(a["actor"]["agency"], a["action"]): a for a in items}
    assert by_agency[("tcs", "referral.read")]["basis"] == f"share:{trail['share_id']}"
    assert by_agency[("btp", "referral.create")]["basis"] == "lead"
    assert all(a["outcome"] == "allowed" for a in items)
    assert set(items[0]) == {
        "seq",
        "occurred_at",
        "actor",
        "action",
        "outcome",
        "resource",
        "referral_id",
        "basis",
        "purpose",
    }
    # An agency auditor sees the accesses on referrals its agency leads, and nobody else's.
    assert (
        client.get(
            f"/v1/audit/subjects/{subject_id}/accesses", headers=trail["other"].headers()
        ).get_json()["items"]
        == []
    )
    unknown = client.get(
        f"/v1/audit/subjects/{uuid.uuid4()}/accesses", headers=trail["auditor"].headers()
    )
    assert unknown.status_code == 200 and unknown.get_json()["items"] == []


def test_the_lead_sees_who_used_its_referral(client, trail, db_session):
    rid = trail["referral"]["id"]
    response = client.get(
        f"/v1/referrals/{rid}/accesses", headers=trail["btp"].headers("referrals:read")
    )
    assert response.status_code == 200, response.get_json()
    seen = {(a["actor"]["agency"], a["action"], a["outcome"]) for a in response.get_json()["items"]}
    assert ("tcs", "referral.read", "allowed") in seen
    assert ("leics-police", "access.denied", "denied") in seen
    assert ("btp", "share.create", "allowed") in seen


@pytest.mark.parametrize("who", ["charity", "other"])
def test_anyone_but_the_lead_gets_404_for_the_feed_and_is_audited(client, trail, db_session, who):
    rid = trail["referral"]["id"]
    partner = trail[who]
    response = client.get(f"/v1/referrals/{rid}/accesses", headers=partner.headers())
    assert response.status_code == 404
    missing = client.get(f"/v1/referrals/{uuid.uuid4()}/accesses", headers=partner.headers())
    assert missing.status_code == 404
    assert missing.get_json()["detail"] == response.get_json()["detail"]
    chain_now(db_session)
    refused = events(
        client,
        trail["auditor"],
        "audit:read:all",
        agency=partner.agency,
        outcome="denied",
        referral_id=rid,
    )["items"]
    assert refused[-1]["request"]["path"] == f"/v1/referrals/{rid}/accesses"
    assert refused[-1]["request"]["status"] == 404


# -- export ------------------------------------------------------------------------------------
def _bulk_events(db_session, count: int) -> None:
    actor = type("Actor", (), {"agency": "btp", "client_id": "bulk", "user_id": None})()
    for i in range(count):
        audit.record(
            db_session, actor, "referral.list", subject_ids=[uuid.UUID(int=i)], purpose="case_work"
        )
    audit.write_pending(
        db_session, audit.RequestInfo("bulk", "GET", "/v1/referrals", "10.0.0.1"), status=200
    )
    chain_now(db_session)


def test_export_streams_ndjson_in_chunks_matching_the_list(client, trail, db_session, monkeypatch):
    from casehub.services import audit_queries

    monkeypatch.setattr(audit_queries, "EXPORT_CHUNK", 500)
    _bulk_events(db_session, 3000)
    auditor = trail["auditor"]
    response = client.get(
        "/v1/audit/events/export?format=ndjson&client_id=bulk", headers=auditor.headers()
    )
    assert response.status_code == 200
    assert response.is_streamed
    assert response.mimetype == "application/x-ndjson"
    chunks = list(response.response)
    assert len(chunks) >= 6  # produced piece by piece, never as one body
    lines = b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks).splitlines()
    exported = [json.loads(line) for line in lines]
    assert len(exported) == 3000
    assert [e["seq"] for e in exported] == sorted(e["seq"] for e in exported)
    page = events(client, auditor, client_id="bulk", limit=200)["items"]
    assert exported[: len(page)] == page


def test_export_csv_has_a_header_and_one_row_per_event(client, trail, db_session):
    _bulk_events(db_session, 1200)
    response = client.get(
        "/v1/audit/events/export?format=csv&client_id=bulk", headers=trail["auditor"].headers()
    )
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) == 1200
    assert rows[0]["subject_ids"] == str(uuid.UUID(int=0))
    assert rows[0]["request_ip"] == "10.0.0.1"
    assert len(rows[0]["hash"]) == 64


def test_export_respects_visibility_and_is_audited(client, trail, db_session):
    response = client.get("/v1/audit/events/export", headers=trail["other"].headers())
    lines = [json.loads(x) for x in response.get_data(as_text=True).splitlines()]
    assert lines and {e["actor"]["agency"] for e in lines} == {"leics-police"}
    chain_now(db_session)
    exports = events(client, trail["auditor"], action="audit.export")["items"]
    assert [e["actor"]["agency"] for e in exports] == ["leics-police"]


def test_export_of_events_in_a_time_window(client, trail, db_session):
    now = datetime.now(UTC)
    window = {
        "from": (now - timedelta(days=1)).isoformat(),
        "to": (now - timedelta(hours=23)).isoformat(),
    }
    response = client.get(
        "/v1/audit/events/export", query_string=window, headers=trail["auditor"].headers()
    )
    assert response.status_code == 200 and response.get_data() == b""


# -- verify ------------------------------------------------------------------------------------
def test_verify_says_ok_and_then_names_the_first_tampered_seq(
    client, trail, db_session, is_postgres
):
    auditor = trail["auditor"]
    response = client.get("/v1/audit/verify", headers=auditor.headers())
    assert response.status_code == 200
    body = response.get_json()
    assert body["ok"] is True and body["first_bad_seq"] is None
    assert body["events"] == body["head"]["seq"] > 5

    victim = events(client, auditor, action="access.denied")["items"][0]
    _tamper(
        db_session,
        is_postgres,
        "UPDATE audit_events SET outcome = 'allowed' WHERE id = :id",
        id=victim["id"],
    )
    body = client.get("/v1/audit/verify", headers=auditor.headers()).get_json()
    assert body["ok"] is False
    assert body["first_bad_seq"] == victim["seq"]


def _tamper(db_session, is_postgres: bool, sql: str, **params) -> None:
    """Change audit rows as a superuser would: with the append-only triggers out of the way."""
    connection = db_session.connection()
    id_param = params.get("id")
    if id_param is not None and not is_postgres:
        params["id"] = uuid.UUID(id_param).hex
    if is_postgres:
        connection.execute(text("SET LOCAL session_replication_role = replica"))
        connection.execute(text(sql), params)
        connection.execute(text("SET LOCAL session_replication_role = origin"))
        return
    trigger = connection.execute(
        text("SELECT sql FROM sqlite_master WHERE name = 'audit_events_no_update'")
    ).scalar_one()
    connection.execute(text("DROP TRIGGER audit_events_no_update"))
    connection.execute(text(sql), params)
    connection.execute(text(trigger))


def test_verify_recomputes_only_what_came_after_the_newest_checkpoint(
    app, client, trail, db_session, is_postgres
):
    """The endpoint's work is the tail since the last signed checkpoint (hourly), not the
    whole trail: a break after the checkpoint, or in the row it signs, is found; a break
    before it is `casehub audit verify`'s to find (it recomputes everything)."""
    from casehub.audit.checkpoints import app_key
    from casehub.audit.verify import make_checkpoint

    auditor = trail["auditor"]
    key = app_key(app, create=True)
    signed, _ = make_checkpoint(db_session.connection(), key)
    assert signed is not None
    before_checkpoint = events(client, auditor, action="access.denied")["items"][0]
    assert before_checkpoint["seq"] <= signed.seq
    # Work after the checkpoint, chained: the tail.
    client.get(f"/v1/referrals/{trail['referral']['id']}", headers=trail["btp"].headers())
    chain_now(db_session)
    body = client.get("/v1/audit/verify", headers=auditor.headers()).get_json()
    assert body["ok"] is True, body
    assert body["from_seq"] == signed.seq
    assert body["events"] == body["head"]["seq"] - signed.seq < body["head"]["seq"]

    # A change after the checkpoint is found by the endpoint.
    tail = events(client, auditor, "audit:read:all", action="referral.read")["items"][-1]
    assert tail["seq"] > signed.seq
    _tamper(
        db_session,
        is_postgres,
        "UPDATE audit_events SET purpose = 'curiosity' WHERE id = :id",
        id=tail["id"],
    )
    body = client.get("/v1/audit/verify", headers=auditor.headers()).get_json()
    assert (body["ok"], body["first_bad_seq"]) == (False, tail["seq"])


def test_verify_finds_a_changed_row_under_the_checkpoint_and_the_cli_finds_older_ones(
    app, client, trail, db_session, is_postgres
):
    from casehub.audit.checkpoints import app_key
    from casehub.audit.verify import make_checkpoint, verify

    auditor = trail["auditor"]
    key = app_key(app, create=True)
    signed, _ = make_checkpoint(db_session.connection(), key)
    assert signed is not None
    old = events(client, auditor, action="access.denied")["items"][0]
    _tamper(
        db_session,
        is_postgres,
        "UPDATE audit_events SET outcome = 'allowed' WHERE id = :id",
        id=old["id"],
    )
    # Before the checkpoint: vouched for by its signature; the full recomputation finds it.
    assert client.get("/v1/audit/verify", headers=auditor.headers()).get_json()["ok"] is True
    full = verify(db_session.connection(), key=key)
    assert (full.ok, full.first_bad_seq) == (False, old["seq"])

    # The row the checkpoint signs, changed: found by the endpoint.
    connection = db_session.connection()
    change = text("UPDATE audit_chain SET hash = :h WHERE seq = :s")
    values = {"h": "0" * 64, "s": signed.seq}
    if is_postgres:
        connection.execute(text("SET LOCAL session_replication_role = replica"))
        connection.execute(change, values)
        connection.execute(text("SET LOCAL session_replication_role = origin"))
    else:
        triggers = connection.execute(
            text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"),
            {"t": "audit_chain"},
        ).all()
        for name, _ in triggers:
            connection.execute(text(f'DROP TRIGGER "{name}"'))
        connection.execute(change, values)
        for _, sql in triggers:
            connection.execute(text(sql))
    body = client.get("/v1/audit/verify", headers=auditor.headers()).get_json()
    assert (body["ok"], body["first_bad_seq"]) == (False, signed.seq)


def test_verify_checks_the_newest_checkpoints_not_every_one_ever_signed(
    app, client, trail, db_session
):
    """Years of hourly checkpoints do not slow the endpoint (issue 10: 26,280 signatures were
    checked twice per call): it checks the checkpoints from the newest that holds on; all of
    them are the full verification's to check, which still finds a forged old one."""
    from casehub.audit.checkpoints import app_key, sign_head
    from casehub.audit.verify import verify

    auditor = trail["auditor"]
    key = app_key(app, create=True)
    connection = db_session.connection()
    signed = []
    for _ in range(6):  # each over a longer chain
        client.get(f"/v1/referrals/{trail['referral']['id']}", headers=trail["btp"].headers())
        chain_now(db_session)
        signed.append(sign_head(connection, key))
    body = client.get("/v1/audit/verify", headers=auditor.headers()).get_json()
    assert body["ok"] is True, body
    assert body["from_seq"] == signed[-1].seq
    assert body["checkpoints"] == 1, body
    assert verify(connection, key=key).checkpoints == 6
    # A forged checkpoint among the old ones: the full verification finds it.
    oldest = signed[0]
    connection.execute(
        text(
            "INSERT INTO audit_checkpoints (seq, hash, signed_at, key_id, signature)"
            " SELECT seq, hash, signed_at, key_id, :forged FROM audit_checkpoints WHERE id = :id"
        ),
        {"forged": "Zm9yZ2Vk", "id": oldest.id},
    )
    full = verify(connection, key=key)
    assert (full.ok, full.first_bad_seq) == (False, oldest.seq), full
    assert client.get("/v1/audit/verify", headers=auditor.headers()).get_json()["ok"] is True
