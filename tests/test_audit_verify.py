"""Verification reading the chain in several streams at once: every link is checked once both
its ends are seen, whichever stream and order they come in, and a whole chain verified in two
COPY streams finds what one stream finds."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from casehub import audit
from casehub.audit import canonical
from casehub.audit import verify as chain_verify
from casehub.audit.chain import EVENT_COLUMNS, sequence_all
from casehub.audit.checkpoints import Checkpoint, CheckpointKey, sign_head
from casehub.audit.verify import VerifyResult, _Links, verify
from casehub.models.audit import AuditChain, AuditEvent
from tests.test_audit_concurrency import scratch_engine, scratch_url  # noqa: F401


# -- the links, on made-up rows ----------------------------------------------------------------
def made_up_chain(length: int) -> list[tuple[int, bytes, bytes, bytes]]:
    """(seq, prev_hash, stored hash, digest of the record) for a valid chain."""
    rows, prev = [], canonical.GENESIS_HASH
    when = datetime(2025, 1, 1, tzinfo=UTC)
    for seq in range(1, length + 1):
        values = [uuid.UUID(int=seq), when, "btp"] + [None] * (len(canonical.EVENT_FIELDS) - 3)
        digest = canonical.digest(canonical.record(seq, prev, values)).encode()
        rows.append((seq, prev.encode(), digest, digest))
        prev = digest.decode()
    return rows


def check(rows, streams: int, order: str, head: int, signed=None) -> VerifyResult:
    """Feed `rows` to _Links as `streams` contiguous shares, interleaved as `order` says."""
    result = VerifyResult()
    links = _Links(result, 0, canonical.GENESIS_HASH.encode(), dict(signed or {}))
    size = -(-len(rows) // streams)
    shares = [list(rows[i : i + size]) for i in range(0, len(rows), size)]
    rng = random.Random(f"{streams}{order}{len(rows)}")
    if order == "shuffled":
        for share in shares:
            rng.shuffle(share)
    positions = [links.stream() for _ in shares]
    while any(shares):
        live = [i for i, share in enumerate(shares) if share]
        i = live[0] if order == "one after another" else rng.choice(live)
        for _ in range(rng.randint(1, 5)):  # a few rows buffered at a time
            if shares[i]:
                links.check(positions[i], *shares[i].pop(0))
        if not shares[i]:
            links.settle(positions[i])
    links.finish(head)
    return result


ORDERS = ["one after another", "interleaved", "shuffled"]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("streams", [1, 2, 3])
def test_a_whole_chain_holds_however_its_rows_arrive(streams, order):
    rows = made_up_chain(40)
    result = check(rows, streams, order, head=40)
    assert result.ok, result.as_dict()
    assert result.events == 40


def tampered(kind: str, seq: int) -> tuple[list, int]:
    """A chain of 40 with one thing wrong at `seq`, and the first bad seq it must give."""
    rows = made_up_chain(40)
    i = seq - 1
    s, prev, stored, _ = rows[i]
    if kind == "changed event":
        rows[i] = (s, prev, stored, b"f" * 64)
        return rows, seq
    if kind == "rewritten link":  # the row rehashed over a changed prev_hash
        rows[i] = (s, b"e" * 64, b"d" * 64, b"d" * 64)
        return rows, seq
    if kind == "longer link":
        rows[i] = (s, prev + b"0", stored, stored)
        return rows, seq
    if kind == "missing row":
        del rows[i]
        return rows, seq
    raise AssertionError(kind)


KINDS = ["changed event", "rewritten link", "longer link", "missing row"]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("streams", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seq", [1, 13, 14, 20, 21, 40])  # ends of the shares among them
def test_a_break_is_named_by_its_first_seq_however_its_rows_arrive(kind, seq, streams, order):
    rows, first_bad = tampered(kind, seq)
    if kind == "missing row" and seq == 40:
        first_bad = None  # the head itself: the chain is shorter, and says so by its head
    result = check(rows, streams, order, head=39 if first_bad is None else 40)
    assert result.first_bad_seq == first_bad, result.as_dict()
    assert result.ok is (first_bad is None)


@pytest.mark.parametrize("streams", [1, 2])
def test_a_checkpoint_is_checked_against_its_row_in_any_stream(streams):
    rows = made_up_chain(40)
    good = Checkpoint(1, 20, rows[19][2].decode(), datetime.now(UTC), "k", "s")
    wrong = Checkpoint(2, 30, "a" * 64, datetime.now(UTC), "k", "s")
    result = check(rows, streams, "interleaved", head=40, signed={20: [good], 30: [wrong]})
    assert result.first_bad_seq == 30 and "checkpoint 2" in (result.problem or "")
    past = Checkpoint(3, 41, "a" * 64, datetime.now(UTC), "k", "s")
    result = check(rows, streams, "interleaved", head=40, signed={41: [past]})
    assert result.first_bad_seq == 41 and "past the chain's end" in (result.problem or "")


# -- the whole chain in two COPY streams, on a database ----------------------------------------
class Writer:
    agency, client_id, user_id, purpose = "btp", "verify", None, None


def write_chain(engine: Engine, count: int) -> None:
    with Session(engine) as session:
        for i in range(count):
            audit.record(session, Writer(), "referral.read", subject_ids=[uuid.UUID(int=i)])
        audit.write_pending(
            session, audit.RequestInfo("r", "GET", "/v1/x", "192.0.2.1"), status=200
        )
        session.commit()
    sequence_all(engine)


def tamper(engine: Engine, sql: str, **params) -> None:
    """Run `sql` past the append-only triggers (on SQLite, they are dropped for good)."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            triggers = connection.execute(
                text(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' "
                    "AND (name LIKE '%_no_update' OR name LIKE '%_no_delete')"
                )
            ).scalars()
            for name in list(triggers):
                connection.execute(text(f'DROP TRIGGER "{name}"'))
        connection.execute(text(sql), params)


def relink(engine: Engine, seq: int, prev_hash: str) -> None:
    """Point seq at another prev_hash and rehash it over that, as a forger would: its hash
    holds, only the link to seq - 1 is wrong."""
    with engine.connect() as connection:
        values = connection.execute(
            select(*EVENT_COLUMNS)
            .join(AuditChain, AuditChain.event_pos == AuditEvent.pos)
            .where(AuditChain.seq == seq)
        ).one()
    forged = canonical.digest(canonical.record(seq, prev_hash, list(values)))
    sql = "UPDATE audit_chain SET prev_hash = :prev, hash = :hash WHERE seq = :seq"
    tamper(engine, sql, prev=prev_hash, hash=forged, seq=seq)


def first_bad(engine: Engine, streams: int, monkeypatch, key=None) -> tuple[bool, int | None, int]:
    monkeypatch.setattr(chain_verify, "STREAMS", streams)
    result = verify(engine, key=key)
    return result.ok, result.first_bad_seq, result.events


def test_two_streams_verify_a_whole_chain_as_one_does(scratch_engine, monkeypatch):  # noqa: F811
    key = CheckpointKey.generate()
    write_chain(scratch_engine, 140)
    with scratch_engine.begin() as connection:
        sign_head(connection, key)  # a checkpoint at seq 140, amid the rows
    write_chain(scratch_engine, 160)
    with scratch_engine.begin() as connection:
        sign_head(connection, key)  # and one at the head
    assert first_bad(scratch_engine, 2, monkeypatch, key) == (True, None, 300)
    with scratch_engine.connect() as connection:
        pos = dict(connection.execute(select(AuditChain.seq, AuditChain.event_pos)).all())
        hashes = dict(connection.execute(select(AuditChain.seq, AuditChain.hash)).all())
    # Things wrong on either side of the middle of the events, and at the middle itself; each
    # found by two streams as by one.
    tamper(scratch_engine, "UPDATE audit_events SET action = 'x' WHERE pos = :pos", pos=pos[220])
    assert first_bad(scratch_engine, 2, monkeypatch, key)[:2] == (False, 220)
    assert first_bad(scratch_engine, 1, monkeypatch, key)[:2] == (False, 220)
    tamper(scratch_engine, "UPDATE audit_chain SET prev_hash = :h WHERE seq = 151", h="0" * 64)
    assert first_bad(scratch_engine, 2, monkeypatch, key)[:2] == (False, 151)
    assert first_bad(scratch_engine, 1, monkeypatch, key)[:2] == (False, 151)
    tamper(scratch_engine, "DELETE FROM audit_event_subjects WHERE seq = 150")
    tamper(scratch_engine, "DELETE FROM audit_chain WHERE seq = 150")
    assert first_bad(scratch_engine, 2, monkeypatch, key)[:2] == (False, 150)
    assert first_bad(scratch_engine, 1, monkeypatch, key)[:2] == (False, 150)
    tamper(scratch_engine, "UPDATE audit_chain SET hash = :h WHERE seq = 140", h="1" * 64)
    assert first_bad(scratch_engine, 2, monkeypatch, key)[:2] == (False, 140)
    relink(scratch_engine, 100, hashes[98])  # a forged link, amid a stream
    assert first_bad(scratch_engine, 2, monkeypatch, key)[:2] == (False, 100)
    assert first_bad(scratch_engine, 1, monkeypatch, key)[:2] == (False, 100)
    # The right hash and then some (PostgreSQL's varchar(64) refuses it: then one short).
    near = hashes[59] + "0" if scratch_engine.dialect.name == "sqlite" else hashes[59][:-1]
    relink(scratch_engine, 60, near)
    assert first_bad(scratch_engine, 2, monkeypatch, key)[:2] == (False, 60)
    assert first_bad(scratch_engine, 1, monkeypatch, key)[:2] == (False, 60)
    awkward = "UPDATE audit_events SET basis = :basis WHERE pos = :pos"
    tamper(scratch_engine, awkward, basis="tab\tand\\backslash", pos=pos[3])
    assert first_bad(scratch_engine, 2, monkeypatch, key)[:2] == (False, 3)
    assert first_bad(scratch_engine, 1, monkeypatch, key)[:2] == (False, 3)
