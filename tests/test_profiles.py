"""Data profiles (CONTRACT §11): a share of the `summary` profile shows the referral without
`narrative`, `location.description` and notes, and the child without `address` and
`identifiers`, through every route the recipient can call."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from flask import Flask
from werkzeug.routing.converters import NumberConverter

from tests.helpers import referral_body, share_body, subject_body

CANARIES = {
    "narrative": "CANARY-NARRATIVE-7f3a",
    "location.description": "CANARY-PLACE-19c2",
    "note": "CANARY-NOTE-5b88",
    "agency note": "CANARY-AGENCY-NOTE-0d41",
    "address.line": "CANARY-STREET-6e07",
    "address.town": "CANARYTOWN",
    "address.postcode": "LS1 4DY",
    "identifiers": "CANARY-REF-2a9d",
}


def _canary_referral(client: Any, lead: Any) -> dict[str, Any]:
    subject = subject_body(
        given_name="Tyrese",
        family_name="Canning",
        address={
            "line": CANARIES["address.line"],
            "town": CANARIES["address.town"],
            "postcode": CANARIES["address.postcode"],
        },
        identifiers=[{"system": "la_case_ref", "value": CANARIES["identifiers"]}],
    )
    body = referral_body(
        subject=subject,
        narrative=CANARIES["narrative"],
        location={
            "description": CANARIES["location.description"],
            "postcode": "NG2 3AQ",
            "transport_hub": "Nottingham",
        },
    )
    created = client.post("/v1/referrals", json=body, headers=lead.headers())
    assert created.status_code == 201, created.get_json()
    referral = created.get_json()
    for text, visibility in ((CANARIES["note"], "shared"), (CANARIES["agency note"], "agency")):
        note = client.post(
            f"/v1/referrals/{referral['id']}/notes",
            json={"body": text, "visibility": visibility},
            headers=lead.headers(),
        )
        assert note.status_code == 201
    return referral


@pytest.fixture
def world(client: Any, factory: Any) -> dict[str, Any]:
    lead = factory.partner("btp", kind="police")
    summary = factory.partner("tcs", kind="charity")
    full = factory.partner("notts-cs", kind="local_authority")
    referral = _canary_referral(client, lead)
    rid = referral["id"]
    shares = {}
    for partner, profile, access in ((summary, "summary", "contribute"), (full, "full", "read")):
        made = client.post(
            f"/v1/referrals/{rid}/shares",
            json=share_body(partner.agency, access, profile=profile),
            headers=lead.headers(),
        )
        assert made.status_code == 201, made.get_json()
        assert made.get_json()["profile"] == profile
        shares[profile] = made.get_json()["id"]
    return {
        "lead": lead,
        "summary": summary,
        "full": full,
        "referral": referral,
        "shares": shares,
    }


def _values(app: Flask, world: dict[str, Any], caller: str) -> dict[str, str]:
    return {
        "referral_id": world["referral"]["id"],
        "subject_id": world["referral"]["subject_id"],
        "share_id": world["shares"][caller] if caller in world["shares"] else str(uuid.uuid4()),
        "code": world[caller].agency,
    }


QUERIES = {
    "/v1/referrals": ["", "?subject_id={subject_id}", "?category=county_lines", "?limit=1"],
    "/v1/subjects": ["", "?q=Tyrese", "?q=Canning&date_of_birth=2011-04-02"],
    "/v1/audit/events": ["", "?referral_id={referral_id}"],
}


def _every_get(client: Any, app: Flask, world: dict[str, Any], caller: str) -> dict[str, str]:
    """Every GET route of the service, called by `caller` with the world's ids filled in:
    {path: response body}."""
    values = _values(app, world, caller)
    adapter = app.url_map.bind("localhost")
    bodies: dict[str, str] = {}
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or set()) or rule.rule.startswith("/docs"):
            continue
        converters = getattr(rule, "_converters", {})
        params: dict[str, object] = {}
        for name in rule.arguments:
            if isinstance(converters.get(name), NumberConverter):
                params[name] = 1
            else:
                params[name] = values.get(name, str(uuid.uuid4()))
        path = adapter.build(rule.endpoint, params, method="GET")
        for query in QUERIES.get(rule.rule, [""]):
            url = path + query.format(**values)
            response = client.get(url, headers=world[caller].headers())
            bodies[url] = response.get_data(as_text=True)
    return bodies


def _leaks(bodies: dict[str, str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for url, body in bodies.items():
        hits = [name for name, canary in CANARIES.items() if canary in body]
        if hits:
            found[url] = hits
    return found


def test_a_summary_recipient_never_receives_a_hidden_field_through_any_route(client, app, world):
    bodies = _every_get(client, app, world, "summary")
    rid = world["referral"]["id"]
    # The routes that do answer it with the referral and the child answer 200 ...
    referral = json.loads(bodies[f"/v1/referrals/{rid}"])
    assert referral["summary"] == world["referral"]["summary"]
    assert referral["narrative"] is None
    assert referral["location"] == {
        "description": None,
        "postcode": "NG2 3AQ",
        "transport_hub": "Nottingham",
    }
    subject = json.loads(bodies[f"/v1/subjects/{world['referral']['subject_id']}"])
    assert (subject["given_name"], subject["address"], subject["identifiers"]) == (
        "Tyrese",
        None,
        [],
    )
    assert json.loads(bodies["/v1/subjects?q=Tyrese"])["items"][0]["address"] is None
    listed = json.loads(bodies[f"/v1/referrals?subject_id={world['referral']['subject_id']}"])
    assert [item["narrative"] for item in listed["items"]] == [None]
    assert json.loads(bodies[f"/v1/referrals/{rid}/notes"])["items"] == []
    # ... and no canary appears in anything any route answered.
    assert _leaks(bodies) == {}


def test_the_same_routes_show_everything_to_a_full_share_and_the_lead(client, app, world):
    """The canaries are where a full share and the lead look: the test above can fail."""
    for caller, hidden_from_them in (("full", {"agency note"}), ("lead", set())):
        bodies = _every_get(client, app, world, caller)
        seen = {name for hits in _leaks(bodies).values() for name in hits}
        assert seen == set(CANARIES) - hidden_from_them, caller


def test_a_summary_contributor_adds_notes_and_reads_only_its_own(client, world):
    rid = world["referral"]["id"]
    mine = client.post(
        f"/v1/referrals/{rid}/notes",
        json={"body": "Seen again at the station on Tuesday.", "visibility": "shared"},
        headers=world["summary"].headers(),
    )
    assert mine.status_code == 201
    listed = client.get(f"/v1/referrals/{rid}/notes", headers=world["summary"].headers())
    assert [n["body"] for n in listed.get_json()["items"]] == [
        "Seen again at the station on Tuesday."
    ]
    # The lead, and a full share, see every shared note.
    lead_view = client.get(f"/v1/referrals/{rid}/notes", headers=world["full"].headers())
    assert [n["body"] for n in lead_view.get_json()["items"]] == [
        CANARIES["note"],
        "Seen again at the station on Tuesday.",
    ]


def test_the_child_is_seen_in_full_through_any_full_share_about_them(client, world):
    """The child's record is one: a full share of another referral about the same child shows
    the summary recipient the whole record; revoking it takes that away again."""
    lead, summary = world["lead"], world["summary"]
    sid = world["referral"]["subject_id"]
    body = referral_body(subject_id=sid)
    del body["subject"]
    second = client.post("/v1/referrals", json=body, headers=lead.headers())
    assert second.status_code == 201, second.get_json()
    made = client.post(
        f"/v1/referrals/{second.get_json()['id']}/shares",
        json=share_body(summary.agency, "read"),
        headers=lead.headers(),
    )
    assert made.status_code == 201 and made.get_json()["profile"] == "full"
    seen = client.get(f"/v1/subjects/{sid}", headers=summary.headers()).get_json()
    assert seen["address"]["line"] == CANARIES["address.line"]
    assert seen["identifiers"] == [{"system": "la_case_ref", "value": CANARIES["identifiers"]}]
    revoked = client.post(
        f"/v1/referrals/{second.get_json()['id']}/shares/{made.get_json()['id']}/revoke",
        json={"reason": "No longer needed."},
        headers=lead.headers(),
    )
    assert revoked.status_code == 200
    seen = client.get(f"/v1/subjects/{sid}", headers=summary.headers()).get_json()
    assert (seen["address"], seen["identifiers"]) == (None, [])


def test_profile_is_validated_and_shown_on_the_share(client, world):
    lead = world["lead"]
    rid = world["referral"]["id"]
    bad = client.post(
        f"/v1/referrals/{rid}/shares",
        json=share_body("em-probation", profile="minimal"),
        headers=lead.headers(),
    )
    assert bad.status_code == 422
    assert "profile" in json.dumps(bad.get_json())
    listed = client.get(f"/v1/referrals/{rid}/shares", headers=lead.headers()).get_json()
    assert sorted(s["profile"] for s in listed["items"]) == ["full", "summary"]


def test_a_summary_recipient_is_not_told_of_notes_it_cannot_read(client, world, db_session):
    from sqlalchemy import select

    from casehub.models import Event

    rid = world["referral"]["id"]
    added = client.post(
        f"/v1/referrals/{rid}/notes",
        json={"body": "Mother called the school.", "visibility": "shared"},
        headers=world["lead"].headers(),
    )
    assert added.status_code == 201
    told = db_session.execute(
        select(Event.agency_code).where(
            Event.type == "note.added", Event.data["note_id"].as_string() == added.json["id"]
        )
    ).scalars()
    assert sorted(told) == [world["full"].agency]
