"""The audited read's round trips (issue 10): a share recipient's read of a referral costs the
same statements as the lead's — the actor, one SELECT of the referral with its lists and the
caller's active share, the audit insert — not an extra query for its shares."""

from __future__ import annotations

from tests.helpers import referral_body, share_body
from tests.test_probe_equality import counted_statements


def test_a_recipients_read_costs_what_the_leads_does(client, db_session, factory):
    btp = factory.partner("btp")
    notts = factory.partner("notts-cs", kind="local_authority")
    referral = client.post("/v1/referrals", json=referral_body(), headers=btp.headers()).get_json()
    shared = client.post(
        f"/v1/referrals/{referral['id']}/shares", json=share_body("notts-cs"), headers=btp.headers()
    )
    assert shared.status_code == 201
    work = {}
    for who, partner in (("lead", btp), ("recipient", notts)):
        headers = partner.headers()
        with counted_statements(db_session.connection()) as statements:
            response = client.get(f"/v1/referrals/{referral['id']}", headers=headers)
        assert response.status_code == 200
        work[who] = [s for s in statements if s in ("SELECT", "INSERT", "UPDATE", "DELETE")]
    assert work["lead"] == work["recipient"] == ["SELECT", "SELECT", "INSERT"], work
