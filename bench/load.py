"""Load benchmark: sixteen senders (a process each, a study of 40 instances per association)
for minutes against production's listen, sweep and dashboard roles on PostgreSQL, with the
dashboard polled all along (tests/support/load.py). Prints acknowledged and lost instances, C-STORE
round-trip percentiles, dashboard answer times, and each role's peak memory and its growth
over the run.

The peer, in the same run: the same senders for the same time against dcmtk's storescp
(`--fork`, plain files, no fsync, no database).

    .venv/bin/python -m bench.load [--seconds 300] [--senders 16] [--database postgresql|sqlite]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.kills import database
from tests.support.load import percentiles, run_load, run_senders
from tests.support.services import free_port


def peer(senders: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="load-peer-") as scratch:
        port = free_port()
        storescp = subprocess.Popen(
            ["storescp", "--fork", "-od", scratch, "-aet", "APPLIANCE", str(port)],
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        time.sleep(1)
        try:
            started = time.monotonic()
            records = run_senders(port, senders, seconds, 40)
            elapsed = time.monotonic() - started
        finally:
            storescp.kill()
    acknowledged = sum(len(record.acknowledged) for record in records)
    rounds = [value for record in records for value in record.store_seconds]
    print(f"== peer: dcmtk storescp --fork, {senders} senders, {elapsed:.0f} s ==")
    print(f"instances acknowledged       {acknowledged} ({acknowledged / elapsed:.0f}/s)")
    print(f"C-STORE round trip           {percentiles(rounds)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="load-") as scratch:
        directory = Path(scratch)
        report = run_load(
            directory, database(arguments.database, directory), arguments.senders, arguments.seconds
        )
    print(f"== appliance: listen + sweep + dashboard, {arguments.database} ==")
    print("\n".join(report.lines()))
    peer(arguments.senders, arguments.seconds)
    failures = [
        name
        for name, bad in (
            ("acknowledged instances lost", bool(report.lost)),
            ("fewer associations held than senders", report.most_concurrent < arguments.senders),
            ("dashboard errors", report.dashboard_errors > 0),
        )
        if bad
    ]
    print("RESULT:", "PASS" if not failures else "FAIL: " + "; ".join(failures))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
