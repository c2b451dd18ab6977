"""End-to-end benchmark: from the last instance received to SEG and SR stored at the PACS.

`appliance serve` runs on its embedded defaults (SQLite, kombu's SQLite transport, ONNX Runtime
with 2 threads) with a real Orthanc as the PACS it delivers to. A 512x512x300 phantom CT and
a 100-frame phantom cine are sent to it one after the other; each is followed through the
appliance's own audit records:

- quiet period: last instance received -> study complete (the configured wait, shown apart;
  with `--release S`, the sender's studies complete at its association's release);
- dispatch: study complete -> job running on the worker;
- pipeline: running -> encoded, and inside it the pipeline's work (decode, inference,
  measurement, SEG and SR, the gate) and, inside that, the model compute (the backend's own
  infer calls), both timed by the job and recorded with it;
- settle: with `--release S`, how long the finished results waited for the S seconds after
  the release (none where the pipeline took longer);
- delivery: encoded -> the last result acknowledged by the PACS.

Two shares are printed. Orchestration is what the appliance adds around the pipeline's work:
dispatch, claiming and leasing the job, state changes, the outbox and delivery (target <= 5%).
"All but model compute" is the stricter reading, which also counts the pipeline's own decoding,
resampling and SEG/SR encoding. The named peer is the bare pipeline: the same files through
`run_volume`/`run_frames` and the encoders, called directly with the same models and threads
in a process of its own whose models were warmed first, as the worker's are (its first study
in a process, as the bench's study is the worker's first); no listener, queue or PACS.

    .venv/bin/python -m bench.e2e [--quiet 2] [--release 2 --quiet 30]
"""

import argparse
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

from appliance.app.pipelines import run_frames, run_volume, warm_models
from appliance.dicom.sender import Association, Peer, outgoing
from appliance.domain.findings import SegmentationType
from appliance.domain.jobs import Stage
from appliance.inference.backend import OnnxRuntimeBackend, TimedBackend
from appliance.inference.catalog import load_catalog
from appliance.phantoms.ct import Grid, generate_ct
from appliance.phantoms.dicom import write_ct_series, write_us_cine
from appliance.phantoms.ultrasound import generate_cine
from appliance.results.encode import ct_results, ultrasound_results
from appliance.results.segmentation import Equipment
from appliance.store.models import AuditEvent, Delivery, Job, StageTiming, Study
from tests.support.orthanc import running_orthanc
from tests.support.processes import REPOSITORY, appliance_config, start_role, wait_for_listener
from tests.support.services import free_port
from tests.support.settings import TEST_PEERS
from tests.support.waiting import wait_for

TARGET_SHARE = 0.05
_TIMES = re.compile(r"pipeline ([0-9.]+) s, model compute ([0-9.]+) s")


def serve(
    work: Path, port: int, pacs_port: int, quiet: float, release: float | None
) -> subprocess.Popen[bytes]:
    """`appliance serve` on its embedded defaults, but for the quiet period (and, with
    `release`, the sender set to complete its studies that many seconds after the release);
    the tests' harness shortens the sweep and delivery intervals, which this puts back."""
    peers = [
        {**peer, "complete_on_release": True, "release_settle_seconds": release}
        if peer["ae_title"] == "PYSCU" and release is not None
        else peer
        for peer in TEST_PEERS
    ]
    config = appliance_config(
        work,
        port,
        pacs_port,
        {
            "listener": {"port": port, "peers": peers},
            "study": {"quiet_period_seconds": quiet, "sweep_interval_seconds": 1.0},
            "delivery": {"interval_seconds": 2.0},
        },
    )
    process = start_role(config, "serve")
    wait_for_listener(port)
    # A study reaches a running appliance: its worker ready too, not still starting (which
    # took 0.3-0.6 s of the first study's dispatch when the listener alone was waited for).
    log = config.parent / "appliance.log"
    wait_for(lambda: b" ready." in log.read_bytes(), 120)
    return process


def send(peer: Peer, files: list[Path]) -> None:
    items = [outgoing(path.read_bytes()) for path in files]
    syntaxes = sorted({(item.sop_class_uid, item.transfer_syntax_uid) for item in items})
    with Association(peer, syntaxes) as association:
        assert {association.store(item).code for item in items} == {0}


def follow(database: Path, study_uid: str, timeout: float) -> dict[str, float]:
    """Wait until the study's job is done; its stage times from the audit records."""
    engine = create_engine(f"sqlite:///{database}")
    return wait_for(lambda: stage_times(engine, study_uid), timeout, interval=0.2)


def stage_times(engine: Engine, study_uid: str) -> dict[str, float] | None:
    """The study's job's stage times from the audit records once it is done; None before."""
    with Session(engine) as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
        job = (
            session.scalars(select(Job).where(Job.study_id == study.id)).first() if study else None
        )
        if study is None or job is None or job.state not in ("done", "failed", "dead_letter"):
            return None
        assert job.state == "done", f"job {job.id} {job.state}: {job.reason}"
        events = session.execute(
            select(AuditEvent.occurred_at, AuditEvent.detail)
            .where(AuditEvent.job_id == job.id, AuditEvent.event_type == "job_state")
            .order_by(AuditEvent.id)
        ).all()
        at = {detail.split(":")[0]: when for when, detail in events}
        times = _TIMES.search(next(d for _, d in events if d.startswith("running -> encoded")))
        assert times is not None, "the job recorded no pipeline times"
        delivered = max(
            session.scalars(select(Delivery.finished_at).where(Delivery.job_id == job.id))
        )
        assert study.completed_at is not None
        held = session.scalars(
            select(StageTiming.seconds).where(
                StageTiming.job_id == job.id, StageTiming.stage == Stage.SETTLE
            )
        ).first()
        return {
            "quiet": seconds(study.last_received_at, study.completed_at),
            "dispatch": seconds(study.completed_at, at["queued -> running"]),
            "pipeline": seconds(at["queued -> running"], at["running -> encoded"]) - (held or 0),
            "settle": held or 0.0,
            "work": float(times.group(1)),
            "compute": float(times.group(2)),
            "delivery": seconds(at["running -> encoded"], delivered),
        }


def seconds(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()


def bare(kind: str, files: list[Path]) -> float:
    """The peer's seconds: the same pipeline and encoders called directly, no appliance
    around them, in a process of its own with its models warmed, as a worker's job runs in
    the worker's (`run_bare`)."""
    command = [sys.executable, "-m", "bench.e2e", "--bare", kind, *map(str, files)]
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=root)
    return float(done.stdout.strip().splitlines()[-1])


def run_bare(kind: str, files: list[Path]) -> float:
    backend = TimedBackend(OnnxRuntimeBackend(REPOSITORY, threads=2))
    equipment = Equipment("bench", "bench", "bench", "bench")
    catalog = load_catalog(REPOSITORY)
    pipeline = catalog.pipelines[kind]
    warm_models(backend, catalog, pipeline.models)
    started = time.perf_counter()
    if kind == "ct":
        run = run_volume(pipeline, catalog, files, backend)
        ct_results(run.volume.headers, run.findings, SegmentationType.BINARY, equipment)
    else:
        us = run_frames(pipeline, catalog, files[0], backend)
        ultrasound_results(us.source, us.findings, equipment, us.frames)  # with the outlines
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quiet", type=float, default=2.0, help="quiet period, seconds")
    parser.add_argument(
        "--release",
        type=float,
        default=None,
        help="complete each study this many seconds after its association's release",
    )
    parser.add_argument("--bare", nargs="+", help=argparse.SUPPRESS)  # the peer's process
    args = parser.parse_args()
    if args.bare:
        print(run_bare(args.bare[0], [Path(path) for path in args.bare[1:]]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ct = write_ct_series(
            generate_ct(77, Grid((300, 512, 512), (1.5, 0.78, 0.78)), lesion_count=3),
            work / "ct",
        )
        cine = write_us_cine(generate_cine(424242, frames=100), work / "us" / "cine.dcm")
        studies = [
            ("ct", "CT 512x512x300", ct),
            ("us", "US cine, 100 frames", [cine]),
        ]
        port = free_port()
        with running_orthanc(work / "pacs") as pacs:
            appliance = serve(work, port, pacs.dicom_port, args.quiet, args.release)
            peer = Peer("APPLIANCE", "127.0.0.1", port, "PYSCU")
            try:
                rows = []
                for kind, name, files in studies:
                    send(peer, files)
                    uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
                    rows.append((name, follow(work / "appliance.db", uid, 600), bare(kind, files)))
            finally:
                appliance.terminate()
                appliance.wait(timeout=30)
    print("e2e: last instance received -> SEG and SR stored at Orthanc, embedded defaults, "
          "2 CPU cores")  # fmt: skip
    header = (f"{'study':<20} {'quiet':>5} {'dispatch':>8} {'pipeline':>8} {'(work)':>7} "
              f"{'(model)':>7} {'settle':>6} {'delivery':>8} {'total*':>6} {'result':>6} "
              f"{'orchestr.':>9} {'not model':>9} {'bare peer':>9}")  # fmt: skip
    print(header)
    for name, t, peer_seconds in rows:
        total = t["dispatch"] + t["pipeline"] + t["delivery"]
        print(
            f"{name:<20} {t['quiet']:>5.2f} {t['dispatch']:>8.2f} {t['pipeline']:>8.2f} "
            f"{t['work']:>7.2f} {t['compute']:>7.2f} {t['settle']:>6.2f} {t['delivery']:>8.2f} "
            f"{total:>6.2f} {t['quiet'] + t['settle'] + total:>6.2f} "
            f"{(total - t['work']) / total:>9.1%} {(total - t['compute']) / total:>9.0%} "
            f"{peer_seconds:>9.2f}"
        )
    print(f"* after completion, without the settle. result = last instance -> results at the "
          f"PACS. settle = results held for the settle after the sender's release (a job "
          f"started on release). orchestr. = (total - pipeline work) / total, target "
          f"<= {TARGET_SHARE:.0%}; not model = (total - model compute) / total")  # fmt: skip


if __name__ == "__main__":
    main()
