"""Archives: a sealed period of the audit trail exported to a signed file, verified from the hash
the chain had before it, recorded in `audit_archives` and dropped from the database (PostgreSQL,
whose audit tables are partitioned by period: casehub.audit.partitions).

Periods go oldest first, so the archives form a chain of their own: the first begins at seq 1
after the genesis hash, each next one where the last ended, with the hash it ended on. The
newest period holding chained events is never archived: the chain's head stays in the database,
where the sequencer links the next event to it. Verification then starts from the newest
archive's head (`base`), trusted because its row's signature holds and the archives before it
link up; the files themselves are checked on their own by `verify_file`.

A file (gzip) is UTF-8 text, one record per line:
1. a header, JSON: `format`, `period`, `seq` {from, to}, `prev_hash`, `events`,
   `occurred` {from, to}, `fields` (the record's fields, casehub.audit.canonical), and the
   signed `checkpoints` that fall in the period;
2. every event of the period in seq order as `hash<TAB>canonical record` (the record being what
   its hash is the SHA-256 of, whose second field links it to the previous event's hash);
3. a trailer, JSON: `head_hash` (the last event's), `content_sha256` (over every byte before
   the trailer), `key_id` and the
   Ed25519 `signature` over `message(...)` — the same signature its `audit_archives` row holds.

A run interrupted before its database transaction commits leaves every partition in place (a
file it wrote is simply written again); once it commits, the file was complete and fsynced.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, insert, select, text

from casehub.audit import canonical, partitions
from casehub.audit.checkpoints import CheckpointKey, load_checkpoints, signature_holds
from casehub.audit.verify import CopyStream, archive_copy_sql
from casehub.db import utcnow
from casehub.models.audit import AuditArchive, AuditChain

FORMAT = "casehub-audit-archive/1"
FIELDS = ("seq", "prev_hash", *canonical.EVENT_FIELDS)


class ArchiveError(RuntimeError):
    """An archive that cannot be made; the message says why and what to do."""


@dataclass(frozen=True)
class ArchiveRow:
    """One row of audit_archives."""

    id: int
    period: str
    seq_from: int
    seq_to: int
    prev_hash: str
    head_hash: str
    events: int
    content_sha256: str
    file_name: str
    archived_at: datetime
    key_id: str
    signature: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "seq": {"from": self.seq_from, "to": self.seq_to},
            "prev_hash": self.prev_hash,
            "head_hash": self.head_hash,
            "events": self.events,
            "file": self.file_name,
            "content_sha256": self.content_sha256,
            "archived_at": canonical.field_text(self.archived_at),
            "key_id": self.key_id,
        }


def message(
    period: str,
    seq_from: int,
    seq_to: int,
    prev_hash: str,
    head_hash: str,
    events: int,
    digest: str,
) -> bytes:
    """The signed bytes: canonical JSON of what an archive vouches for."""
    body = {
        "format": FORMAT,
        "period": period,
        "seq_from": seq_from,
        "seq_to": seq_to,
        "prev_hash": prev_hash,
        "head_hash": head_hash,
        "events": events,
        "content_sha256": digest,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _row_message(row: ArchiveRow) -> bytes:
    return message(
        row.period,
        row.seq_from,
        row.seq_to,
        row.prev_hash,
        row.head_hash,
        row.events,
        row.content_sha256,
    )


def archives(connection: Connection) -> list[ArchiveRow]:
    """Every archive, oldest first."""
    table = AuditArchive.__table__
    columns = [table.c[name] for name in (f.name for f in fields(ArchiveRow))]
    rows = connection.execute(select(*columns).order_by(table.c.seq_from))
    return [ArchiveRow(**row._mapping) for row in rows]


@dataclass(frozen=True)
class Base:
    """Where the chain in the database begins: after `seq` (0 and genesis with no archive)."""

    seq: int
    hash: str
    archives: int
    problem: str | None = None  # the archives do not hold: the first reason why
    problem_seq: int = 0


def base(connection: Connection, key: CheckpointKey | None) -> Base:
    """The newest archive's head, once every archive's signature holds and they link up from
    seq 1 and the genesis hash; (0, genesis) when nothing was archived."""
    found = archives(connection)
    seq, head = 0, canonical.GENESIS_HASH
    for row in found:
        if row.seq_from != seq + 1 or row.prev_hash != head:
            problem = f"archive {row.period} does not follow on"
            return Base(seq, head, len(found), problem, seq + 1)
        if key is None or not key.verifies_as(row.key_id, row.signature, _row_message(row)):
            return Base(
                seq, head, len(found), f"archive {row.period} has no valid signature", seq + 1
            )
        seq, head = row.seq_to, row.head_hash
    return Base(seq, head, len(found))


# -- making archives ---------------------------------------------------------------------------
@dataclass
class Planned:
    period: partitions.Period
    file_name: str


@dataclass
class Made:
    period: str
    seq_from: int
    seq_to: int
    events: int
    file: str
    content_sha256: str
    bytes: int
    dropped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "seq": {"from": self.seq_from, "to": self.seq_to},
            "events": self.events,
            "file": self.file,
            "content_sha256": self.content_sha256,
            "bytes": self.bytes,
            "dropped": self.dropped,
            "seconds": round(self.seconds, 3),
        }


def file_name(period: partitions.Period) -> str:
    return f"casehub-audit-{period.name}-seq{period.seq_from}-{period.seq_to}.tsv.gz"


def plan(connection: Connection, *, before: datetime) -> list[Planned]:
    """The periods an archive `before` this moment takes: oldest first, each sealed, with every
    event it chained occurred before `before`, and a later period holding chained events (the
    chain's head stays in the database). Stops at the first that does not qualify."""
    found = partitions.periods(connection)
    chosen = []
    for at, period in enumerate(found):
        later = found[at + 1 :]
        if not period.sealed or not any(p.seq_to is not None for p in later):
            break
        if period.seq_to is None:  # an empty sealed period (a roll with nothing chained since)
            break
        if period.occurred_to is None or period.occurred_to >= before:
            break
        chosen.append(Planned(period, file_name(period)))
    return chosen


def archive(
    engine: Engine,
    *,
    key: CheckpointKey,
    before: datetime,
    directory: Path,
    dry_run: bool = False,
) -> tuple[list[Planned], list[Made]]:
    """Archive every period `plan` chooses, one at a time (each its own file and transaction).
    Holds the partition maintenance lock, so no roll runs meanwhile."""
    if key.private is None:
        raise ArchiveError("archiving signs each file: it needs the checkpoint key's private half")
    with partitions.maintenance(engine) as connection:
        with connection.begin():
            planned = plan(connection, before=before)
        if dry_run:
            return planned, []
        directory.mkdir(parents=True, exist_ok=True)
        made = []
        for item in planned:
            made.append(_archive_one(connection, key, item, directory))
        return planned, made


def _archive_one(
    connection: Connection, key: CheckpointKey, item: Planned, directory: Path
) -> Made:
    started = time.perf_counter()
    period = item.period
    assert period.seq_to is not None
    with connection.begin():
        start = base(connection, key)
        if start.problem is not None:
            raise ArchiveError(f"the archives already made do not hold: {start.problem}")
        if start.seq + 1 != period.seq_from:
            raise ArchiveError(
                f"{period.name} begins at seq {period.seq_from}, but the archives end at seq "
                f"{start.seq}: archive the periods in order"
            )
        _no_pending(connection, period)
        signed = [
            c
            for c in load_checkpoints(connection, from_seq=period.seq_from)
            if c.seq <= period.seq_to
        ]
    for checkpoint in signed:
        if not signature_holds(checkpoint, key):
            raise ArchiveError(
                f"checkpoint {checkpoint.id} in {period.name} has no valid signature"
            )
    final = directory / item.file_name
    partial = final.with_name(final.name + ".partial")
    header = {
        "format": FORMAT,
        "period": period.name,
        "seq": {"from": period.seq_from, "to": period.seq_to},
        "prev_hash": start.hash,
        "events": period.events,
        "occurred": {
            "from": canonical.field_text(period.occurred_from) if period.occurred_from else None,
            "to": canonical.field_text(period.occurred_to) if period.occurred_to else None,
        },
        "fields": list(FIELDS),
        "checkpoints": [c.as_dict() for c in signed],
    }
    with connection.begin(), partial.open("wb") as raw:
        digest, head_hash = _write(connection, raw, header, period)
        signature = key.sign(
            message(
                period.name,
                period.seq_from,
                period.seq_to,
                start.hash,
                head_hash,
                period.events,
                digest,
            )
        )
        trailer = {
            "head_hash": head_hash,
            "content_sha256": digest,
            "key_id": key.key_id,
            "signature": signature,
        }
        raw.write(gzip.compress(json.dumps(trailer, sort_keys=True).encode() + b"\n", 1))
        raw.flush()
        os.fsync(raw.fileno())
        stored_head = connection.scalar(
            select(AuditChain.hash).where(AuditChain.seq == period.seq_to)
        )
    # The file is checked as an auditor would check it, and must end on the chain's own hash.
    checked = verify_file(partial, key)
    if checked.ok and checked.head_hash != stored_head:
        checked.fail(f"it ends on a hash that is not the chain's at seq {period.seq_to}")
    if not checked.ok:
        partial.unlink(missing_ok=True)
        raise ArchiveError(
            f"the file written for {period.name} does not verify: {checked.problem}; nothing "
            "was dropped (run casehub audit verify)"
        )
    partial.replace(final)
    _fsync_directory(directory)
    dropped = _record_and_drop(
        connection,
        period,
        {
            "period": period.name,
            "seq_from": period.seq_from,
            "seq_to": period.seq_to,
            "prev_hash": start.hash,
            "head_hash": head_hash,
            "events": period.events,
            "occurred_from": period.occurred_from,
            "occurred_to": period.occurred_to,
            "file_name": item.file_name,
            "content_sha256": digest,
            "archived_at": utcnow(),
            "key_id": key.key_id,
            "signature": signature,
        },
    )
    return Made(
        period.name,
        period.seq_from,
        period.seq_to,
        period.events,
        str(final),
        digest,
        final.stat().st_size,
        dropped,
        time.perf_counter() - started,
    )


def _no_pending(connection: Connection, period: partitions.Period) -> None:
    """A sealed period's events are all chained (its roll chained them); refuse otherwise."""
    low = period.pos_from if period.pos_from is not None else 0
    high = period.pos_until
    waiting = connection.scalar(
        text(
            "SELECT EXISTS (SELECT 1 FROM audit_pending WHERE pos >= :low"
            " AND (CAST(:high AS bigint) IS NULL OR pos < :high))"
        ),
        {"low": low, "high": high},
    )
    if waiting:
        raise ArchiveError(f"{period.name} holds events not chained yet; run the sequencer first")


def _records(connection: Connection, period: partitions.Period) -> Iterator[bytes]:
    """`hash<TAB>record` lines (without their newline) of the period's events in seq order."""
    assert period.seq_to is not None
    sql = archive_copy_sql(period.seq_from - 1, period.seq_to)
    with CopyStream(connection, sql, borrowed=True) as stream:
        for line in stream.rows():
            yield line[:-1]


class _Digesting:
    """A gzip member stream whose uncompressed bytes are also hashed."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.sha = hashlib.sha256()
        self.gz = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0)

    def write(self, data: bytes) -> None:
        self.sha.update(data)
        self.gz.write(data)

    def close(self) -> str:
        self.gz.close()
        return self.sha.hexdigest()


def _write(
    connection: Connection, raw: IO[bytes], header: dict[str, Any], period: partitions.Period
) -> tuple[str, str]:
    """The header and the records; (content digest, the last record's hash)."""
    out = _Digesting(raw)
    out.write(json.dumps(header, sort_keys=True).encode() + b"\n")
    batch: list[bytes] = []
    last = header["prev_hash"].encode()
    for line in _records(connection, period):
        batch.append(line)
        if len(batch) >= 4096:
            out.write(b"\n".join(batch) + b"\n")
            last = batch[-1][:64]
            batch.clear()
    if batch:
        out.write(b"\n".join(batch) + b"\n")
        last = batch[-1][:64]
    return out.close(), last.decode()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _record_and_drop(
    connection: Connection, period: partitions.Period, values: dict[str, Any]
) -> list[str]:
    """The archive's row and the drop of the period's partitions, in one transaction: both or
    neither. A DROP needs each parent table to itself for a moment (a long read holds it off:
    lock timeouts, then attempts again)."""
    dropped: list[str] = []

    def step() -> None:
        dropped.clear()
        with connection.begin():
            connection.execute(text(f"SET LOCAL lock_timeout = '{partitions.LOCK_TIMEOUT}'"))
            connection.execute(insert(AuditArchive).values(**values))
            for _, name in period.partitions():
                connection.execute(text(f"DROP TABLE {name}"))
                dropped.append(name)

    partitions.with_attempts(connection, step)
    return dropped


# -- checking a file ---------------------------------------------------------------------------
@dataclass
class FileCheck:
    ok: bool = True
    period: str | None = None
    seq_from: int | None = None
    seq_to: int | None = None
    events: int = 0
    prev_hash: str | None = None
    head_hash: str | None = None
    checkpoints: int = 0
    signed: bool = False  # the trailer's signature holds under the key given
    key_id: str | None = None  # the key the trailer names
    problem: str | None = None

    def fail(self, problem: str) -> FileCheck:
        if self.ok:
            self.ok, self.problem = False, problem
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "period": self.period,
            "seq": {"from": self.seq_from, "to": self.seq_to},
            "events": self.events,
            "prev_hash": self.prev_hash,
            "head_hash": self.head_hash,
            "checkpoints": self.checkpoints,
            "signed": self.signed,
            "key_id": self.key_id,
            "problem": self.problem,
        }


def verify_file(path: Path, key: CheckpointKey | None) -> FileCheck:
    """Check an archive file on its own: every record's hash and link, its count and ends as the
    header states, the checkpoints it carries, the content digest and the trailer's signature
    (under `key`, or a retired key it names). Needs no database."""
    result = FileCheck()
    try:
        with gzip.open(path, "rb") as handle:
            return _verify_lines(handle, result, key)
    except (OSError, EOFError, ValueError, KeyError, TypeError) as error:
        return result.fail(f"the file cannot be read as an archive ({type(error).__name__})")


def _verify_lines(handle: IO[bytes], result: FileCheck, key: CheckpointKey | None) -> FileCheck:
    sha = hashlib.sha256()
    first = handle.readline()
    sha.update(first)
    header = json.loads(first)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        return result.fail("not a casehub audit archive (no header of this format)")
    result.period = str(header["period"])
    result.seq_from, result.seq_to = int(header["seq"]["from"]), int(header["seq"]["to"])
    result.prev_hash = str(header["prev_hash"])
    carried = header.get("checkpoints", [])
    signed = {int(c["seq"]): str(c["hash"]) for c in carried}
    result.checkpoints = len(carried)
    expected_seq, last = result.seq_from, result.prev_hash.encode()
    trailer: dict[str, Any] | None = None
    update, sha256 = sha.update, hashlib.sha256
    for line in handle:
        if line[:1] == b"{":
            trailer = json.loads(line)
            if handle.readline():
                return result.fail("records follow the trailer")
            break
        update(line)
        # `hash<TAB>seq<TAB>prev_hash<TAB>...<LF>`: the record is all after the first tab.
        cut = line.index(b"\t", 65)
        seq = int(line[65:cut])
        if seq != expected_seq:
            return result.fail(f"seq {expected_seq} is missing")
        if line[cut + 1 : cut + 65] != last or line[cut + 65 : cut + 66] != b"\t":
            return result.fail(f"seq {seq} does not link to seq {seq - 1}")
        stored = line[:64]
        if line[64:65] != b"\t" or sha256(line[65:-1]).hexdigest().encode() != stored:
            return result.fail(f"the event at seq {seq} does not match its hash")
        if signed and seq in signed and signed.pop(seq).encode() != stored:
            return result.fail(f"the checkpoint at seq {seq} does not match the chain")
        expected_seq, last = seq + 1, stored
    result.events = expected_seq - result.seq_from
    if trailer is None:
        return result.fail("the file ends before its trailer (cut short?)")
    result.head_hash = str(trailer["head_hash"])
    result.key_id = str(trailer["key_id"])
    if expected_seq != result.seq_to + 1 or result.events != int(header["events"]):
        return result.fail(f"the file ends at seq {expected_seq - 1}, not {result.seq_to}")
    if last.decode() != result.head_hash:
        return result.fail("the last event's hash is not the trailer's head_hash")
    if signed:
        return result.fail(f"checkpoints at seqs {sorted(signed)} sign no event of the file")
    digest = sha.hexdigest()
    if trailer.get("content_sha256") != digest:
        return result.fail("the content does not match the trailer's digest")
    signed_bytes = message(
        result.period,
        result.seq_from,
        result.seq_to,
        result.prev_hash,
        result.head_hash,
        result.events,
        digest,
    )
    if key is None:
        return result.fail("no key to check the signature with")
    result.signed = key.verifies_as(str(trailer["key_id"]), str(trailer["signature"]), signed_bytes)
    if not result.signed:
        return result.fail("the trailer's signature does not hold")
    return result
