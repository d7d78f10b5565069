"""Two `casehub retention run` processes at once on one PostgreSQL database: every referral due
is erased once, audited once and notified once to each agency it was shared with, and
`casehub audit verify` passes afterwards."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select, update

from casehub import audit, create_app, migrate
from casehub.auth.actor import Actor
from casehub.db import get_db, session_scope, utcnow
from casehub.errors import Gone
from casehub.models import AuditEvent, Event, Note, Referral, Subject
from casehub.services import agencies as agency_service
from casehub.services import referrals, retention, shares
from tests.live_server import casehub, fresh_database, server_environment

pytestmark = pytest.mark.postgres_only

DUE = 400  # referrals closed long ago, each shared with two agencies
KEPT = 20  # closed recently: not due
RECIPIENTS = ("notts-cs", "tcs")
ERASED_LINE = re.compile(r"^erased (CH-\d{4}-\d+) ([0-9a-f-]{36})", re.MULTILINE)


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    if not os.environ.get("CASEHUB_TEST_DATABASE_URL", "").startswith("postgresql"):
        pytest.skip("needs PostgreSQL: set CASEHUB_TEST_DATABASE_URL")
    with fresh_database(tmp_path, "retention") as url:
        yield url


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[Flask]:
    application = create_app(
        {
            "DATABASE_URL": database_url,
            "SIGNING_KEYS_FILE": str(tmp_path / "signing-keys.json"),
            "AUDIT_SEQUENCER": False,
            "SERVING": False,
        }
    )
    engine = get_db(application).engine
    assert engine is not None
    migrate.upgrade(engine)
    yield application
    engine.dispose()


def _actor(agency: str, kind: str) -> Actor:
    return Actor(agency=agency, agency_kind=kind, is_platform=False, client_id=f"{agency}-seed")


def _seed(app: Flask, due: int = DUE, kept: int = KEPT) -> list[uuid.UUID]:
    """`due` + `kept` referrals by btp, each about its own child and shared with both
    recipients; the first `due` closed six years and a day ago. Returns the ids of those due."""
    lead = _actor("btp", "police")
    share = {
        "access": "read",
        "purpose": "safeguard_assess",
        "necessity": "Assess the risk of exploitation.",
        "lawful_basis": {"article_6": "public_task", "gateway": "Children Act 2004 s11"},
        "consent": {"status": "not_sought", "rationale": "Would place the child at risk."},
    }
    ids: list[uuid.UUID] = []
    with session_scope(app) as session:
        for code, kind in (("btp", "police"), ("notts-cs", "local_authority"), ("tcs", "charity")):
            agency_service.add_agency(session, code=code, name=code.title(), kind=kind)
        session.flush()
        now = utcnow()
        for n in range(due + kept):
            referral = referrals.create_referral(
                session,
                actor=lead,
                data={
                    "subject": {
                        "given_name": f"Child{n}",
                        "family_name": "Okafor",
                        "date_of_birth": date(2011, 4, 2),
                    },
                    "categories": ["county_lines"],
                    "indicators": [],
                    "summary": "Seen at the station.",
                    "narrative": "Two phones, school hours.",
                    "observed_at": now - timedelta(days=1),
                    "risk_level": "high",
                },
                now=now,
            )
            for agency in RECIPIENTS:
                shares.create_share(
                    session,
                    actor=lead,
                    referral_id=referral.id,
                    data={**share, "agency": agency},
                    now=now,
                )
            ids.append(referral.id)
        audit.write_pending(session, None, status=201)
        for n, referral_id in enumerate(ids):
            ago = timedelta(days=2191 if n < due else 10)
            session.execute(
                update(Referral)
                .where(Referral.id == referral_id)
                .values(status="closed", closed_at=now - ago)
            )
    return ids[:due]


def test_two_runs_at_once_erase_and_notify_each_referral_once(app, database_url, tmp_path):
    due = _seed(app)
    env = server_environment(tmp_path, database_url, 0)
    env["CASEHUB_AUDIT_SEQUENCER"] = "0"

    dry_started = time.perf_counter()
    (dry,) = casehub(env, ["retention", "run", "--dry-run"])
    dry_seconds = time.perf_counter() - dry_started
    assert f"would erase {DUE} referrals" in dry
    started = time.perf_counter()
    first, second = casehub(
        env,
        ["retention", "run", "--batch-size", "50"],
        ["retention", "run", "--batch-size", "50"],
    )
    seconds = time.perf_counter() - started
    print(f"\nretention of {DUE} referrals: dry run {dry_seconds:.2f}s, two runs {seconds:.2f}s")
    print(first.splitlines()[-2], second.splitlines()[-2], sep="\n")

    by_first = {uuid.UUID(m[1]) for m in ERASED_LINE.findall(first)}
    by_second = {uuid.UUID(m[1]) for m in ERASED_LINE.findall(second)}
    assert not by_first & by_second  # never erased twice
    assert by_first | by_second == set(due)

    engine = get_db(app).engine
    assert engine is not None
    with engine.connect() as connection:
        erased = connection.execute(
            select(func.count()).where(Referral.erased_at.is_not(None))
        ).scalar_one()
        assert erased == DUE
        children = connection.execute(
            select(func.count()).where(Subject.erased_at.is_not(None))
        ).scalar_one()
        assert children == DUE
        audited = Counter(
            connection.execute(
                select(AuditEvent.referral_id).where(AuditEvent.action == "referral.erase")
            ).scalars()
        )
        assert set(audited) == set(due) and set(audited.values()) == {1}
        told = Counter(
            (row.agency_code, row.data["referral_id"])
            for row in connection.execute(
                select(Event.agency_code, Event.data).where(Event.type == "referral.erased")
            )
        )
        assert len(told) == DUE * len(RECIPIENTS) and set(told.values()) == {1}
        assert {agency for agency, _ in told} == set(RECIPIENTS)

    (again,) = casehub(env, ["retention", "run"])
    assert "erased 0 referrals" in again
    sequenced, verified = casehub(env, ["audit", "sequence", "--once"]), None
    assert "chained" in sequenced[0]
    (verified,) = casehub(env, ["audit", "verify"])
    assert verified.startswith("ok:")


def _note(app: Flask, referral_id: uuid.UUID, outcome: list[object], hold: threading.Event) -> None:
    """Add a note as the lead, in a transaction kept open until `hold` is set."""
    try:
        with session_scope(app) as session:
            referrals.add_note(
                session,
                actor=_actor("btp", "police"),
                referral_id=referral_id,
                body="Seen again at the station.",
                visibility="shared",
                now=utcnow(),
            )
            outcome.append("added")
            hold.wait(10)
    except Gone as gone:
        outcome.append(gone)


def test_a_note_racing_an_erasure_never_outlives_it(app):
    """A note whose request reached the referral before an erasure committed: if the erasure
    holds the referral first, the note waits for it and is refused (410); if the note holds
    it first, the run skips the referral, and the next run erases it, note and all."""
    first, second = _seed(app, due=2, kept=0)
    cutoff = utcnow() - timedelta(days=2190)

    outcome: list[object] = []
    with session_scope(app) as erasing:
        assert retention.erase_referral(erasing, referral_id=first, cutoff=cutoff, now=utcnow())
        writer = threading.Thread(target=_note, args=(app, first, outcome, threading.Event()))
        writer.start()
        time.sleep(0.5)
        assert outcome == []  # waiting for the erasure's lock
        audit.write_pending(erasing, None, status=200)
    writer.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], Gone)

    outcome = []
    hold = threading.Event()
    writer = threading.Thread(target=_note, args=(app, second, outcome, hold))
    writer.start()
    for _ in range(100):
        if outcome:
            break
        time.sleep(0.05)
    assert outcome == ["added"]
    with session_scope(app) as erasing:  # the note's transaction holds the referral: skipped
        assert (
            retention.erase_referral(erasing, referral_id=second, cutoff=cutoff, now=utcnow())
            is None
        )
    hold.set()
    writer.join(10)
    with session_scope(app) as erasing:
        assert retention.erase_referral(erasing, referral_id=second, cutoff=cutoff, now=utcnow())
        audit.write_pending(erasing, None, status=200)
    engine = get_db(app).engine
    assert engine is not None
    with engine.connect() as connection:
        notes = connection.execute(select(func.count()).select_from(Note)).scalar_one()
        assert notes == 0
