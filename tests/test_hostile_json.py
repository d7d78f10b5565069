"""Hostile JSON bodies get a clear 400 or 422, never a 500 (issue 9)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import referral_body


@pytest.fixture
def btp(factory):
    return factory.partner("btp", kind="police")


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 5000 + b"]" * 5000,  # nested far past the parser's recursion limit
        b'{"a":' * 2000 + b"1" + b"}" * 2000,
    ],
)
@pytest.mark.parametrize("path", ["/v1/referrals", "/v1/subjects", "/v1/webhooks"])
def test_hostile_json_is_refused_cleanly(client, btp, raw, path):
    response = client.post(
        path, data=raw, headers={**btp.headers(), "Content-Type": "application/json"}
    )
    assert response.status_code in (400, 422), response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert body["status"] == response.status_code
    assert "Traceback" not in response.get_data(as_text=True)


@pytest.mark.parametrize("field", ["summary", "narrative"])
@pytest.mark.parametrize("surrogate", ["\ud800", "\udfff tail", "\ud83d"])
def test_a_lone_surrogate_in_a_valid_body_is_400_not_500(client, btp, field, surrogate):
    """json.dumps writes a lone surrogate as the escape "\\ud800": valid JSON syntax, but no
    Unicode character, which PostgreSQL cannot store (a 500 at the database before)."""
    raw = json.dumps(referral_body(**{field: f"Seen {surrogate} at the station"}))
    response = client.post(
        "/v1/referrals", data=raw, headers={**btp.headers(), "Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert response.get_json()["errors"] == {"json": ["Invalid JSON body."]}


def test_a_lone_surrogate_in_a_subject_name_is_400(client, btp):
    body = json.dumps(
        {
            "given_name": "\ud83d",
            "family_name": "Okafor",
            "gender": "male",
            "estimated_birth_year": 2011,
        }
    )
    response = client.post(
        "/v1/subjects", data=body, headers={**btp.headers(), "Content-Type": "application/json"}
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("label", "number"),
    [
        ("NaN, a Python extension", b"NaN"),
        ("Infinity", b"-Infinity"),
        ("out of range", b"1e400"),
        ("5,000 digits", b"9" * 5000),  # past Python's int conversion limit: a 500 before
    ],
)
def test_a_number_json_cannot_carry_is_400(client, btp, label, number):
    raw = b'{"given_name": "Sam", "family_name": "Okafor", "estimated_birth_year": ' + number + b"}"
    response = client.post(
        "/v1/subjects", data=raw, headers={**btp.headers(), "Content-Type": "application/json"}
    )
    assert response.status_code == 400, (label, response.get_data(as_text=True)[:200])
    assert response.get_json()["errors"] == {"json": ["Invalid JSON body."]}
