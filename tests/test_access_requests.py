"""Access requests (CONTRACT §9) and decisions not to share (§11): the request → share and
request → decline journeys, who sees what (the requester never a referral id, a subject id or
the child's name), the refusals, and the append-only record of decisions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from casehub.audit.chain import sequence_pending
from casehub.errors import Conflict
from casehub.models import AccessRequest, AuditEvent, Event, Referral, SharingDecision
from casehub.services import access_requests
from tests.helpers import access_request_body, match_for, referral_body, share_body, subject_body

CANARY_GIVEN, CANARY_FAMILY = "Quillonetta", "Zarkovskaya"
CANARY_SUMMARY = "CANARY-SUMMARY-7731 seen with older males at the canal."


@dataclass
class Scene:
    holder: Any  # btp: leads the referral about the child
    requester: Any  # notts-cs: matched the child, asks for a share
    stranger: Any  # leics-police: party to nothing
    referral_id: str
    subject_id: str
    match_id: str

    @property
    def secrets(self) -> list[str]:
        """What the requester must never read before a share: ids and the child's name."""
        return [
            self.referral_id,
            self.subject_id,
            CANARY_GIVEN,
            CANARY_FAMILY,
            CANARY_GIVEN.lower(),
            "CANARY-SUMMARY",
            self.referral_id.replace("-", ""),
            self.subject_id.replace("-", ""),
        ]


@pytest.fixture
def scene(client, factory, db_session) -> Scene:
    holder = factory.partner("btp", kind="police")
    requester = factory.partner("notts-cs", kind="local_authority")
    stranger = factory.partner("leics-police", kind="police")
    body = referral_body(
        subject=subject_body(given_name=CANARY_GIVEN, family_name=CANARY_FAMILY),
        summary=CANARY_SUMMARY,
    )
    created = client.post("/v1/referrals", json=body, headers=holder.headers())
    assert created.status_code == 201, created.get_json()
    referral = created.get_json()
    match_id = match_for(db_session, "notts-cs", "btp", referral["subject_id"])
    return Scene(holder, requester, stranger, referral["id"], referral["subject_id"], match_id)


def _ask(client, scene: Scene, **overrides: Any) -> Any:
    return client.post(
        "/v1/access-requests",
        json={**access_request_body(scene.match_id, "btp"), **overrides},
        headers=scene.requester.headers(),
    )


def _asked(client, scene: Scene, **overrides: Any) -> dict[str, Any]:
    response = _ask(client, scene, **overrides)
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json())


def _decide(client, scene: Scene, request_id: str, body: dict[str, Any], partner=None) -> Any:
    return client.post(
        f"/v1/access-requests/{request_id}/decision",
        json=body,
        headers=(partner or scene.holder).headers(),
    )


def _share_decision(scene: Scene, **share: Any) -> dict[str, Any]:
    body = share_body("notts-cs")
    body.pop("agency")
    body.update(share)
    return {"decision": "share", "referral_id": scene.referral_id, "share": body}


def _assert_nothing_leaks(scene: Scene, response: Any) -> None:
    raw = response.get_data(as_text=True)
    for secret in scene.secrets:
        assert secret not in raw, f"{secret!r} leaked to the requester: {raw[:300]}"
    for name, value in response.headers.items():
        for secret in scene.secrets:
            assert secret not in value, f"{secret!r} leaked in {name}"


def _feed(client, partner) -> list[dict[str, Any]]:
    response = client.get("/v1/events", headers=partner.headers())
    assert response.status_code == 200, response.get_json()
    return list(response.get_json()["items"])


def _audit(db_session, action: str) -> list[AuditEvent]:
    return list(
        db_session.execute(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.pos)
        ).scalars()
    )


# -- the journeys --------------------------------------------------------------------------------
def test_a_request_granted_becomes_a_share_the_requester_can_use(client, db_session, scene):
    referral_path = f"/v1/referrals/{scene.referral_id}"
    before = client.get(referral_path, headers=scene.requester.headers())
    assert before.status_code == 404

    response = _ask(client, scene, urgency="urgent")
    assert response.status_code == 201, response.get_json()
    _assert_nothing_leaks(scene, response)
    asked = response.get_json()
    assert response.headers["Location"].endswith(f"/v1/access-requests/{asked['id']}")
    assert asked["status"] == "pending" and asked["urgency"] == "urgent"
    assert (asked["from_agency"], asked["to_agency"]) == ("notts-cs", "btp")
    assert "referral_ids" not in asked and asked["share_id"] is None

    # The requester's own record, without the referral or the child, and the holder's notice on
    # its referral (in the holder's audit reach only: casehub.audit.chain.HOLDER_NOTICES).
    own, notice = _audit(db_session, "access_request.create")
    for created in (own, notice):
        assert created.actor_agency == "notts-cs" and created.resource_type == "access_request"
        assert created.resource_id == asked["id"]
        assert created.basis == f"match:{scene.match_id}"
    assert (own.referral_id, own.subject_ids) == (None, [])
    assert str(notice.referral_id) == scene.referral_id
    assert notice.subject_ids == [scene.subject_id]

    received = [e for e in _feed(client, scene.holder) if e["type"] == "access_request.received"]
    assert [e["data"] for e in received] == [
        {"access_request_id": asked["id"], "agency": "notts-cs"}
    ]

    seen = client.get(f"/v1/access-requests/{asked['id']}", headers=scene.holder.headers())
    assert seen.status_code == 200
    assert seen.get_json()["referral_ids"] == [scene.referral_id]

    decided = _decide(client, scene, asked["id"], _share_decision(scene))
    assert decided.status_code == 200, decided.get_json()
    document = decided.get_json()
    assert document["status"] == "shared" and document["share_id"]
    assert document["decided_at"] is not None

    after = client.get(referral_path, headers=scene.requester.headers())
    assert after.status_code == 200
    assert after.get_json()["summary"] == CANARY_SUMMARY
    shares = client.get(f"{referral_path}/shares", headers=scene.holder.headers()).get_json()
    assert [(s["id"], s["agency"]) for s in shares["items"]] == [(document["share_id"], "notts-cs")]

    feed = {e["type"]: e["data"] for e in _feed(client, scene.requester)}
    assert feed["referral.shared"] == {
        "referral_id": scene.referral_id,
        "share_id": document["share_id"],
        "agency": "btp",
    }
    assert feed["access_request.decided"] == {
        "access_request_id": asked["id"],
        "share_id": document["share_id"],
        "agency": "btp",
    }
    share_event = _audit(db_session, "share.create")[-1]
    assert share_event.actor_agency == "btp" and share_event.resource_id == document["share_id"]
    decide_event = _audit(db_session, "access_request.decide")[-1]
    assert decide_event.actor_agency == "btp" and str(decide_event.referral_id) == scene.referral_id

    mine = client.get(f"/v1/access-requests/{asked['id']}", headers=scene.requester.headers())
    assert mine.get_json()["status"] == "shared" and "referral_ids" not in mine.get_json()

    again = _decide(client, scene, asked["id"], {"decision": "decline", "reason": "Changed mind"})
    assert again.status_code == 409
    withdraw = client.post(
        f"/v1/access-requests/{asked['id']}/withdraw", headers=scene.requester.headers()
    )
    assert withdraw.status_code == 409


def test_a_request_declined_is_a_recorded_decision_not_to_share(client, db_session, scene):
    asked = _asked(client, scene)
    declined = _decide(
        client, scene, asked["id"], {"decision": "decline", "reason": "Covert enquiry."}
    )
    assert declined.status_code == 200, declined.get_json()
    document = declined.get_json()
    assert document["status"] == "declined" and document["decision_reason"] == "Covert enquiry."
    assert document["share_id"] is None

    mine = client.get(f"/v1/access-requests/{asked['id']}", headers=scene.requester.headers())
    assert mine.get_json()["status"] == "declined"
    _assert_nothing_leaks(scene, mine)
    still = client.get(f"/v1/referrals/{scene.referral_id}", headers=scene.requester.headers())
    assert still.status_code == 404

    listed = client.get(
        f"/v1/referrals/{scene.referral_id}/decisions", headers=scene.holder.headers()
    )
    assert listed.status_code == 200
    [decision] = listed.get_json()["items"]
    assert decision["agency"] == "notts-cs" and decision["reason"] == "Covert enquiry."
    assert decision["access_request_id"] == asked["id"]
    assert decision["purpose"] == "safeguard_assess"
    assert decision["decided_by"]["agency"] == "btp"

    feed = [e for e in _feed(client, scene.requester) if e["type"] == "access_request.decided"]
    assert [e["data"] for e in feed] == [{"access_request_id": asked["id"], "agency": "btp"}]
    assert not [e for e in _feed(client, scene.requester) if e["type"] == "referral.shared"]

    created = _audit(db_session, "decision.create")[-1]
    assert str(created.referral_id) == scene.referral_id and created.actor_agency == "btp"

    # The lead's access report shows who asked after its child and what it decided.
    sequence_pending(db_session.connection(), limit=1_000_000)
    report = client.get(
        f"/v1/referrals/{scene.referral_id}/accesses", headers=scene.holder.headers()
    )
    seen = {(a["actor"]["agency"], a["action"]) for a in report.get_json()["items"]}
    assert ("notts-cs", "access_request.create") in seen
    assert ("btp", "decision.create") in seen
    assert ("btp", "access_request.decide") in seen


def test_the_requester_may_withdraw_a_pending_request_and_only_that(client, scene):
    asked = _asked(client, scene)
    path = f"/v1/access-requests/{asked['id']}/withdraw"
    by_holder = client.post(path, headers=scene.holder.headers())
    assert by_holder.status_code == 403
    withdrawn = client.post(path, headers=scene.requester.headers())
    assert withdrawn.status_code == 200
    assert withdrawn.get_json()["status"] == "withdrawn"
    _assert_nothing_leaks(scene, withdrawn)
    assert client.post(path, headers=scene.requester.headers()).status_code == 409
    late = _decide(client, scene, asked["id"], _share_decision(scene))
    assert late.status_code == 409
    # Withdrawn, it no longer stands in the way of asking again.
    assert _ask(client, scene).status_code == 201


def test_asking_twice_while_pending_is_409_pointing_at_the_first(client, db_session, scene):
    first = _asked(client, scene)
    # Another match of the same child (asked again later) leads to the same pending request.
    scene.match_id = match_for(db_session, "notts-cs", "btp", scene.subject_id)
    second = _ask(client, scene, purpose="strategy_discussion")
    assert second.status_code == 409
    assert first["id"] in second.get_json()["detail"]
    assert second.headers["Location"] == f"/v1/access-requests/{first['id']}"
    _assert_nothing_leaks(scene, second)


# -- who sees what -------------------------------------------------------------------------------
def test_a_third_agency_gets_404_for_everything_and_is_audited(client, db_session, scene):
    asked = _asked(client, scene)
    stranger = scene.stranger
    base = f"/v1/access-requests/{asked['id']}"
    missing = f"/v1/access-requests/{uuid.uuid4()}"
    for path in (base, missing):
        got = client.get(path, headers=stranger.headers())
        assert got.status_code == 404
        assert client.post(f"{path}/withdraw", headers=stranger.headers()).status_code == 404
        assert (
            _decide(
                client, scene, path.rsplit("/", 1)[-1], _share_decision(scene), stranger
            ).status_code
            == 404
        )
    refused = [e for e in _audit(db_session, "access.denied") if e.actor_agency == "leics-police"]
    assert {e.resource_id for e in refused} == {asked["id"], missing.rsplit("/", 1)[-1]}
    assert all(e.resource_type == "access_request" and e.outcome == "denied" for e in refused)
    for direction in ("incoming", "outgoing"):
        page = client.get(f"/v1/access-requests?direction={direction}", headers=stranger.headers())
        assert page.get_json()["items"] == []


def test_the_requester_never_reads_a_referral_id_subject_id_or_name(client, db_session, scene):
    asked = _asked(client, scene)
    requester = scene.requester.headers()
    reads = [
        client.get(f"/v1/access-requests/{asked['id']}", headers=requester),
        client.get("/v1/access-requests?direction=outgoing", headers=requester),
        client.get("/v1/access-requests", headers=requester),
        client.get("/v1/access-requests?direction=outgoing&status=pending", headers=requester),
        _ask(client, scene),  # 409: the pending one
        _ask(client, scene, agency="leics-police"),  # 422: not listed
        client.post(
            "/v1/access-requests",
            json=access_request_body(str(uuid.uuid4()), "btp"),
            headers=requester,
        ),  # 422: no such match
        # 403: only the holder decides, even with a referral id the requester guessed
        _decide(client, scene, asked["id"], _share_decision(scene), scene.requester),
        _decide(
            client,
            scene,
            asked["id"],
            {"decision": "share", "referral_id": str(uuid.uuid4()), "share": {}},
            scene.requester,
        ),
        client.get("/v1/events", headers=requester),
    ]
    for response in reads:
        assert response.status_code < 500
        _assert_nothing_leaks(scene, response)
    assert [r.status_code for r in reads[4:9]] == [409, 422, 422, 403, 422]
    listed = reads[1].get_json()["items"]
    assert [r["id"] for r in listed] == [asked["id"]]
    assert all("referral_ids" not in r and "subject_ids" not in r for r in listed)


def test_the_holder_sees_the_concerned_referrals_only_its_discoverable_ones(
    client, db_session, scene
):
    body = referral_body()
    del body["subject"]
    covert = client.post(
        "/v1/referrals",
        json={**body, "subject_id": scene.subject_id},
        headers=scene.holder.headers(),
    ).get_json()
    db_session.execute(
        update(Referral).where(Referral.id == uuid.UUID(covert["id"])).values(discoverable=False)
    )
    db_session.commit()
    asked = _asked(client, scene)
    incoming = client.get(
        "/v1/access-requests?direction=incoming", headers=scene.holder.headers()
    ).get_json()["items"]
    assert [(r["id"], r["referral_ids"]) for r in incoming] == [(asked["id"], [scene.referral_id])]
    # Only a referral the request concerns may be shared through it.
    body = _share_decision(scene)
    body["referral_id"] = covert["id"]
    refused = _decide(client, scene, asked["id"], body)
    assert refused.status_code == 422
    assert "referral_id" in refused.get_json()["errors"]["json"]


def test_a_foreign_or_expired_match_or_an_unlisted_agency_is_422(client, db_session, scene):
    theirs = match_for(db_session, "leics-police", "btp", scene.subject_id)
    expired = match_for(db_session, "notts-cs", "btp", scene.subject_id, hours=-1)
    for match_id in (theirs, expired, str(uuid.uuid4())):
        response = client.post(
            "/v1/access-requests",
            json=access_request_body(match_id, "btp"),
            headers=scene.requester.headers(),
        )
        assert response.status_code == 422
        assert list(response.get_json()["errors"]["json"]) == ["match_id"]
    refused = [e for e in _audit(db_session, "access.denied") if e.resource_type == "match"]
    assert {e.resource_id for e in refused} >= {theirs, expired}
    unlisted = _ask(client, scene, agency="leics-police")
    assert unlisted.status_code == 422
    assert list(unlisted.get_json()["errors"]["json"]) == ["agency"]
    bad_purpose = _ask(client, scene, purpose="curiosity")
    assert bad_purpose.status_code == 422
    no_necessity = _ask(client, scene, necessity="")
    assert no_necessity.status_code == 422
    bad_urgency = _ask(client, scene, urgency="whenever")
    assert bad_urgency.status_code == 422


def test_decisions_follow_the_share_rules_and_a_failed_one_leaves_it_pending(client, scene):
    asked = _asked(client, scene)
    cases = [
        (_share_decision(scene, consent={"status": "not_sought"}), ["consent", "rationale"]),
        (
            _share_decision(
                scene,
                lawful_basis={"article_6": "consent"},
                consent={"status": "refused", "rationale": "No."},
            ),
            ["lawful_basis", "article_6"],
        ),
        (_share_decision(scene, expires_at="2001-01-01T00:00:00Z"), ["expires_at"]),
    ]
    for body, path in cases:
        response = _decide(client, scene, asked["id"], body)
        assert response.status_code == 422, response.get_json()
        errors = response.get_json()["errors"]["json"]["share"]
        for part in path:
            errors = errors[part]
        assert errors
    for body, field in (
        ({"decision": "share", "share": _share_decision(scene)["share"]}, "referral_id"),
        ({"decision": "decline"}, "reason"),
        ({"decision": "decline", "reason": "No", "referral_id": scene.referral_id}, "referral_id"),
        ({"decision": "maybe"}, "decision"),
    ):
        response = _decide(client, scene, asked["id"], body)
        assert response.status_code == 422
        assert field in response.get_json()["errors"]["json"]
    still = client.get(f"/v1/access-requests/{asked['id']}", headers=scene.holder.headers())
    assert still.get_json()["status"] == "pending"


def test_an_existing_share_to_the_requester_is_409_as_for_any_share(client, scene):
    asked = _asked(client, scene)
    direct = client.post(
        f"/v1/referrals/{scene.referral_id}/shares",
        json=share_body("notts-cs"),
        headers=scene.holder.headers(),
    )
    assert direct.status_code == 201
    response = _decide(client, scene, asked["id"], _share_decision(scene))
    assert response.status_code == 409
    still = client.get(f"/v1/access-requests/{asked['id']}", headers=scene.holder.headers())
    assert still.get_json()["status"] == "pending"


def test_the_requester_cannot_decide_and_a_token_without_the_scope_is_refused(client, scene):
    asked = _asked(client, scene)
    by_requester = _decide(client, scene, asked["id"], _share_decision(scene), scene.requester)
    assert by_requester.status_code == 403
    caseworker = client.post(
        f"/v1/access-requests/{asked['id']}/decision",
        json=_share_decision(scene),
        headers=scene.holder.headers("referrals:read subjects:match"),
    )
    assert caseworker.status_code == 403
    assert "insufficient_scope" in caseworker.headers["WWW-Authenticate"]
    asking = client.post(
        "/v1/access-requests",
        json=access_request_body(scene.match_id),
        headers=scene.requester.headers("referrals:read referrals:share"),
    )
    assert asking.status_code == 403


def test_two_decisions_at_once_cannot_both_win(client, db_session, scene):
    """The version of the row is compared when it is written: a decision that read the request
    before another one changed it finds nothing to update and is refused."""
    asked = _asked(client, scene)
    request_id = uuid.UUID(asked["id"])
    seen = db_session.get(AccessRequest, request_id)
    assert seen is not None and seen.status == "pending"
    # A concurrent decision commits first, behind this session's back.
    db_session.execute(
        update(AccessRequest.__table__)
        .where(AccessRequest.__table__.c.id == request_id)
        .values(version=AccessRequest.__table__.c.version + 1)
    )
    from casehub.auth.actor import Actor
    from casehub.db import utcnow

    holder = Actor(
        agency="btp",
        agency_kind="police",
        is_platform=False,
        client_id=scene.holder.client_id,
        scopes=frozenset({"referrals:share"}),
    )
    with pytest.raises(Conflict):
        access_requests.decide_access_request(
            db_session,
            actor=holder,
            request_id=request_id,
            data={"decision": "decline", "reason": "Raced"},
            now=utcnow(),
        )


def test_lists_page_through_every_request_in_order_and_filter_by_status(
    client, db_session, factory, scene
):
    ids = []
    for n in range(3):
        created = client.post(
            "/v1/referrals",
            json=referral_body(subject=subject_body(given_name=f"Child{n}")),
            headers=scene.holder.headers(),
        ).get_json()
        scene.match_id = match_for(db_session, "notts-cs", "btp", created["subject_id"])
        ids.append(_asked(client, scene)["id"])
    client.post(f"/v1/access-requests/{ids[1]}/withdraw", headers=scene.requester.headers())
    for partner, direction in ((scene.requester, "outgoing"), (scene.holder, "incoming")):
        walked, cursor = [], None
        while True:
            query = {"direction": direction, "limit": 1, **({"cursor": cursor} if cursor else {})}
            page = client.get(
                "/v1/access-requests", query_string=query, headers=partner.headers()
            ).get_json()
            walked += [r["id"] for r in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert walked == ids
    pending = client.get(
        "/v1/access-requests?direction=incoming&status=pending", headers=scene.holder.headers()
    ).get_json()["items"]
    assert [r["id"] for r in pending] == [ids[0], ids[2]]
    wrong = client.get("/v1/access-requests?direction=sideways", headers=scene.holder.headers())
    assert wrong.status_code == 422
    typo = client.get("/v1/access-requests?staus=pending", headers=scene.holder.headers())
    assert typo.status_code == 422
    assert _audit(db_session, "access_request.list")


def test_an_idempotent_retry_returns_the_request_without_asking_twice(client, db_session, scene):
    headers = {**scene.requester.headers(), "Idempotency-Key": "s47-4471"}
    body = access_request_body(scene.match_id)
    first = client.post("/v1/access-requests", json=body, headers=headers)
    again = client.post("/v1/access-requests", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    count = db_session.execute(select(AccessRequest.id)).all()
    assert len(count) == 1
    replayed = _audit(db_session, "access_request.create.replay")[-1]
    assert replayed.actor_agency == "notts-cs" and replayed.basis == "requester"


# -- decisions not to share ----------------------------------------------------------------------
def _decision(client, scene: Scene, partner=None, **body: Any) -> Any:
    payload = {"agency": "notts-cs", "reason": "Not proportionate.", "purpose": "mash_triage"}
    payload.update(body)
    return client.post(
        f"/v1/referrals/{scene.referral_id}/decisions",
        json=payload,
        headers=(partner or scene.holder).headers(),
    )


def test_the_lead_records_decisions_and_lists_them_oldest_first(client, db_session, scene):
    made = []
    for n in range(3):
        response = _decision(client, scene, reason=f"Reason {n}")
        assert response.status_code == 201, response.get_json()
        made.append(response.get_json())
    assert made[0]["agency"] == "notts-cs" and made[0]["access_request_id"] is None
    assert made[0]["decided_by"] == {
        "agency": "btp",
        "client_id": scene.holder.client_id,
        "user_id": None,
    }
    walked, cursor = [], None
    while True:
        page = client.get(
            f"/v1/referrals/{scene.referral_id}/decisions",
            query_string={"limit": 2, **({"cursor": cursor} if cursor else {})},
            headers=scene.holder.headers(),
        ).get_json()
        walked += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [d["reason"] for d in walked] == ["Reason 0", "Reason 1", "Reason 2"]
    events = _audit(db_session, "decision.create")
    assert {e.resource_id for e in events} == {d["id"] for d in made}
    assert all(str(e.referral_id) == scene.referral_id for e in events)
    assert _audit(db_session, "decision.list")

    sequence_pending(db_session.connection(), limit=1_000_000)
    report = client.get(
        f"/v1/referrals/{scene.referral_id}/accesses", headers=scene.holder.headers()
    ).get_json()["items"]
    assert {a["resource"]["id"] for a in report if a["action"] == "decision.create"} == {
        d["id"] for d in made
    }


def test_decisions_are_the_lead_s_alone(client, db_session, scene):
    shared = client.post(
        f"/v1/referrals/{scene.referral_id}/shares",
        json=share_body("notts-cs"),
        headers=scene.holder.headers(),
    )
    assert shared.status_code == 201
    path = f"/v1/referrals/{scene.referral_id}/decisions"
    assert _decision(client, scene, scene.requester, agency="btp").status_code == 403
    assert client.get(path, headers=scene.requester.headers()).status_code == 403
    assert _decision(client, scene, scene.stranger).status_code == 404
    assert client.get(path, headers=scene.stranger.headers()).status_code == 404
    denied = [e.action for e in _audit(db_session, "decision.create") if e.outcome == "denied"]
    assert denied == ["decision.create"]
    assert _decision(client, scene, agency="btp").status_code == 409
    unknown = _decision(client, scene, agency="nobody-here")
    assert unknown.status_code == 422 and "agency" in unknown.get_json()["errors"]["json"]
    assert _decision(client, scene, purpose="curiosity").status_code == 422
    assert _decision(client, scene, reason="").status_code == 422
    for method in ("PATCH", "PUT", "DELETE"):
        assert client.open(path, method=method, headers=scene.holder.headers()).status_code == 405


def test_the_database_refuses_to_change_or_remove_a_decision(client, db_session, scene):
    made = _decision(client, scene).get_json()
    for statement in (
        "UPDATE sharing_decisions SET reason = 'rewritten' WHERE id = :id",
        "DELETE FROM sharing_decisions WHERE id = :id",
    ):
        with pytest.raises(DBAPIError, match="append-only"), db_session.begin_nested():
            db_session.execute(text(statement), {"id": _db_id(db_session, made["id"])})
    kept = db_session.execute(select(SharingDecision.reason)).scalars().all()
    assert kept == ["Not proportionate."]


def _db_id(db_session, value: str) -> Any:
    """A UUID as the dialect stores it in a plain text statement."""
    if db_session.get_bind().dialect.name == "postgresql":
        return value
    return uuid.UUID(value).hex


def test_events_carry_ids_only(client, db_session, scene):
    asked = _asked(client, scene)
    _decide(client, scene, asked["id"], {"decision": "decline", "reason": f"{CANARY_GIVEN}!"})
    rows = (
        db_session.execute(select(Event).where(Event.type.like("access_request.%"))).scalars().all()
    )
    assert {r.type for r in rows} == {"access_request.received", "access_request.decided"}
    for row in rows:
        assert set(row.data) <= {"access_request_id", "share_id", "agency"}
        assert CANARY_GIVEN not in str(row.data) and scene.referral_id not in str(row.data)


def test_a_child_whose_referrals_became_undiscoverable_gives_a_request_with_nothing_to_share(
    client, db_session, scene
):
    """The requester cannot tell (the answer is the same 201); the holder sees no referrals and
    may only decline, which records no decision about any referral."""
    db_session.execute(
        update(Referral)
        .where(Referral.id == uuid.UUID(scene.referral_id))
        .values(discoverable=False)
    )
    db_session.commit()
    response = _ask(client, scene)
    assert response.status_code == 201
    asked = response.get_json()
    # Only the requester's own record: nothing to file a notice under, and it names no child.
    (created,) = _audit(db_session, "access_request.create")
    assert created.referral_id is None and created.subject_ids == []
    seen = client.get(f"/v1/access-requests/{asked['id']}", headers=scene.holder.headers())
    assert seen.get_json()["referral_ids"] == []
    assert _decide(client, scene, asked["id"], _share_decision(scene)).status_code == 422
    declined = _decide(client, scene, asked["id"], {"decision": "decline", "reason": "No."})
    assert declined.status_code == 200 and declined.get_json()["status"] == "declined"
    assert db_session.execute(select(SharingDecision.id)).all() == []


def test_the_requesters_own_audit_trail_names_neither_the_referral_nor_the_child(
    client, db_session, scene
):
    """The requester's auditors see that its actor asked (and withdrew), never which of the
    holder's referrals or children the request concerns; the holder's auditors see both."""
    from casehub.audit.chain import sequence_pending

    asked = _asked(client, scene)
    withdrawn = client.post(
        f"/v1/access-requests/{asked['id']}/withdraw", headers=scene.requester.headers()
    )
    assert withdrawn.status_code == 200, withdrawn.get_json()
    sequence_pending(db_session.connection(), limit=1_000_000)
    db_session.commit()

    def trail(partner: Any) -> tuple[list[dict[str, Any]], bytes]:
        response = client.get(
            "/v1/audit/events", query_string={"limit": 200}, headers=partner.headers()
        )
        assert response.status_code == 200, response.get_json()
        return response.get_json()["items"], response.get_data()

    mine, raw = trail(scene.requester)
    actions = [e["action"] for e in mine if e["resource"]["type"] == "access_request"]
    assert {"access_request.create", "access_request.withdraw"} <= set(actions)
    assert scene.referral_id.encode() not in raw and scene.subject_id.encode() not in raw
    theirs, _ = trail(scene.holder)
    notices = [
        e for e in theirs if e["action"] in ("access_request.create", "access_request.withdraw")
    ]
    assert {e["action"] for e in notices} == {"access_request.create", "access_request.withdraw"}
    assert all(e["referral_id"] == scene.referral_id for e in notices)
