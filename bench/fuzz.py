"""Fuzz benchmark: ten thousand and more mutated DICOM instances (tests/support/fuzzing.py)
through a real association to `appliance listen` and through the pipelines' entry points; prints the
counts: cases, statuses, refusals with their recorded reasons, crashes (which must be 0).

The peer, in the same run, is dcmtk's dcmdump reading the same pipeline cases: how often a
mature DICOM toolkit's reader fails on them, beside how often our entry points refuse them.

    .venv/bin/python -m bench.fuzz [--cases 10000] [--database sqlite|postgresql]
"""

import argparse
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import hypothesis
from hypothesis import HealthCheck, Phase
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.store.db import create_db_engine, upgrade
from appliance.store.models import AuditEvent, Instance
from bench.kills import database
from tests.support import fuzzing
from tests.support.fuzzing import Case
from tests.support.listener_kills import CALLING_AE, listener_layer, start_listener
from tests.support.services import free_port
from tests.support.settings import write_config


def fuzz(count: int, feed: Callable[[Case], object]) -> None:
    @hypothesis.settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=fuzzing.cases())
    def run(case: Case) -> None:
        feed(case)

    run()


def dcmdump_fails(case: Case, directory: Path, failures: Counter[str]) -> None:
    path = directory / "peer.dcm"
    path.write_bytes(case.part10)
    result = subprocess.run(["dcmdump", "-q", str(path)], capture_output=True, timeout=60)
    failures["read" if result.returncode == 0 else "refused"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="per path")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    arguments = parser.parse_args()
    warnings.simplefilter("ignore")  # pydicom warns on every bad value it reads

    with tempfile.TemporaryDirectory(prefix="fuzz-") as scratch:
        directory = Path(scratch)
        pipeline, peer = fuzzing.PipelineTally(), Counter[str]()
        started = time.monotonic()

        def both(case: Case) -> None:
            fuzzing.feed_pipeline(case, directory, pipeline)
            dcmdump_fails(case, directory, peer)

        fuzz(arguments.cases, both)
        pipeline_seconds = time.monotonic() - started

        url = database(arguments.database, directory)
        engine = create_db_engine(url)
        upgrade(engine)
        port = free_port()
        listener = start_listener(write_config(directory, listener_layer(port, url)), port)
        association = fuzzing.AssociationTally()
        sender = fuzzing.Sender(port, directory, CALLING_AE, per_association=500)
        started = time.monotonic()
        try:
            fuzz(arguments.cases, lambda case: sender.send(case, association))
            sender.close()
            listener_alive = listener.poll() is None
        finally:
            listener.terminate()
            listener.wait(timeout=30)
        association_seconds = time.monotonic() - started
        with Session(engine) as session:
            kinds = Counter(
                kind
                for (kind,) in session.execute(
                    select(AuditEvent.event_type).where(AuditEvent.event_type.like("instance_%"))
                )
            )
            reasons = Counter(
                (detail or "").split(":")[0]
                for (detail,) in session.execute(
                    select(AuditEvent.detail).where(AuditEvent.event_type == "instance_rejected")
                )
            )
            stored = session.scalar(select(func.count()).select_from(Instance)) or 0
        engine.dispose()

    print(f"== pipeline entry points: {pipeline.cases} cases in {pipeline_seconds:.0f} s ==")
    print(f"decoded                  {pipeline.decoded}")
    for name, count in pipeline.refused.most_common():
        print(f"refused: {name:<17}{count}")
    print(f"crashes                  {len(pipeline.crashes)}")
    for crash in pipeline.crashes[:20]:
        print("   ", crash)
    print(f"peer dcmdump: read {peer['read']}, refused {peer['refused']}")
    print(f"== association: {association.cases} cases in {association_seconds:.0f} s ==")
    print(f"associations             {association.associations}")
    for status, count in sorted(association.statuses.items()):
        print(f"status 0x{status:04X}            {count}")
    print(f"not sendable (pynetdicom) {association.unsendable}")
    print(f"unanswered               {len(association.unanswered)}")
    for case in association.unanswered[:20]:
        print("   ", case)
    print(f"audit: stored {kinds['instance_stored']}, duplicate {kinds['instance_duplicate']}, "
          f"rejected {kinds['instance_rejected']}; instance rows {stored}")  # fmt: skip
    for reason, count in reasons.most_common(8):
        print(f"    rejected: {reason[:60]:<60} {count}")
    print(f"listener alive at the end {listener_alive}")
    failures = [
        name
        for name, bad in (
            ("pipeline crashes", bool(pipeline.crashes)),
            ("unanswered C-STOREs", bool(association.unanswered)),
            ("the listener died", not listener_alive),
            ("a refusal without its audit row", kinds["instance_rejected"] != association.refused),
        )
        if bad
    ]
    print("RESULT:", "PASS" if not failures else "FAIL: " + "; ".join(failures))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
