"""Verification rate over 1,000,000 chained events on PostgreSQL (target: ≥ 500,000 events/s).

    .venv/bin/python -m bench.audit_verify [--events N]

Builds (or reuses) the scratch database of bench/audit_data.py, signs a checkpoint at the head,
then runs the same verification as `casehub audit verify` and prints its rate.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.audit_data import prepare
from casehub.audit.checkpoints import CheckpointKey, sign_head
from casehub.audit.verify import verify
from casehub.db import make_engine

TARGET = 500_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    engine = make_engine(prepare(args.events))
    # The scratch database outlives a run, and so do its checkpoints: keep the key beside it.
    key_file = Path(tempfile.gettempdir()) / "casehub-bench-audit-key.pem"
    key = CheckpointKey.load(key_file, create=True)
    with engine.begin() as connection:
        sign_head(connection, key)
    best = 0.0
    for run in range(1, args.runs + 1):
        result = verify(engine, key=key)
        assert result.ok, result.as_dict()
        rate = result.events / result.seconds
        best = max(best, rate)
        print(
            f"run {run}: verified {result.events:,} events and {result.checkpoints} checkpoint(s) "
            f"in {result.seconds:.2f}s: {rate:,.0f} events/s"
        )
    verdict = "meets" if best >= TARGET else "MISSES"
    print(f"best {best:,.0f} events/s — {verdict} the {TARGET:,} events/s target")
    engine.dispose()


if __name__ == "__main__":
    main()
