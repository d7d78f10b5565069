"""Request bodies and small helpers shared by API tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any


def subject_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "given_name": "Jayden",
        "family_name": "Okafor",
        "date_of_birth": "2011-04-02",
        "gender": "male",
    }
    body.update(overrides)
    return body


def referral_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject": subject_body(),
        "categories": ["county_lines", "missing"],
        "indicators": ["TRV-01", "PHN-01"],
        "summary": "Boy travelling alone in school hours with two phones at Nottingham station.",
        "narrative": "Seen by BTP officers at 10:40; would not say where he was going.",
        "observed_at": (datetime.now(UTC) - timedelta(hours=2)).isoformat(),
        "location": {
            "description": "Platform 4",
            "postcode": "ng2 3aq",
            "transport_hub": "Nottingham",
        },
        "risk_level": "high",
    }
    body.update(overrides)
    return body


def share_body(agency: str, access: str = "read", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "agency": agency,
        "access": access,
        "purpose": "safeguard_assess",
        "necessity": "Children's services must assess the risk of exploitation (s47).",
        "lawful_basis": {
            "article_6": "public_task",
            "condition": "dpa2018_sch1_para18_safeguarding",
            "gateway": "Children Act 2004 s11",
        },
        "consent": {
            "status": "not_sought",
            "rationale": "Seeking consent would place the child at risk.",
        },
    }
    body.update(overrides)
    return body


def match_for(
    db_session: Any, requester: str, holder: str, *subject_ids: str, hours: float = 24
) -> str:
    """A match `requester` made that listed `holder` for these children (as POST /v1/matches
    keeps it), valid for `hours`; its id."""
    from casehub.models import Match

    match = Match(
        agency_code=requester,
        client_id="test-matcher",
        found={holder: {"confidence": "strong", "subject_ids": list(subject_ids)}},
        created_at=datetime.now(UTC),
        expires_at=datetime.now(UTC) + timedelta(hours=hours),
    )
    db_session.add(match)
    db_session.commit()
    return str(match.id)


def access_request_body(match_id: str, agency: str = "btp", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "match_id": match_id,
        "agency": agency,
        "purpose": "safeguard_assess",
        "necessity": "A s47 enquiry needs what is known about the child's exploitation.",
        "urgency": "routine",
    }
    body.update(overrides)
    return body


def transfer_lead(client: Any, partner: Any, referral_id: str, agency: str) -> Any:
    """Hand a referral's lead from `partner` to `agency` over the API (If-Match from a fresh
    read); returns the transfer's response, asserted 200."""
    etag = client.get(f"/v1/referrals/{referral_id}", headers=partner.headers()).headers["ETag"]
    response = client.post(
        f"/v1/referrals/{referral_id}/transfer",
        json={
            "agency": agency,
            "reason": "Section 47 enquiry opened",
            "lawful_basis": {"article_6": "public_task", "gateway": "Children Act 1989 s47"},
        },
        headers=partner.headers(**{"If-Match": etag}),
    )
    assert response.status_code == 200, response.get_json()
    return response
