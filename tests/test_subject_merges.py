"""Merging children's records (CONTRACT §11) over HTTP with real tokens: who may merge, what a
merge changes in searches, lists and matching, and that it gives no agency sight of anything."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from casehub import migrate
from casehub.auth.actor import Actor
from casehub.db import utcnow
from casehub.errors import Conflict
from casehub.models import AuditEvent, Event, Subject, SubjectMerge, WebhookDelivery
from casehub.services import agencies, policy, subjects
from tests.helpers import referral_body, share_body, subject_body
from tests.live_server import fresh_database

NHS_NUMBER = "9434765919"  # passes the modulus-11 check
REASON = "Same child: the school confirmed both names and the address."


def refer(client, partner, *, subject_id: str | None = None, **subject: Any) -> dict[str, Any]:
    """A referral led by `partner`, about `subject_id` or a new child."""
    body = referral_body(subject=subject_body(**subject))
    if subject_id is not None:
        del body["subject"]
        body["subject_id"] = subject_id
    created = client.post("/v1/referrals", json=body, headers=partner.headers())
    assert created.status_code == 201, created.get_json()
    return dict(created.get_json())


def share(client, lead, referral_id: str, agency: str) -> str:
    created = client.post(
        f"/v1/referrals/{referral_id}/shares", json=share_body(agency), headers=lead.headers()
    )
    assert created.status_code == 201, created.get_json()
    return str(created.get_json()["id"])


def new_subject(client, partner, **fields: Any) -> dict[str, Any]:
    created = client.post("/v1/subjects", json=subject_body(**fields), headers=partner.headers())
    assert created.status_code == 201, created.get_json()
    return dict(created.get_json())


def merge(client, partner, survivor: str, duplicate: str, verb: str = "merge") -> Any:
    return client.post(
        f"/v1/subjects/{survivor}/{verb}",
        json={"duplicate_id": duplicate, "reason": REASON},
        headers=partner.headers(),
    )


def search_ids(client, partner, **params: Any) -> list[str]:
    """Every subject a cursor walk of the search lists, one page of one at a time."""
    found: list[str] = []
    cursor = None
    while True:
        query = {**params, "limit": 1, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/subjects", query_string=query, headers=partner.headers())
        assert page.status_code == 200, page.get_json()
        body = page.get_json()
        found.extend(item["id"] for item in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return found


def listed_referrals(client, partner, **params: Any) -> set[str]:
    page = client.get(
        "/v1/referrals", query_string={**params, "limit": 200}, headers=partner.headers()
    )
    assert page.status_code == 200, page.get_json()
    assert page.get_json()["next_cursor"] is None
    return {item["id"] for item in page.get_json()["items"]}


@dataclass
class Three:
    """A sees the survivor only, B the duplicate only, C both (C recorded the duplicate)."""

    a: Any
    b: Any
    c: Any
    revoked: Any  # held a share of A's referral, revoked: no longer sees the child
    survivor: str
    duplicate: str
    referrals: dict[str, str]  # a: A's about the survivor; c, b: C's and B's about the duplicate


@pytest.fixture
def three(client, factory) -> Three:
    a = factory.partner("a-police", kind="police")
    b = factory.partner("b-charity", kind="charity")
    c = factory.partner("c-council", kind="local_authority")
    revoked = factory.partner("e-health", kind="health")
    by_a = refer(
        client,
        a,
        given_name="Jayden",
        family_name="Okafor",
        identifiers=[{"system": "nhs_number", "value": NHS_NUMBER}],
    )
    share(client, a, by_a["id"], "c-council")
    gone = share(client, a, by_a["id"], "e-health")
    revoke = client.post(
        f"/v1/referrals/{by_a['id']}/shares/{gone}/revoke",
        json={"reason": "Assessment finished"},
        headers=a.headers(),
    )
    assert revoke.status_code == 200
    duplicate = new_subject(
        client,
        c,
        given_name="Jay",
        family_name="Okafor",
        aliases=["Little J"],
        date_of_birth="2011-04-03",
    )
    by_c = refer(client, c, subject_id=duplicate["id"])
    share(client, c, by_c["id"], "b-charity")
    by_b = refer(client, b, subject_id=duplicate["id"])
    return Three(
        a,
        b,
        c,
        revoked,
        by_a["subject_id"],
        duplicate["id"],
        {"a": by_a["id"], "c": by_c["id"], "b": by_b["id"]},
    )


def what_each_sees(client, world: Three) -> dict[str, dict[str, Any]]:
    """Per agency: its answer to each referral, its referrals by either child's id and in
    all, its searches by each record's names, and its reading of each record."""
    seen: dict[str, dict[str, Any]] = {}
    for name in ("a", "b", "c"):
        partner = getattr(world, name)
        records = {}
        for record in (world.survivor, world.duplicate):
            read = client.get(f"/v1/subjects/{record}", headers=partner.headers())
            records[record] = (read.status_code, (read.get_json() or {}).get("merged_into"))
        seen[name] = {
            "referrals": {
                key: client.get(f"/v1/referrals/{rid}", headers=partner.headers()).status_code
                for key, rid in world.referrals.items()
            },
            "all": listed_referrals(client, partner),
            "by survivor": listed_referrals(client, partner, subject_id=world.survivor),
            "by duplicate": listed_referrals(client, partner, subject_id=world.duplicate),
            "okafor": search_ids(client, partner, q="okafor"),
            "little j": search_ids(client, partner, q="little j"),
            "jayden": search_ids(client, partner, q="jayden"),
            "born 2011-04-03": search_ids(client, partner, date_of_birth="2011-04-03"),
            "everyone": search_ids(client, partner),
            "records": records,
        }
    return seen


def test_merge_and_unmerge_give_no_agency_sight_of_anything(client, db_session, three):
    w = three
    s, d, r = w.survivor, w.duplicate, w.referrals
    before = what_each_sees(client, w)
    # What each agency sees at the start, spelled out.
    assert before["a"]["referrals"] == {"a": 200, "c": 404, "b": 404}
    assert before["b"]["referrals"] == {"a": 404, "c": 200, "b": 200}
    assert before["c"]["referrals"] == {"a": 200, "c": 200, "b": 404}
    assert before["a"]["records"] == {s: (200, None), d: (404, None)}
    assert before["b"]["records"] == {s: (404, None), d: (200, None)}
    assert before["c"]["records"] == {s: (200, None), d: (200, None)}
    assert before["c"]["okafor"] == [s, d]
    assert before["c"]["little j"] == [d]

    merged = merge(client, w.c, s, d)
    assert merged.status_code == 200, merged.get_json()
    assert merged.get_json()["id"] == s and merged.get_json()["merged_into"] is None
    assert merged.headers["ETag"]
    after = what_each_sees(client, w)

    # A and B: exactly what they saw before, but B's record now says where the child's is.
    assert after["a"] == before["a"]
    assert after["b"] == {**before["b"], "records": {s: (404, None), d: (200, s)}}
    # C: one child, found by either record's names, its referrals under either id; the same
    # referrals and records it could always see.
    assert after["c"]["referrals"] == before["c"]["referrals"]
    assert after["c"]["all"] == before["c"]["all"]
    assert after["c"]["by survivor"] == after["c"]["by duplicate"] == {r["a"], r["c"]}
    assert after["c"]["okafor"] == [s]
    assert after["c"]["little j"] == [s]
    assert after["c"]["jayden"] == [s]
    assert after["c"]["born 2011-04-03"] == [s]  # the duplicate's date of birth
    assert after["c"]["everyone"] == [s]
    assert after["c"]["records"] == {s: (200, None), d: (200, s)}
    # Nobody's list holds a referral it could not read before.
    for name, seen in after.items():
        readable = {key for key, status in before[name]["referrals"].items() if status == 200}
        listed = seen["all"] | seen["by survivor"] | seen["by duplicate"]
        assert listed <= {r[key] for key in readable}, name

    unmerged = merge(client, w.c, s, d, "unmerge")
    assert unmerged.status_code == 200, unmerged.get_json()
    assert what_each_sees(client, w) == before

    # Told: the agencies that see a referral about either record, never the one that merged,
    # nor one whose share was revoked; ids only.
    db_session.expire_all()
    told = db_session.execute(
        select(Event.agency_code, Event.data).where(Event.type == "subject.merged")
    ).all()
    expected = {
        (agency, action): {
            "subject_id": s,
            "duplicate_id": d,
            "action": action,
            "agency": "c-council",
        }
        for agency in ("a-police", "b-charity")
        for action in ("merge", "unmerge")
    }
    assert {(agency, data["action"]): data for agency, data in told} == expected
    assert len(told) == 4


def test_a_merge_is_audited_kept_and_delivered(client, db_session, three):
    w = three
    hook = client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hooks", "events": ["subject.merged"]},
        headers=w.a.headers(),
    )
    assert hook.status_code == 201, hook.get_json()
    assert merge(client, w.c, w.survivor, w.duplicate).status_code == 200
    db_session.expire_all()
    (event,) = db_session.execute(
        select(AuditEvent).where(AuditEvent.action == "subject.merge")
    ).scalars()
    assert event.actor_agency == "c-council" and event.outcome == "allowed"
    assert sorted(event.subject_ids) == sorted([w.survivor, w.duplicate])
    assert str(event.resource_id) == w.survivor
    (kept,) = db_session.execute(select(SubjectMerge)).scalars()
    assert (kept.action, str(kept.subject_id), str(kept.duplicate_id)) == (
        "merge",
        w.survivor,
        w.duplicate,
    )
    assert (kept.reason, kept.actor_agency, kept.actor_client_id) == (
        REASON,
        "c-council",
        w.c.client_id,
    )
    deliveries = db_session.execute(
        select(WebhookDelivery).where(
            WebhookDelivery.webhook_id == uuid.UUID(hook.get_json()["id"])
        )
    ).all()
    assert len(deliveries) == 1
    feed = client.get("/v1/events", headers=w.a.headers()).get_json()["items"]
    assert [(e["type"], e["data"]["action"]) for e in feed] == [("subject.merged", "merge")]

    # The history: C sees both records, so both entries; A and B see one record each: none.
    assert merge(client, w.c, w.survivor, w.duplicate, "unmerge").status_code == 200
    for record in (w.survivor, w.duplicate):
        history = client.get(f"/v1/subjects/{record}/merges", headers=w.c.headers())
        assert history.status_code == 200
        entries = history.get_json()["items"]
        assert [e["action"] for e in entries] == ["merge", "unmerge"]
        assert entries[0]["actor"] == {
            "agency": "c-council",
            "client_id": w.c.client_id,
            "user_id": None,
        }
        assert entries[0]["reason"] == REASON
    for partner, record in ((w.a, w.survivor), (w.b, w.duplicate)):
        history = client.get(f"/v1/subjects/{record}/merges", headers=partner.headers())
        assert history.get_json()["items"] == []
    hidden = client.get(f"/v1/subjects/{w.duplicate}/merges", headers=w.a.headers())
    assert hidden.status_code == 404


def test_who_may_merge_and_what_is_refused(client, db_session, factory, three):
    w = three
    s, d = w.survivor, w.duplicate
    # B sees the duplicate only: the survivor is 404 to it, audited as a denial.
    refused = merge(client, w.b, s, d)
    assert refused.status_code == 404
    # A sees the survivor only: the duplicate is 404 to it.
    assert merge(client, w.a, s, d).status_code == 404
    db_session.expire_all()
    denials = db_session.execute(
        select(AuditEvent.actor_agency, AuditEvent.resource_id).where(
            AuditEvent.action == "access.denied"
        )
    ).all()
    assert {(agency, str(rid)) for agency, rid in denials} == {("b-charity", s), ("a-police", d)}
    # C sees both but recorded only the duplicate: it may not merge A's record into it.
    forbidden = merge(client, w.c, d, s)
    assert forbidden.status_code == 403
    (denied,) = db_session.execute(
        select(AuditEvent).where(AuditEvent.action == "subject.merge")
    ).scalars()
    assert denied.outcome == "denied"
    # Into itself; then chains: a duplicate already merged, a survivor itself merged.
    assert merge(client, w.c, d, d).status_code == 409
    assert merge(client, w.c, s, d).status_code == 200
    assert merge(client, w.c, s, d).status_code == 409
    other = new_subject(client, w.c, given_name="Jo", family_name="Okafor")
    assert merge(client, w.c, d, other["id"]).status_code == 409  # d is merged into s
    # A survivor's earlier duplicates stay pointed at it, and the agencies that see a
    # referral about any of the child's records hear of the new one.
    assert merge(client, w.c, s, other["id"]).status_code == 200
    db_session.expire_all()
    told = db_session.execute(
        select(Event.agency_code).where(
            Event.type == "subject.merged", Event.data["duplicate_id"].as_string() == other["id"]
        )
    ).scalars()
    assert sorted(told) == ["a-police", "b-charity"]
    for record in (d, other["id"]):
        read = client.get(f"/v1/subjects/{record}", headers=w.c.headers()).get_json()
        assert read["merged_into"] == s
    # A record that others are merged into is not merged itself.
    third = new_subject(client, w.a, given_name="Jayden", family_name="Okafor")
    assert merge(client, w.a, third["id"], s).status_code == 409  # A recorded s
    # Unmerge: only what is merged into this subject.
    assert merge(client, w.c, other["id"], d, "unmerge").status_code == 409
    assert merge(client, w.c, s, d, "unmerge").status_code == 200
    assert merge(client, w.c, s, d, "unmerge").status_code == 409
    assert merge(client, w.b, s, d, "unmerge").status_code == 404
    bad = client.post(f"/v1/subjects/{s}/merge", json={"duplicate_id": d}, headers=w.c.headers())
    assert bad.status_code == 422


def test_a_cursor_walk_lists_each_child_once_whichever_record_it_meets_first(client, factory):
    x = factory.partner("x-council", kind="local_authority")
    y = factory.partner("y-police", kind="police")

    def record(given: str, family: str = "Okafor") -> str:
        return new_subject(client, x, given_name=given, family_name=family)["id"]

    s1, d1 = record("Amara"), record("Amarah")
    d2, s2 = record("Bola"), record("Bola", "Smith")  # the duplicate comes first
    alone = record("Chidi")
    s4, d4a, d4b = record("Dayo"), record("Dayo"), record("Dayo")
    # A duplicate whose survivor x sees no longer: listed as itself.
    by_y = refer(client, y, given_name="Emeka", family_name="Smith")
    share_id = share(client, y, by_y["id"], "x-council")
    d5 = record("Emeka")
    for survivor, duplicate in ((s1, d1), (s2, d2), (s4, d4a), (s4, d4b), (by_y["subject_id"], d5)):
        assert merge(client, x, survivor, duplicate).status_code == 200
    revoked = client.post(
        f"/v1/referrals/{by_y['id']}/shares/{share_id}/revoke",
        json={"reason": "Done"},
        headers=y.headers(),
    )
    assert revoked.status_code == 200
    expected = [s1, s2, alone, s4, d5]
    for limit in (1, 2, 3, 50):
        for params in ({"q": "okafor"}, {}):
            found, cursor = [], None
            while True:
                query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
                body = client.get(
                    "/v1/subjects", query_string=query, headers=x.headers()
                ).get_json()
                found.extend(item["id"] for item in body["items"])
                cursor = body["next_cursor"]
                if cursor is None:
                    break
            assert found == expected, (limit, params)
    # Smith: Bola Smith (the survivor itself); Emeka Smith is y's, no longer x's to see.
    assert search_ids(client, x, q="smith") == [s2]
    assert search_ids(client, x, q="amarah") == [s1]  # the duplicate's name


def test_matching_counts_merged_records_as_one_child(client, factory, three):
    w = three
    asker = factory.partner("m-police", kind="police")

    def holders() -> dict[str, str]:
        answer = client.post(
            "/v1/matches",
            json={"identifiers": [{"system": "nhs_number", "value": NHS_NUMBER}]},
            headers=asker.headers(),
        )
        assert answer.status_code == 201, answer.get_json()
        return {item["agency"]["code"]: item["confidence"] for item in answer.get_json()["items"]}

    # Only A's record carries the NHS number.
    assert holders() == {"a-police": "identifier"}
    assert merge(client, w.c, w.survivor, w.duplicate).status_code == 200
    assert holders() == {
        "a-police": "identifier",
        "b-charity": "identifier",
        "c-council": "identifier",
    }
    # By name, the duplicate's: A's referral is about the same child now.
    answer = client.post(
        "/v1/matches",
        json={"given_name": "Jay", "family_name": "Okafor", "date_of_birth": "2011-04-03"},
        headers=asker.headers(),
    ).get_json()
    assert {i["agency"]["code"]: i["confidence"] for i in answer["items"]} == {
        "a-police": "strong",
        "b-charity": "strong",
        "c-council": "strong",
    }
    # B already sees the child through C's referral about the duplicate: C is not listed to it.
    seen_by_b = client.post(
        "/v1/matches",
        json={"identifiers": [{"system": "nhs_number", "value": NHS_NUMBER}]},
        headers=w.b.headers(),
    ).get_json()
    assert {i["agency"]["code"] for i in seen_by_b["items"]} == {"a-police"}
    assert merge(client, w.c, w.survivor, w.duplicate, "unmerge").status_code == 200
    assert holders() == {"a-police": "identifier"}


def loaded(**fields: Any) -> dict[str, Any]:
    """SubjectCreateSchema's loaded data for a subject body, as the view hands it over."""
    from casehub.schemas.subject import SubjectCreateSchema

    return dict(SubjectCreateSchema().load(subject_body(**fields)))


@pytest.mark.postgres_only
def test_two_merges_of_overlapping_records_at_once_never_make_a_chain(tmp_path, is_postgres):
    """D into R, and R into X, at the same moment: the second waits for the first's locks and
    then sees it, so it is refused (R has a record merged into it) instead of chaining D."""
    if not is_postgres:
        pytest.skip("SQLite serialises writers")
    with fresh_database(tmp_path, "merges") as url:
        engine = create_engine(url)
        try:
            migrate.upgrade(engine)
            actor = Actor(agency="xp", agency_kind="police", is_platform=False, client_id="xp-1")
            with Session(engine) as setup:
                agencies.add_agency(setup, code="xp", name="XP", kind="police", area=None)
                setup.commit()
                r, d, x = (
                    subjects.create_subject(
                        setup, actor=actor, data=loaded(given_name=n), now=utcnow()
                    ).id
                    for n in ("Ria", "Dee", "Xan")
                )
                setup.commit()
            first, second = Session(engine), Session(engine)
            subjects.merge_subjects(
                first, actor=actor, subject_id=r, duplicate_id=d, reason=REASON, now=utcnow()
            )
            outcome: list[BaseException | None] = []

            def merge_r_into_x() -> None:
                try:
                    second.execute(text("SET LOCAL lock_timeout = '10s'"))
                    subjects.merge_subjects(
                        second,
                        actor=actor,
                        subject_id=x,
                        duplicate_id=r,
                        reason=REASON,
                        now=utcnow(),
                    )
                    second.commit()
                    outcome.append(None)
                except Exception as error:  # the refusal is the point
                    second.rollback()
                    outcome.append(error)

            waiting = threading.Thread(target=merge_r_into_x)
            waiting.start()
            waiting.join(timeout=1)
            assert waiting.is_alive(), "the second merge did not wait for the first's locks"
            first.commit()
            waiting.join(timeout=15)
            assert len(outcome) == 1 and isinstance(outcome[0], Conflict), outcome
            with Session(engine) as check:
                merged = dict(check.execute(select(Subject.id, Subject.merged_into)).all())
            assert merged == {r: None, d: r, x: None}
            first.close()
            second.close()
        finally:
            engine.dispose()


def test_policy_lists_a_duplicate_as_its_survivor_only_to_who_sees_the_survivor():
    survivor, duplicate = uuid.uuid4(), uuid.uuid4()
    record = Subject(id=duplicate, merged_into=survivor, created_by_agency="c-council")
    assert policy.listed_as(record, {survivor, duplicate}) == survivor
    assert policy.listed_as(record, {duplicate}) == duplicate
    assert policy.listed_as(Subject(id=survivor), {survivor, duplicate}) == survivor
    assert policy.may_merge("c-council", duplicate=record)
    assert not policy.may_merge("a-police", duplicate=record)
