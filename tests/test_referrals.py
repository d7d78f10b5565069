"""Referrals over HTTP: create, read, list, change, workflow, notes and the §1 conventions."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from casehub.schemas.referral import ReferralSchema, referral_document
from tests.helpers import referral_body


@pytest.fixture
def btp(factory):
    return factory.partner("btp", kind="police")


@pytest.fixture
def notts(factory):
    return factory.partner("nottingham-cs", kind="local_authority")


def create(client, partner, **overrides):
    response = client.post(
        "/v1/referrals", json=referral_body(**overrides), headers=partner.headers()
    )
    assert response.status_code == 201, response.get_json()
    return response


def test_create_returns_the_referral_with_reference_etag_and_location(client, btp):
    response = create(client, btp)
    body = response.get_json()
    assert re.fullmatch(rf"CH-{datetime.now(UTC).year}-\d{{6}}", body["reference"])
    assert body["status"] == "submitted"
    assert body["lead_agency"] == "btp"
    assert body["created_by"] == {"agency": "btp", "client_id": btp.client_id, "user_id": None}
    assert body["categories"] == ["county_lines", "missing"]
    assert body["location"]["postcode"] == "NG2 3AQ"
    assert response.headers["ETag"]
    assert response.headers["Location"].endswith(f"/v1/referrals/{body['id']}")
    again = client.get(response.headers["Location"], headers=btp.headers())
    assert again.status_code == 200
    assert again.get_json() == body
    assert again.headers["ETag"] == response.headers["ETag"]


def test_references_are_sequential_and_unique(client, btp):
    refs = [create(client, btp).get_json()["reference"] for _ in range(3)]
    numbers = [int(r.rsplit("-", 1)[1]) for r in refs]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3


def test_create_with_existing_subject_id(client, btp):
    first = create(client, btp).get_json()
    body = referral_body()
    del body["subject"]
    body["subject_id"] = first["subject_id"]
    second = client.post("/v1/referrals", json=body, headers=btp.headers())
    assert second.status_code == 201
    assert second.get_json()["subject_id"] == first["subject_id"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"categories": []}, "categories"),
        ({"categories": ["joyriding"]}, "categories"),
        ({"indicators": ["NOPE-99"]}, "indicators"),
        ({"summary": "x" * 501}, "summary"),
        ({"narrative": "x" * 20_001}, "narrative"),
        ({"observed_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()}, "observed_at"),
        ({"observed_at": "2026-01-01T10:00:00"}, "observed_at"),
        ({"risk_level": "immediate"}, "immediate_action"),
        ({"risk_level": "severe"}, "risk_level"),
        ({"unexpected": 1}, "unexpected"),
        ({"subject_id": str(uuid.uuid4())}, "subject_id"),
    ],
)
def test_invalid_fields_are_422_problems_naming_the_field(client, btp, overrides, field):
    response = client.post("/v1/referrals", json=referral_body(**overrides), headers=btp.headers())
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["status"] == 422 and problem["title"] and problem["type"]
    assert field in problem["errors"]["json"]
    listing = client.get("/v1/referrals", headers=btp.headers()).get_json()
    assert listing["items"] == []  # nothing half-written


def test_location_postcode_must_be_a_uk_postcode(client, btp):
    body = referral_body(location={"postcode": "90210"})
    response = client.post("/v1/referrals", json=body, headers=btp.headers())
    assert response.status_code == 422
    assert "postcode" in response.get_json()["errors"]["json"]["location"]


def test_transport_errors(client, btp):
    headers = btp.headers()
    bad_json = client.post(
        "/v1/referrals", data="{not json", headers={**headers, "Content-Type": "application/json"}
    )
    assert bad_json.status_code == 400 and bad_json.mimetype == "application/problem+json"
    wrong_type = client.post(
        "/v1/referrals", data="a=b", headers={**headers, "Content-Type": "text/plain"}
    )
    assert wrong_type.status_code == 415 and wrong_type.mimetype == "application/problem+json"
    huge = client.post(
        "/v1/referrals",
        data=b'{"summary": "' + b"x" * (1024 * 1024) + b'"}',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert huge.status_code == 413 and huge.mimetype == "application/problem+json"


def test_unknown_query_parameter_is_refused_not_ignored(client, btp):
    create(client, btp)
    response = client.get("/v1/referrals?stauts=closed", headers=btp.headers())
    assert response.status_code == 422
    assert "stauts" in response.get_json()["errors"]["query"]


def test_other_agency_gets_404_everywhere_and_sees_nothing(client, btp, notts):
    referral = create(client, btp).get_json()
    rid = referral["id"]
    missing = str(uuid.uuid4())
    headers = notts.headers()
    for path in (
        f"/v1/referrals/{rid}",
        f"/v1/referrals/{rid}/history",
        f"/v1/referrals/{rid}/notes",
    ):
        hidden = client.get(path, headers=headers)
        absent = client.get(path.replace(rid, missing), headers=headers)
        assert hidden.status_code == absent.status_code == 404
        assert hidden.get_json()["detail"] == absent.get_json()["detail"]
    patch = client.patch(
        f"/v1/referrals/{rid}", json={"summary": "x"}, headers={**headers, "If-Match": '"x"'}
    )
    assert patch.status_code in (404, 412)
    note = client.post(
        f"/v1/referrals/{rid}/notes", json={"body": "x", "visibility": "shared"}, headers=headers
    )
    assert note.status_code == 404
    listing = client.get("/v1/referrals", headers=headers).get_json()
    assert listing == {"items": [], "next_cursor": None}
    by_subject = client.get(f"/v1/referrals?subject_id={referral['subject_id']}", headers=headers)
    assert by_subject.get_json()["items"] == []


def test_patch_needs_if_match_and_refuses_stale(client, btp):
    created = create(client, btp)
    rid = created.get_json()["id"]
    etag = created.headers["ETag"]
    no_match = client.patch(
        f"/v1/referrals/{rid}", json={"risk_level": "medium"}, headers=btp.headers()
    )
    assert no_match.status_code == 428
    ok = client.patch(
        f"/v1/referrals/{rid}",
        json={"risk_level": "medium", "indicators": ["MIS-01"]},
        headers=btp.headers(**{"If-Match": etag}),
    )
    assert ok.status_code == 200, ok.get_json()
    assert ok.get_json()["risk_level"] == "medium"
    assert ok.get_json()["indicators"] == ["MIS-01"]
    assert ok.headers["ETag"] != etag
    stale = client.patch(
        f"/v1/referrals/{rid}",
        json={"risk_level": "low"},
        headers=btp.headers(**{"If-Match": etag}),
    )
    assert stale.status_code == 412
    current = client.get(f"/v1/referrals/{rid}", headers=btp.headers()).get_json()
    assert current["risk_level"] == "medium"


def test_patch_to_immediate_needs_immediate_action(client, btp):
    created = create(client, btp)
    rid, etag = created.get_json()["id"], created.headers["ETag"]
    bad = client.patch(
        f"/v1/referrals/{rid}",
        json={"risk_level": "immediate"},
        headers=btp.headers(**{"If-Match": etag}),
    )
    assert bad.status_code == 422 and "immediate_action" in bad.get_json()["errors"]["json"]
    good = client.patch(
        f"/v1/referrals/{rid}",
        json={"risk_level": "immediate", "immediate_action": "999 called"},
        headers=btp.headers(**{"If-Match": etag}),
    )
    assert good.status_code == 200


def _move(client, partner, rid, etag, to, reason=None):
    body = {"to": to} if reason is None else {"to": to, "reason": reason}
    return client.post(
        f"/v1/referrals/{rid}/transitions", json=body, headers=partner.headers(**{"If-Match": etag})
    )


def test_workflow_transitions_and_history(client, btp):
    created = create(client, btp)
    rid, etag = created.get_json()["id"], created.headers["ETag"]
    for to, reason in [
        ("acknowledged", None),
        ("in_assessment", None),
        ("no_further_action", "Family engaged"),
    ]:
        response = _move(client, btp, rid, etag, to, reason)
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["status"] == to
        etag = response.headers["ETag"]
    no_reason = _move(client, btp, rid, etag, "closed")
    assert no_reason.status_code == 422 and "reason" in no_reason.get_json()["errors"]["json"]
    closed = _move(client, btp, rid, etag, "closed", "Closed after review")
    etag = closed.headers["ETag"]
    illegal = _move(client, btp, rid, etag, "acknowledged")
    assert illegal.status_code == 409
    reopen_without_reason = _move(client, btp, rid, etag, "in_assessment")
    assert reopen_without_reason.status_code == 422
    reopened = _move(client, btp, rid, etag, "in_assessment", "New sighting")
    assert reopened.status_code == 200
    history = client.get(f"/v1/referrals/{rid}/history", headers=btp.headers()).get_json()["items"]
    assert [(h["from_status"], h["to_status"]) for h in history] == [
        (None, "submitted"),
        ("submitted", "acknowledged"),
        ("acknowledged", "in_assessment"),
        ("in_assessment", "no_further_action"),
        ("no_further_action", "closed"),
        ("closed", "in_assessment"),
    ]
    assert history[-1]["reason"] == "New sighting"
    assert history[-1]["actor"]["agency"] == "btp"


def test_transition_needs_if_match(client, btp):
    rid = create(client, btp).get_json()["id"]
    response = client.post(
        f"/v1/referrals/{rid}/transitions", json={"to": "acknowledged"}, headers=btp.headers()
    )
    assert response.status_code == 428


def test_notes_are_append_only_and_listed_in_order(client, btp):
    rid = create(client, btp).get_json()["id"]
    headers = btp.headers()
    for text in ("First contact made", "Correction: contact was by phone"):
        response = client.post(
            f"/v1/referrals/{rid}/notes",
            json={"body": text, "visibility": "shared"},
            headers=headers,
        )
        assert response.status_code == 201
    notes = client.get(f"/v1/referrals/{rid}/notes", headers=headers).get_json()["items"]
    assert [n["body"] for n in notes] == ["First contact made", "Correction: contact was by phone"]
    note_id = notes[0]["id"]
    for method in ("put", "patch", "delete"):
        response = getattr(client, method)(f"/v1/referrals/{rid}/notes/{note_id}", headers=headers)
        assert response.status_code in (404, 405)


def test_idempotency_key_replays_and_creates_once(client, btp):
    body = referral_body()
    headers = btp.headers(**{"Idempotency-Key": "raise-123"})
    first = client.post("/v1/referrals", json=body, headers=headers)
    second = client.post("/v1/referrals", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.get_json() == second.get_json()
    assert second.headers["ETag"] == first.headers["ETag"]
    assert len(client.get("/v1/referrals", headers=headers).get_json()["items"]) == 1
    other_body = client.post(
        "/v1/referrals", json=referral_body(summary="Different"), headers=headers
    )
    assert other_body.status_code == 422
    too_long = client.post(
        "/v1/referrals", json=body, headers=btp.headers(**{"Idempotency-Key": "k" * 256})
    )
    assert too_long.status_code == 422


def test_idempotency_keys_are_per_client(client, factory, btp):
    other = factory.partner("btp")  # a second system of the same agency
    body = referral_body()
    client.post("/v1/referrals", json=body, headers=btp.headers(**{"Idempotency-Key": "same"}))
    client.post("/v1/referrals", json=body, headers=other.headers(**{"Idempotency-Key": "same"}))
    assert len(client.get("/v1/referrals", headers=btp.headers()).get_json()["items"]) == 2


def test_failed_request_is_not_remembered_by_idempotency(client, btp):
    headers = btp.headers(**{"Idempotency-Key": "retry-me"})
    bad = client.post("/v1/referrals", json=referral_body(categories=[]), headers=headers)
    assert bad.status_code == 422
    good = client.post("/v1/referrals", json=referral_body(), headers=headers)
    assert good.status_code == 201


def test_cursor_walk_returns_each_existing_item_exactly_once(client, btp):
    ids = [create(client, btp).get_json()["id"] for _ in range(7)]
    seen, cursor, pages = [], None, 0
    headers = btp.headers()
    while True:
        url = "/v1/referrals?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=headers).get_json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        if pages == 1:
            create(client, btp)  # a referral raised mid-walk must not disturb the walk
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[:7] == ids
    assert len(seen) == len(set(seen))


def test_bad_cursor_and_limit(client, btp):
    assert client.get("/v1/referrals?cursor=garbage!", headers=btp.headers()).status_code == 422
    assert client.get("/v1/referrals?limit=0", headers=btp.headers()).status_code == 422
    assert client.get("/v1/referrals?limit=201", headers=btp.headers()).status_code == 422


def test_filters(client, btp):
    a = create(client, btp, risk_level="low", categories=["cse"], indicators=["HLT-02"]).get_json()
    b = create(
        client, btp, risk_level="high", categories=["county_lines"], indicators=["PHN-01"]
    ).get_json()
    headers = btp.headers()

    def ids(query):
        response = client.get(f"/v1/referrals?{query}", headers=headers)
        assert response.status_code == 200, response.get_json()
        return {item["id"] for item in response.get_json()["items"]}

    assert ids("risk_level=low") == {a["id"]}
    assert ids("category=county_lines") == {b["id"]}
    assert ids("indicator=HLT-02") == {a["id"]}
    assert ids("status=submitted") == {a["id"], b["id"]}
    assert ids("status=closed") == set()
    assert ids(f"subject_id={a['subject_id']}") == {a["id"]}
    assert ids("lead_agency=btp") == {a["id"], b["id"]}
    assert ids("shared_with_me=true") == set()
    assert ids("shared_with_me=false") == {a["id"], b["id"]}
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert ids(f"updated_since={future}") == set()


def test_scope_is_checked_before_the_body(client, factory):
    reader = factory.partner("btp", scopes="referrals:read")
    response = client.post(
        "/v1/referrals",
        data="{broken",
        headers={**reader.headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert 'scope="referrals:write"' in response.headers["WWW-Authenticate"]


def _statements_during(engine, call):
    from sqlalchemy import event

    seen = []

    def count(conn, cursor, statement, *args):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        response = call()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return response, len(seen)


def test_listing_costs_the_same_number_of_queries_for_2_or_20_referrals(client, btp, engine):
    headers = btp.headers()
    for _ in range(2):
        create(client, btp)
    small, small_count = _statements_during(
        engine, lambda: client.get("/v1/referrals", headers=headers)
    )
    for _ in range(18):
        create(client, btp)
    large, large_count = _statements_during(
        engine, lambda: client.get("/v1/referrals", headers=headers)
    )
    assert len(small.get_json()["items"]) == 2 and len(large.get_json()["items"]) == 20
    assert large_count == small_count


def test_purpose_of_use_must_be_a_known_purpose(client, btp):
    rid = create(client, btp).get_json()["id"]
    bad = client.get(f"/v1/referrals/{rid}", headers=btp.headers(**{"Purpose-Of-Use": "curiosity"}))
    assert bad.status_code == 422
    assert "Purpose-Of-Use" in bad.get_json()["errors"]["headers"]
    good = client.get(
        f"/v1/referrals/{rid}", headers=btp.headers(**{"Purpose-Of-Use": "strategy_discussion"})
    )
    assert good.status_code == 200


def test_a_scope_refusal_is_audited_as_denied(client, factory, db_session):
    from sqlalchemy import select

    from casehub.models import AuditEvent

    btp = factory.partner("btp")
    rid = create(client, btp).get_json()["id"]
    reader = factory.partner("btp", scopes="referrals:read")
    refused = client.patch(f"/v1/referrals/{rid}", json={"summary": "x"}, headers=reader.headers())
    assert refused.status_code == 403
    events = (
        db_session.execute(
            select(AuditEvent).where(
                AuditEvent.outcome == "denied", AuditEvent.action == "access.denied"
            )
        )
        .scalars()
        .all()
    )
    assert [
        (e.actor_client_id, e.resource_type, str(e.referral_id), e.request_status) for e in events
    ] == [(reader.client_id, "referral", rid, 403)]


def test_a_422_has_one_problem_type_whichever_layer_found_the_fault(client, btp):
    from_schema = client.post(
        "/v1/referrals", json=referral_body(categories=[]), headers=btp.headers()
    )
    from_rule = client.post(
        "/v1/referrals", json=referral_body(risk_level="immediate"), headers=btp.headers()
    )
    assert from_schema.status_code == from_rule.status_code == 422
    schema_problem, rule_problem = from_schema.get_json(), from_rule.get_json()
    assert schema_problem["type"] == rule_problem["type"] == "urn:casehub:problem:validation-failed"
    assert schema_problem["title"] == rule_problem["title"]
    unknown_route = client.get("/v1/nowhere")
    assert unknown_route.get_json()["type"] == "urn:casehub:problem:not-found"


def _shapes() -> list[SimpleNamespace]:
    """A referral's every shape as ReferralSchema sees it: with and without a location (or
    only part of one), a user, a narrative, indicators, immediate action."""
    base = {
        "id": uuid.uuid4(),
        "reference": "CH-2026-000123",
        "subject_id": uuid.uuid4(),
        "lead_agency": "btp",
        "created_by_agency": "btp",
        "created_by_client_id": "chc_abc",
        "created_by_user_id": None,
        "categories": ["missing_from_care", "exploitation_criminal"],
        "indicators": [],
        "summary": "Seen at Grantham station at 02:00 — «alone»",
        "narrative": None,
        "observed_at": datetime(2026, 3, 1, 2, 0, tzinfo=UTC),
        "location_description": None,
        "location_postcode": None,
        "location_transport_hub": None,
        "risk_level": "high",
        "immediate_action": None,
        "status": "submitted",
        "discoverable": True,
        "legal_hold_reason": None,
        "legal_hold_at": None,
        "legal_hold_by_agency": None,
        "created_at": datetime(2026, 3, 1, 2, 5, 1, 123456, tzinfo=UTC),
        "updated_at": datetime(2026, 3, 1, 2, 5, 1, 123456, tzinfo=UTC),
    }
    return [
        SimpleNamespace(**base),
        SimpleNamespace(
            **{
                **base,
                "created_by_user_id": uuid.uuid4(),
                "indicators": ["TRV-01", "PHN-01"],
                "narrative": "Long text\nwith lines",
                "location_description": "Platform 2",
                "location_postcode": "NG31 6AA",
                "location_transport_hub": "Grantham station",
                "risk_level": "immediate",
                "immediate_action": "999 called",
                "status": "closed",
                "discoverable": False,
                "legal_hold_reason": "Civil claim — «preserve»",
                "legal_hold_at": datetime(2026, 4, 1, 9, 0, 0, 5, tzinfo=UTC),
                "legal_hold_by_agency": "btp",
            }
        ),
        SimpleNamespace(**{**base, "location_transport_hub": "Grantham station"}),
    ]


@pytest.mark.parametrize("shape", _shapes())
def test_the_read_document_is_what_referral_schema_dumps(shape):
    """GET /v1/referrals/{id} builds its document without marshmallow: the same keys, in the
    same order (the JSON is not sorted), and the same values as ReferralSchema's dump."""
    built = referral_document(shape)
    dumped = ReferralSchema().dump(shape)
    assert json.dumps(built) == json.dumps(dumped)


def test_a_read_answers_the_document_a_create_answered(client, btp):
    headers = btp.headers()
    body = referral_body(
        indicators=["TRV-01"], location={"postcode": "NG1 1AA", "transport_hub": "Nottingham"}
    )
    created = client.post("/v1/referrals", json=body, headers=headers)
    assert created.status_code == 201
    read = client.get(f"/v1/referrals/{created.get_json()['id']}", headers=headers)
    assert read.status_code == 200
    assert read.mimetype == "application/json"
    assert read.headers["ETag"] == created.headers["ETag"]
    assert read.get_data() == created.get_data()
