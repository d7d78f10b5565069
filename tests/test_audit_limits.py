"""No input turns a refusal into a 500 or an unaudited request: values recorded in the audit
trail are cut to fit their columns (issue 9)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from casehub.models import AuditEvent


@pytest.fixture
def admin(factory):
    return factory.partner("btp", "admin referrals:read", kind="police")


@pytest.mark.parametrize("length", [65, 120, 600, 3000])
def test_an_overlong_client_id_is_refused_and_audited(client, db_session, admin, length):
    client_id = "c" * length
    response = client.delete(f"/v1/admin/clients/{client_id}", headers=admin.headers())
    assert response.status_code == 404, response.get_data(as_text=True)[:200]
    event = (
        db_session.execute(
            select(AuditEvent)
            .where(AuditEvent.request_status == 404)
            .order_by(AuditEvent.pos.desc())
        )
        .scalars()
        .first()
    )
    assert event is not None and event.outcome == "denied"
    assert event.resource_id == client_id[:64]
    assert event.request_path == f"/v1/admin/clients/{client_id}"[:500]


def test_an_overlong_agency_code_is_refused_and_audited(client, db_session, factory):
    factory.agency("platform", "other", platform=True)
    platform = factory.partner("platform", "admin", kind="other")
    code = "x" * 700
    response = client.patch(
        f"/v1/admin/agencies/{code}", json={"name": "Renamed"}, headers=platform.headers()
    )
    assert response.status_code in (404, 422)
    events = (
        db_session.execute(select(AuditEvent).where(AuditEvent.actor_agency == "platform"))
        .scalars()
        .all()
    )
    assert events, "the refusal is audited"
    assert all(len(e.request_path or "") <= 500 for e in events)


def test_every_recorded_value_is_cut_to_its_column(db_session):
    """The one place every audit event passes through cuts what would not fit, whatever a
    route passes it (resource ids from paths, actions, bases, purposes...)."""
    from casehub import audit

    audit.record(
        db_session,
        None,
        "a" * 200,
        resource_type="t" * 100,
        resource_id="r" * 300,
        basis="b" * 100,
        purpose="p" * 100,
    )
    info = audit.RequestInfo("i" * 300, "M" * 20, "/" + "p" * 900, "1" * 100)
    assert audit.write_pending(db_session, info, status=404) == 1
    event = db_session.execute(select(AuditEvent).order_by(AuditEvent.pos.desc())).scalars().first()
    assert (len(event.action), len(event.resource_id), len(event.request_path)) == (60, 64, 500)
