"""The chain itself: append-only tables, sequencing, tamper detection and signed checkpoints."""

from __future__ import annotations

import itertools
import uuid

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from casehub import audit
from casehub.audit import canonical
from casehub.audit.chain import chain_head, sequence_pending, subject_index_ids
from casehub.audit.checkpoints import CheckpointKey, sign_head
from casehub.audit.verify import make_checkpoint, verify
from casehub.models.audit import AuditChain, AuditEvent, AuditEventSubject, AuditPending


class Actor:
    def __init__(self, agency: str = "btp", client_id: str = "chc_test") -> None:
        self.agency = agency
        self.client_id = client_id
        self.user_id = uuid.UUID(int=7)
        self.purpose = None


AWKWARD = 't\tn\nb\\q"r\rv\vf\fbel\x07 é 日本 \U0001f600'  # fits basis (60)


def write(db_session, count: int = 1, **fields) -> None:
    for i in range(count):
        audit.record(
            db_session,
            Actor(),
            fields.get("action", "referral.read"),
            resource_type="referral",
            resource_id=uuid.UUID(int=i),
            referral_id=uuid.UUID(int=i),
            subject_ids=fields.get("subject_ids", [uuid.UUID(int=100 + i)]),
            basis=fields.get("basis", "lead"),
        )
    audit.write_pending(
        db_session,
        audit.RequestInfo("req-1", "GET", fields.get("path", "/v1/referrals"), "192.0.2.1"),
        status=200,
    )


def chain(db_session) -> int:
    return sequence_pending(db_session.connection(), limit=1_000_000)


@pytest.fixture
def key() -> CheckpointKey:
    return CheckpointKey.generate()


def bypass_triggers(db_session, is_postgres: bool, sql: str, **params) -> None:
    """Run `sql` as a superuser who switched the append-only triggers off."""
    connection = db_session.connection()
    if is_postgres:
        connection.execute(text("SET LOCAL session_replication_role = replica"))
        connection.execute(text(sql), params)
        connection.execute(text("SET LOCAL session_replication_role = origin"))
        return
    triggers = connection.execute(
        text(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
            "AND (name LIKE '%_no_update' OR name LIKE '%_no_delete')"
        )
    ).all()
    for name, _ in triggers:
        connection.execute(text(f'DROP TRIGGER "{name}"'))
    connection.execute(text(sql), params)
    for _, create in triggers:
        connection.execute(text(create))


def event_pos_at(db_session, seq: int) -> int:
    return db_session.scalar(select(AuditChain.event_pos).where(AuditChain.seq == seq))


# -- sequencing --------------------------------------------------------------------------------
def test_events_are_chained_in_insertion_order_with_seq_from_one(db_session, key):
    write(db_session, 5)
    assert db_session.scalar(select(func.count()).select_from(AuditPending)) == 5
    assert chain(db_session) == 5
    rows = db_session.execute(select(AuditChain).order_by(AuditChain.seq)).scalars().all()
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert [r.event_pos for r in rows] == sorted(r.event_pos for r in rows)
    assert rows[0].prev_hash == canonical.GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    assert db_session.scalar(select(func.count()).select_from(AuditPending)) == 0
    assert chain(db_session) == 0
    result = verify(db_session.connection(), key=key)
    assert result.ok and result.events == 5 and result.head_seq == 5 and result.pending == 0


def test_a_batch_limit_leaves_the_rest_queued_for_the_next_pass(db_session):
    write(db_session, 7)
    assert sequence_pending(db_session.connection(), limit=3) == 3
    assert sequence_pending(db_session.connection(), limit=3) == 3
    assert sequence_pending(db_session.connection(), limit=3) == 1
    assert chain_head(db_session.connection())[0] == 7


def test_the_hash_is_sha256_of_the_documented_canonical_record(db_session):
    write(db_session, 1, basis=AWKWARD)
    chain(db_session)
    link = db_session.execute(select(AuditChain)).scalar_one()
    event = db_session.get(AuditEvent, link.event_pos)
    stored_subjects = db_session.scalar(
        select(text("CAST(subject_ids AS TEXT)")).select_from(AuditEvent.__table__)
    )
    values = [getattr(event, name) for name in canonical.EVENT_FIELDS]
    values[canonical.EVENT_FIELDS.index("subject_ids")] = stored_subjects
    record = canonical.record(1, canonical.GENESIS_HASH, values)
    assert b"\\t" in record and b"\\n" in record and b"\\\\" in record
    assert record.count(b"\t") == len(canonical.EVENT_FIELDS) + 1
    assert link.hash == canonical.digest(record)


def test_awkward_text_verifies_on_every_backend(db_session, key):
    """PostgreSQL renders the record itself when verifying: it must agree with Python."""
    write(db_session, 3, basis=AWKWARD, path="/v1/x?q=" + AWKWARD)
    write(db_session, 1, subject_ids=[])
    chain(db_session)
    result = verify(db_session.connection(), key=key)
    assert result.ok, result.as_dict()
    assert result.events == 4


def test_the_subject_index_follows_the_hashed_subject_ids(db_session):
    a, b = uuid.uuid4(), uuid.uuid4()
    write(db_session, 1, subject_ids=[a, b])
    write(db_session, 1, subject_ids=[b])
    write(db_session, 1, subject_ids=[])
    chain(db_session)
    pairs = db_session.execute(
        select(AuditEventSubject.subject_id, AuditEventSubject.seq).order_by(
            AuditEventSubject.seq, AuditEventSubject.subject_id
        )
    ).all()
    assert sorted(pairs) == sorted([(str(a), 1), (str(b), 1), (str(b), 2)])


def test_subject_index_ids_tolerates_odd_stored_values():
    assert subject_index_ids('["a", "a", "b"]') == ["a", "b"]
    assert subject_index_ids("[]") == []
    assert subject_index_ids(None) == []
    assert subject_index_ids("not json") == []
    assert subject_index_ids('["' + "x" * 65 + '"]') == []


# -- append-only -------------------------------------------------------------------------------
STATEMENTS = {
    "audit_events": ("UPDATE audit_events SET action = 'x'", "DELETE FROM audit_events"),
    "audit_chain": ("UPDATE audit_chain SET hash = 'x'", "DELETE FROM audit_chain"),
    "audit_event_subjects": (
        "UPDATE audit_event_subjects SET subject_id = 'x'",
        "DELETE FROM audit_event_subjects",
    ),
    "audit_checkpoints": ("UPDATE audit_checkpoints SET seq = 0", "DELETE FROM audit_checkpoints"),
}


@pytest.mark.parametrize("table", sorted(STATEMENTS))
def test_the_database_refuses_update_and_delete(db_session, key, table, is_postgres):
    write(db_session, 2)
    chain(db_session)
    sign_head(db_session.connection(), key)
    statements = list(STATEMENTS[table])
    if is_postgres:
        statements.append(f"TRUNCATE {table} CASCADE")
    for sql in statements:
        with pytest.raises(DBAPIError, match="append-only"), db_session.begin_nested():
            db_session.execute(text(sql))
    count = db_session.scalar(text(f"SELECT count(*) FROM {table}"))
    assert count >= 1
    assert verify(db_session.connection(), key=key).ok


# -- tampering ---------------------------------------------------------------------------------
def test_a_changed_event_is_named_by_its_seq(db_session, key, is_postgres):
    write(db_session, 6)
    chain(db_session)
    bypass_triggers(
        db_session,
        is_postgres,
        "UPDATE audit_events SET actor_agency = 'someone-else' WHERE pos = :pos",
        pos=event_pos_at(db_session, 4),
    )
    result = verify(db_session.connection(), key=key)
    assert not result.ok
    assert result.first_bad_seq == 4
    assert "does not match its hash" in (result.problem or "")


def test_a_removed_link_is_named_by_its_seq(db_session, key, is_postgres):
    write(db_session, 5)
    chain(db_session)
    bypass_triggers(db_session, is_postgres, "DELETE FROM audit_event_subjects WHERE seq = 3")
    bypass_triggers(db_session, is_postgres, "DELETE FROM audit_chain WHERE seq = 3")
    result = verify(db_session.connection(), key=key)
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "missing" in (result.problem or "")


def test_a_rewritten_link_breaks_the_next_one(db_session, key, is_postgres):
    write(db_session, 5)
    chain(db_session)
    bypass_triggers(
        db_session, is_postgres, "UPDATE audit_chain SET prev_hash = :h WHERE seq = 2", h="0" * 64
    )
    result = verify(db_session.connection(), key=key)
    assert (result.ok, result.first_bad_seq) == (False, 2)


def test_a_recomputed_chain_is_caught_by_a_signed_checkpoint(db_session, key, is_postgres):
    """Whoever can rewrite the tables can recompute every hash; the signature they cannot."""
    write(db_session, 6)
    chain(db_session)
    sign_head(db_session.connection(), key)
    # The forger rewrites event 3, then rebuilds every link from there with correct hashes.
    bypass_triggers(
        db_session,
        is_postgres,
        "UPDATE audit_events SET outcome = 'denied' WHERE pos = :pos",
        pos=event_pos_at(db_session, 3),
    )
    _rehash_from(db_session, is_postgres, 3)
    unsigned = verify(db_session.connection(), key=None)
    assert unsigned.first_bad_seq == 6 and "checkpoint" in (unsigned.problem or "")
    result = verify(db_session.connection(), key=key)
    assert not result.ok
    assert result.first_bad_seq == 6
    assert "does not match seq 6" in (result.problem or "")


def _rehash_from(db_session, is_postgres: bool, start: int) -> None:
    from casehub.audit.chain import EVENT_COLUMNS

    connection = db_session.connection()
    prev = connection.scalar(select(AuditChain.prev_hash).where(AuditChain.seq == start))
    rows = connection.execute(
        select(AuditChain.seq, *EVENT_COLUMNS)
        .join(AuditEvent, AuditEvent.pos == AuditChain.event_pos)
        .where(AuditChain.seq >= start)
        .order_by(AuditChain.seq)
    ).all()
    for row in rows:
        digest = canonical.digest(canonical.record(row.seq, prev, row[1:]))
        bypass_triggers(
            db_session,
            is_postgres,
            "UPDATE audit_chain SET prev_hash = :p, hash = :h WHERE seq = :s",
            p=prev,
            h=digest,
            s=row.seq,
        )
        prev = digest


def test_checkpoints_must_carry_a_valid_signature_by_the_known_key(db_session, key, is_postgres):
    write(db_session, 3)
    chain(db_session)
    sign_head(db_session.connection(), key)
    assert verify(db_session.connection(), key=key).ok
    stranger = CheckpointKey.generate()
    result = verify(db_session.connection(), key=stranger)
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "no valid signature" in (result.problem or "")
    bypass_triggers(db_session, is_postgres, "UPDATE audit_checkpoints SET seq = 2")
    result = verify(db_session.connection(), key=key)
    assert (result.ok, result.first_bad_seq) == (False, 2)


def test_a_checkpoint_past_the_end_reveals_a_truncated_chain(db_session, key, is_postgres):
    write(db_session, 4)
    chain(db_session)
    sign_head(db_session.connection(), key)
    bypass_triggers(db_session, is_postgres, "DELETE FROM audit_event_subjects WHERE seq = 4")
    bypass_triggers(db_session, is_postgres, "DELETE FROM audit_chain WHERE seq = 4")
    result = verify(db_session.connection(), key=key)
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "past the chain's end" in (result.problem or "")


def test_a_public_key_alone_verifies_but_cannot_sign(db_session, key, tmp_path):
    write(db_session, 2)
    chain(db_session)
    sign_head(db_session.connection(), key)
    public_only = CheckpointKey(key.public)
    assert verify(db_session.connection(), key=public_only).ok
    with pytest.raises(RuntimeError, match="private key"):
        sign_head(db_session.connection(), public_only)
    saved = tmp_path / "key.pem"
    key.save(saved)
    assert saved.stat().st_mode & 0o777 == 0o600
    assert CheckpointKey.load(saved).key_id == key.key_id


# -- checkpoints -------------------------------------------------------------------------------
def test_make_checkpoint_verifies_only_since_the_last_one_and_signs_the_head(db_session, key):
    write(db_session, 4)
    chain(db_session)
    first, result = make_checkpoint(db_session.connection(), key)
    assert first is not None and (first.seq, result.events) == (4, 4)
    write(db_session, 3)
    chain(db_session)
    second, result = make_checkpoint(db_session.connection(), key)
    assert second is not None and (second.seq, result.events) == (7, 3)
    assert second.hash == chain_head(db_session.connection())[1]
    assert verify(db_session.connection(), key=key).checkpoints == 2


def test_make_checkpoint_refuses_to_sign_a_broken_chain(db_session, key, is_postgres):
    write(db_session, 3)
    chain(db_session)
    bypass_triggers(
        db_session,
        is_postgres,
        "UPDATE audit_events SET purpose = 'statistics' WHERE pos = :pos",
        pos=event_pos_at(db_session, 2),
    )
    signed, result = make_checkpoint(db_session.connection(), key)
    assert signed is None
    assert result.first_bad_seq == 2
    assert verify(db_session.connection(), key=key).checkpoints == 0


def test_an_interrupted_verification_read_leaves_the_connection_usable(db_session, key):
    from casehub.audit.verify import CopyStream, copy_sql

    if db_session.bind.dialect.name != "postgresql":
        pytest.skip("the COPY reader is PostgreSQL's")
    write(db_session, 50)
    chain(db_session)
    with CopyStream(db_session.connection(), copy_sql(0, 50), borrowed=True) as stream:
        line = next(stream.rows())
        assert line[64:65] == b"\t" and line[65:].startswith(b"1\t" + b"0" * 64)
    # Left mid-way: the COPY was cancelled and the savepoint absorbed the aborted statement.
    assert db_session.scalar(select(func.count()).select_from(AuditChain)) == 50
    assert verify(db_session.connection(), key=key).ok


def test_a_rotated_checkpoint_key_keeps_its_old_checkpoints_verifying(db_session, key, tmp_path):
    """Rotation: a new signing key, the old one's public half listed as retired. Checkpoints
    the old key signed still verify (and still anchor the incremental verification); without
    the retired key they are reported as unsigned."""
    from cryptography.hazmat.primitives import serialization

    from casehub.audit.checkpoints import load_public_key

    write(db_session, 3)
    chain(db_session)
    old, _ = make_checkpoint(db_session.connection(), key)
    assert old is not None
    retired_file = tmp_path / "retired.pem"
    retired_file.write_bytes(
        key.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    new_key = CheckpointKey.generate()
    alone = verify(db_session.connection(), key=new_key)
    assert not alone.ok and "no valid signature" in alone.problem

    new_key.retire(load_public_key(retired_file))
    write(db_session, 2)
    chain(db_session)
    new, result = make_checkpoint(db_session.connection(), new_key)
    assert new is not None and result.events == 2  # anchored on the old key's checkpoint
    assert (new.key_id, old.key_id) == (new_key.key_id, key.key_id)
    full = verify(db_session.connection(), key=new_key)
    assert full.ok and full.checkpoints == 2


def test_the_retired_keys_setting_reaches_the_apps_key(tmp_path):
    from cryptography.hazmat.primitives import serialization

    from casehub import create_app
    from casehub.audit.checkpoints import app_key

    old = CheckpointKey.generate()
    public = tmp_path / "old.pem"
    public.write_bytes(
        old.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    app = create_app(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
            "SIGNING_KEYS_FILE": str(tmp_path / "keys.json"),
            "AUDIT_CHECKPOINT_KEY_FILE": str(tmp_path / "new.pem"),
            "AUDIT_CHECKPOINT_RETIRED_KEYS": f" {public} ",
            "AUDIT_SEQUENCER": False,
        }
    )
    key = app_key(app, create=True)
    assert key is not None and set(key.retired) == {old.key_id}
