"""Archiving a period of the audit trail on PostgreSQL: a period of 1,000,000 chained events
exported to its signed file, checked and dropped; then the file checked on its own, and the
chain verified from the archive's head.

    .venv/bin/python -m bench.audit_archive [--events N]

Builds a fresh scratch database `casehub_bench_archive` each run (an archive drops what it
archived) with bench/audit_data.py, rolls the partitions so that the events make one sealed
period, chains a few events into the next, and runs what `casehub audit archive` runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from bench.audit_data import prepare
from casehub import audit
from casehub.audit import archive, chain, partitions
from casehub.audit.checkpoints import CheckpointKey, sign_head
from casehub.audit.verify import verify
from casehub.db import make_engine


class _Operator:
    agency, client_id, user_id, purpose = "platform", "chc_bench", None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    engine = make_engine(prepare(args.events, "casehub_bench_archive", fresh=True))
    key = CheckpointKey.generate()
    with engine.begin() as connection:
        sign_head(connection, key)
    with partitions.maintenance(engine) as connection:
        rolled = partitions.roll(connection)
    print(f"rolled in {rolled.seconds:.2f}s: the {args.events:,} events are period p0000")
    with Session(engine) as session:
        for _ in range(10):
            audit.record(session, _Operator(), "referral.read", subject_ids=[uuid.uuid4()])
        audit.write_pending(session, audit.RequestInfo("b", "GET", "/v1/x", None), status=200)
        session.commit()
    chain.sequence_all(engine)

    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        _, made = archive.archive(
            engine,
            key=key,
            before=datetime.now(UTC) + timedelta(days=1),
            directory=Path(directory),
        )
        took = time.perf_counter() - started
        (done,) = made
        print(
            f"archive: {done.events:,} events to {done.bytes / 2**20:.1f} MB in {took:.1f}s "
            f"({done.events / took:,.0f} events/s: export, file check, drop of "
            f"{len(done.dropped)} partitions)"
        )
        started = time.perf_counter()
        checked = archive.verify_file(Path(done.file), key)
        took = time.perf_counter() - started
        assert checked.ok, checked.as_dict()
        print(
            f"verify-archive: {checked.events:,} events in {took:.1f}s "
            f"({checked.events / took:,.0f} events/s)"
        )
    result = verify(engine, key=key)
    assert result.ok and result.archived_seq == done.seq_to, result.as_dict()
    print(
        f"verify after the archive: from seq {result.from_seq:,}, {result.events} events, "
        f"{result.checkpoints} checkpoints, ok in {result.seconds:.2f}s"
    )
    engine.dispose()


if __name__ == "__main__":
    main()
