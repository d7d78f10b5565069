"""Existence-only matching (CONTRACT §9): POST /v1/matches and discoverable referrals, over HTTP
with real tokens; the planner's two walks and the match's binding through the service."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, update

from casehub.audit.chain import sequence_pending
from casehub.auth.actor import Actor
from casehub.errors import ValidationFailed
from casehub.models import Agency, AuditEvent, Match, Share, SubjectIdentifier
from casehub.services import matching, names
from tests.conftest import ALL_SCOPES
from tests.helpers import access_request_body, referral_body, share_body, subject_body
from tests.windows import clear_of_a_window_edge

NHS_NUMBER = "9434765919"  # passes the modulus-11 check


@pytest.fixture
def agencies(factory) -> dict[str, Any]:
    """The asker (a police force) and three other agencies that may hold referrals."""
    return {
        "btp": factory.partner("btp", kind="police"),
        "notts-cs": factory.partner("notts-cs", kind="local_authority"),
        "tcs": factory.partner("tcs", kind="charity"),
        "leics-police": factory.partner("leics-police", kind="police"),
    }


def refer(client, partner, *, discoverable: bool | None = None, **subject: Any) -> dict[str, Any]:
    """A referral led by `partner` about a new child (subject_body with `subject` over it)."""
    body = referral_body(subject=subject_body(**subject))
    if discoverable is not None:
        body["discoverable"] = discoverable
    created = client.post("/v1/referrals", json=body, headers=partner.headers())
    assert created.status_code == 201, created.get_json()
    return created.get_json()


def refer_about(client, partner, subject_id: str, **overrides: Any) -> dict[str, Any]:
    body = referral_body(**overrides)
    del body["subject"]
    body["subject_id"] = subject_id
    created = client.post("/v1/referrals", json=body, headers=partner.headers())
    assert created.status_code == 201, created.get_json()
    return created.get_json()


def ask(client, partner, status: int = 201, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/matches", json=body, headers=partner.headers())
    assert response.status_code == status, response.get_json()
    return response.get_json()


def listed(client, partner, **body: Any) -> dict[str, str]:
    """The agencies a match lists, with their confidence."""
    return {
        item["agency"]["code"]: item["confidence"] for item in ask(client, partner, **body)["items"]
    }


JAYDEN = {"given_name": "Jayden", "family_name": "Okafor", "date_of_birth": "2011-04-02"}


# -- confidence ---------------------------------------------------------------------------------
def test_an_identifier_matches_by_system_and_value_whatever_its_spacing_and_case(client, agencies):
    refer(
        client,
        agencies["notts-cs"],
        given_name="Someone",
        family_name="Else",
        identifiers=[{"system": "upn", "value": "H801200001001"}],
    )
    refer(
        client,
        agencies["tcs"],
        given_name="Other",
        family_name="Child",
        identifiers=[{"system": "nhs_number", "value": NHS_NUMBER}],
    )
    btp = agencies["btp"]
    upn = [{"system": "upn", "value": "h801 2000-01001"}]
    assert listed(client, btp, identifiers=upn) == {"notts-cs": "identifier"}
    nhs = [{"system": "nhs_number", "value": "943 476 5919"}]
    assert listed(client, btp, identifiers=nhs) == {"tcs": "identifier"}
    # The same value in another system is another identifier.
    assert listed(client, btp, identifiers=[{"system": "pnc_id", "value": "H801200001001"}]) == {}
    # An identifier needs no names; with names that match nothing it still matches.
    assert listed(
        client,
        btp,
        given_name="Nobody",
        family_name="Atall",
        date_of_birth="2012-01-01",
        identifiers=upn,
    ) == {"notts-cs": "identifier"}


def test_an_identifier_of_only_spaces_and_hyphens_matches_nothing(client, agencies, db_session):
    refer(client, agencies["tcs"], identifiers=[{"system": "other", "value": "- -"}])
    dashes = [{"system": "other", "value": "--"}]
    assert listed(client, agencies["btp"], identifiers=dashes) == {}
    # Nor is such a value kept as an identifier row to be matched by.
    assert db_session.scalars(select(SubjectIdentifier.value)).all() == []


def test_strong_is_the_same_date_of_birth_and_names_up_to_case_accents_a_typo_or_an_alias(
    client, agencies
):
    refer(
        client,
        agencies["notts-cs"],
        given_name="Zoë",
        family_name="O'Brien",
        aliases=["Chloe Smith-Jones"],
        date_of_birth="2012-06-30",
    )
    btp = agencies["btp"]
    for given, family in (
        ("Zoë", "O'Brien"),
        ("ZOE", "obrien"),  # case, accent and apostrophe
        ("Zeo", "OBrien"),  # two neighbours swapped
        ("Zoe", "O'Brian"),  # one letter wrong
        ("Zo", "OBrien"),  # a short word must be whole: "zo" is not "zoe"
        ("Chloe", "Jones"),  # an alias, and a part of it
        ("Chlo", "Smith-Jones"),
    ):
        expected = {} if given == "Zo" else {"notts-cs": "strong"}
        found = listed(
            client, btp, given_name=given, family_name=family, date_of_birth="2012-06-30"
        )
        assert found == expected, (given, family)


def test_possible_is_names_as_for_strong_and_a_birth_year_within_one_year(client, agencies):
    refer(client, agencies["notts-cs"], **JAYDEN)
    refer(
        client,
        agencies["tcs"],
        given_name="Jayden",
        family_name="Okafor",
        date_of_birth=None,
        estimated_birth_year=2010,
    )
    btp = agencies["btp"]
    names = {"given_name": "Jaydon", "family_name": "Okafor"}
    # Another date in the same year: possible, not strong; the estimated 2010 is a year away.
    assert listed(client, btp, **names, date_of_birth="2011-12-25") == {
        "notts-cs": "possible",
        "tcs": "possible",
    }
    assert listed(client, btp, **names, estimated_birth_year=2012) == {"notts-cs": "possible"}
    assert listed(client, btp, **names, estimated_birth_year=2009) == {"tcs": "possible"}
    # Two years away from both: nothing.
    assert listed(client, btp, **names, estimated_birth_year=2013) == {}
    # The same date of birth: strong where the child has it, possible where only a year.
    assert listed(client, btp, **names, date_of_birth="2011-04-02") == {
        "notts-cs": "strong",
        "tcs": "possible",
    }


def test_nothing_weaker_than_possible_is_listed(client, agencies):
    refer(client, agencies["notts-cs"], **JAYDEN)
    btp = agencies["btp"]
    for body in (
        {**JAYDEN, "given_name": "Jaydxx"},  # two typos in one name
        {**JAYDEN, "family_name": "Okafor Smith"},  # a word the child does not have
        {**JAYDEN, "given_name": "Kayden", "family_name": "Okafur"},  # a typo in each is fine...
    ):
        expected = {"notts-cs": "strong"} if body["given_name"] == "Kayden" else {}
        assert listed(client, btp, **body) == expected, body
    # A child without a birth year is found by identifier only.
    refer(client, agencies["tcs"], given_name="Amara", family_name="Mensah", date_of_birth=None)
    assert (
        listed(client, btp, given_name="Amara", family_name="Mensah", date_of_birth="2011-04-02")
        == {}
    )


def test_an_agency_gets_its_best_confidence_and_the_answer_is_ordered_best_first(client, agencies):
    cs, tcs, leics = agencies["notts-cs"], agencies["tcs"], agencies["leics-police"]
    ids = [{"system": "la_case_ref", "value": "NCC-77"}]
    refer(client, tcs, **{**JAYDEN, "date_of_birth": "2011-09-09"})  # possible
    refer(client, cs, **{**JAYDEN, "date_of_birth": "2011-09-09"})  # possible...
    refer(client, cs, **JAYDEN)  # ...and strong: strong
    refer(client, leics, given_name="X", family_name="Y", identifiers=ids)  # identifier
    answer = ask(client, agencies["btp"], **JAYDEN, identifiers=ids)
    assert [(i["agency"]["code"], i["confidence"]) for i in answer["items"]] == [
        ("leics-police", "identifier"),
        ("notts-cs", "strong"),
        ("tcs", "possible"),
    ]
    assert answer["items"][1]["agency"] == {
        "code": "notts-cs",
        "name": "Notts-Cs",
        "kind": "local_authority",
    }
    assert answer["items"][1]["open_referrals"] == 2


def test_known_since_is_the_earliest_matched_referral_and_open_counts_those_not_closed(
    client, agencies
):
    cs = agencies["notts-cs"]
    first = refer(client, cs, **JAYDEN)
    second = refer_about(client, cs, first["subject_id"])
    etag = client.get(f"/v1/referrals/{second['id']}", headers=cs.headers()).headers["ETag"]
    for to in ("acknowledged", "in_assessment", "no_further_action", "closed"):
        moved = client.post(
            f"/v1/referrals/{second['id']}/transitions",
            json={"to": to, "reason": "Assessed; no further action"},
            headers=cs.headers(**{"If-Match": etag}),
        )
        assert moved.status_code == 200, moved.get_json()
        etag = moved.headers["ETag"]
    (item,) = ask(client, agencies["btp"], **JAYDEN)["items"]
    assert item["open_referrals"] == 1  # no_further_action counts as open; closed does not
    assert datetime.fromisoformat(item["known_since"]) == datetime.fromisoformat(
        first["created_at"]
    )


# -- who is never listed --------------------------------------------------------------------------
def test_the_callers_own_agency_is_never_listed(client, agencies):
    btp = agencies["btp"]
    refer(client, btp, **JAYDEN, identifiers=[{"system": "upn", "value": "U1"}])
    assert listed(client, btp, **JAYDEN) == {}
    refer(client, agencies["tcs"], **JAYDEN)
    assert listed(client, btp, **JAYDEN, identifiers=[{"system": "upn", "value": "U1"}]) == {
        "tcs": "strong"
    }


def test_an_agency_the_caller_already_sees_the_child_through_is_not_listed(client, agencies):
    btp, cs = agencies["btp"], agencies["notts-cs"]
    referral = refer(client, cs, **JAYDEN)
    shared = client.post(
        f"/v1/referrals/{referral['id']}/shares", json=share_body("btp"), headers=cs.headers()
    )
    assert shared.status_code == 201
    assert listed(client, btp, **JAYDEN) == {}
    # Another child of the same agency who matches is still news to the caller.
    refer(client, cs, **{**JAYDEN, "date_of_birth": "2011-04-30"})
    assert listed(client, btp, **JAYDEN) == {"notts-cs": "possible"}
    # Once the share is revoked the first child is news again.
    revoked = client.post(
        f"/v1/referrals/{referral['id']}/shares/{shared.get_json()['id']}/revoke",
        json={"reason": "Done"},
        headers=cs.headers(),
    )
    assert revoked.status_code == 200
    assert listed(client, btp, **JAYDEN) == {"notts-cs": "strong"}


def test_an_expired_share_does_not_count_as_seeing_the_child(client, agencies, db_session):
    btp, cs = agencies["btp"], agencies["notts-cs"]
    referral = refer(client, cs, **JAYDEN)
    shared = client.post(
        f"/v1/referrals/{referral['id']}/shares", json=share_body("btp"), headers=cs.headers()
    )
    assert shared.status_code == 201
    db_session.execute(
        update(Share)
        .where(Share.id == uuid.UUID(shared.get_json()["id"]))
        .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
    )
    db_session.commit()
    assert listed(client, btp, **JAYDEN) == {"notts-cs": "strong"}


def test_a_deactivated_agency_is_not_listed(client, agencies, db_session):
    refer(client, agencies["notts-cs"], **JAYDEN)
    db_session.execute(update(Agency).where(Agency.code == "notts-cs").values(active=False))
    db_session.commit()
    assert listed(client, agencies["btp"], **JAYDEN) == {}


# -- discoverable ---------------------------------------------------------------------------------
def test_an_undiscoverable_referral_is_never_matched(client, agencies):
    btp, cs = agencies["btp"], agencies["notts-cs"]
    ids = [{"system": "pnc_id", "value": "11/123456X"}]
    covert = refer(client, cs, discoverable=False, **JAYDEN, identifiers=ids)
    assert covert["discoverable"] is False
    assert listed(client, btp, **JAYDEN, identifiers=ids) == {}
    # One discoverable and one undiscoverable referral about the child: only the first counts.
    open_one = refer_about(client, cs, covert["subject_id"])
    (item,) = ask(client, btp, **JAYDEN)["items"]
    assert (item["agency"]["code"], item["open_referrals"]) == ("notts-cs", 1)
    assert datetime.fromisoformat(item["known_since"]) == datetime.fromisoformat(
        open_one["created_at"]
    )


def test_the_lead_sets_discoverable_and_every_viewer_sees_it(client, agencies):
    btp, cs, tcs = agencies["btp"], agencies["notts-cs"], agencies["tcs"]
    referral = refer(client, cs, **JAYDEN)
    rid = referral["id"]
    assert referral["discoverable"] is True
    shared = client.post(
        f"/v1/referrals/{rid}/shares", json=share_body("tcs", "contribute"), headers=cs.headers()
    )
    assert shared.status_code == 201
    assert listed(client, btp, **JAYDEN) == {"notts-cs": "strong"}

    read = client.get(f"/v1/referrals/{rid}", headers=cs.headers())
    hidden = client.patch(
        f"/v1/referrals/{rid}",
        json={"discoverable": False},
        headers=cs.headers(**{"If-Match": read.headers["ETag"]}),
    )
    assert hidden.status_code == 200, hidden.get_json()
    assert hidden.get_json()["discoverable"] is False
    assert listed(client, btp, **JAYDEN) == {}
    for partner in (cs, tcs):  # the lead and a recipient alike
        seen = client.get(f"/v1/referrals/{rid}", headers=partner.headers())
        assert seen.get_json()["discoverable"] is False
        page = client.get("/v1/referrals", headers=partner.headers()).get_json()["items"]
        assert [r["discoverable"] for r in page if r["id"] == rid] == [False]

    # A recipient, even one that may contribute, cannot change it.
    etag = client.get(f"/v1/referrals/{rid}", headers=tcs.headers()).headers["ETag"]
    refused = client.patch(
        f"/v1/referrals/{rid}",
        json={"discoverable": True},
        headers=tcs.headers(**{"If-Match": etag}),
    )
    assert refused.status_code == 403
    null = client.patch(
        f"/v1/referrals/{rid}",
        json={"discoverable": None},
        headers=cs.headers(**{"If-Match": etag}),
    )
    assert null.status_code == 422
    assert "discoverable" in null.get_json()["errors"]["json"]
    shown = client.patch(
        f"/v1/referrals/{rid}",
        json={"discoverable": True},
        headers=cs.headers(**{"If-Match": etag}),
    )
    assert shown.status_code == 200
    assert listed(client, btp, **JAYDEN) == {"notts-cs": "strong"}


# -- subjects change what matches -----------------------------------------------------------------
def test_a_changed_date_of_birth_identifier_or_name_changes_what_matches(client, agencies):
    btp, cs = agencies["btp"], agencies["notts-cs"]
    old_id, new_id = {"system": "upn", "value": "OLD-1"}, {"system": "upn", "value": "NEW-2"}
    referral = refer(client, cs, **JAYDEN, identifiers=[old_id])
    path = f"/v1/subjects/{referral['subject_id']}"

    def change(**fields: Any) -> None:
        etag = client.get(path, headers=cs.headers()).headers["ETag"]
        changed = client.patch(path, json=fields, headers=cs.headers(**{"If-Match": etag}))
        assert changed.status_code == 200, changed.get_json()

    assert listed(client, btp, **JAYDEN) == {"notts-cs": "strong"}
    change(date_of_birth="2013-04-02")
    assert listed(client, btp, **JAYDEN) == {}
    assert listed(client, btp, **{**JAYDEN, "date_of_birth": "2013-04-02"}) == {
        "notts-cs": "strong"
    }
    change(date_of_birth=None, estimated_birth_year=2012)
    assert listed(client, btp, **JAYDEN) == {"notts-cs": "possible"}

    assert listed(client, btp, identifiers=[old_id]) == {"notts-cs": "identifier"}
    change(identifiers=[new_id])
    assert listed(client, btp, identifiers=[old_id]) == {}
    assert listed(client, btp, identifiers=[new_id]) == {"notts-cs": "identifier"}

    change(family_name="Adeyemi")
    assert listed(client, btp, **{**JAYDEN, "date_of_birth": "2012-01-01"}) == {}
    assert listed(
        client, btp, given_name="Jayden", family_name="Adeyemi", estimated_birth_year=2012
    ) == {"notts-cs": "possible"}


# -- nothing of the child leaves ------------------------------------------------------------------
CANARY = "zqxcanary"


def test_no_answer_carries_another_agencys_child_ids_or_case_content(
    client, agencies, db_session, caplog
):
    """Every field of other agencies' children and referrals holds a canary; matches that find
    them by name, by identifier and not at all, and refusals, carry none of it."""
    caplog.set_level(logging.DEBUG)
    planted: list[str] = []
    found_ids: list[str] = []
    for n, code in enumerate(("notts-cs", "tcs")):
        partner = agencies[code]
        canary = f"{CANARY}{'ab'[n] * 3}"  # three edits apart: each child matches alone
        body = referral_body(
            subject=subject_body(
                given_name=f"{canary}given",
                family_name=f"{canary}family",
                aliases=[f"{canary}alias"],
                date_of_birth="2010-10-10",
                identifiers=[
                    {"system": "la_case_ref", "value": f"{canary}ref"},
                    {"system": "nhs_number", "value": NHS_NUMBER},
                ],
                address={
                    "line": f"{canary} street",
                    "town": f"{canary}town",
                    "postcode": "NG1 1AA",
                },
            ),
            summary=f"{canary} summary",
            narrative=f"{canary} narrative",
            location={"description": f"{canary} place", "transport_hub": f"{canary} hub"},
            risk_level="immediate",
            immediate_action=f"{canary} 999 called",
        )
        created = client.post("/v1/referrals", json=body, headers=partner.headers())
        assert created.status_code == 201, created.get_json()
        referral = created.get_json()
        note = client.post(
            f"/v1/referrals/{referral['id']}/notes",
            json={"body": f"{canary} note", "visibility": "shared"},
            headers=partner.headers(),
        )
        assert note.status_code == 201
        planted.append(canary)
        found_ids += [referral["id"], referral["subject_id"], referral["reference"]]

    btp = agencies["btp"]
    asked = [
        {
            "given_name": f"{CANARY}aaagiven",
            "family_name": f"{CANARY}aaafamily",
            "date_of_birth": "2010-10-10",
        },
        {
            "given_name": f"{CANARY}bbbalias",
            "family_name": f"{CANARY}bbbfamily",
            "estimated_birth_year": 2011,
        },
        {"identifiers": [{"system": "nhs_number", "value": NHS_NUMBER}]},
        {"identifiers": [{"system": "la_case_ref", "value": f"{CANARY}aaaref"}]},
        {"given_name": "Nobody", "family_name": "Known", "date_of_birth": "2010-10-10"},
    ]
    refusals = [
        {"given_name": f"{CANARY}aaagiven"},
        {"identifiers": [{"system": "nhs_number", "value": f"{CANARY}aaa"}]},
        {
            "given_name": f"{CANARY}aaagiven",
            "family_name": "x",
            "date_of_birth": "2010-10-10",
            "estimated_birth_year": 2010,
        },
        {"given_name": f"{CANARY}aaagiven", "surname": f"{CANARY}aaafamily"},
    ]
    answers = []
    for body in asked:
        response = client.post("/v1/matches", json=body, headers=btp.headers())
        assert response.status_code == 201
        answers.append(response)
    assert sum(len(r.get_json()["items"]) for r in answers) == 5  # they did find the children
    for body in refusals:
        response = client.post("/v1/matches", json=body, headers=btp.headers())
        assert response.status_code == 422
        answers.append(response)
    for response in answers:
        raw = response.get_data(as_text=True).lower()
        for secret in [*planted, *found_ids, "2010-10-10", NHS_NUMBER]:
            assert secret.lower() not in raw, (secret, raw)
    logged = "\n".join(record.getMessage() + repr(record.__dict__) for record in caplog.records)
    assert CANARY not in logged.lower()
    # The match row keeps the ids (for access requests), never shown: only its agencies.
    match = db_session.get(Match, uuid.UUID(answers[0].get_json()["match_id"]))
    assert set(match.found) == {"notts-cs"}
    assert CANARY not in repr(match.found)


# -- the request ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"given_name", "family_name", "date_of_birth"}),
        ({"given_name": "Jayden", "family_name": "Okafor"}, {"date_of_birth"}),
        ({"date_of_birth": "2011-04-02"}, {"given_name", "family_name"}),
        ({"family_name": "Okafor", "date_of_birth": "2011-04-02"}, {"given_name"}),
        ({"given_name": "Jayden", "estimated_birth_year": 2011}, {"family_name"}),
        ({"identifiers": []}, {"given_name", "family_name", "date_of_birth"}),
        ({**JAYDEN, "estimated_birth_year": 2011}, {"estimated_birth_year"}),
        ({**JAYDEN, "given_name": "--"}, {"given_name"}),
        ({**JAYDEN, "date_of_birth": "2999-01-01"}, {"date_of_birth"}),
        ({"identifiers": [{"system": "nhs_number", "value": "9434765918"}]}, {"identifiers"}),
        ({"identifiers": [{"system": "passport", "value": "1"}]}, {"identifiers"}),
        ({"identifiers": [{"system": "upn"}]}, {"identifiers"}),
        ({**JAYDEN, "gender": "male"}, {"gender"}),
    ],
)
def test_a_match_needs_an_identifier_or_both_names_and_a_birth_date_or_year(
    client, agencies, db_session, body, fields
):
    answer = ask(client, agencies["btp"], 422, **body)
    assert set(answer["errors"]["json"]) == fields
    assert db_session.scalars(select(Match)).all() == []


def test_the_match_scope_is_required(client, agencies):
    without = " ".join(s for s in ALL_SCOPES.split() if s != "subjects:match")
    response = client.post("/v1/matches", json=JAYDEN, headers=agencies["btp"].headers(without))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


@pytest.fixture
def match_limit(app: Flask) -> Iterator[dict[str, Any]]:
    limiter = app.extensions["casehub.limiter"]
    saved = dict(app.config)
    limiter.reset()
    clear_of_a_window_edge()
    yield app.config
    limiter.reset()
    app.config.update(saved)


def test_a_client_may_make_so_many_matches_a_minute(client, agencies, match_limit, db_session):
    match_limit["RATE_LIMIT_MATCH"] = "2/minute"
    btp = agencies["btp"]
    headers = btp.headers()
    for _ in range(2):
        assert client.post("/v1/matches", json=JAYDEN, headers=headers).status_code == 201
    refused = client.post("/v1/matches", json=JAYDEN, headers=headers)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Policy"].startswith('"match";q=2;w=60')
    assert "match rate limit" in refused.get_json()["detail"]
    # Searches and writes have budgets of their own; another client has its own match budget.
    assert client.get("/v1/subjects?q=Okafor", headers=headers).status_code == 200
    other = agencies["tcs"].headers()
    assert client.post("/v1/matches", json=JAYDEN, headers=other).status_code == 201
    denied = db_session.scalars(select(AuditEvent).where(AuditEvent.action == "rate.limited")).all()
    assert [(e.actor_agency, e.request_path) for e in denied] == [("btp", "/v1/matches")]


# -- the match is the asking agency's, for a day --------------------------------------------------
def test_the_match_keeps_what_it_found_for_the_asking_agency_only(client, agencies, db_session):
    cs_referral = refer(client, agencies["notts-cs"], **JAYDEN)
    answer = ask(client, agencies["btp"], **JAYDEN)
    match_id = uuid.UUID(answer["match_id"])
    match = db_session.get(Match, match_id)
    assert match.found == {
        "notts-cs": {"confidence": "strong", "subject_ids": [cs_referral["subject_id"]]}
    }
    created = match.created_at
    assert match.expires_at - created == matching.MATCH_LIFETIME
    assert datetime.fromisoformat(answer["expires_at"]) == match.expires_at

    def actor(agency: str) -> Actor:
        return Actor(agency=agency, agency_kind="police", is_platform=False, client_id="c")

    usable = matching.usable_match(db_session, actor=actor("btp"), match_id=match_id, now=created)
    assert matching.matched_subjects(usable, "notts-cs") == [uuid.UUID(cs_referral["subject_id"])]
    assert matching.held_referrals(
        db_session, agency="notts-cs", subject_ids=[uuid.UUID(cs_referral["subject_id"])]
    ) == [uuid.UUID(cs_referral["id"])]
    for agency, moment in (
        ("notts-cs", created),  # another agency's match
        ("btp", created + timedelta(hours=24)),  # expired
    ):
        with pytest.raises(ValidationFailed) as refused:
            matching.usable_match(db_session, actor=actor(agency), match_id=match_id, now=moment)
        assert refused.value.errors == {
            "json": {"match_id": ["No match with this id is valid for the caller's agency."]}
        }
    with pytest.raises(ValidationFailed):
        matching.matched_subjects(usable, "tcs")


# -- audit ----------------------------------------------------------------------------------------
def _chain(db_session) -> None:
    sequence_pending(db_session.connection(), limit=1_000_000)


def test_each_listed_holder_sees_who_asked_after_its_child(client, agencies, db_session):
    btp, cs, tcs, leics = (agencies[c] for c in ("btp", "notts-cs", "tcs", "leics-police"))
    first = refer(client, cs, **JAYDEN)
    later = refer_about(client, cs, first["subject_id"])
    other_child = refer(client, cs, **{**JAYDEN, "date_of_birth": "2011-07-07"})
    held_by_tcs = refer(client, tcs, **JAYDEN)
    answer = ask(client, btp, **JAYDEN)
    match_id = answer["match_id"]
    _chain(db_session)

    events = db_session.scalars(
        select(AuditEvent).where(AuditEvent.action == "subject.match").order_by(AuditEvent.pos)
    ).all()
    (own,) = [e for e in events if e.referral_id is None]  # the asker's own record
    assert (own.subject_ids, own.resource_id, own.basis) == ([], match_id, "match")
    by_referral = {str(e.referral_id): e for e in events if e is not own}  # the notices
    assert set(by_referral) == {first["id"], held_by_tcs["id"]}
    cs_event = by_referral[first["id"]]
    assert sorted(cs_event.subject_ids) == sorted([first["subject_id"], other_child["subject_id"]])
    assert (cs_event.actor_agency, cs_event.resource_type, cs_event.resource_id) == (
        "btp",
        "match",
        match_id,
    )
    assert (cs_event.basis, cs_event.purpose, cs_event.outcome) == ("match", "case_work", "allowed")
    assert by_referral[held_by_tcs["id"]].subject_ids == [held_by_tcs["subject_id"]]

    def accesses(partner, path: str) -> list[dict[str, Any]]:
        response = client.get(path, headers=partner.headers())
        assert response.status_code == 200, response.get_json()
        return [a for a in response.get_json()["items"] if a["action"] == "subject.match"]

    seen = accesses(cs, f"/v1/audit/subjects/{first['subject_id']}/accesses")
    assert [(a["actor"]["agency"], a["basis"], a["resource"]) for a in seen] == [
        ("btp", "match", {"type": "match", "id": match_id})
    ]
    assert accesses(cs, f"/v1/audit/subjects/{other_child['subject_id']}/accesses") == seen
    assert [a["referral_id"] for a in accesses(cs, f"/v1/referrals/{first['id']}/accesses")] == [
        first["id"]
    ]
    assert accesses(cs, f"/v1/referrals/{later['id']}/accesses") == []
    # The other holder sees its own child's event, not this one; a bystander sees neither.
    assert accesses(tcs, f"/v1/audit/subjects/{first['subject_id']}/accesses") == []
    assert len(accesses(tcs, f"/v1/audit/subjects/{held_by_tcs['subject_id']}/accesses")) == 1
    assert accesses(leics, f"/v1/audit/subjects/{first['subject_id']}/accesses") == []
    # The asker's own trail holds its record of the match, naming no referral and no child.
    trail = client.get("/v1/audit/events?action=subject.match", headers=btp.headers())
    assert [(e["referral_id"], e["subject_ids"]) for e in trail.get_json()["items"]] == [(None, [])]
    for secret in (first["id"], first["subject_id"], held_by_tcs["id"], other_child["subject_id"]):
        assert secret not in trail.get_data(as_text=True)


def test_a_match_that_finds_nothing_is_audited_without_children(client, agencies, db_session):
    answer = ask(client, agencies["btp"], **JAYDEN)
    assert answer["items"] == []
    response = client.post(
        "/v1/matches",
        json=JAYDEN,
        headers=agencies["btp"].headers(**{"Purpose-Of-Use": "mash_triage"}),
    )
    assert response.status_code == 201
    events = db_session.scalars(
        select(AuditEvent).where(AuditEvent.action == "subject.match").order_by(AuditEvent.pos)
    ).all()
    assert [(e.subject_ids, e.referral_id, e.purpose) for e in events] == [
        ([], None, "case_work"),
        ([], None, "mash_triage"),
    ]
    assert [e.resource_id for e in events] == [answer["match_id"], response.get_json()["match_id"]]


# -- the name keys a match reads -------------------------------------------------------------
def _one_edit(token: str, alphabet: str) -> set[str]:
    """Every string one insertion, deletion, substitution or swap of neighbours from `token`."""
    found = {token[:i] + token[i + 1 :] for i in range(len(token))}
    for i in range(len(token) + 1):
        found.update(token[:i] + c + token[i:] for c in alphabet)
    for i in range(len(token)):
        found.update(token[:i] + c + token[i + 1 :] for c in alphabet)
    found.update(
        token[:i] + token[i + 1] + token[i] + token[i + 2 :] for i in range(len(token) - 1)
    )
    return found - {token}


@pytest.mark.parametrize("token", ["ali", "jack", "oliver", "smith", "mohammed", "alexandrina"])
@pytest.mark.parametrize("common", [False, True])
def test_the_keys_a_match_reads_find_every_name_one_edit_away(token, common):
    keys = matching.match_keys(token, common=common)
    for name in _one_edit(token, matching.LATIN) | {token}:
        stored = names.subject_keys(name, "", [])  # what a child named `name` stores
        assert set(keys) & stored, (token, name)
    if common and matching.enumerable(token):
        # A child named exactly `token` is read once, by its whole name, not once per key.
        assert set(keys) & names.subject_keys(token, "", []) == {token}
    else:
        assert keys == tuple(sorted(names.search_keys(token)))


def test_words_outside_the_latin_letters_and_short_words_use_the_search_keys():
    for word in ("иван", "abcdefghijklmnop", "ali"):
        assert not matching.enumerable(word)
        assert matching.match_keys(word, common=True) == tuple(sorted(names.search_keys(word)))
    assert matching.match_keys("li", common=True) == ("li",)


@pytest.mark.parametrize("common_rows", [None, 1])
def test_each_kind_of_typo_is_found_over_http(client, agencies, monkeypatch, common_rows):
    """With the thresholds at 1 every word of four letters or more is common (a four-letter
    one beside longer words): its neighbours are enumerated; at the defaults (a handful of
    children here) it is rare."""
    if common_rows is not None:
        monkeypatch.setattr(matching, "COMMON_ROWS", common_rows)
        monkeypatch.setattr(matching, "COMMON_ROWS_FOUR_LETTERS", common_rows)
    cs = agencies["notts-cs"]
    day = {"date_of_birth": "2012-02-02"}
    for given in ("Oliver", "Olivers", "Olver", "Olivar", "Oilver", "Óliver"):
        refer(client, cs, given_name=given, family_name="Smyth", **day)
    refer(client, cs, given_name="Olvr", family_name="Smith", **day)  # two edits away
    refer(client, agencies["tcs"], given_name="Иван", family_name="Smith", **day)
    answer = ask(client, agencies["btp"], given_name="Oliver", family_name="Smith", **day)
    (item,) = answer["items"]
    assert (item["agency"]["code"], item["open_referrals"]) == ("notts-cs", 6)
    tcs = agencies["tcs"]
    for given in ("Jack", "Jak", "Jacks", "Jcak", "Jeck", "Jk"):
        refer(client, tcs, given_name=given, family_name="Robinson", **day)
    body = {"given_name": "Jack", "family_name": "Robinson", **day}
    (item,) = ask(client, agencies["btp"], **body)["items"]
    assert (item["agency"]["code"], item["open_referrals"]) == ("tcs", 5)  # not "Jk"
    # A Latin "a" for the Cyrillic one: one substitution, found by the search keys.
    assert listed(client, agencies["btp"], given_name="Ивaн", family_name="Smith", **day) == {
        "tcs": "strong"
    }


def test_a_four_letter_word_is_enumerated_only_beside_longer_words():
    """Beside a short word, whose set of children is as broad, "Khan" (enumerated) gave
    thousands of candidates: neither is counted, nothing is asked of the database."""
    assert matching._common_words(None, ["jack", "lee"], [2010, 2011, 2012]) == set()  # type: ignore[arg-type]
    assert matching._common_words(None, ["ali", "khan"], [2010, 2011, 2012]) == set()  # type: ignore[arg-type]


# -- the journey: match, ask, share (CONTRACT §9 end to end) --------------------------------
def test_a_match_leads_to_an_access_request_and_a_share_after_which_it_lists_nobody(
    client, agencies
):
    btp, cs = agencies["btp"], agencies["notts-cs"]
    held = refer(client, cs, **JAYDEN)
    answer = ask(client, btp, **JAYDEN)
    assert [i["agency"]["code"] for i in answer["items"]] == ["notts-cs"]
    asked = client.post(
        "/v1/access-requests",
        json=access_request_body(answer["match_id"], "notts-cs"),
        headers=btp.headers(),
    )
    assert asked.status_code == 201, asked.get_json()
    request_id = asked.get_json()["id"]
    # The holder sees which of its referrals the match found; the requester never does.
    seen = client.get(f"/v1/access-requests/{request_id}", headers=cs.headers())
    assert seen.get_json()["referral_ids"] == [held["id"]]
    assert held["id"] not in client.get(
        f"/v1/access-requests/{request_id}", headers=btp.headers()
    ).get_data(as_text=True)
    share = share_body("btp")
    share.pop("agency")
    decided = client.post(
        f"/v1/access-requests/{request_id}/decision",
        json={"decision": "share", "referral_id": held["id"], "share": share},
        headers=cs.headers(),
    )
    assert decided.status_code == 200, decided.get_json()
    assert client.get(f"/v1/referrals/{held['id']}", headers=btp.headers()).status_code == 200
    # Through that agency the caller now sees the child: a new match does not list it.
    assert listed(client, btp, **JAYDEN) == {}
    # Another agency's match_id is refused for an access request, as an expired one would be.
    other = ask(client, agencies["tcs"], **JAYDEN)
    refused = client.post(
        "/v1/access-requests",
        json=access_request_body(other["match_id"], "notts-cs"),
        headers=btp.headers(),
    )
    assert refused.status_code == 422
    assert "match_id" in refused.get_json()["errors"]["json"]
