"""Sharing between agencies: the authorization matrix, the lawful-basis rules and the journey."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from casehub.models import Share
from tests.conftest import ALL_SCOPES
from tests.emergency_support import add_match, grant_body
from tests.helpers import referral_body, share_body

# `emergency`: an agency that broke the glass (CONTRACT §10): read-only; `emergency-ended`: one
# whose emergency access was ended early.
RELATIONS = (
    "lead",
    "contribute",
    "read",
    "revoked",
    "expired",
    "unrelated",
    "emergency",
    "emergency-ended",
)


@dataclass
class Scenario:
    referral: dict
    etag: str
    partners: dict
    shares: dict


@pytest.fixture
def scenario(client, factory, db_session):
    partners = {
        "lead": factory.partner("btp", kind="police"),
        "contribute": factory.partner("notts-cs", kind="local_authority"),
        "read": factory.partner("tcs", kind="charity"),
        "revoked": factory.partner("derby-cs", kind="local_authority"),
        "expired": factory.partner("em-probation", kind="probation"),
        "unrelated": factory.partner("leics-police", kind="police"),
        "emergency": factory.partner("lincs-police", kind="police"),
        "emergency-ended": factory.partner("derby-police", kind="police"),
    }
    lead = partners["lead"]
    created = client.post("/v1/referrals", json=referral_body(), headers=lead.headers())
    referral = created.get_json()
    rid = referral["id"]
    shares = {}
    for relation, access in (
        ("contribute", "contribute"),
        ("read", "read"),
        ("revoked", "read"),
        ("expired", "read"),
    ):
        body = share_body(partners[relation].agency, access)
        if relation == "expired":
            body["expires_at"] = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        response = client.post(f"/v1/referrals/{rid}/shares", json=body, headers=lead.headers())
        assert response.status_code == 201, response.get_json()
        shares[relation] = response.get_json()["id"]
    revoked = client.post(
        f"/v1/referrals/{rid}/shares/{shares['revoked']}/revoke",
        json={"reason": "No longer needed"},
        headers=lead.headers(),
    )
    assert revoked.status_code == 200
    db_session.execute(
        update(Share)
        .where(Share.id == uuid.UUID(shares["expired"]))
        .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
    )
    db_session.commit()
    for relation in ("emergency", "emergency-ended"):
        partner = partners[relation]
        match_id = add_match(
            db_session, agency=partner.agency, found={"btp": [referral["subject_id"]]}
        )
        granted = client.post(
            "/v1/emergency-access", json=grant_body(match_id, "btp"), headers=partner.headers()
        )
        assert granted.status_code == 201, granted.get_json()
        listed = client.get(f"/v1/referrals/{rid}/shares", headers=partner.headers()).get_json()
        (own,) = [s["id"] for s in listed["items"] if s["agency"] == partner.agency]
        shares[relation] = own
        if relation == "emergency-ended":
            ended = client.post(
                f"/v1/emergency-access/{granted.get_json()['id']}/end", headers=partner.headers()
            )
            assert ended.status_code == 200, ended.get_json()
    return Scenario(referral, created.headers["ETag"], partners, shares)


# operation → (method, path template, needed scope, body factory, expected by relation)
OK_READ = {"lead": 200, "contribute": 200, "read": 200, "emergency": 200}
OPERATIONS = {
    "get": ("GET", "/v1/referrals/{rid}", "referrals:read", None, OK_READ),
    "history": ("GET", "/v1/referrals/{rid}/history", "referrals:read", None, OK_READ),
    "notes.list": ("GET", "/v1/referrals/{rid}/notes", "referrals:read", None, OK_READ),
    "shares.list": ("GET", "/v1/referrals/{rid}/shares", "referrals:read", None, OK_READ),
    # The child's subject access pack: whoever sees the child may assemble its own (only the
    # lead's holds the referral: tests/test_subject_access.py).
    "sar": ("GET", "/v1/subjects/{sid}/sar", "subjects:sar", None, OK_READ),
    "patch": (
        "PATCH",
        "/v1/referrals/{rid}",
        "referrals:write",
        lambda s: {"risk_level": "medium"},
        {"lead": 200, "contribute": 403, "read": 403, "emergency": 403},
    ),
    "transition": (
        "POST",
        "/v1/referrals/{rid}/transitions",
        "referrals:write",
        lambda s: {"to": "acknowledged"},
        {"lead": 200, "contribute": 403, "read": 403, "emergency": 403},
    ),
    "notes.add": (
        "POST",
        "/v1/referrals/{rid}/notes",
        "referrals:write",
        lambda s: {"body": "Seen again", "visibility": "shared"},
        {"lead": 201, "contribute": 201, "read": 403, "emergency": 403},
    ),
    "shares.add": (
        "POST",
        "/v1/referrals/{rid}/shares",
        "referrals:share",
        lambda s: share_body("hub-new"),
        {"lead": 201, "contribute": 403, "read": 403, "emergency": 403},
    ),
    "acknowledge": (
        "POST",
        "/v1/referrals/{rid}/shares/{own_share}/acknowledge",
        "referrals:write",
        None,
        {"lead": 403, "contribute": 200, "read": 200, "emergency": 200},
    ),
    "revoke": (
        "POST",
        "/v1/referrals/{rid}/shares/{read_share}/revoke",
        "referrals:share",
        # a recipient sees only its own share: another agency's share is invisible (404)
        lambda s: {"reason": "Done"},
        {"lead": 200, "contribute": 404, "read": 403},
    ),
    "legal_hold.put": (
        "PUT",
        "/v1/referrals/{rid}/legal-hold",
        "referrals:share",
        lambda s: {"reason": "Civil claim"},
        {"lead": 200, "contribute": 403, "read": 403, "emergency": 403},
    ),
    "legal_hold.delete": (
        "DELETE",
        "/v1/referrals/{rid}/legal-hold",
        "referrals:share",
        # the scenario's referral is not held: its lead reaches the rule (409), others do not
        lambda s: {"reason": "Judgment given"},
        {"lead": 409, "contribute": 403, "read": 403, "emergency": 403},
    ),
    "transfer": (
        "POST",
        "/v1/referrals/{rid}/transfer",
        "referrals:share",
        lambda s: {
            "agency": "hub-new",
            "reason": "MASH takes the lead",
            "lawful_basis": {"article_6": "public_task"},
        },
        {"lead": 200, "contribute": 403, "read": 403, "emergency": 403},
    ),
}


def _call(client, scenario, relation, operation, scope):
    method, template, _, body, _ = OPERATIONS[operation]
    own = scenario.shares.get(relation, scenario.shares["read"])
    path = template.format(
        rid=scenario.referral["id"],
        sid=scenario.referral["subject_id"],
        own_share=own,
        read_share=scenario.shares["read"],
    )
    partner = scenario.partners[relation]
    headers = partner.headers(scope)
    if method in ("PATCH",) or operation in ("transition", "transfer"):
        headers["If-Match"] = scenario.etag
    kwargs = {"headers": headers}
    if body is not None:
        kwargs["json"] = body(scenario)
    return client.open(path, method=method, **kwargs)


CELLS = [(op, rel) for op in OPERATIONS for rel in RELATIONS]


def _matrix_figures(record_property, relation, expected, response) -> None:
    """One cell of the matrix: a leak is an answer that did more than the cell allows (a
    success where a refusal was due), whichever refusal it should have been."""
    leaked = int(expected >= 400 and response.status_code < 400)
    record_property(
        "figures",
        (
            "authorization matrix",
            {
                "cells": 1,
                "mismatches": int(response.status_code != expected),
                "cross-agency attempts": int(relation != "lead"),
                "leaks": leaked,
            },
        ),
    )


@pytest.mark.parametrize(("operation", "relation"), CELLS)
def test_matrix_with_scope(client, factory, scenario, operation, relation, record_property):
    factory.agency("hub-new", "local_authority")
    expected = OPERATIONS[operation][4].get(relation, 404)
    response = _call(client, scenario, relation, operation, ALL_SCOPES)
    _matrix_figures(record_property, relation, expected, response)
    assert response.status_code == expected, (operation, relation, response.get_json())
    if expected == 404:
        body = response.get_json()
        assert body["detail"] in ("No such referral.", "No such share.", "No such subject.")
        assert scenario.referral["reference"] not in response.get_data(as_text=True)
        assert "btp" not in response.get_data(as_text=True)
    if operation == "sar" and relation != "lead" and expected == 200:
        # A recipient's pack holds none of the lead's referral.
        assert scenario.referral["id"] not in response.get_data(as_text=True)


@pytest.mark.parametrize(("operation", "relation"), CELLS)
def test_matrix_without_scope(client, scenario, operation, relation, record_property):
    needed = OPERATIONS[operation][2]
    scope = " ".join(s for s in ALL_SCOPES.split() if s != needed)
    response = _call(client, scenario, relation, operation, scope)
    _matrix_figures(record_property, relation, 403, response)
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_lists_search_and_subjects_follow_visibility(client, scenario):
    rid = scenario.referral["id"]
    subject_id = scenario.referral["subject_id"]
    for relation, partner in scenario.partners.items():
        visible = relation in OK_READ
        listing = client.get("/v1/referrals", headers=partner.headers()).get_json()
        assert [r["id"] for r in listing["items"]] == ([rid] if visible else [])
        assert listing["next_cursor"] is None
        subject = client.get(f"/v1/subjects/{subject_id}", headers=partner.headers())
        assert subject.status_code == (200 if visible else 404)
        found = client.get("/v1/subjects?q=okafor", headers=partner.headers()).get_json()
        assert [s["id"] for s in found["items"]] == ([subject_id] if visible else [])
        shared = client.get(
            "/v1/referrals?shared_with_me=true", headers=partner.headers()
        ).get_json()
        # An emergency access is held through shares: the referral is listed as shared with it.
        assert [r["id"] for r in shared["items"]] == (
            [rid] if relation in ("contribute", "read", "emergency") else []
        )


def test_recipient_sees_only_its_own_share_and_lead_sees_all(client, scenario):
    rid = scenario.referral["id"]
    lead_view = client.get(
        f"/v1/referrals/{rid}/shares", headers=scenario.partners["lead"].headers()
    ).get_json()
    statuses = {s["agency"]: s["status"] for s in lead_view["items"]}
    assert statuses == {
        "notts-cs": "active",
        "tcs": "active",
        "derby-cs": "revoked",
        "em-probation": "expired",
        "lincs-police": "active",  # an emergency access, which the lead sees as a share
        "derby-police": "revoked",  # one ended early
    }
    emergency = {s["agency"] for s in lead_view["items"] if s["emergency_access_id"]}
    assert emergency == {"lincs-police", "derby-police"}
    own = client.get(
        f"/v1/referrals/{rid}/shares", headers=scenario.partners["read"].headers()
    ).get_json()
    assert [s["agency"] for s in own["items"]] == ["tcs"]


@pytest.mark.parametrize(
    ("kind", "overrides", "field_path"),
    [
        ("local_authority", {"consent": {"status": "refused"}}, ("consent", "rationale")),
        (
            "local_authority",
            {
                "lawful_basis": {"article_6": "consent"},
                "consent": {"status": "not_sought", "rationale": "x"},
            },
            ("lawful_basis", "article_6"),
        ),
        ("charity", {"lawful_basis": {"article_6": "public_task"}}, ("lawful_basis", "article_6")),
        (
            "local_authority",
            {
                "lawful_basis": {
                    "article_6": "public_task",
                    "condition": "dpa2018_sch8_para4_safeguarding",
                }
            },
            ("lawful_basis", "condition"),
        ),
        ("local_authority", {"purpose": "gossip"}, ("purpose",)),
        ("local_authority", {"necessity": "x" * 2001}, ("necessity",)),
        (
            "local_authority",
            {"expires_at": (datetime.now(UTC) - timedelta(days=1)).isoformat()},
            ("expires_at",),
        ),
    ],
)
def test_share_rules_are_422_naming_the_field(client, factory, kind, overrides, field_path):
    lead = factory.partner("lead-agency", kind=kind)
    factory.agency("recipient", "local_authority")
    rid = client.post("/v1/referrals", json=referral_body(), headers=lead.headers()).get_json()[
        "id"
    ]
    response = client.post(
        f"/v1/referrals/{rid}/shares",
        json=share_body("recipient", **overrides),
        headers=lead.headers(),
    )
    assert response.status_code == 422, response.get_json()
    errors = response.get_json()["errors"]["json"]
    for part in field_path:
        errors = errors[part]
    assert errors


def test_police_may_use_schedule_8_and_consent_given_needs_no_rationale(client, factory):
    police = factory.partner("btp", kind="police")
    factory.agency("recipient", "local_authority")
    rid = client.post("/v1/referrals", json=referral_body(), headers=police.headers()).get_json()[
        "id"
    ]
    body = share_body(
        "recipient",
        lawful_basis={"article_6": "consent", "condition": "dpa2018_sch8_para4_safeguarding"},
        consent={"status": "given"},
    )
    assert (
        client.post(f"/v1/referrals/{rid}/shares", json=body, headers=police.headers()).status_code
        == 201
    )


def test_share_conflicts(client, factory, db_session):
    lead = factory.partner("btp", kind="police")
    factory.agency("notts-cs", "local_authority")
    factory.agency("closed-la", "local_authority")
    from casehub.models import Agency

    db_session.get(Agency, "closed-la").active = False
    db_session.commit()
    rid = client.post("/v1/referrals", json=referral_body(), headers=lead.headers()).get_json()[
        "id"
    ]
    url = f"/v1/referrals/{rid}/shares"
    assert client.post(url, json=share_body("btp"), headers=lead.headers()).status_code == 409
    assert client.post(url, json=share_body("closed-la"), headers=lead.headers()).status_code == 409
    assert client.post(url, json=share_body("notts-cs"), headers=lead.headers()).status_code == 201
    assert client.post(url, json=share_body("notts-cs"), headers=lead.headers()).status_code == 409
    assert (
        client.post(url, json=share_body("no-such-agency"), headers=lead.headers()).status_code
        == 422
    )


def test_revoked_share_cuts_access_that_moment_and_can_be_reissued(client, scenario):
    rid = scenario.referral["id"]
    reader = scenario.partners["read"]
    token = reader.headers()
    assert client.get(f"/v1/referrals/{rid}", headers=token).status_code == 200
    response = client.post(
        f"/v1/referrals/{rid}/shares/{scenario.shares['read']}/revoke",
        json={"reason": "Support ended"},
        headers=scenario.partners["lead"].headers(),
    )
    assert response.status_code == 200
    assert client.get(f"/v1/referrals/{rid}", headers=token).status_code == 404
    again = client.post(
        f"/v1/referrals/{rid}/shares/{scenario.shares['read']}/revoke",
        json={"reason": "twice"},
        headers=scenario.partners["lead"].headers(),
    )
    assert again.status_code == 409
    reissued = client.post(
        f"/v1/referrals/{rid}/shares",
        json=share_body("tcs", lawful_basis={"article_6": "legitimate_interests"}),
        headers=scenario.partners["lead"].headers(),
    )
    assert reissued.status_code == 201
    assert client.get(f"/v1/referrals/{rid}", headers=token).status_code == 200


def test_agency_notes_stay_with_the_authors_agency(client, scenario):
    rid = scenario.referral["id"]
    contributor = scenario.partners["contribute"]
    for visibility in ("agency", "shared"):
        response = client.post(
            f"/v1/referrals/{rid}/notes",
            json={"body": f"{visibility} note", "visibility": visibility},
            headers=contributor.headers(),
        )
        assert response.status_code == 201
    own = client.get(f"/v1/referrals/{rid}/notes", headers=contributor.headers()).get_json()[
        "items"
    ]
    assert [n["body"] for n in own] == ["agency note", "shared note"]
    for relation in ("lead", "read"):
        seen = client.get(
            f"/v1/referrals/{rid}/notes", headers=scenario.partners[relation].headers()
        ).get_json()
        assert [n["body"] for n in seen["items"]] == ["shared note"]


def test_journey_station_sighting_to_revoked_charity_share(client, factory):
    btp = factory.partner("btp", kind="police")
    cs = factory.partner("nottingham-cs", kind="local_authority")
    charity = factory.partner("childrens-society", kind="charity")
    probation = factory.partner("em-probation", kind="probation")

    # British Transport Police raise a referral about a boy seen at a station.
    raised = client.post(
        "/v1/referrals", json=referral_body(risk_level="high"), headers=btp.headers()
    )
    assert raised.status_code == 201
    rid = raised.get_json()["id"]

    # ...and share it with children's services, for assessment.
    share = client.post(
        f"/v1/referrals/{rid}/shares",
        json=share_body("nottingham-cs", "contribute"),
        headers=btp.headers(),
    )
    assert share.status_code == 201
    share_id = share.get_json()["id"]

    # The charity and probation see nothing.
    for outsider in (charity, probation):
        assert client.get(f"/v1/referrals/{rid}", headers=outsider.headers()).status_code == 404
        assert client.get("/v1/referrals", headers=outsider.headers()).get_json()["items"] == []

    # Children's services acknowledge the share...
    ack = client.post(f"/v1/referrals/{rid}/shares/{share_id}/acknowledge", headers=cs.headers())
    assert ack.status_code == 200 and ack.get_json()["acknowledged_at"]

    # ...and take the lead from the police, who keep a contribute share.
    etag = client.get(f"/v1/referrals/{rid}", headers=btp.headers()).headers["ETag"]
    transfer = client.post(
        f"/v1/referrals/{rid}/transfer",
        json={
            "agency": "nottingham-cs",
            "reason": "Section 47 enquiry opened",
            "lawful_basis": {"article_6": "public_task", "gateway": "Children Act 1989 s47"},
        },
        headers=btp.headers(**{"If-Match": etag}),
    )
    assert transfer.status_code == 200, transfer.get_json()
    assert transfer.get_json()["lead_agency"] == "nottingham-cs"
    etag = transfer.headers["ETag"]
    police_shares = client.get(f"/v1/referrals/{rid}/shares", headers=btp.headers()).get_json()[
        "items"
    ]
    assert [(s["agency"], s["access"], s["status"]) for s in police_shares] == [
        ("btp", "contribute", "active")
    ]
    police_note = client.post(
        f"/v1/referrals/{rid}/notes",
        json={"body": "Second sighting", "visibility": "shared"},
        headers=btp.headers(),
    )
    assert police_note.status_code == 201
    assert (
        client.post(
            f"/v1/referrals/{rid}/transitions",
            json={"to": "acknowledged"},
            headers=btp.headers(**{"If-Match": etag}),
        ).status_code
        == 403
    )

    # They work it through the workflow.
    for to, reason in (("acknowledged", None), ("in_assessment", None), ("action_agreed", None)):
        body = {"to": to} | ({"reason": reason} if reason else {})
        moved = client.post(
            f"/v1/referrals/{rid}/transitions", json=body, headers=cs.headers(**{"If-Match": etag})
        )
        assert moved.status_code == 200, moved.get_json()
        etag = moved.headers["ETag"]

    # They share read-only with the charity for a support service.
    charity_share = client.post(
        f"/v1/referrals/{rid}/shares",
        json=share_body("childrens-society", "read", purpose="support_service"),
        headers=cs.headers(),
    )
    assert charity_share.status_code == 201
    charity_share_id = charity_share.get_json()["id"]
    assert client.get(f"/v1/referrals/{rid}", headers=charity.headers()).status_code == 200
    assert (
        client.post(
            f"/v1/referrals/{rid}/notes",
            json={"body": "x", "visibility": "shared"},
            headers=charity.headers(),
        ).status_code
        == 403
    )

    # They keep an agency-only note to themselves.
    client.post(
        f"/v1/referrals/{rid}/notes",
        json={"body": "Strategy meeting Tuesday", "visibility": "agency"},
        headers=cs.headers(),
    )
    charity_notes = client.get(f"/v1/referrals/{rid}/notes", headers=charity.headers()).get_json()[
        "items"
    ]
    assert [n["body"] for n in charity_notes] == ["Second sighting"]
    police_notes = client.get(f"/v1/referrals/{rid}/notes", headers=btp.headers()).get_json()[
        "items"
    ]
    assert "Strategy meeting Tuesday" not in [n["body"] for n in police_notes]

    # Revoking the charity's share cuts its access that moment, even with the same token.
    charity_token = charity.headers()
    assert client.get(f"/v1/referrals/{rid}", headers=charity_token).status_code == 200
    revoke = client.post(
        f"/v1/referrals/{rid}/shares/{charity_share_id}/revoke",
        json={"reason": "Support service ended"},
        headers=cs.headers(),
    )
    assert revoke.status_code == 200
    assert client.get(f"/v1/referrals/{rid}", headers=charity_token).status_code == 404
    assert client.get("/v1/referrals", headers=charity_token).get_json()["items"] == []
    assert client.get(f"/v1/referrals/{rid}", headers=probation.headers()).status_code == 404

    history = client.get(f"/v1/referrals/{rid}/history", headers=cs.headers()).get_json()["items"]
    transfer_entry = next(h for h in history if h["kind"] == "transfer")
    assert (transfer_entry["from_agency"], transfer_entry["to_agency"]) == ("btp", "nottingham-cs")
