"""Every route writes exactly the audit events it should: walked from the URL map, so a new
route without an entry here fails. Allowed work, scope refusals and invisible records each."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select, update

from casehub.db import utcnow
from casehub.models import AuditEvent, Referral
from casehub.web import endpoint_policy
from tests.conftest import ALL_SCOPES
from tests.emergency_support import (
    add_match,
    app_session,
    grant_body,
    grant_directly,
    held_referral,
)
from tests.helpers import (
    access_request_body,
    match_for,
    referral_body,
    share_body,
    subject_body,
)
from tests.windows import clear_of_a_window_edge

EVERYTHING = ALL_SCOPES + " audit:read"


@dataclass
class World:
    lead: Any
    other: Any
    platform: Any
    referral: dict[str, Any]
    etag: str
    subject_etag: str
    share_id: str
    user_id: str
    webhook_id: str
    access_request_id: str = ""  # notts-cs asks btp about the referral's child (pending)
    lead_match_id: str = ""  # a match of btp's that listed notts-cs
    duplicate_id: str = ""  # a record of btp's, to merge into the referral's child
    merged_id: str = ""  # a record of btp's merged into the referral's child


@pytest.fixture
def world(client, factory, db_session):
    lead = factory.partner("btp", EVERYTHING, kind="police")
    other = factory.partner("notts-cs", EVERYTHING, kind="local_authority")
    factory.agency("platform", "other", platform=True)
    platform = factory.partner("platform", "admin monitoring:read audit:read:all")
    created = client.post("/v1/referrals", json=referral_body(), headers=lead.headers())
    referral = created.get_json()
    share = client.post(
        f"/v1/referrals/{referral['id']}/shares",
        json=share_body("notts-cs"),
        headers=lead.headers(),
    ).get_json()
    subject = client.get(f"/v1/subjects/{referral['subject_id']}", headers=lead.headers())
    user = client.post(
        "/v1/admin/users",
        json={"email": "pc.khan@btp.example", "name": "PC Khan", "roles": ["caseworker"]},
        headers=lead.headers(),
    ).get_json()
    webhook = client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hooks", "events": ["referral.shared"]},
        headers=lead.headers(),
    ).get_json()
    asked = client.post(
        "/v1/access-requests",
        json=access_request_body(match_for(db_session, "notts-cs", "btp", referral["subject_id"])),
        headers=other.headers(),
    ).get_json()
    duplicate, merged = (
        client.post("/v1/subjects", json=subject_body(), headers=lead.headers()).get_json()["id"]
        for _ in range(2)
    )
    merging = client.post(
        f"/v1/subjects/{referral['subject_id']}/merge",
        json={"duplicate_id": merged, "reason": "The same child"},
        headers=lead.headers(),
    )
    assert merging.status_code == 200, merging.get_json()
    return World(
        lead,
        other,
        platform,
        referral,
        created.headers["ETag"],
        subject.headers["ETag"],
        share["id"],
        user["id"],
        webhook["id"],
        asked["id"],
        match_for(db_session, "btp", "notts-cs", referral["subject_id"]),
        duplicate,
        merged,
    )


# (method, rule) → how to call it as an allowed caller, and the events that call must write.
Call = Callable[[World], tuple[Any, str, dict[str, Any]]]  # partner, path, request kwargs


def _r(w: World) -> str:
    return w.referral["id"]


def _held(w: World) -> str:
    """The world's referral, put under legal hold first (so that it can be released), in the
    database: a request would spend the rate-limit budget the walk measures."""
    with app_session(w.lead.http) as session:
        session.execute(
            update(Referral)
            .where(Referral.id == uuid.UUID(_r(w)))
            .values(legal_hold_reason="Claim", legal_hold_at=utcnow(), legal_hold_by_agency="btp")
        )
        session.commit()
    return _r(w)


def _new_match(w: World) -> str:
    """A match of the lead's finding a child of a referral the other agency leads (§10)."""
    held = held_referral(w.other.http, w.other)
    with app_session(w.other.http) as session:
        return add_match(
            session, agency=w.lead.agency, found={w.other.agency: [held["subject_id"]]}
        )


def _emergency_id(w: World) -> str:
    """An emergency access the lead (police) holds over a referral the other agency leads."""
    return grant_directly(w.lead.http, w.lead, w.other)


ROUTES: dict[tuple[str, str], tuple[Call, list[str]]] = {
    ("GET", "/metrics"): (lambda w: (w.platform, "/metrics", {}), []),
    ("GET", "/v1/agencies"): (lambda w: (w.lead, "/v1/agencies", {}), []),
    ("GET", "/v1/indicators"): (lambda w: (w.lead, "/v1/indicators", {}), []),
    ("POST", "/v1/admin/agencies"): (
        lambda w: (
            w.platform,
            "/v1/admin/agencies",
            {"json": {"code": "derby-cs", "name": "Derby", "kind": "local_authority"}},
        ),
        ["admin.agency.create"],
    ),
    ("PATCH", "/v1/admin/agencies/<string:code>"): (
        lambda w: (w.platform, "/v1/admin/agencies/btp", {"json": {"area": "East Midlands"}}),
        ["admin.agency.update"],
    ),
    ("GET", "/v1/admin/clients"): (
        lambda w: (w.lead, "/v1/admin/clients", {}),
        ["admin.client.list"],
    ),
    ("POST", "/v1/admin/clients"): (
        lambda w: (
            w.lead,
            "/v1/admin/clients",
            {"json": {"name": "New system", "scopes": ["referrals:read"]}},
        ),
        ["admin.client.create"],
    ),
    ("DELETE", "/v1/admin/clients/<string:client_id>"): (
        lambda w: (w.lead, f"/v1/admin/clients/{w.other.client_id}", {}),
        # another agency's client: refused, and the refusal is audited
        ["admin.client.deactivate:denied"],
    ),
    ("POST", "/v1/admin/clients/<string:client_id>/approval"): (
        lambda w: (
            w.lead,
            f"/v1/admin/clients/{w.other.client_id}/approval",
            {"json": {"scopes": ["referrals:read"]}},
        ),
        # another agency's client: refused and audited (test_client_approval has the approvals)
        ["admin.client.approve:denied"],
    ),
    ("GET", "/v1/admin/users"): (lambda w: (w.lead, "/v1/admin/users", {}), ["admin.user.list"]),
    ("POST", "/v1/admin/users"): (
        lambda w: (
            w.lead,
            "/v1/admin/users",
            {"json": {"email": "sgt@btp.example", "name": "Sgt", "roles": ["auditor"]}},
        ),
        ["admin.user.create"],
    ),
    ("PATCH", "/v1/admin/users/<uuid:user_id>"): (
        lambda w: (w.lead, f"/v1/admin/users/{w.user_id}", {"json": {"name": "PC A Khan"}}),
        ["admin.user.update"],
    ),
    ("GET", "/v1/audit/events"): (lambda w: (w.lead, "/v1/audit/events", {}), ["audit.list"]),
    ("GET", "/v1/audit/events/export"): (
        lambda w: (w.lead, "/v1/audit/events/export?format=ndjson", {}),
        ["audit.export"],
    ),
    ("GET", "/v1/audit/subjects/<uuid:subject_id>/accesses"): (
        lambda w: (w.lead, f"/v1/audit/subjects/{w.referral['subject_id']}/accesses", {}),
        ["audit.subject_accesses"],
    ),
    ("GET", "/v1/audit/verify"): (
        lambda w: (w.platform, "/v1/audit/verify", {}),
        ["audit.verify"],
    ),
    ("GET", "/v1/access-requests"): (
        lambda w: (w.lead, "/v1/access-requests?direction=incoming", {}),
        ["access_request.list"],
    ),
    ("POST", "/v1/access-requests"): (
        lambda w: (
            w.lead,
            "/v1/access-requests",
            {"json": access_request_body(w.lead_match_id, "notts-cs")},
        ),
        ["access_request.create"],
    ),
    ("GET", "/v1/access-requests/<uuid:request_id>"): (
        lambda w: (w.lead, f"/v1/access-requests/{w.access_request_id}", {}),
        ["access_request.read"],
    ),
    ("POST", "/v1/access-requests/<uuid:request_id>/withdraw"): (
        lambda w: (w.other, f"/v1/access-requests/{w.access_request_id}/withdraw", {}),
        # The requester's own record and the holder's notice on its referral.
        ["access_request.withdraw", "access_request.withdraw"],
    ),
    ("POST", "/v1/access-requests/<uuid:request_id>/decision"): (
        lambda w: (
            w.lead,
            f"/v1/access-requests/{w.access_request_id}/decision",
            {"json": {"decision": "decline", "reason": "Covert enquiry under way."}},
        ),
        ["access_request.decide", "decision.create"],
    ),
    ("GET", "/v1/referrals"): (lambda w: (w.lead, "/v1/referrals", {}), ["referral.list"]),
    ("POST", "/v1/referrals"): (
        lambda w: (w.lead, "/v1/referrals", {"json": referral_body()}),
        ["referral.create", "subject.create"],
    ),
    ("GET", "/v1/referrals/<uuid:referral_id>"): (
        lambda w: (w.lead, f"/v1/referrals/{_r(w)}", {}),
        ["referral.read"],
    ),
    ("PATCH", "/v1/referrals/<uuid:referral_id>"): (
        lambda w: (
            w.lead,
            f"/v1/referrals/{_r(w)}",
            {"json": {"risk_level": "medium"}, "headers": {"If-Match": w.etag}},
        ),
        ["referral.update"],
    ),
    ("GET", "/v1/referrals/<uuid:referral_id>/accesses"): (
        lambda w: (w.lead, f"/v1/referrals/{_r(w)}/accesses", {}),
        ["referral.accesses"],
    ),
    ("GET", "/v1/referrals/<uuid:referral_id>/decisions"): (
        lambda w: (w.lead, f"/v1/referrals/{_r(w)}/decisions", {}),
        ["decision.list"],
    ),
    ("POST", "/v1/referrals/<uuid:referral_id>/decisions"): (
        lambda w: (
            w.lead,
            f"/v1/referrals/{_r(w)}/decisions",
            {"json": {"agency": "notts-cs", "reason": "Not needed", "purpose": "mash_triage"}},
        ),
        ["decision.create"],
    ),
    ("GET", "/v1/referrals/<uuid:referral_id>/history"): (
        lambda w: (w.lead, f"/v1/referrals/{_r(w)}/history", {}),
        ["referral.history"],
    ),
    ("GET", "/v1/referrals/<uuid:referral_id>/notes"): (
        lambda w: (w.lead, f"/v1/referrals/{_r(w)}/notes", {}),
        ["note.list"],
    ),
    ("POST", "/v1/referrals/<uuid:referral_id>/notes"): (
        lambda w: (
            w.lead,
            f"/v1/referrals/{_r(w)}/notes",
            {"json": {"body": "Seen again", "visibility": "shared"}},
        ),
        ["note.create"],
    ),
    ("GET", "/v1/referrals/<uuid:referral_id>/shares"): (
        lambda w: (w.lead, f"/v1/referrals/{_r(w)}/shares", {}),
        ["share.list"],
    ),
    ("POST", "/v1/referrals/<uuid:referral_id>/shares"): (
        lambda w: (w.lead, f"/v1/referrals/{_r(w)}/shares", {"json": share_body("platform")}),
        ["share.create"],
    ),
    ("POST", "/v1/referrals/<uuid:referral_id>/shares/<uuid:share_id>/acknowledge"): (
        lambda w: (w.other, f"/v1/referrals/{_r(w)}/shares/{w.share_id}/acknowledge", {}),
        ["share.acknowledge"],
    ),
    ("POST", "/v1/referrals/<uuid:referral_id>/shares/<uuid:share_id>/revoke"): (
        lambda w: (
            w.lead,
            f"/v1/referrals/{_r(w)}/shares/{w.share_id}/revoke",
            {"json": {"reason": "Done"}},
        ),
        ["share.revoke"],
    ),
    ("POST", "/v1/referrals/<uuid:referral_id>/transfer"): (
        lambda w: (
            w.lead,
            f"/v1/referrals/{_r(w)}/transfer",
            {
                "json": {
                    "agency": "notts-cs",
                    "reason": "s47",
                    "lawful_basis": {"article_6": "public_task"},
                },
                "headers": {"If-Match": w.etag},
            },
        ),
        ["referral.transfer"],
    ),
    ("PUT", "/v1/referrals/<uuid:referral_id>/legal-hold"): (
        lambda w: (w.lead, f"/v1/referrals/{_r(w)}/legal-hold", {"json": {"reason": "Claim"}}),
        ["referral.legal_hold"],
    ),
    ("DELETE", "/v1/referrals/<uuid:referral_id>/legal-hold"): (
        lambda w: (w.lead, f"/v1/referrals/{_held(w)}/legal-hold", {"json": {"reason": "Over"}}),
        ["referral.legal_hold_release"],
    ),
    ("POST", "/v1/referrals/<uuid:referral_id>/transitions"): (
        lambda w: (
            w.lead,
            f"/v1/referrals/{_r(w)}/transitions",
            {"json": {"to": "acknowledged"}, "headers": {"If-Match": w.etag}},
        ),
        ["referral.transition"],
    ),
    ("GET", "/v1/events"): (lambda w: (w.other, "/v1/events", {}), ["event.list"]),
    ("GET", "/v1/webhooks"): (lambda w: (w.lead, "/v1/webhooks", {}), ["webhook.list"]),
    ("POST", "/v1/webhooks"): (
        lambda w: (
            w.lead,
            "/v1/webhooks",
            {"json": {"url": "http://127.0.0.1:9/more", "events": ["note.added"]}},
        ),
        ["webhook.create"],
    ),
    ("GET", "/v1/webhooks/<uuid:webhook_id>"): (
        lambda w: (w.lead, f"/v1/webhooks/{w.webhook_id}", {}),
        ["webhook.read"],
    ),
    ("DELETE", "/v1/webhooks/<uuid:webhook_id>"): (
        lambda w: (w.lead, f"/v1/webhooks/{w.webhook_id}", {}),
        ["webhook.delete"],
    ),
    ("POST", "/v1/webhooks/<uuid:webhook_id>/rotate-secret"): (
        lambda w: (w.lead, f"/v1/webhooks/{w.webhook_id}/rotate-secret", {}),
        ["webhook.rotate_secret"],
    ),
    ("GET", "/v1/webhooks/<uuid:webhook_id>/deliveries"): (
        lambda w: (w.lead, f"/v1/webhooks/{w.webhook_id}/deliveries", {}),
        ["webhook.deliveries"],
    ),
    ("POST", "/v1/emergency-access"): (
        lambda w: (
            w.lead,
            "/v1/emergency-access",
            {"json": grant_body(_new_match(w), w.other.agency)},
        ),
        ["emergency_access.grant"],
    ),
    ("GET", "/v1/emergency-access/<uuid:emergency_access_id>"): (
        lambda w: (w.lead, f"/v1/emergency-access/{_emergency_id(w)}", {}),
        ["emergency_access.read"],
    ),
    ("POST", "/v1/emergency-access/<uuid:emergency_access_id>/end"): (
        lambda w: (w.lead, f"/v1/emergency-access/{_emergency_id(w)}/end", {}),
        ["emergency_access.end"],
    ),
    ("GET", "/v1/audit/reviews"): (
        lambda w: (w.platform, "/v1/audit/reviews?status=pending", {}),
        ["emergency_access.review_list"],
    ),
    ("POST", "/v1/audit/reviews/<uuid:emergency_access_id>"): (
        lambda w: (
            w.platform,
            f"/v1/audit/reviews/{_emergency_id(w)}",
            {"json": {"outcome": "justified", "note": "The child was at immediate risk."}},
        ),
        ["emergency_access.review"],
    ),
    ("GET", "/v1/subjects"): (lambda w: (w.lead, "/v1/subjects?q=okafor", {}), ["subject.search"]),
    ("POST", "/v1/subjects"): (
        lambda w: (w.lead, "/v1/subjects", {"json": subject_body()}),
        ["subject.create"],
    ),
    ("GET", "/v1/subjects/<uuid:subject_id>"): (
        lambda w: (w.lead, f"/v1/subjects/{w.referral['subject_id']}", {}),
        ["subject.read"],
    ),
    ("PATCH", "/v1/subjects/<uuid:subject_id>"): (
        lambda w: (
            w.lead,
            f"/v1/subjects/{w.referral['subject_id']}",
            {"json": {"aliases": ["JJ"]}, "headers": {"If-Match": w.subject_etag}},
        ),
        ["subject.update"],
    ),
    ("POST", "/v1/subjects/<uuid:subject_id>/merge"): (
        lambda w: (
            w.lead,
            f"/v1/subjects/{w.referral['subject_id']}/merge",
            {"json": {"duplicate_id": w.duplicate_id, "reason": "The same child"}},
        ),
        ["subject.merge"],
    ),
    ("POST", "/v1/subjects/<uuid:subject_id>/unmerge"): (
        lambda w: (
            w.lead,
            f"/v1/subjects/{w.referral['subject_id']}/unmerge",
            {"json": {"duplicate_id": w.merged_id, "reason": "Two children after all"}},
        ),
        ["subject.unmerge"],
    ),
    ("GET", "/v1/subjects/<uuid:subject_id>/merges"): (
        lambda w: (w.lead, f"/v1/subjects/{w.referral['subject_id']}/merges", {}),
        ["subject.merge_history"],
    ),
    ("GET", "/v1/subjects/<uuid:subject_id>/sar"): (
        lambda w: (w.lead, f"/v1/subjects/{w.referral['subject_id']}/sar", {}),
        ["subject.sar"],
    ),
    ("POST", "/v1/matches"): (
        lambda w: (
            w.lead,
            "/v1/matches",
            {"json": {"identifiers": [{"system": "upn", "value": "A1"}]}},
        ),
        ["subject.match"],
    ),
    ("GET", "/v1/statistics/referrals"): (
        lambda w: (w.lead, "/v1/statistics/referrals", {"query_string": {"group_by": "month"}}),
        ["statistics.read"],
    ),
}


def _scoped_routes(app) -> list[tuple[str, str]]:
    found = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if endpoint_policy(app, rule.endpoint, method)[0] != "public":
                found.append((method, rule.rule))
    return sorted(found)


def test_every_scoped_route_has_an_audit_expectation(app):
    assert sorted(ROUTES) == _scoped_routes(app)


def _events_during(db_session, call: Callable[[], Any]) -> tuple[Any, list[str]]:
    before = db_session.execute(select(func.coalesce(func.max(AuditEvent.pos), 0))).scalar_one()
    response = call()
    rows = db_session.execute(
        select(AuditEvent.action, AuditEvent.outcome, AuditEvent.request_status)
        .where(AuditEvent.pos > before)
        .order_by(AuditEvent.action)
    ).all()
    for _, _, status in rows:
        assert status == response.status_code
    return response, sorted(a if o == "allowed" else f"{a}:{o}" for a, o, _ in rows)


def _open(client, partner, path, kwargs, scope=None):
    method_kwargs = dict(kwargs)
    headers = {**partner.headers(scope), **method_kwargs.pop("headers", {})}
    return lambda method: client.open(path, method=method, headers=headers, **method_kwargs)


@pytest.mark.parametrize(("method", "rule"), sorted(ROUTES))
def test_allowed_work_writes_exactly_its_events(
    client, db_session, world, method, rule, record_property
):
    call, expected = ROUTES[(method, rule)]
    partner, path, kwargs = call(world)
    opener = _open(client, partner, path, kwargs)
    response, events = _events_during(db_session, lambda: opener(method))
    refused = [e for e in expected if e.endswith(":denied")]
    _count(
        record_property,
        requests=1,
        refusals=int(bool(refused)),
        missing=int(bool(expected) and not events),
    )
    if refused:
        assert response.status_code in (403, 404)
    else:
        assert response.status_code < 400, response.get_data(as_text=True)[:300]
    assert events == sorted(expected)


@pytest.mark.parametrize(("method", "rule"), sorted(ROUTES))
def test_a_scope_refusal_writes_one_denied_event(
    client, app, db_session, world, method, rule, record_property
):
    needed = _needed_scopes(app, method, rule)
    if not needed:
        pytest.skip("any valid token may call this route")
    call, _ = ROUTES[(method, rule)]
    _, path, kwargs = call(world)
    # The scope is checked before anything else, so the lead's own system will do.
    without = " ".join(s for s in EVERYTHING.split() if s not in needed)
    opener = _open(client, world.lead, path, kwargs, scope=without)
    response, events = _events_during(db_session, lambda: opener(method))
    assert response.status_code == 403
    _expect_one_refusal(record_property, events, "access.denied:denied")


def _needed_scopes(app, method: str, rule: str) -> tuple[str, ...]:
    for candidate in app.url_map.iter_rules():
        if candidate.rule == rule and method in (candidate.methods or ()):
            return endpoint_policy(app, candidate.endpoint, method)[1] or ()
    raise AssertionError(rule)


CASE_ROUTES = [
    (m, r) for (m, r) in sorted(ROUTES) if "<uuid:referral_id>" in r or "<uuid:subject_id>" in r
]


@pytest.mark.parametrize(("method", "rule"), CASE_ROUTES)
def test_an_invisible_record_is_404_and_audited_as_denied(
    client, db_session, factory, world, method, rule, record_property
):
    stranger = factory.partner("leics-police", EVERYTHING, kind="police")
    call, _ = ROUTES[(method, rule)]
    _, path, kwargs = call(world)
    if rule.startswith("/v1/audit/"):
        pytest.skip("audit feeds are filtered by the auditor's reach, not refused")
    opener = _open(client, stranger, path, kwargs)
    response, events = _events_during(db_session, lambda: opener(method))
    assert response.status_code == 404
    assert events == ["access.denied:denied"]
    missing = _open(
        client,
        stranger,
        path.replace(world.referral["id"], str(uuid.uuid4())).replace(
            world.referral["subject_id"], str(uuid.uuid4())
        ),
        kwargs,
    )
    response, events = _events_during(db_session, lambda: missing(method))
    assert response.status_code == 404
    # An id that names nothing is refused alike: telling the two apart would take a query
    # whose time a prober could measure (tests/test_probe_equality.py).
    assert events == ["access.denied:denied"]
    _count(record_property, requests=2, refusals=2)


def _count(record_property, *, requests: int, refusals: int, missing: int = 0) -> None:
    """The walk's figures: requests made, refusals among them, requests without their event."""
    record_property(
        "figures",
        ("audit walk", {"requests": requests, "refusals": refusals, "missing events": missing}),
    )


def _expect_one_refusal(record_property, events: list[str], expected: str) -> None:
    _count(record_property, requests=1, refusals=1, missing=0 if events else 1)
    assert events == [expected]


@pytest.mark.parametrize(("method", "rule"), sorted(ROUTES))
def test_every_route_audits_a_request_without_a_valid_token(
    client, db_session, world, method, rule, record_property
):
    call, _ = ROUTES[(method, rule)]
    _, path, kwargs = call(world)
    kwargs = {k: v for k, v in kwargs.items() if k != "headers"}
    response, events = _events_during(
        db_session,
        lambda: client.open(
            path, method=method, headers={"Authorization": "Bearer forged"}, **kwargs
        ),
    )
    assert response.status_code == 401
    _expect_one_refusal(record_property, events, "auth.failure:denied")


@pytest.mark.parametrize(("method", "rule"), sorted(ROUTES))
def test_every_route_audits_an_unknown_purpose_of_use(
    client, db_session, world, method, rule, record_property
):
    call, _ = ROUTES[(method, rule)]
    partner, path, kwargs = call(world)
    opener = _open(
        client,
        partner,
        path,
        {**kwargs, "headers": {**kwargs.get("headers", {}), "Purpose-Of-Use": "curiosity"}},
    )
    response, events = _events_during(db_session, lambda: opener(method))
    assert response.status_code == 422
    _expect_one_refusal(record_property, events, "access.denied:denied")


@pytest.fixture
def tight_limits(app):
    """Every route class allows one request a minute, for this test only, on an empty store."""
    limiter = app.extensions["casehub.limiter"]
    saved = dict(app.config)
    limiter.reset()
    for setting in ("READ", "WRITE", "SEARCH", "MATCH", "AUDIT"):
        app.config[f"RATE_LIMIT_{setting}"] = "1/minute"
    clear_of_a_window_edge()
    yield
    limiter.reset()
    app.config.update(saved)


@pytest.mark.parametrize(("method", "rule"), sorted(ROUTES))
def test_every_route_audits_a_rate_limited_request(
    client, db_session, world, tight_limits, method, rule, record_property
):
    call, _ = ROUTES[(method, rule)]
    partner, path, kwargs = call(world)
    opener = _open(client, partner, path, kwargs)
    assert opener(method).status_code != 429  # the minute's one request
    response, events = _events_during(db_session, lambda: opener(method))
    assert response.status_code == 429
    _expect_one_refusal(record_property, events, "rate.limited:denied")


@pytest.mark.parametrize(("method", "rule"), CASE_ROUTES)
def test_a_share_recipient_is_audited_whatever_it_may_or_may_not_do(
    client, db_session, world, method, rule, record_property
):
    """The other agency holds a `view` share of the referral: each case route either serves it
    (and audits what it saw or did) or refuses it (and audits one denied event)."""
    call, _ = ROUTES[(method, rule)]
    _, path, kwargs = call(world)
    opener = _open(client, world.other, path, kwargs)
    response, events = _events_during(db_session, lambda: opener(method))
    if response.status_code < 400:
        _count(record_property, requests=1, refusals=0, missing=0 if events else 1)
        assert events, f"{method} {rule} served a share recipient without an audit event"
        assert all(not e.endswith(":denied") for e in events)
    elif response.status_code in (403, 404):
        _count(record_property, requests=1, refusals=1, missing=0 if events else 1)
        assert len(events) == 1 and events[0].endswith(":denied"), events
    else:
        # Precondition and form answers (409, 412, 422) before any record was touched.
        assert response.status_code in (409, 412, 422), response.get_data(as_text=True)[:300]


def test_a_request_without_a_valid_token_is_audited_as_an_auth_failure(client, db_session, world):
    path = f"/v1/referrals/{world.referral['id']}"
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        response, events = _events_during(db_session, lambda h=headers: client.get(path, headers=h))
        assert response.status_code == 401
        assert events == ["auth.failure:denied"]
    row = (
        db_session.execute(
            select(AuditEvent)
            .where(AuditEvent.action == "auth.failure")
            .order_by(AuditEvent.pos.desc())
        )
        .scalars()
        .first()
    )
    assert (row.actor_agency, row.actor_client_id, row.resource_type, str(row.referral_id)) == (
        None,
        None,
        "referral",
        world.referral["id"],
    )
    assert "not-a-token" not in repr(row.__dict__)
