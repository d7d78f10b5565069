"""Subjects over HTTP with real tokens: create, read, change, search, visibility and audit."""

from __future__ import annotations

import random
import uuid
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from casehub.db import utcnow
from casehub.models import AuditEvent, Referral, Share, Subject, SubjectNameKey
from casehub.services import names
from casehub.services import subjects as subjects_service

PROBLEM = "application/problem+json"


def body(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "given_name": "John",
        "family_name": "Smith",
        "aliases": ["Little J"],
        "date_of_birth": "2011-05-04",
        "gender": "male",
        "identifiers": [
            {"system": "nhs_number", "value": "943 476 5919"},
            {"system": "la_case_ref", "value": "NCC-2231"},
        ],
        "address": {"line": "1 Station Street", "town": "Nottingham", "postcode": "ng1 5fs"},
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not ...}


@pytest.fixture
def btp(factory):
    return factory.partner("btp")


@pytest.fixture
def council(factory):
    factory.agency("nottscc", "local_authority")
    return factory.partner("nottscc")


def create(client, partner, **overrides):
    response = client.post("/v1/subjects", json=body(**overrides), headers=partner.headers())
    assert response.status_code == 201, response.get_json()
    return response


def search(client, partner, headers=None, **params):
    response = client.get("/v1/subjects", query_string=params, headers=headers or partner.headers())
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def found_names(client, partner, q, **params):
    items = search(client, partner, q=q, **params)["items"]
    return sorted(f"{s['given_name']} {s['family_name']}" for s in items)


def at(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


def events(db_session, action):
    db_session.expire_all()
    return list(
        db_session.execute(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.pos)
        ).scalars()
    )


def add_referral(db_session, subject_id: str, lead: str) -> Referral:
    referral = Referral(
        reference=f"CH-TEST-{uuid.uuid4().hex[:8]}",
        subject_id=uuid.UUID(subject_id),
        lead_agency=lead,
        created_by_agency=lead,
        created_by_client_id="test",
        summary="Seen at the station late at night",
        observed_at=utcnow(),
        risk_level="medium",
        status="submitted",
    )
    db_session.add(referral)
    db_session.commit()
    return referral


# -- create and read --------------------------------------------------------------------------
def test_create_returns_the_subject_with_location_etag_and_normalised_fields(client, btp):
    response = create(client, btp)
    subject = response.get_json()
    assert response.headers["Location"] == f"/v1/subjects/{subject['id']}"
    assert response.headers["ETag"]
    assert subject["created_by_agency"] == "btp"
    assert subject["identifiers"] == [
        {"system": "nhs_number", "value": "9434765919"},
        {"system": "la_case_ref", "value": "NCC-2231"},
    ]
    assert subject["address"] == {
        "line": "1 Station Street",
        "town": "Nottingham",
        "postcode": "NG1 5FS",
    }
    assert subject["created_at"] == subject["updated_at"]
    assert subject["created_at"].endswith("+00:00")

    read = client.get(response.headers["Location"], headers=btp.headers())
    assert read.status_code == 200
    assert read.get_json() == subject
    assert read.headers["ETag"] == response.headers["ETag"]


def test_minimal_subject_gets_documented_defaults(client, btp):
    subject = create(
        client, btp, aliases=..., date_of_birth=..., gender=..., identifiers=..., address=...
    ).get_json()
    assert subject["aliases"] == []
    assert subject["identifiers"] == []
    assert subject["gender"] == "unknown"
    assert subject["address"] is None
    assert subject["date_of_birth"] is None
    assert subject["estimated_birth_year"] is None


def test_estimated_birth_year_instead_of_date_of_birth(client, btp):
    year = utcnow().year - 15
    subject = create(client, btp, date_of_birth=..., estimated_birth_year=year).get_json()
    assert subject["estimated_birth_year"] == year
    assert subject["date_of_birth"] is None


def test_create_and_read_are_audited(client, btp, db_session):
    subject = create(client, btp).get_json()
    client.get(
        f"/v1/subjects/{subject['id']}", headers=btp.headers(**{"Purpose-Of-Use": "mash_triage"})
    )
    (created,) = events(db_session, "subject.create")
    (read,) = events(db_session, "subject.read")
    assert created.subject_ids == [subject["id"]] == read.subject_ids
    assert created.outcome == read.outcome == "allowed"
    assert (created.basis, created.purpose) == ("creator", "case_work")
    assert (read.basis, read.purpose) == ("creator", "mash_triage")
    assert read.request_status == 200


def test_idempotent_create_makes_one_subject(client, btp, db_session):
    headers = btp.headers(**{"Idempotency-Key": "subject-1"})
    first = client.post("/v1/subjects", json=body(), headers=headers)
    second = client.post("/v1/subjects", json=body(), headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.get_json() == second.get_json()
    assert second.headers["Location"] == first.headers["Location"]
    assert second.headers["ETag"] == first.headers["ETag"]
    assert len(db_session.execute(select(Subject.id)).all()) == 1


def test_writing_needs_subjects_write(client, factory):
    reader = factory.partner("btp", scopes="subjects:read")
    response = client.post("/v1/subjects", json=body(), headers=reader.headers())
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_unknown_subject_is_404_problem(client, btp):
    response = client.get(f"/v1/subjects/{uuid.uuid4()}", headers=btp.headers())
    assert response.status_code == 404
    assert response.mimetype == PROBLEM


# -- validation ---------------------------------------------------------------------------------
def _today() -> date:
    return utcnow().date()


def _years_ago(years: int) -> date:
    today = _today()
    try:
        return today.replace(year=today.year - years)
    except ValueError:  # 29 February: the birthday is on 28 February in other years
        return today.replace(year=today.year - years, day=28)


INVALID = [
    ("missing given_name", {"given_name": ...}, "given_name"),
    ("empty given_name", {"given_name": "   "}, "given_name"),
    ("long family_name", {"family_name": "x" * 101}, "family_name"),
    ("null family_name", {"family_name": None}, "family_name"),
    ("eleven aliases", {"aliases": [f"a{i}" for i in range(11)]}, "aliases"),
    ("long alias", {"aliases": ["x" * 101]}, "aliases"),
    ("unknown gender", {"gender": "boy"}, "gender"),
    (
        "unknown identifier system",
        {"identifiers": [{"system": "passport", "value": "1"}]},
        "identifiers",
    ),
    ("long identifier", {"identifiers": [{"system": "other", "value": "x" * 65}]}, "identifiers"),
    ("identifier without value", {"identifiers": [{"system": "upn"}]}, "identifiers"),
    ("eleven identifiers", {"identifiers": [{"system": "upn", "value": "1"}] * 11}, "identifiers"),
    (
        "bad NHS check digit",
        {"identifiers": [{"system": "nhs_number", "value": "9434765918"}]},
        "identifiers",
    ),
    (
        "short NHS number",
        {"identifiers": [{"system": "nhs_number", "value": "943476591"}]},
        "identifiers",
    ),
    ("bad postcode", {"address": {"postcode": "QW1 1AA"}}, "address"),
    ("long address line", {"address": {"line": "x" * 201}}, "address"),
    ("unknown address field", {"address": {"county": "Notts"}}, "address"),
    ("malformed date", {"date_of_birth": "04/05/2011"}, "date_of_birth"),
    ("both birth facts", {"estimated_birth_year": 2011}, "estimated_birth_year"),
    ("unknown field", {"nickname": "JJ"}, "nickname"),
    ("read-only field", {"created_by_agency": "nottscc"}, "created_by_agency"),
    ("read-only id", {"id": str(uuid.uuid4())}, "id"),
]


@pytest.mark.parametrize(
    ("overrides", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_fields_are_422_naming_the_field(client, btp, db_session, overrides, field):
    response = client.post("/v1/subjects", json=body(**overrides), headers=btp.headers())
    assert response.status_code == 422, response.get_json()
    assert response.mimetype == PROBLEM
    problem = response.get_json()
    assert problem["status"] == 422
    assert list(problem["errors"]["json"]) == [field]
    assert db_session.execute(select(Subject.id)).first() is None


def test_nhs_number_error_points_at_the_value(client, btp):
    bad = {
        "identifiers": [
            {"system": "upn", "value": "A1"},
            {"system": "nhs_number", "value": "9434765918"},
        ]
    }
    response = client.post("/v1/subjects", json=body(**bad), headers=btp.headers())
    assert response.get_json()["errors"]["json"]["identifiers"] == {
        "1": {"value": ["Not a valid NHS number (modulus 11 check)."]}
    }


def test_nhs_number_rules_apply_only_to_nhs_numbers(client, btp):
    subject = create(
        client, btp, identifiers=[{"system": "pnc_id", "value": "9434765918"}]
    ).get_json()
    assert subject["identifiers"] == [{"system": "pnc_id", "value": "9434765918"}]


def test_date_of_birth_in_the_future_is_refused(client, btp):
    tomorrow = _today() + timedelta(days=1)
    response = client.post(
        "/v1/subjects", json=body(date_of_birth=tomorrow.isoformat()), headers=btp.headers()
    )
    assert response.status_code == 422
    assert response.get_json()["errors"]["json"]["date_of_birth"] == ["Cannot be in the future."]
    create(client, btp, date_of_birth=_today().isoformat())


def test_subject_must_be_under_26(client, btp):
    turns_26_today = _years_ago(26)
    response = client.post(
        "/v1/subjects", json=body(date_of_birth=turns_26_today.isoformat()), headers=btp.headers()
    )
    assert response.status_code == 422
    assert response.get_json()["errors"]["json"]["date_of_birth"] == [
        "The subject must be under 26."
    ]
    create(client, btp, date_of_birth=(turns_26_today + timedelta(days=1)).isoformat())


@pytest.mark.parametrize("offset", [-27, 1])
def test_estimated_birth_year_must_be_plausible(client, btp, offset):
    year = _today().year + offset
    response = client.post(
        "/v1/subjects",
        json=body(date_of_birth=..., estimated_birth_year=year),
        headers=btp.headers(),
    )
    assert response.status_code == 422
    assert list(response.get_json()["errors"]["json"]) == ["estimated_birth_year"]


def test_validation_errors_do_not_echo_personal_data(client, btp):
    response = client.post(
        "/v1/subjects",
        json=body(family_name="Weatherspoon-" * 10, address={"postcode": "ZZ9 9ZZQ"}),
        headers=btp.headers(),
    )
    assert response.status_code == 422
    assert "Weatherspoon" not in response.get_data(as_text=True)
    assert "ZZ9" not in response.get_data(as_text=True)


def test_malformed_json_is_400_and_wrong_type_is_415(client, btp):
    headers = btp.headers()
    bad_json = client.post(
        "/v1/subjects", data="{", headers={**headers, "Content-Type": "application/json"}
    )
    assert bad_json.status_code == 400
    form = client.post("/v1/subjects", data={"given_name": "x"}, headers=headers)
    assert form.status_code == 415


# -- change -------------------------------------------------------------------------------------
def test_patch_needs_if_match(client, btp):
    created = create(client, btp)
    location = created.headers["Location"]
    missing = client.patch(location, json={"gender": "female"}, headers=btp.headers())
    assert missing.status_code == 428
    assert missing.mimetype == PROBLEM
    garbage = client.patch(
        location, json={"gender": "female"}, headers=btp.headers(**{"If-Match": '"nonsense"'})
    )
    assert garbage.status_code == 412


def test_patch_changes_fields_and_etag_and_refuses_stale_etag(client, btp):
    created = create(client, btp)
    location, etag = created.headers["Location"], created.headers["ETag"]
    changed = client.patch(
        location,
        json={"gender": "non_binary", "address": {"postcode": "le16tp"}},
        headers=btp.headers(**{"If-Match": etag}),
    )
    assert changed.status_code == 200, changed.get_json()
    subject = changed.get_json()
    assert subject["gender"] == "non_binary"
    assert subject["address"] == {"line": None, "town": None, "postcode": "LE1 6TP"}
    assert subject["given_name"] == "John"  # untouched
    assert at(subject["updated_at"]) > at(subject["created_at"])
    assert changed.headers["ETag"] != etag

    stale = client.patch(
        location, json={"gender": "male"}, headers=btp.headers(**{"If-Match": etag})
    )
    assert stale.status_code == 412
    assert stale.mimetype == PROBLEM
    current = client.get(location, headers=btp.headers())
    assert current.get_json()["gender"] == "non_binary"
    assert current.headers["ETag"] == changed.headers["ETag"]


def test_patch_validates_like_create(client, btp):
    created = create(client, btp)
    headers = btp.headers(**{"If-Match": created.headers["ETag"]})
    location = created.headers["Location"]
    for patch, field in [
        ({"given_name": None}, "given_name"),
        ({"family_name": ""}, "family_name"),
        ({"date_of_birth": (_today() + timedelta(days=1)).isoformat()}, "date_of_birth"),
        ({"identifiers": [{"system": "nhs_number", "value": "9434765918"}]}, "identifiers"),
        ({"address": {"postcode": "NG1"}}, "address"),
        ({"created_by_agency": "nottscc"}, "created_by_agency"),
        ({"date_of_birth": "2012-01-01", "estimated_birth_year": 2012}, "estimated_birth_year"),
    ]:
        response = client.patch(location, json=patch, headers=headers)
        assert response.status_code == 422, patch
        assert list(response.get_json()["errors"]["json"]) == [field]
    assert client.get(location, headers=btp.headers()).headers["ETag"] == created.headers["ETag"]


def test_patch_birth_facts_replace_each_other_and_address_clears(client, btp):
    created = create(client, btp)
    year = _today().year - 14
    response = client.patch(
        created.headers["Location"],
        json={"estimated_birth_year": year, "address": None},
        headers=btp.headers(**{"If-Match": created.headers["ETag"]}),
    )
    subject = response.get_json()
    assert (subject["estimated_birth_year"], subject["date_of_birth"]) == (year, None)
    assert subject["address"] is None
    response = client.patch(
        created.headers["Location"],
        json={"date_of_birth": "2012-02-29"},
        headers=btp.headers(**{"If-Match": response.headers["ETag"]}),
    )
    subject = response.get_json()
    assert (subject["estimated_birth_year"], subject["date_of_birth"]) == (None, "2012-02-29")


def test_patch_without_changes_keeps_the_version(client, btp):
    created = create(client, btp)
    response = client.patch(
        created.headers["Location"],
        json={"gender": "male"},
        headers=btp.headers(**{"If-Match": created.headers["ETag"]}),
    )
    assert response.status_code == 200
    assert response.headers["ETag"] == created.headers["ETag"]
    assert response.get_json()["updated_at"] == created.get_json()["updated_at"]


def test_patch_keeps_search_keys_in_step_with_names(client, btp, db_session):
    created = create(client, btp, aliases=["Little J"])
    subject_id = uuid.UUID(created.get_json()["id"])
    response = client.patch(
        created.headers["Location"],
        json={"given_name": "Kwame", "aliases": ["KJ"]},
        headers=btp.headers(**{"If-Match": created.headers["ETag"]}),
    )
    assert response.status_code == 200
    assert found_names(client, btp, "Kwame") == ["Kwame Smith"]
    assert found_names(client, btp, "John") == []
    assert found_names(client, btp, "Little") == []
    assert found_names(client, btp, "kj") == ["Kwame Smith"]
    assert stored_keys(db_session, subject_id) == expected_keys(created.get_json(), "Kwame", ["KJ"])


def stored_keys(db_session, subject_id: uuid.UUID) -> dict[str, tuple[bool, datetime]]:
    db_session.expire_all()
    rows = db_session.execute(
        select(SubjectNameKey).where(SubjectNameKey.subject_id == subject_id)
    ).scalars()
    return {row.key: (row.whole_word, row.subject_created_at) for row in rows}


def expected_keys(subject: dict[str, Any], given_name: str, aliases: list[str]):
    kinds = names.subject_key_kinds(given_name, subject["family_name"], aliases)
    return {key: (whole, at(subject["created_at"])) for key, whole in kinds.items()}


def test_renaming_rewrites_which_keys_are_whole_words(client, btp, db_session):
    """ "li" is a deletion of "Lia" but a whole word of "Li": a kept key changes kind."""
    created = create(client, btp, given_name="Lia", family_name="Wu", aliases=[])
    subject = created.get_json()
    assert found_names(client, btp, "Li") == []
    response = client.patch(
        created.headers["Location"],
        json={"given_name": "Li"},
        headers=btp.headers(**{"If-Match": created.headers["ETag"]}),
    )
    assert response.status_code == 200
    assert found_names(client, btp, "Li") == ["Li Wu"]
    assert stored_keys(db_session, uuid.UUID(subject["id"])) == expected_keys(subject, "Li", [])


def test_patch_is_audited(client, btp, db_session):
    created = create(client, btp)
    client.patch(
        created.headers["Location"],
        json={"gender": "female"},
        headers=btp.headers(**{"If-Match": created.headers["ETag"]}),
    )
    (event,) = events(db_session, "subject.update")
    assert event.subject_ids == [created.get_json()["id"]]
    assert event.request_status == 200


# -- visibility ---------------------------------------------------------------------------------
def test_another_agency_cannot_see_or_change_a_subject(client, btp, council, db_session):
    created = create(client, btp)
    location, etag = created.headers["Location"], created.headers["ETag"]
    missing_id = str(uuid.uuid4())
    missing = client.get(f"/v1/subjects/{missing_id}", headers=council.headers())

    read = client.get(location, headers=council.headers())
    assert read.status_code == 404
    assert read.get_json() == missing.get_json()
    assert "ETag" not in read.headers

    patch = client.patch(
        location, json={"gender": "female"}, headers=council.headers(**{"If-Match": etag})
    )
    assert patch.status_code == 404
    assert patch.get_json() == missing.get_json()

    assert search(client, council) == {"items": [], "next_cursor": None}
    assert search(client, council, q="John") == {"items": [], "next_cursor": None}
    assert search(client, council, q="John", date_of_birth="2011-05-04")["items"] == []

    denied = events(db_session, "access.denied")
    assert [(e.actor_agency, e.outcome, e.resource_id, e.request_status) for e in denied] == [
        ("nottscc", "denied", missing_id, 404),
        ("nottscc", "denied", created.get_json()["id"], 404),
        ("nottscc", "denied", created.get_json()["id"], 404),
    ]
    assert all(e.subject_ids == [] for e in denied)
    assert client.get(location, headers=btp.headers()).get_json()["gender"] == "male"


def test_a_missing_subject_is_audited_as_denied_like_an_invisible_one(client, council, db_session):
    """Asking for an id that names nothing is a refused attempt too (and treating it otherwise
    would take a query to tell the two apart, which a prober could time)."""
    missing = uuid.uuid4()
    client.get(f"/v1/subjects/{missing}", headers=council.headers())
    (denied,) = events(db_session, "access.denied")
    assert (denied.resource_id, denied.subject_ids) == (str(missing), [])


def test_the_lead_of_a_referral_about_the_subject_sees_it_but_cannot_change_it(
    client, btp, council, db_session
):
    created = create(client, btp)
    subject = created.get_json()
    add_referral(db_session, subject["id"], lead="nottscc")

    read = client.get(created.headers["Location"], headers=council.headers())
    assert read.status_code == 200
    assert read.get_json() == subject
    assert found_names(client, council, "jonh smith") == ["John Smith"]

    patch = client.patch(
        created.headers["Location"],
        json={"gender": "female"},
        headers=council.headers(**{"If-Match": created.headers["ETag"]}),
    )
    assert patch.status_code == 403
    assert patch.mimetype == PROBLEM
    (read_event,) = events(db_session, "subject.read")
    assert (read_event.actor_agency, read_event.basis, read_event.purpose) == (
        "nottscc",
        "lead",
        "case_work",
    )
    (denied,) = events(db_session, "access.denied")
    assert (denied.actor_agency, denied.request_status) == ("nottscc", 403)


def _share(db_session, referral: Referral, agency: str, **kw: Any) -> Share:
    share = Share(
        referral_id=referral.id,
        referral_created_at=referral.created_at,
        referral_updated_at=referral.updated_at,
        agency_code=agency,
        access="read",
        purpose="support_service",
        necessity="The charity supports the child.",
        article_6="legitimate_interests",
        consent_status="given",
        created_by_agency=referral.lead_agency,
        created_by_client_id="test",
        **kw,
    )
    db_session.add(share)
    db_session.commit()
    return share


def test_an_active_share_of_a_referral_makes_the_subject_visible(
    client, btp, council, factory, db_session
):
    charity = factory.partner("catch22", kind="charity")
    created = create(client, btp)
    referral = add_referral(db_session, created.get_json()["id"], lead="nottscc")
    assert client.get(created.headers["Location"], headers=charity.headers()).status_code == 404

    share = _share(db_session, referral, "catch22")
    read = client.get(created.headers["Location"], headers=charity.headers())
    assert read.status_code == 200
    (event,) = [e for e in events(db_session, "subject.read") if e.actor_agency == "catch22"]
    assert (event.basis, event.purpose) == (f"share:{share.id}", "support_service")
    assert found_names(client, charity, "smith") == ["John Smith"]

    share.revoked_at = utcnow()
    db_session.commit()
    assert client.get(created.headers["Location"], headers=charity.headers()).status_code == 404
    assert found_names(client, charity, "smith") == []


def test_an_expired_share_gives_no_sight_of_the_subject(client, btp, council, factory, db_session):
    charity = factory.partner("catch22", kind="charity")
    created = create(client, btp)
    referral = add_referral(db_session, created.get_json()["id"], lead="nottscc")
    _share(db_session, referral, "catch22", expires_at=utcnow() - timedelta(seconds=1))
    assert client.get(created.headers["Location"], headers=charity.headers()).status_code == 404
    assert search(client, charity)["items"] == []


# -- search -------------------------------------------------------------------------------------
def test_search_ignores_case_and_accents(client, btp):
    create(client, btp, given_name="Zoë", family_name="Adébáyò", aliases=[])
    create(client, btp, given_name="Zac", family_name="Brown", aliases=[])
    for q in ["zoe", "ZOE", "Zoë", "zoé", "ADEBAYO", "zoe adebayo"]:
        assert found_names(client, btp, q) == ["Zoë Adébáyò"], q


def test_search_tolerates_one_typo_but_not_two(client, btp):
    create(client, btp, given_name="John", family_name="Smith", aliases=[])
    create(client, btp, given_name="Joan", family_name="Baker", aliases=[])
    assert found_names(client, btp, "Jonh") == ["John Smith"]  # swapped letters
    assert found_names(client, btp, "Jhn") == ["John Smith"]
    assert found_names(client, btp, "Smyth") == ["John Smith"]
    assert found_names(client, btp, "Smiths") == ["John Smith"]
    assert found_names(client, btp, "Jon") == ["Joan Baker", "John Smith"]
    assert found_names(client, btp, "Jnoh") == []
    assert found_names(client, btp, "Smtyh") == []


def test_search_finds_aliases_and_needs_every_word(client, btp):
    create(client, btp, given_name="Tyrese", family_name="Campbell", aliases=["T-Bone", "Little T"])
    assert found_names(client, btp, "bone") == ["Tyrese Campbell"]
    assert found_names(client, btp, "tbone") == ["Tyrese Campbell"]
    assert found_names(client, btp, "little campbell") == ["Tyrese Campbell"]
    assert found_names(client, btp, "tyrese jones") == []


def test_two_letter_names_match_whole_words_only(client, btp):
    # "li" is also a one-deletion key of Lia, Ali, Eli and Lil: none of them is "Li".
    for given_name in ["Li", "Lia", "Ali", "Eli", "Lil", "Lu"]:
        create(client, btp, given_name=given_name, family_name="Chen", aliases=[])
    create(client, btp, given_name="Wei", family_name="Li", aliases=["Al"])
    assert found_names(client, btp, "Li") == ["Li Chen", "Wei Li"]
    assert found_names(client, btp, "li chen") == ["Li Chen"]
    assert found_names(client, btp, "Al") == ["Wei Li"]
    # Three letters tolerate a typo again: "Lia" finds Li, Lil and Lia, not Ali or Eli.
    assert found_names(client, btp, "Lia") == ["Li Chen", "Lia Chen", "Lil Chen", "Wei Li"]


def test_search_handles_apostrophes_and_hyphens(client, btp):
    create(client, btp, given_name="Siobhan", family_name="O'Brien", aliases=[])
    create(client, btp, given_name="Amy", family_name="Smith-Jones", aliases=[])
    for q in ["O'Brien", "OBrien", "o brien", "O\u2019Brien"]:
        assert found_names(client, btp, q) == ["Siobhan O'Brien"], q
    for q in ["Smith-Jones", "jones", "smithjones", "amy smith"]:
        assert found_names(client, btp, q) == ["Amy Smith-Jones"], q


def test_date_of_birth_narrows_exactly(client, btp):
    create(client, btp, date_of_birth="2011-05-04")
    create(client, btp, date_of_birth="2011-05-05")
    create(client, btp, given_name="Peter", date_of_birth="2011-05-04")
    assert found_names(client, btp, "john", date_of_birth="2011-05-04") == ["John Smith"]
    items = search(client, btp, date_of_birth="2011-05-04")["items"]
    assert sorted(s["given_name"] for s in items) == ["John", "Peter"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"q": "a"}, "q"),
        ({"q": " a "}, "q"),
        ({"q": "x" * 101}, "q"),
        ({"q": "--"}, "q"),
        ({"date_of_birth": "yesterday"}, "date_of_birth"),
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"name": "john"}, "name"),
    ],
)
def test_bad_search_arguments_are_422(client, btp, params, field):
    response = client.get("/v1/subjects", query_string=params, headers=btp.headers())
    assert response.status_code == 422
    assert response.mimetype == PROBLEM
    assert list(response.get_json()["errors"]["query"]) == [field]


def test_search_is_audited_with_every_child_returned(client, btp, db_session):
    ids = {create(client, btp).get_json()["id"] for _ in range(3)}
    create(client, btp, given_name="Omar", family_name="Ali", aliases=[])
    page = search(client, btp, q="john", limit=2)
    search(client, btp, q="john", cursor=page["next_cursor"], limit=2)
    first, second = events(db_session, "subject.search")
    assert set(first.subject_ids) | set(second.subject_ids) == ids
    assert first.subject_ids == sorted(s["id"] for s in page["items"])
    assert first.outcome == "allowed"


def _walk(client, partner, limit, **params):
    seen: list[dict[str, Any]] = []
    cursor = None
    headers = partner.headers()
    for _ in range(50):
        page = search(
            client,
            partner,
            headers=headers,
            limit=limit,
            **({"cursor": cursor} if cursor else {}),
            **params,
        )
        assert len(page["items"]) <= limit
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("the walk did not end")


def test_cursor_walk_over_search_results_never_skips_or_repeats(client, btp, council):
    # Close to "amir", mixed with names that share a search key but are two edits away
    # ("xamr", "qair") and names that do not match at all, so pages need several batches.
    matching = ["Amir", "Amira", "Amer", "Amri", "Mir", "Samir", "Emir"]
    decoys = ["Xamr", "Qair", "Omar", "Xamr", "Qair", "Brian"]
    expected = []
    for i in range(max(len(matching), len(decoys))):
        if i < len(matching):
            expected.append(
                create(client, btp, given_name=matching[i], family_name=f"M{i}").get_json()
            )
        if i < len(decoys):
            create(client, btp, given_name=decoys[i], family_name=f"D{i}")
    create(client, council, given_name="Amir", family_name="Hidden")
    in_order = [s["id"] for s in sorted(expected, key=lambda s: (at(s["created_at"]), s["id"]))]
    for limit in (1, 2, 3, 7, 50):
        walked = [s["id"] for s in _walk(client, btp, limit, q="amir")]
        assert walked == in_order, limit


def test_cursor_walk_over_all_visible_subjects(client, btp, council):
    ids = [create(client, btp, given_name=f"Child{i}").get_json()["id"] for i in range(5)]
    create(client, council)
    walked = [s["id"] for s in _walk(client, btp, 2)]
    assert sorted(walked) == sorted(ids)
    assert len(walked) == len(set(walked))


def test_subjects_created_during_a_walk_do_not_disturb_it(client, btp):
    ids = [create(client, btp).get_json()["id"] for _ in range(4)]
    headers = btp.headers()
    page = search(client, btp, headers=headers, q="john", limit=2)
    create(client, btp)
    rest = search(client, btp, headers=headers, q="john", limit=2, cursor=page["next_cursor"])
    walked = [s["id"] for s in page["items"] + rest["items"]]
    assert walked == ids


# Names that share keys in every way: deletions of each other ("smith", "smit"), one edit
# apart by substitution or swap ("smyth", "jonh"), two edits apart but sharing a deletion
# ("joan", "jonh"), short words that are deletions of longer ones ("li", "jo"), accents,
# apostrophes and hyphens.
VOCABULARY = [
    "Li", "Lia", "Ali", "Eli", "Lu", "Jo", "Joe", "Jon", "John", "Joan", "Jonh", "Smith",
    "Smyth", "Smit", "Smiths", "Amir", "Omar", "O'Brien", "Brien", "Smith-Jones", "Zoë", "Zoe",
]  # fmt: skip


def test_search_finds_what_a_scan_of_every_visible_subject_finds(client, btp, council, monkeypatch):
    """Whatever word drives the search and however small its batches, a walk returns exactly
    the visible subjects that names.matches accepts, in (created_at, id) order."""
    rng = random.Random(10)
    visible = []
    for i in range(48):
        partner = council if i % 4 == 0 else btp
        subject = create(
            client,
            partner,
            given_name=" ".join(rng.sample(VOCABULARY, rng.choice([1, 1, 2]))),
            family_name=rng.choice(VOCABULARY),
            aliases=[rng.choice(VOCABULARY)] if rng.random() < 0.3 else [],
        ).get_json()
        if partner is btp:
            visible.append(subject)
    visible.sort(key=lambda s: (at(s["created_at"]), s["id"]))
    queries = [*VOCABULARY, "smith john", "john smith", "li smith", "smith li", "jo jon"]
    queries += ["zoe obrien", "amir smyth jones", "smiht", "jhon", "lia li"]

    def expected(q: str) -> list[str]:
        tokens = names.query_tokens(q)
        return [
            s["id"]
            for s in visible
            if names.matches(
                tokens, names.subject_tokens(s["given_name"], s["family_name"], s["aliases"])
            )
        ]

    assert sum(bool(expected(q)) for q in queries) > len(queries) // 2
    several_words = [q for q in queries if len(names.query_tokens(q)) > 1]
    # As deployed; in batches of two candidates at most, so that a page takes several batches
    # that resume after a candidate names.matches refused; then several words walked from one
    # word and probed for the others, and merged two at a time, with every key "common" (its
    # sample of one row projected) and with every key counted.
    deployed = (subjects_service.FIRST_BATCH, subjects_service.MAX_BATCH)
    probe, sample = subjects_service.PROBE_COST, subjects_service.SAMPLE_ROWS
    settings = [
        ((*deployed, probe, sample), queries, (2, 50)),
        ((1, 2, probe, sample), queries, (3,)),
        ((*deployed, 0.0, 1), several_words, (2,)),
        ((*deployed, 1e9, 1), several_words, (2,)),
        ((1, 2, 1e9, sample), several_words, (1, 3)),
    ]
    for (first, most, probe_cost, sample_rows), asked, limits in settings:
        monkeypatch.setattr(subjects_service, "FIRST_BATCH", first)
        monkeypatch.setattr(subjects_service, "MAX_BATCH", most)
        monkeypatch.setattr(subjects_service, "PROBE_COST", probe_cost)
        monkeypatch.setattr(subjects_service, "SAMPLE_ROWS", sample_rows)
        for q in asked:
            for limit in limits:
                walked = [s["id"] for s in _walk(client, btp, limit, q=q)]
                assert walked == expected(q), (q, limit, first, probe_cost, sample_rows)


def test_several_words_find_only_the_children_close_to_every_word(client, btp, council):
    """Each word may be matched by a different name, an alias or a typo; a child close to one
    word only, or whose keys meet both words but whose names are two edits from one (Akof
    shares the key "kof" with Kofi), or whom the caller cannot see, is not found."""

    def child(partner, given, family, aliases=()):
        create(client, partner, given_name=given, family_name=family, aliases=list(aliases))

    child(btp, "Kofi", "Mensah")
    child(btp, "Kofi", "Boateng")  # the first word only
    child(btp, "Ama", "Mensah")  # the second word only
    child(btp, "Kwame", "Mensha", ["Kofi"])  # an alias, and the surname one swap away
    child(btp, "Koffi", "Mensah-Owusu")  # one letter more, and part of a hyphenated name
    child(btp, "Akof", "Mensah")  # shares a key with "kofi", two edits from it
    child(btp, "Kofimensah", "Addo")  # one word that holds both
    child(council, "Kofi", "Mensah")  # not visible to btp
    assert found_names(client, btp, "kofi mensah") == [
        "Koffi Mensah-Owusu",
        "Kofi Mensah",
        "Kwame Mensha",
    ]
    assert found_names(client, btp, "mensah kofi") == found_names(client, btp, "kofi mensah")
    # A typo in the second word: one swap from Mensah, two from Mensha.
    assert found_names(client, btp, "kofi mesnah") == ["Koffi Mensah-Owusu", "Kofi Mensah"]
    assert found_names(client, btp, "kofi mensah owusu") == ["Koffi Mensah-Owusu"]
    assert found_names(client, btp, "kofi addo") == []
    assert found_names(client, council, "kofi mensah") == ["Kofi Mensah"]


def test_a_walk_over_many_matches_of_several_words_pages_in_order(
    client, btp, council, factory, db_session
):
    """Matches of both words among children with one word only, others' children and a child
    seen through a share: every page is in (created_at, id) order, and the walk returns each
    visible match once whatever the page size."""
    charity = factory.partner("catch22", kind="charity")
    matches: dict[str, list[str]] = {"btp": [], "catch22": []}
    for i in range(36):
        kind = i % 4
        if kind == 0:  # both words, recorded by btp
            family = ["Nkemdirim", "Nkemdrim", "Nkemdirimm"][i % 3]
            subject = create(client, btp, given_name="Ada", family_name=family, aliases=[])
            matches["btp"].append(subject.get_json()["id"])
        elif kind == 1:  # the first word only
            create(client, btp, given_name="Ada", family_name=f"Okafor{i}", aliases=[])
        elif kind == 2:  # both words by alias, recorded by the council and shared with catch22
            subject = create(
                client, council, given_name="Chi", family_name="Eze", aliases=["Ada Nkemdirim"]
            ).get_json()
            referral = add_referral(db_session, subject["id"], lead="nottscc")
            _share(db_session, referral, "catch22")
            matches["catch22"].append(subject["id"])
        else:  # both words, invisible to btp and catch22
            create(client, council, given_name="Adah", family_name="Nkemdirim", aliases=[])
    for partner in (btp, charity):
        for limit in (1, 2, 5, 50):
            walked = [s["id"] for s in _walk(client, partner, limit, q="ada nkemdirim")]
            assert walked == matches[partner.agency], (partner.agency, limit)


def test_two_common_words_find_the_same_pages_merged_or_probed(
    client, btp, council, db_session, monkeypatch
):
    """A common given name with a common surname ("Oliver Smith"): walked from one word and
    probed for the other, or the two words' keys merged in page order, a walk returns the same
    visible matches (typos in either word, aliases, parts of hyphenated names) in (created_at, id)
    order at every page size; so does a typo in the common word ("Olivar" shares a key with
    Olivia, two edits away)."""
    visible = []
    for i in range(24):
        if i % 3 == 0:
            visible.append(create(client, btp, given_name="Oliver", family_name=f"Nkem{i}"))
        if i % 3 == 1:
            visible.append(create(client, btp, given_name=f"Zara{i}", family_name="Smith"))
        if i % 4 == 0:
            create(client, council, given_name="Oliver", family_name="Smith")  # invisible
    for given, family, aliases in (
        ("Oliver", "Smith", []),
        ("Olivr", "Smith", []),
        ("Oliver", "Smyth", []),
        ("Ollie", "Jones", ["Oliver Smith"]),
        ("Oliver-James", "Smith", []),
        ("Olivia", "Smith", []),
        ("Oliver", "Smith", ["Ollie"]),
        ("Olivar", "Smiht", []),
    ):
        visible.append(create(client, btp, given_name=given, family_name=family, aliases=aliases))
        visible.append(create(client, btp, given_name="Oliver", family_name="Okafor"))
        visible.append(create(client, btp, given_name="Ada", family_name="Smith"))
    subjects = sorted((r.get_json() for r in visible), key=lambda s: (at(s["created_at"]), s["id"]))

    def expected(q: str) -> list[str]:
        tokens = names.query_tokens(q)
        return [
            s["id"]
            for s in subjects
            if names.matches(
                tokens, names.subject_tokens(s["given_name"], s["family_name"], s["aliases"])
            )
        ]

    olivia = next(s["id"] for s in subjects if s["given_name"] == "Olivia")
    assert len(expected("oliver smith")) == len(expected("olivar smith")) == 7
    assert olivia not in expected("olivar smith")
    assert expected("smith oliver") == expected("oliver smith")
    merged: list[bool] = []

    def note(_conn, _statement, multiparams, params, _options):  # type: ignore[no-untyped-def]
        for parameters in [params, *multiparams]:
            if isinstance(parameters, dict) and "key_0" in parameters:  # the walk
                merged.append("merge_0" in parameters)

    connection = db_session.connection()
    event.listen(connection, "before_execute", note)
    try:
        for probe_cost, merging in ((0.0, False), (1e9, True), (subjects_service.PROBE_COST, None)):
            monkeypatch.setattr(subjects_service, "PROBE_COST", probe_cost)
            for q in ("oliver smith", "smith oliver", "olivar smith"):
                for limit in (1, 2, 4, 50):
                    merged.clear()
                    walked = [s["id"] for s in _walk(client, btp, limit, q=q)]
                    assert walked == expected(q), (q, limit, probe_cost)
                    if merging is not None:
                        assert set(merged) == {merging}, (q, limit, probe_cost)
    finally:
        event.remove(connection, "before_execute", note)


def test_a_search_reads_its_page_in_one_statement_however_common_the_name(
    client, btp, council, db_session
):
    """Candidates come with every word, visibility and the whole subject in one statement: a
    page costs one read of the name keys for one word, and two (the rarest word first) for
    several, however many candidates have the rarest word only or are hidden from the viewer."""
    for _ in range(10):
        create(client, btp, given_name="Tom", family_name="Jones", aliases=[])
    for i in range(12):  # Hardy10 and Hardy11 are two edits from "hardy"
        create(client, btp, given_name="Tom", family_name=f"Hardy{i}", aliases=[])
    for _ in range(20):
        create(client, council, given_name="Sam", family_name="Hardy", aliases=[])
    for given_name in ["Eli"] * 6 + ["Li"] * 6:  # "li" is a deletion of Eli, not a whole word
        create(client, btp, given_name=given_name, family_name="Chen", aliases=[])
    headers = btp.headers()
    for q, keyed in (("tom", 1), ("hardy", 1), ("li", 1), ("tom hardy", 2)):
        seen: list[str] = []

        def note(_conn, _cursor, statement, *_, seen=seen):  # type: ignore[no-untyped-def]
            seen.append(statement)

        connection = db_session.connection()
        event.listen(connection, "before_cursor_execute", note)
        try:
            page = search(client, btp, headers=headers, q=q, limit=5)
        finally:
            event.remove(connection, "before_cursor_execute", note)
        assert len(page["items"]) == 5 and page["next_cursor"], q
        assert sum("subject_name_keys" in s for s in seen) == keyed, (q, seen)
