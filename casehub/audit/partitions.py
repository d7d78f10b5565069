"""The audit tables' partitions on PostgreSQL (migration 0013): where they stand, the next ones
created ahead of need, and rolls, which start a new period in all four tables at one moment.

A *period* is the unit an archive exports and drops: one partition of each chain table
(audit_chain, audit_event_subjects, audit_event_agencies, partitioned by seq) and the events
partitions (audit_events, by pos) whose events it chained. They share a number: period pNNNN
begins with events partition pNNNN, whose positions begin at NNNN * POS_SPAN. Events partitions
are created ahead of need (`ensure_ahead`), each with room for 2**40 events, and a DEFAULT
partition takes any other position; the newest partition of each chain table runs to
MAXVALUE. So no insert, a request's or the sequencer's, can ever lack a partition.

A roll is decided by time (`roll_due`: the current events partition began in an earlier day,
week or month than now) and cuts the trail at one position and one seq:
1. the events sequence jumps to the next events partition: every event from now on goes there;
2. it waits until every transaction that was writing events when it jumped has ended: an
   INSERT takes its lock on audit_events before it draws a position and keeps it to its
   transaction's end, so pg_locks names every writer that may still commit an event below the
   cut, and once they are gone none can;
3. it chains every event below the cut itself, holding the sequencer's lock: those are exactly
   seqs up to the head, and every later seq belongs to an event above the cut;
4. it bounds the open chain partitions at head + 1 and opens new ones from there: a CHECK
   constraint, validated without blocking anyone, lets the partitions be re-attached with their
   new bounds without a scan under an exclusive lock.
If a roll stops after step 1 (a writer that would not finish, a crash), nothing is lost: the
open period simply spans two events partitions, as its number range allows. A CHECK constraint
left by a roll that died in step 4 would refuse the sequencer's next seq: the sequencer's
failing pass drops it (`recover`), as does the next `ensure`, and the open period spans on.
The sequencer is held off for the roll (seconds: the CHECK's scan of one period), requests
never; a transfer of a referral's lead waits for it, as it waits for any sequencing pass.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from casehub.audit.chain import BATCH, SEQUENCER_LOCK, chain_head, sequence_pending
from casehub.config import AUDIT_PARTITION_PERIODS
from casehub.models.audit import REACH_ALL

log = logging.getLogger("casehub.audit.partitions")

POS_SPAN = 1 << 40  # positions per events partition (as migration 0013)
AHEAD = 2  # events partitions kept ready after the current one
EVENTS = "audit_events"
CHAIN_TABLES = ("audit_event_subjects", "audit_event_agencies", "audit_chain")
APPEND_ONLY = ("audit_events", "audit_chain", "audit_event_subjects")
# One partition maintenance at a time: ensure, roll and archive ("casehub" + 2 as 8 bytes).
MAINTENANCE_LOCK = 0x6361736568756202
PERIODS = AUDIT_PARTITION_PERIODS
LOCK_TIMEOUT = "2s"  # for the moments a roll or an archive needs a table to itself
ATTEMPTS = 5
BARRIER_TIMEOUT = 30.0  # seconds a roll waits for the writers of events below its cut

_BOUND = re.compile(r"FOR VALUES FROM \((MINVALUE|'?-?\d+'?)\) TO \((MAXVALUE|'?-?\d+'?)\)")
_PARTITIONS = text(
    "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
    " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = CAST(:table AS regclass)"
)
# Transactions holding the lock an INSERT into audit_events takes before it draws a position.
_WRITERS = text(
    "SELECT DISTINCT virtualtransaction FROM pg_locks"
    " WHERE locktype = 'relation' AND mode = 'RowExclusiveLock'"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND relation = CAST('audit_events' AS regclass) AND pid <> pg_backend_pid()"
)


class PartitionError(RuntimeError):
    """A partition operation that cannot go ahead; the message says why and what to do."""


def supported(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def partition_name(table: str, index: int) -> str:
    return f"{table}_p{index:04d}"


def _cut_constraint(partition: str) -> str:
    return f"ck_{partition}_cut"


@dataclass(frozen=True)
class Partition:
    table: str
    name: str
    index: int | None  # None: the DEFAULT partition
    lower: int | None  # None: MINVALUE
    upper: int | None  # None: MAXVALUE


def _bound(value: str) -> int | None:
    return None if value in ("MINVALUE", "MAXVALUE") else int(value.strip("'"))


def partitions(connection: Connection, table: str) -> list[Partition]:
    """The partitions of `table` in bound order (a DEFAULT partition last)."""
    found: list[Partition] = []
    for name, bound in connection.execute(_PARTITIONS, {"table": table}):
        match = _BOUND.fullmatch(bound)
        if match is None:  # DEFAULT
            found.append(Partition(table, name, None, None, None))
            continue
        index = int(name.rsplit("_p", 1)[1])
        found.append(Partition(table, name, index, _bound(match[1]), _bound(match[2])))
    return sorted(found, key=lambda p: (p.index is None, p.lower if p.lower is not None else -1))


def next_pos(connection: Connection) -> int:
    """The position the next event will get."""
    sequence = connection.scalar(text("SELECT pg_get_serial_sequence('audit_events', 'pos')"))
    row = connection.execute(text(f"SELECT last_value, is_called FROM {sequence}")).one()  # noqa: S608
    return int(row.last_value) + (1 if row.is_called else 0)


def current_index(connection: Connection) -> int:
    """The number of the events partition new events go to."""
    return next_pos(connection) // POS_SPAN


@dataclass
class Period:
    """One period: its chain partitions' seqs, its events partitions, its events' times."""

    index: int
    sealed: bool  # a later period has begun: nothing more will be chained into this one
    seq_from: int
    seq_to: int | None  # None: nothing chained in it yet
    pos_from: int | None  # the first position its events partitions allow (None: any)
    pos_until: int | None  # the first position after them (None: the open period, no end)
    events_partitions: list[str] = field(default_factory=list)
    occurred_from: datetime | None = None  # when its first chained event occurred
    occurred_to: datetime | None = None  # the latest occurred_at chained up to seq_to
    size: int = 0  # bytes, every partition of the period in all four tables

    @property
    def name(self) -> str:
        return f"p{self.index:04d}"

    @property
    def events(self) -> int:
        return 0 if self.seq_to is None else self.seq_to - self.seq_from + 1

    def partitions(self) -> list[tuple[str, str]]:
        """(table, partition) for every partition of the period, chain tables first."""
        chain = [(table, partition_name(table, self.index)) for table in CHAIN_TABLES]
        return chain + [(EVENTS, name) for name in self.events_partitions]

    def as_dict(self) -> dict[str, Any]:
        def moment(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "period": self.name,
            "sealed": self.sealed,
            "seq": {"from": self.seq_from, "to": self.seq_to},
            "pos": {"from": self.pos_from, "until": self.pos_until},
            "events_partitions": self.events_partitions,
            "occurred": {"from": moment(self.occurred_from), "to": moment(self.occurred_to)},
            "events": self.events,
            "bytes": self.size,
        }


def periods(connection: Connection) -> list[Period]:
    """Every period still in the database, oldest first."""
    chain = [p for p in partitions(connection, "audit_chain") if p.index is not None]
    events = [p for p in partitions(connection, EVENTS) if p.index is not None]
    head, _ = chain_head(connection)
    found: list[Period] = []
    for at, part in enumerate(chain):
        assert part.index is not None
        later = chain[at + 1].index if at + 1 < len(chain) else None
        seq_from = part.lower if part.lower is not None else 1
        seq_to = part.upper - 1 if part.upper is not None else head
        own = [
            e
            for e in events
            if e.index is not None and e.index >= part.index and (later is None or e.index < later)
        ]
        period = Period(
            index=part.index,
            sealed=part.upper is not None,
            seq_from=seq_from,
            seq_to=seq_to if seq_to >= seq_from else None,
            pos_from=own[0].lower if own else part.index * POS_SPAN,
            pos_until=None if later is None else later * POS_SPAN,
            events_partitions=[e.name for e in own],
        )
        if period.seq_to is not None:
            period.occurred_from, period.occurred_to = _span(connection, period)
        period.size = sum(
            int(
                connection.scalar(
                    text("SELECT pg_total_relation_size(CAST(:p AS regclass))"), {"p": name}
                )
                or 0
            )
            for _, name in period.partitions()
        )
        found.append(period)
    return found


def _span(connection: Connection, period: Period) -> tuple[datetime | None, datetime | None]:
    """When the period's first chained event occurred, and the reach index's time mark at its
    last seq (the latest occurred_at of any event chained up to there): two index probes."""
    first = connection.execute(
        text(
            "SELECT e.occurred_at FROM audit_chain c JOIN audit_events e ON e.pos = c.event_pos"
            " WHERE c.seq = :seq"
        ),
        {"seq": period.seq_from},
    ).scalar()
    mark = connection.execute(
        text("SELECT occurred_max FROM audit_event_agencies WHERE agency = :every AND seq = :seq"),
        {"every": REACH_ALL, "seq": period.seq_to},
    ).scalar()
    return first, mark


def default_holds_events(connection: Connection) -> bool:
    """Whether any event went to the DEFAULT partition (none should: ranges are made ahead)."""
    return connection.scalar(text("SELECT EXISTS (SELECT 1 FROM audit_events_default)")) is True


# -- bounding queries to partitions ------------------------------------------------------------
WINDOWS_TTL = 5.0  # seconds a process reuses the chain's partition bounds
_windows: dict[str, tuple[float, tuple[int, ...]]] = {}


def seq_cuts(connection: Connection) -> tuple[int, ...]:
    """The seqs where a chain partition begins, after the first: a walk in seq order bounded
    below the next one is planned for one partition of each chain table, however many there
    are (unbounded, PostgreSQL plans every partition; each costs planning time, every time).

    Read from the catalog at most every WINDOWS_TTL seconds per database. Stale cuts cost only
    efficiency, never rows: any cuts split the seqs into windows that cover them all."""
    if not supported(connection):
        return ()
    key = connection.engine.url.render_as_string(hide_password=True)
    cached = _windows.get(key)
    now = time.monotonic()
    if cached is not None and now - cached[0] < WINDOWS_TTL:
        return cached[1]
    cuts = tuple(
        part.upper
        for part in partitions(connection, "audit_chain")
        if part.upper is not None and part.index is not None
    )
    _windows[key] = (now, cuts)
    return cuts


def window_end(cuts: tuple[int, ...], after: int) -> int | None:
    """The first cut past seq `after` + 1: the end (exclusive) of the window holding the seqs
    just after it; None for the last window."""
    return next((cut for cut in cuts if cut > after + 1), None)


# -- making partitions ahead -------------------------------------------------------------------
@contextmanager
def maintenance(engine: Engine) -> Iterator[Connection]:
    """A connection holding the maintenance lock for its whole life (several transactions), or
    PartitionError when another roll, ensure or archive holds it."""
    connection = engine.connect()
    locked = False
    try:
        locked = bool(
            connection.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": MAINTENANCE_LOCK})
        )
        connection.commit()
        if not locked:
            raise PartitionError("another partition roll or archive is running; try again later")
        yield connection
    finally:
        _release(connection, MAINTENANCE_LOCK if locked else None)


def _release(connection: Connection, *keys: int | None) -> None:
    """Release session locks; a connection that cannot is discarded, never pooled holding them."""
    try:
        connection.rollback()
        for key in keys:
            if key is not None:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        connection.commit()
    except Exception:
        connection.invalidate()
        raise
    finally:
        connection.close()


def _attach_events_partition(connection: Connection, index: int) -> str:
    """Events partition `index`, created empty and attached: neither step stops inserts (ATTACH
    takes SHARE UPDATE EXCLUSIVE on audit_events; CREATE ... PARTITION OF would take it all)."""
    name = partition_name(EVENTS, index)
    with connection.begin():
        connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        connection.execute(text(f"CREATE TABLE {name} (LIKE {EVENTS})"))
        connection.execute(
            text(
                f"ALTER TABLE {EVENTS} ATTACH PARTITION {name} "
                f"FOR VALUES FROM ({index * POS_SPAN}) TO ({(index + 1) * POS_SPAN})"
            )
        )
        _no_truncate(connection, EVENTS, name)
    return name


def _no_truncate(connection: Connection, table: str, partition: str) -> None:
    """TRUNCATE triggers fire only for the table named: each partition refuses on its own."""
    connection.execute(
        text(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {partition} "
            "FOR EACH STATEMENT EXECUTE FUNCTION casehub_audit_append_only()"
        )
    )


def ensure_ahead(connection: Connection, *, ahead: int = AHEAD) -> list[str]:
    """Create the events partitions missing among the `ahead` after the current one."""
    with connection.begin():
        current = current_index(connection)
        existing = {p.index for p in partitions(connection, EVENTS)}
    return [
        _attach_events_partition(connection, index)
        for index in range(current + 1, current + ahead + 1)
        if index not in existing
    ]


def period_start(moment: datetime, period: str) -> datetime:
    """The start (UTC) of the day, ISO week or month holding `moment`."""
    moment = moment.astimezone(UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"a partition period is one of {', '.join(PERIODS)}, not {period!r}")


def roll_due(connection: Connection, *, now: datetime, period: str) -> bool:
    """Whether the current events partition began in an earlier period than `now` (an empty
    one never is: a roll would only make another empty partition)."""
    current = current_index(connection)
    first = connection.scalar(
        text(
            "SELECT occurred_at FROM audit_events WHERE pos >= :low AND pos < :high"
            " ORDER BY pos LIMIT 1"
        ),
        {"low": current * POS_SPAN, "high": (current + 1) * POS_SPAN},
    )
    return first is not None and period_start(first, period) < period_start(now, period)


# -- a roll ------------------------------------------------------------------------------------
@dataclass
class Roll:
    events_partition: str  # where events go from the cut on
    cut_pos: int
    cut_seq: int | None  # the first seq of the new period; None: nothing was chained since the
    # last cut, so the open period spans on (its chain partitions were not cut)
    chained: int = 0  # events below the cut the roll chained itself
    waited: float = 0.0  # seconds spent waiting for writers below the cut
    seconds: float = 0.0
    created: list[str] = field(default_factory=list)  # events partitions made ahead

    def as_dict(self) -> dict[str, Any]:
        return {
            "events_partition": self.events_partition,
            "cut": {"pos": self.cut_pos, "seq": self.cut_seq},
            "chained": self.chained,
            "waited": round(self.waited, 3),
            "seconds": round(self.seconds, 3),
            "created": self.created,
        }


def roll(
    connection: Connection, *, barrier_timeout: float = BARRIER_TIMEOUT, ahead: int = AHEAD
) -> Roll:
    """Start a new period now (see the module's docstring). `connection` holds the maintenance
    lock (`maintenance`); the sequencer's lock is held from the jump to the end."""
    started = time.perf_counter()
    created = ensure_ahead(connection, ahead=max(ahead, 1))
    connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": SEQUENCER_LOCK})
    connection.commit()
    try:
        with connection.begin():
            index = current_index(connection) + 1
            cut = index * POS_SPAN
            sequence = connection.scalar(
                text("SELECT pg_get_serial_sequence('audit_events', 'pos')")
            )
            # Not transactional: from here on every new event is at `cut` or after.
            connection.execute(text("SELECT setval(:s, :cut, false)"), {"s": sequence, "cut": cut})
        result = Roll(partition_name(EVENTS, index), cut, None, created=created)
        result.waited = _wait_for_writers(connection, barrier_timeout)
        while True:
            with connection.begin():
                chained = sequence_pending(connection, limit=BATCH, below=cut)
            result.chained += chained
            if chained < BATCH:
                break
        with connection.begin():
            head, _ = chain_head(connection)
            open_parts = _open_chain_partitions(connection)
        lower = open_parts[0].lower
        if head + 1 > (lower if lower is not None else 1):
            result.cut_seq = head + 1
            _cut_chain(connection, open_parts, head + 1, index)
    finally:
        connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": SEQUENCER_LOCK})
        connection.commit()
    result.created += ensure_ahead(connection, ahead=ahead)
    # No ANALYZE of the partitioned tables here: in PostgreSQL 15 it samples every partition
    # again (seconds, growing with each period); autovacuum analyzes the new partitions.
    result.seconds = time.perf_counter() - started
    return result


def _wait_for_writers(connection: Connection, timeout: float) -> float:
    """Wait until every transaction that was writing events at the jump has ended."""
    started = time.monotonic()
    with connection.begin():
        waiting = set(connection.execute(_WRITERS).scalars())
    while waiting:
        if time.monotonic() - started > timeout:
            raise PartitionError(
                f"{len(waiting)} transactions writing audit events were still open after "
                f"{timeout:.0f} s; events now go to the next partition, but the chain's "
                "partitions were not cut (the open period spans both). Roll again later."
            )
        time.sleep(0.01)
        with connection.begin():
            waiting &= set(connection.execute(_WRITERS).scalars())
    return time.monotonic() - started


def _open_chain_partitions(connection: Connection) -> list[Partition]:
    """The open (MAXVALUE) partition of each chain table: the same period in all three."""
    found = []
    for table in CHAIN_TABLES:
        newest = [
            p for p in partitions(connection, table) if p.upper is None and p.index is not None
        ]
        if len(newest) != 1:
            raise PartitionError(f"{table} has {len(newest)} open partitions, not one")
        found.append(newest[0])
    if len({(p.index, p.lower) for p in found}) != 1:
        raise PartitionError(f"the chain tables' open partitions differ: {found}")
    return found


def _cut_chain(
    connection: Connection, open_parts: list[Partition], cut_seq: int, index: int
) -> None:
    """Bound the open chain partitions below `cut_seq` and open new ones (period `index`) from
    there. The CHECK constraint is validated while every reader and the sequencer go on (only
    the sequencer's lock, held by the caller, keeps seqs from reaching the cut); the swap that
    follows then needs each table to itself for moments, not for a scan."""
    lower = open_parts[0].lower
    low = "MINVALUE" if lower is None else str(lower)
    condition = f"seq < {cut_seq}" if lower is None else f"seq >= {lower} AND seq < {cut_seq}"
    try:
        with connection.begin():
            connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            for part in open_parts:
                connection.execute(
                    text(
                        f"ALTER TABLE {part.name} ADD CONSTRAINT {_cut_constraint(part.name)} "
                        f"CHECK ({condition}) NOT VALID"
                    )
                )
        with connection.begin():
            for part in open_parts:
                connection.execute(
                    text(
                        f"ALTER TABLE {part.name} VALIDATE CONSTRAINT {_cut_constraint(part.name)}"
                    )
                )
        with_attempts(connection, lambda: _swap(connection, open_parts, low, cut_seq, index))
    except BaseException as error:
        connection.rollback()
        try:
            abandon_cut(connection)
        except Exception:  # the sequencer's first failing pass frees them (`recover`)
            log.exception("an interrupted roll could not drop its cut constraints")
        if isinstance(error, DBAPIError) and "lock timeout" in str(error):
            raise PartitionError(
                "the chain tables stayed busy (a long read holds them): events go to the next "
                "partition, but the chain's partitions were not cut (the open period spans "
                "both). Roll again later."
            ) from error
        raise


def _swap(
    connection: Connection, open_parts: list[Partition], low: str, cut_seq: int, index: int
) -> None:
    with connection.begin():
        connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        for part in open_parts:
            new = partition_name(part.table, index)
            connection.execute(text(f"ALTER TABLE {part.table} DETACH PARTITION {part.name}"))
            connection.execute(
                text(
                    f"ALTER TABLE {part.table} ATTACH PARTITION {part.name} "
                    f"FOR VALUES FROM ({low}) TO ({cut_seq})"
                )
            )
            connection.execute(
                text(f"ALTER TABLE {part.name} DROP CONSTRAINT {_cut_constraint(part.name)}")
            )
            connection.execute(
                text(
                    f"CREATE TABLE {new} PARTITION OF {part.table} "
                    f"FOR VALUES FROM ({cut_seq}) TO (MAXVALUE)"
                )
            )
            if part.table in APPEND_ONLY:
                _no_truncate(connection, part.table, new)


def with_attempts(connection: Connection, step: Any) -> None:
    """Run a step that needs tables to itself, again after a lock timeout (a long reader)."""
    for attempt in range(ATTEMPTS):
        try:
            step()
            return
        except Exception as error:
            connection.rollback()
            if "lock timeout" not in str(error) or attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.2 * 2**attempt)


def abandon_cut(connection: Connection) -> list[str]:
    """Drop the cut constraints an interrupted roll left on open chain partitions (the
    sequencer's next seq would break them); the open period then spans on, and the next roll
    cuts it. Returns the partitions freed."""
    freed = []
    with connection.begin():
        rows = connection.execute(
            text(
                "SELECT conrelid::regclass::text, conname FROM pg_constraint"
                " WHERE contype = 'c' AND conname LIKE 'ck\\_audit\\_%\\_cut'"
            )
        ).all()
        if rows:
            connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        for table, constraint in rows:
            connection.execute(text(f"ALTER TABLE {table} DROP CONSTRAINT {constraint}"))
            freed.append(table)
    return freed


def recover(engine: Engine) -> list[str]:
    """`abandon_cut` unless a roll is running now (it holds the maintenance lock): for the
    sequencer, whose pass fails on an interrupted roll's constraint. Never raises."""
    if engine.dialect.name != "postgresql":
        return []
    try:
        with maintenance(engine) as connection:
            return abandon_cut(connection)
    except Exception:  # another maintenance runs (it finishes or abandons its own cut)
        return []


# -- the command's work ------------------------------------------------------------------------
@dataclass
class Ensured:
    created: list[str]
    rolled: Roll | None
    freed: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "rolled": None if self.rolled is None else self.rolled.as_dict(),
            "freed": self.freed,
        }


def ensure(
    engine: Engine, *, now: datetime, period: str, force_roll: bool = False, ahead: int = AHEAD
) -> Ensured:
    """What `casehub audit partitions --ensure` does, hourly: free an interrupted roll's
    partitions, create the events partitions ahead, and roll when a new period has begun."""
    if period not in PERIODS:
        raise PartitionError(f"a partition period is one of {', '.join(PERIODS)}")
    with maintenance(engine) as connection:
        freed = abandon_cut(connection)
        created = ensure_ahead(connection, ahead=ahead)
        with connection.begin():
            due = force_roll or roll_due(connection, now=now, period=period)
        rolled = roll(connection, ahead=ahead) if due else None
    return Ensured(created + (rolled.created if rolled else []), rolled, freed)
