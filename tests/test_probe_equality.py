"""A referral that exists but is invisible to the caller and an id that names nothing are
answered alike: the same status and body, the same audit event, and the same database work
(the timing follows from the work: bench/not_found_timing.py measures it)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event, select

from casehub.models import AuditEvent
from tests.helpers import referral_body, subject_body


@contextmanager
def counted_statements(connection) -> Iterator[list[str]]:
    """The statements run on the test's connection (the app's sessions run on it too); engine
    events would not reach a connection opened before they were listened for."""
    seen: list[str] = []

    def count(conn, cursor, statement, *_):
        seen.append(statement.split(None, 1)[0].upper())

    event.listen(connection, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(connection, "before_cursor_execute", count)


PROBES = [
    ("GET", ""),
    ("GET", "/notes"),
    ("GET", "/shares"),
    ("POST", "/notes"),
    ("PATCH", ""),
]


@pytest.mark.parametrize(("method", "suffix"), PROBES)
def test_an_invisible_referral_and_a_random_id_are_answered_alike(
    client, db_session, engine, factory, method, suffix
):
    btp = factory.partner("btp")
    notts = factory.partner("notts-cs", kind="local_authority")
    hidden = client.post("/v1/referrals", json=referral_body(), headers=btp.headers()).get_json()
    headers = notts.headers(**{"If-Match": '"x"'})
    body = (
        {"body": "Seen at the station again.", "visibility": "shared"}
        if suffix
        else {"summary": "x"}
    )
    answers, work = {}, {}
    for kind, target in (("invisible", hidden["id"]), ("random", str(uuid.uuid4()))):
        with counted_statements(db_session.connection()) as statements:
            response = client.open(
                f"/v1/referrals/{target}{suffix}",
                method=method,
                headers=headers,
                json=body if method != "GET" else None,
            )
        answer = response.get_json()
        answers[kind] = (response.status_code, answer, sorted(response.headers.keys()))
        work[kind] = statements
        (event_,) = db_session.scalars(
            select(AuditEvent).where(
                AuditEvent.actor_agency == "notts-cs",
                AuditEvent.resource_id == target,
            )
        )
        assert (event_.action, event_.outcome, event_.referral_id) == (
            "access.denied",
            "denied",
            uuid.UUID(target),
        )
    assert answers["invisible"][0] == 404
    assert answers["invisible"] == answers["random"]
    assert work["invisible"] == work["random"], work
    assert "SELECT" in work["random"]  # the count saw the request's statements


@pytest.mark.parametrize("method", ["GET", "PATCH"])
def test_an_invisible_subject_and_a_random_id_are_answered_alike(
    client, db_session, engine, factory, method
):
    btp = factory.partner("btp")
    notts = factory.partner("notts-cs", kind="local_authority")
    hidden = client.post("/v1/subjects", json=subject_body(), headers=btp.headers()).get_json()
    headers = notts.headers(**{"If-Match": '"x"'})
    answers, work = {}, {}
    for kind, target in (("invisible", hidden["id"]), ("random", str(uuid.uuid4()))):
        with counted_statements(db_session.connection()) as statements:
            response = client.open(
                f"/v1/subjects/{target}",
                method=method,
                headers=headers,
                json={"given_name": "Sam"} if method == "PATCH" else None,
            )
        answers[kind] = (response.status_code, response.get_json(), sorted(response.headers.keys()))
        work[kind] = statements
        (denied,) = db_session.scalars(
            select(AuditEvent).where(
                AuditEvent.actor_agency == "notts-cs", AuditEvent.resource_id == target
            )
        )
        assert (denied.action, denied.outcome, denied.subject_ids) == (
            "access.denied",
            "denied",
            [],
        )
    assert answers["invisible"][0] == 404
    assert answers["invisible"] == answers["random"]
    assert work["invisible"] == work["random"], work
    assert "SELECT" in work["random"]  # the count saw the request's statements
