"""`appliance demo`: a phantom CT study and an ultrasound cine sent into a running appliance,
followed through completion, the job and delivery, with the time each step took.

It sends with the appliance's own C-STORE SCU, as a PACS would, and reads progress from the
appliance's database (the same settings file), so it shows what an operator would find.
"""

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom import dcmread

from appliance.config import Settings
from appliance.dicom.sender import Association, Peer, echo, outgoing
from appliance.domain.assembly import UnknownStudy
from appliance.domain.delivery import DeliveryState, DestinationUnavailable
from appliance.domain.jobs import JobState
from appliance.domain.status import Status
from appliance.phantoms.ct import Grid, generate_ct
from appliance.phantoms.dicom import write_ct_series, write_us_cine
from appliance.phantoms.ultrasound import generate_cine
from appliance.store.db import open_database
from appliance.store.job_ledger import JobLedger
from appliance.store.outbox_ledger import OutboxLedger
from appliance.store.study_ledger import StudyLedger

FINAL = {JobState.DONE, JobState.FAILED, JobState.DEAD_LETTER, JobState.CANCELLED}
RESULT_KINDS = {
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.66.7": "SEG (label map)",
    "1.2.840.10008.5.1.4.1.1.88.34": "SR (TID 1500)",
    "1.2.840.10008.5.1.4.1.1.7.4": "cine, outlined",
}


@dataclass(frozen=True)
class DemoStudy:
    name: str
    study_instance_uid: str
    files: list[Path]


def phantoms(directory: Path, ct_slices: int, frames: int) -> list[DemoStudy]:
    """A contrast CT of the abdomen with liver lesions (1.5 mm in-plane) and a cine."""
    ct = write_ct_series(
        generate_ct(2026, Grid((ct_slices, 256, 256), (2.0, 1.5, 1.5)), lesion_count=3),
        directory / "ct",
    )
    cine = write_us_cine(generate_cine(2026, frames=frames), directory / "us" / "cine.dcm")
    return [
        DemoStudy("CT abdomen phantom", str(dcmread(ct[0]).StudyInstanceUID), ct),
        DemoStudy(f"US cine phantom, {frames} frames", str(dcmread(cine).StudyInstanceUID), [cine]),
    ]


def _wait_until_up(peer: Peer, seconds: float) -> None:
    """C-ECHO the appliance until it answers (it may be starting); DestinationUnavailable
    when it never does."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            echo(peer)
            return
        except DestinationUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run_demo(
    settings: Settings,
    peer: Peer,
    ct_slices: int,
    frames: int,
    timeout: float,
    say: Callable[[str], None],
) -> bool:
    """Send, follow, report; True when every job finished DONE."""
    _wait_until_up(peer, min(timeout, 60.0))
    engine = open_database(settings.database.url, migrate=False)
    studies = StudyLedger(engine, settings.completion_policy())
    jobs, outbox = JobLedger(engine), OutboxLedger(engine)
    dashboard = f"http://{settings.dashboard.host}:{settings.dashboard.port}"
    with tempfile.TemporaryDirectory() as scratch:
        demo = phantoms(Path(scratch), ct_slices, frames)
        sent_at: dict[str, datetime] = {}
        for study in demo:
            items = [outgoing(path.read_bytes()) for path in study.files]
            started = time.monotonic()
            with Association(
                peer, sorted({(i.sop_class_uid, i.transfer_syntax_uid) for i in items})
            ) as association:
                statuses = [association.store(item) for item in items]
            refused = [status for status in statuses if status.code != Status.SUCCESS]
            say(
                f"{study.name}: {len(items)} instances sent to {peer.ae_title} in "
                f"{time.monotonic() - started:.1f} s"
                + (f", {len(refused)} refused" if refused else "")
            )
            sent_at[study.study_instance_uid] = datetime.now().astimezone()
    deadline = time.monotonic() + timeout
    finished: dict[str, bool] = {}
    while len(finished) < len(demo) and time.monotonic() < deadline:
        for study in demo:
            if study.study_instance_uid in finished:
                continue
            try:
                detail = studies.show(study.study_instance_uid)
            except UnknownStudy:
                continue
            if not detail.jobs or JobState(detail.jobs[-1].state) not in FINAL:
                continue
            job = detail.jobs[-1]
            finished[study.study_instance_uid] = job.state == JobState.DONE
            completed = detail.study.completed_at
            waited = (
                (completed - sent_at[study.study_instance_uid]).total_seconds() if completed else 0
            )
            say(f"\n{study.name} ({study.study_instance_uid})")
            reason = detail.study.completion_reason
            say(f"  complete {waited:.1f} s after the last instance ({reason})")
            previous = None
            for when, change in jobs.history(job.id):
                step = f"+{(when - previous).total_seconds():.1f} s" if previous else "      "
                say(f"  job {job.id} {step:>9}  {change}")
                previous = when
            for row in outbox.rows(job_id=job.id):
                kind = RESULT_KINDS.get(row.sop_class_uid, row.sop_class_uid)
                where = settings.delivery.outbox / row.path
                if row.state is DeliveryState.KEPT:
                    say(f"  {kind:<15} kept here (no destination is configured): {where}")
                    continue
                say(
                    f"  {kind:<15} -> {row.destination}: "
                    f"{row.state.value} after {row.attempts} attempt(s)"
                    + (f" ({row.reason})" if row.reason else "")
                    + f"; file {where}"
                )
            say(f"  findings: {dashboard}/jobs/{job.id} (the dashboard's job page)")
        time.sleep(0.5)
    for study in demo:
        if study.study_instance_uid not in finished:
            say(f"\n{study.name}: not finished after {timeout:.0f} s")
    return len(finished) == len(demo) and all(finished.values())
