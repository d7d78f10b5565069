"""Subscriptions, the outbox and the feed as a partner meets them (CONTRACT §6): what each agency
hears, and when; that nothing personal is in a notification; that registration refuses unsafe
targets; that the secret is shown once and never stored."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from casehub.models import AuditEvent, Event, Webhook, WebhookDelivery
from casehub.services import events as event_service
from casehub.services import webhooks as webhook_service
from casehub.webhooks import secrets
from tests.helpers import referral_body, share_body, subject_body

CANARY = "Zqxcanary"


@pytest.fixture
def btp(factory):
    return factory.partner("btp", kind="police")


@pytest.fixture
def notts(factory):
    return factory.partner("notts-cs", kind="local_authority")


@pytest.fixture
def charity(factory):
    return factory.partner("tcs", kind="charity")


def subscribe(client, partner, events=("referral.shared",), url="http://127.0.0.1:9/hooks"):
    response = client.post(
        "/v1/webhooks", json={"url": url, "events": list(events)}, headers=partner.headers()
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def feed(client, partner, **params):
    response = client.get("/v1/events", query_string=params, headers=partner.headers())
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def raise_referral(client, partner, **overrides):
    response = client.post(
        "/v1/referrals", json=referral_body(**overrides), headers=partner.headers()
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json(), response.headers["ETag"]


def share(client, lead, referral_id, agency, **overrides):
    response = client.post(
        f"/v1/referrals/{referral_id}/shares",
        json=share_body(agency, **overrides),
        headers=lead.headers(),
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


# -- subscriptions --------------------------------------------------------------------------
def test_a_subscription_shows_its_secret_once_and_stores_none(client, db_session, btp):
    created = subscribe(client, btp, events=["referral.shared", "note.added", "note.added"])
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"))) <= 64
    assert created["events"] == ["referral.shared", "note.added"]
    assert created["status"] == "active"

    listed = client.get("/v1/webhooks", headers=btp.headers()).get_json()["items"]
    assert [w["id"] for w in listed] == [created["id"]]
    assert "secret" not in listed[0]
    one = client.get(f"/v1/webhooks/{created['id']}", headers=btp.headers()).get_json()
    assert "secret" not in one and one["url"] == "http://127.0.0.1:9/hooks"

    row = db_session.get(Webhook, uuid.UUID(created["id"]))
    stored = json.dumps({c.name: str(getattr(row, c.key)) for c in Webhook.__table__.columns})
    raw = secret.removeprefix("whsec_")
    assert raw not in stored and secret not in stored


def test_an_idempotent_replay_does_not_show_the_secret_again(client, btp):
    headers = {**btp.headers(), "Idempotency-Key": "hook-1"}
    body = {"url": "http://127.0.0.1:9/hooks", "events": ["referral.shared"]}
    first = client.post("/v1/webhooks", json=body, headers=headers)
    again = client.post("/v1/webhooks", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.get_json()["secret"].startswith("whsec_")
    assert again.get_json()["secret"] is None
    assert again.get_json()["id"] == first.get_json()["id"]


def test_another_agencys_subscription_is_404_and_the_attempt_audited(
    client, db_session, btp, notts
):
    created = subscribe(client, btp)
    for method, path in (
        ("GET", f"/v1/webhooks/{created['id']}"),
        ("DELETE", f"/v1/webhooks/{created['id']}"),
        ("POST", f"/v1/webhooks/{created['id']}/rotate-secret"),
        ("GET", f"/v1/webhooks/{created['id']}/deliveries"),
    ):
        response = client.open(path, method=method, headers=notts.headers())
        assert response.status_code == 404, (method, path)
        assert response.get_json()["detail"] == "No such webhook."
    denied = db_session.execute(
        select(func.count()).where(
            AuditEvent.actor_agency == "notts-cs",
            AuditEvent.outcome == "denied",
            AuditEvent.resource_id == created["id"],
        )
    ).scalar_one()
    assert denied == 4
    assert client.get("/v1/webhooks", headers=notts.headers()).get_json()["items"] == []


def test_deleting_stops_deliveries_and_answers_404_after(client, db_session, btp, notts):
    created = subscribe(client, notts)
    referral, _ = raise_referral(client, btp)
    share(client, btp, referral["id"], "notts-cs")
    hook_id = uuid.UUID(created["id"])
    pending = select(func.count()).where(
        WebhookDelivery.webhook_id == hook_id, WebhookDelivery.status == "pending"
    )
    assert db_session.execute(pending).scalar_one() == 1
    assert (
        client.delete(f"/v1/webhooks/{created['id']}", headers=notts.headers()).status_code == 204
    )
    assert db_session.execute(pending).scalar_one() == 0
    assert client.get(f"/v1/webhooks/{created['id']}", headers=notts.headers()).status_code == 404
    assert client.get("/v1/webhooks", headers=notts.headers()).get_json()["items"] == []
    # The feed still has the event.
    assert [e["type"] for e in feed(client, notts)["items"]] == ["referral.shared"]


def test_rotation_signs_with_both_secrets_for_24_hours(client, app, db_session, btp):
    created = subscribe(client, btp)
    rotated = client.post(f"/v1/webhooks/{created['id']}/rotate-secret", headers=btp.headers())
    assert rotated.status_code == 200
    body = rotated.get_json()
    assert body["secret"].startswith("whsec_") and body["secret"] != created["secret"]
    expires = datetime.fromisoformat(body["previous_secret_expires_at"])
    assert timedelta(hours=23, minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=24)

    row = db_session.get(Webhook, uuid.UUID(created["id"]))
    key = secrets.load_key(app)
    now = datetime.now(UTC)
    assert webhook_service.signing_secrets(row, key, now) == [body["secret"], created["secret"]]
    later = now + timedelta(hours=24, seconds=1)
    assert webhook_service.signing_secrets(row, key, later) == [body["secret"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "http://127.0.0.1:9/x", "events": ["referral.exploded"]}, "events"),
        ({"url": "http://127.0.0.1:9/x", "events": []}, "events"),
        ({"url": "http://127.0.0.1:9/x"}, "events"),
        ({"events": ["referral.shared"]}, "url"),
        ({"url": "http://127.0.0.1:9/x", "events": ["note.added"], "secret": "mine"}, "secret"),
        ({"url": "x" * 2001, "events": ["note.added"]}, "url"),
    ],
)
def test_a_bad_subscription_is_422_naming_the_field(client, btp, body, field):
    response = client.post("/v1/webhooks", json=body, headers=btp.headers())
    assert response.status_code == 422
    assert field in response.get_json()["errors"]["json"]


RESOLVES = {
    "partner.example.org": ["93.184.216.34"],
    "intranet.example.org": ["10.1.2.3"],
    "metadata.example.org": ["169.254.169.254"],
    "loopback6.example.org": ["::1"],
    "rebind.example.org": ["93.184.216.34", "127.0.0.1"],
}


@pytest.fixture
def production_targets(app, monkeypatch):
    """Registration as a production deployment checks it: https only, public addresses only,
    with names resolved by a fake DNS."""
    monkeypatch.setitem(app.config, "WEBHOOKS_ALLOW_PRIVATE", False)
    monkeypatch.setitem(
        app.extensions, "casehub.webhook_resolver", lambda host, port: RESOLVES[host]
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://partner.example.org/hooks",  # not https
        "file:///etc/passwd",
        "ftp://partner.example.org/hooks",
        "gopher://partner.example.org/",
        "https://10.0.0.7/hooks",
        "https://172.16.0.1/hooks",
        "https://192.168.1.10/hooks",
        "https://127.0.0.1/hooks",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/hooks",
        "https://[::ffff:127.0.0.1]/hooks",
        "https://[::ffff:10.0.0.7]/hooks",
        "https://[fe80::1]/hooks",
        "https://[fd00::1]/hooks",
        "https://224.0.0.1/hooks",
        "https://2130706433/hooks",  # 127.0.0.1 spelt as a number
        "https://intranet.example.org/hooks",
        "https://metadata.example.org/hooks",
        "https://loopback6.example.org/hooks",
        "https://rebind.example.org/hooks",  # one private answer among public ones
        "https://user:pw@partner.example.org/hooks",
    ],
)
def test_unsafe_targets_are_refused_at_registration(client, btp, production_targets, url):
    response = client.post(
        "/v1/webhooks", json={"url": url, "events": ["referral.shared"]}, headers=btp.headers()
    )
    assert response.status_code == 422, url
    assert list(response.get_json()["errors"]["json"]) == ["url"]


def test_a_public_https_target_is_accepted(client, btp, production_targets):
    created = subscribe(client, btp, url="https://partner.example.org/casehub/hooks")
    assert created["url"] == "https://partner.example.org/casehub/hooks"


# -- events ---------------------------------------------------------------------------------
def test_each_agency_hears_what_it_can_see_except_its_own_actions(client, btp, notts, charity):
    referral, etag = raise_referral(client, btp)
    rid = referral["id"]
    nothing = feed(client, btp)  # raising it told no one: only BTP sees it
    assert nothing == {"items": [], "next_cursor": None, "poll_cursor": None}

    to_notts = share(client, btp, rid, "notts-cs", access="contribute")
    to_charity = share(
        client,
        btp,
        rid,
        "tcs",
        lawful_basis={"article_6": "legitimate_interests", "condition": None, "gateway": None},
    )
    changed = client.patch(
        f"/v1/referrals/{rid}",
        json={"risk_level": "high"},
        headers={**btp.headers(), "If-Match": etag},
    )
    assert changed.status_code == 200
    etag = changed.headers["ETag"]
    moved = client.post(
        f"/v1/referrals/{rid}/transitions",
        json={"to": "acknowledged"},
        headers={**btp.headers(), "If-Match": etag},
    )
    etag = moved.headers["ETag"]
    client.post(
        f"/v1/referrals/{rid}/notes",
        json={"body": "Agency only", "visibility": "agency"},
        headers=notts.headers(),
    )
    note = client.post(
        f"/v1/referrals/{rid}/notes",
        json={"body": "Seen at Victoria", "visibility": "shared"},
        headers=notts.headers(),
    ).get_json()
    for _ in range(2):  # acknowledging again tells nobody again
        client.post(
            f"/v1/referrals/{rid}/shares/{to_notts['id']}/acknowledge", headers=notts.headers()
        )
    client.post(
        f"/v1/referrals/{rid}/shares/{to_charity['id']}/revoke",
        json={"reason": "Support ended"},
        headers=btp.headers(),
    )

    def heard(partner):
        return [(e["type"], e["data"]) for e in feed(client, partner)["items"]]

    assert heard(notts) == [
        ("referral.shared", {"referral_id": rid, "share_id": to_notts["id"], "agency": "btp"}),
        ("referral.updated", {"referral_id": rid, "agency": "btp"}),
        ("referral.status_changed", {"referral_id": rid, "agency": "btp"}),
    ]
    assert heard(charity) == [
        ("referral.shared", {"referral_id": rid, "share_id": to_charity["id"], "agency": "btp"}),
        ("referral.updated", {"referral_id": rid, "agency": "btp"}),
        ("referral.status_changed", {"referral_id": rid, "agency": "btp"}),
        ("note.added", {"referral_id": rid, "note_id": note["id"], "agency": "notts-cs"}),
        ("share.revoked", {"referral_id": rid, "share_id": to_charity["id"], "agency": "btp"}),
    ]
    assert heard(btp) == [
        ("note.added", {"referral_id": rid, "note_id": note["id"], "agency": "notts-cs"}),
        (
            "share.acknowledged",
            {"referral_id": rid, "share_id": to_notts["id"], "agency": "notts-cs"},
        ),
    ]

    transferred = client.post(
        f"/v1/referrals/{rid}/transfer",
        json={"agency": "notts-cs", "reason": "s47", "lawful_basis": {"article_6": "public_task"}},
        headers={**btp.headers(), "If-Match": etag},
    )
    assert transferred.status_code == 200
    assert heard(notts)[-1] == ("referral.transferred", {"referral_id": rid, "agency": "btp"})
    # The charity's share was revoked: it hears nothing more.
    assert heard(charity)[-1][0] == "share.revoked"


def test_no_personal_field_of_the_referral_is_in_any_event(client, db_session, btp, notts):
    subject = subject_body(
        given_name=f"{CANARY}given",
        family_name=f"{CANARY}family",
        aliases=[f"{CANARY}alias"],
        address={"line": f"1 {CANARY} Road", "town": f"{CANARY}town", "postcode": "NG1 1AA"},
    )
    referral, etag = raise_referral(
        client,
        btp,
        subject=subject,
        summary=f"{CANARY} summary",
        narrative=f"{CANARY} narrative",
        location={"description": f"{CANARY} platform 4", "postcode": "NG2 3AA"},
        immediate_action=f"{CANARY} 999 called",
        risk_level="immediate",
    )
    rid = referral["id"]
    share(client, btp, rid, "notts-cs", access="contribute", necessity=f"{CANARY} necessity")
    client.patch(
        f"/v1/referrals/{rid}",
        json={"narrative": f"{CANARY} more"},
        headers={**btp.headers(), "If-Match": etag},
    )
    client.post(
        f"/v1/referrals/{rid}/notes",
        json={"body": f"{CANARY} note", "visibility": "shared"},
        headers=notts.headers(),
    )
    rows = db_session.execute(select(Event.type, Event.data)).all()
    assert {t for t, _ in rows} >= {"referral.shared", "referral.updated", "note.added"}
    assert CANARY.lower() not in json.dumps([list(r) for r in rows]).lower()
    for _, data in rows:
        assert set(data) <= {"referral_id", "share_id", "note_id", "agency"}
    served = json.dumps([feed(client, notts), feed(client, btp)])
    assert CANARY.lower() not in served.lower()


def test_deliveries_are_queued_only_for_subscribed_types(client, db_session, btp, notts):
    shared_only = subscribe(client, notts, events=["referral.shared"])
    updates_only = subscribe(client, notts, events=["referral.updated"])
    subscribe(client, btp, events=["referral.shared", "referral.updated"])  # the actor's own
    referral, _ = raise_referral(client, btp)
    share(client, btp, referral["id"], "notts-cs")
    queued = db_session.execute(
        select(WebhookDelivery.webhook_id, Event.type, Event.agency_code).join(
            Event, Event.pos == WebhookDelivery.event_pos
        )
    ).all()
    assert [(str(h), t, a) for h, t, a in queued] == [
        (shared_only["id"], "referral.shared", "notts-cs")
    ]
    assert updates_only["id"] not in {str(h) for h, _, _ in queued}


def test_the_feed_pages_in_order_and_continues_from_its_last_cursor(client, btp, notts):
    referral, etag = raise_referral(client, btp)
    rid = referral["id"]
    share(client, btp, rid, "notts-cs")
    for risk in ("medium", "high", "low"):
        response = client.patch(
            f"/v1/referrals/{rid}",
            json={"risk_level": risk},
            headers={**btp.headers(), "If-Match": etag},
        )
        etag = response.headers["ETag"]
    everything = feed(client, notts)["items"]
    assert [e["type"] for e in everything] == ["referral.shared"] + ["referral.updated"] * 3

    seen, cursor = [], None
    while True:  # the walk any list takes: until next_cursor is null
        page = feed(client, notts, limit=1, **({"cursor": cursor} if cursor else {}))
        seen += page["items"]
        assert page["poll_cursor"] is not None
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert seen == everything
    poll = page["poll_cursor"]
    assert feed(client, notts, cursor=poll) == {
        "items": [],
        "next_cursor": None,
        "poll_cursor": poll,
    }
    cursor = poll

    client.post(
        f"/v1/referrals/{rid}/transitions",
        json={"to": "acknowledged"},
        headers={**btp.headers(), "If-Match": etag},
    )
    newer = feed(client, notts, cursor=cursor)["items"]
    assert [e["type"] for e in newer] == ["referral.status_changed"]

    only = feed(client, notts, type="referral.shared")["items"]
    assert [e["id"] for e in only] == [everything[0]["id"]]
    both = feed(client, notts, type=["referral.shared", "referral.status_changed"])["items"]
    assert [e["type"] for e in both] == ["referral.shared", "referral.status_changed"]
    occurred = datetime.fromisoformat(everything[0]["occurred_at"])
    assert occurred.tzinfo is not None


def test_the_feed_refuses_unknown_types_and_bad_cursors(client, notts):
    response = client.get("/v1/events?type=referral.exploded", headers=notts.headers())
    assert response.status_code == 422
    response = client.get("/v1/events?cursor=not-a-cursor", headers=notts.headers())
    assert response.status_code == 422


def test_the_feed_needs_referrals_read_or_webhooks_manage(client, factory):
    auditor = factory.partner("auditors", "audit:read", kind="other")
    response = client.get("/v1/events", headers=auditor.headers())
    assert response.status_code == 403
    admin = factory.partner("hooks-only", "webhooks:manage", kind="other")
    assert client.get("/v1/events", headers=admin.headers()).status_code == 200


def test_a_change_that_rolls_back_emits_nothing(app, db_session, btp):
    before = db_session.execute(select(func.count()).select_from(Event)).scalar_one()
    nested = db_session.begin_nested()
    event_service.emit(
        db_session,
        type="referral.updated",
        recipients={"notts-cs", "btp"},
        actor=None,
        data={"referral_id": uuid.uuid4()},
        now=datetime.now(UTC),
    )
    assert db_session.execute(select(func.count()).select_from(Event)).scalar_one() == before + 2
    nested.rollback()
    assert db_session.execute(select(func.count()).select_from(Event)).scalar_one() == before
    assert db_session.execute(select(func.count()).select_from(WebhookDelivery)).scalar_one() == 0


def test_a_refused_change_emits_nothing(client, db_session, btp, notts):
    referral, _ = raise_referral(client, btp)
    share(client, btp, referral["id"], "notts-cs")
    before = db_session.execute(select(func.count()).select_from(Event)).scalar_one()
    again = client.post(
        f"/v1/referrals/{referral['id']}/shares",
        json=share_body("notts-cs"),
        headers=btp.headers(),
    )
    assert again.status_code == 409
    stale = client.patch(
        f"/v1/referrals/{referral['id']}",
        json={"risk_level": "high"},
        headers={**btp.headers(), "If-Match": '"stale"'},
    )
    assert stale.status_code == 412
    assert db_session.execute(select(func.count()).select_from(Event)).scalar_one() == before


def test_an_event_that_commits_late_is_not_skipped_by_a_cursor(app, engine, is_postgres):
    """Two writers: the one that started first commits last. A reader polling in between must
    still get both, in one order, without skipping the late one (PostgreSQL orders the feed by
    writing transaction and serves only ended transactions; SQLite serialises writers)."""
    if not is_postgres:
        pytest.skip("SQLite runs one writer at a time")
    from sqlalchemy.orm import Session

    from casehub.auth.actor import Actor
    from casehub.services import agencies

    code = f"late-{uuid.uuid4().hex[:8]}"
    with Session(engine) as setup:
        agencies.add_agency(
            setup, code=code, name="Late", kind="police", area=None, is_platform=False
        )
        setup.commit()
    reader = Actor(agency=code, agency_kind="police", is_platform=False, client_id="reader")

    def read(cursor):
        with Session(engine) as session:
            page = event_service.feed(session, actor=reader, types=[], limit=50, cursor=cursor)
            return [e.data["referral_id"] for e in page.items], page.poll_cursor

    first, second = uuid.uuid4(), uuid.uuid4()
    slow, quick = Session(engine), Session(engine)
    try:
        for session, referral in ((slow, first), (quick, second)):
            event_service.emit(
                session,
                type="referral.updated",
                recipients={code},
                actor=None,
                data={"referral_id": referral},
                now=datetime.now(UTC),
            )
        quick.commit()
        seen, cursor = read(None)
        assert seen == []  # the first writer is still running: nothing after it is served
        slow.commit()
        # Transaction ids are cluster-wide: a writing transaction of another test (another
        # xdist worker's database) may still hold the horizon back for a moment.
        deadline = time.monotonic() + 30
        seen, later = read(cursor)
        while not seen and time.monotonic() < deadline:
            time.sleep(0.2)
            seen, later = read(cursor)
        cursor = later
        assert seen == [str(first), str(second)]
        assert read(cursor) == ([], cursor)
    finally:
        slow.close()
        quick.close()
        with engine.begin() as connection:
            connection.execute(Event.__table__.delete().where(Event.agency_code == code))
            connection.execute(text("DELETE FROM agencies WHERE code = :code"), {"code": code})


def test_metrics_show_the_outbox(client, db_session, factory, btp, notts):
    from casehub.models import WebhookAttemptCount

    factory.agency("platform", "other", platform=True)
    admin = factory.partner("platform", "monitoring:read")
    subscribe(client, notts)
    referral, _ = raise_referral(client, btp)
    share(client, btp, referral["id"], "notts-cs")
    db_session.add(WebhookAttemptCount(outcome="failed", count=3))
    db_session.commit()
    text_ = client.get("/metrics", headers=admin.headers()).get_data(as_text=True)
    lines = dict(
        line.rsplit(" ", 1) for line in text_.splitlines() if line and not line.startswith("#")
    )
    assert float(lines["casehub_webhook_deliveries_pending"]) == 1.0
    assert 0.0 <= float(lines["casehub_webhook_oldest_pending_age_seconds"]) < 60
    assert float(lines['casehub_webhook_attempts_total{outcome="failed"}']) == 3.0
    assert float(lines['casehub_webhook_attempts_total{outcome="delivered"}']) == 0.0
    assert float(lines["casehub_webhooks_disabled"]) == 0.0


def test_a_deactivated_agency_is_sent_nothing(client, db_session, btp, notts):
    from casehub.models import Agency

    subscribe(client, notts, events=["referral.updated"])
    referral, etag = raise_referral(client, btp)
    share(client, btp, referral["id"], "notts-cs")
    db_session.get(Agency, "notts-cs").active = False
    db_session.commit()
    changed = client.patch(
        f"/v1/referrals/{referral['id']}",
        json={"risk_level": "low"},
        headers={**btp.headers(), "If-Match": etag},
    )
    assert changed.status_code == 200
    assert db_session.execute(select(func.count()).select_from(WebhookDelivery)).scalar_one() == 0
