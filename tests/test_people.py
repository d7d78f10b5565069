"""People act through their agency's system under their own name and role (jwt-bearer tokens)."""

from __future__ import annotations

from tests.helpers import referral_body, share_body
from tests.test_jwt_bearer import grant, keyed, person, user_assertion

__all__ = ["keyed", "person"]  # fixtures, imported for pytest

CASEWORK = "referrals:read referrals:write referrals:share subjects:read subjects:write"


def _user_headers(client, system, user, scope=None):
    data = {"scope": scope} if scope else {}
    response = grant(
        client, system, user_assertion(system.key, system.client_id, str(user.id)), **data
    )
    assert response.status_code == 200, response.get_json()
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


def test_caseworker_raises_under_own_name_but_only_a_safeguarding_lead_shares(
    client, factory, keyed, person
):
    factory.agency("nottingham-cs", "local_authority")
    system = keyed("btp", scopes=CASEWORK)
    caseworker = person("btp", "caseworker", "officer.khan@btp.example")
    lead = person("btp", "safeguarding_lead", "sgt.morris@btp.example")

    as_caseworker = _user_headers(client, system, caseworker)
    raised = client.post("/v1/referrals", json=referral_body(), headers=as_caseworker)
    assert raised.status_code == 201
    referral = raised.get_json()
    assert referral["created_by"] == {
        "agency": "btp",
        "client_id": system.client_id,
        "user_id": str(caseworker.id),
    }

    url = f"/v1/referrals/{referral['id']}/shares"
    refused = client.post(url, json=share_body("nottingham-cs"), headers=as_caseworker)
    assert refused.status_code == 403
    assert 'scope="referrals:share"' in refused.headers["WWW-Authenticate"]

    shared = client.post(
        url, json=share_body("nottingham-cs"), headers=_user_headers(client, system, lead)
    )
    assert shared.status_code == 201


def test_an_auditor_gets_no_case_content_whatever_the_client_holds(client, keyed, person):
    system = keyed("btp")
    auditor = person("btp", "auditor")
    headers = _user_headers(client, system, auditor)
    for path in ("/v1/referrals", "/v1/subjects"):
        response = client.get(path, headers=headers)
        assert response.status_code == 403
    asked_for_more = grant(
        client,
        system,
        user_assertion(system.key, system.client_id, str(auditor.id)),
        scope="referrals:read",
    )
    assert asked_for_more.status_code == 400
    assert asked_for_more.get_json()["error"] == "invalid_scope"
