"""SIGKILL the listener again and again while several senders push studies; then account for
every instance. Shared by tests/integration/test_crash.py (a few kills) and bench/kills.py
(a hundred and more).

Each sender's own record of Success responses is the ground truth: an acknowledged instance
must be in the database and the spool, byte for byte. An instance whose Success never arrived
(the association died under it) is sent again on the next association, as a PACS would, and
must end up stored once: the listener's duplicate policy answers Success for one it had
stored but not yet acknowledged.
"""

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.store.db import create_db_engine, upgrade
from appliance.store.models import Instance
from tests.support.datasets import dataset_bytes, new_series, write_series
from tests.support.scu import associate, store
from tests.support.settings import Layer, write_config
from tests.support.waiting import wait_for

CALLING_AE = "PYSCU"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"


@dataclass
class SenderRecord:
    """What one sender saw."""

    files: list[Path]
    acknowledged: list[Path] = field(default_factory=list)
    attempts: dict[Path, int] = field(default_factory=dict)  # C-STOREs begun per file
    associations: int = 0  # established
    unreachable: int = 0  # attempts that found no listener (killed, not yet restarted)
    cut: int = 0  # associations that ended before their last file was acknowledged

    @property
    def pending(self) -> list[Path]:
        done = set(self.acknowledged)
        return [path for path in self.files if path not in done]


@dataclass
class KillReport:
    kills: int
    instances: int
    acknowledged: int
    resent: int  # C-STOREs begun again because the first one's Success never arrived
    lost: list[str]  # acknowledged but not stored: must be empty
    mismatched: list[str]  # stored bytes differ from what was sent: must be empty
    database_rows: int
    distinct_instances: int
    spool_files: int
    leftover_parts: int
    associations: int
    cut_associations: int
    unreachable: int
    listener_peak_mib: float
    seconds: float

    def lines(self) -> list[str]:
        return [
            f"listener SIGKILLs            {self.kills}",
            f"instances sent               {self.instances}",
            f"associations                 {self.associations}"
            f" ({self.cut_associations} cut by a kill)",
            f"attempts finding no listener {self.unreachable}",
            f"C-STOREs re-sent             {self.resent}",
            f"acknowledged                 {self.acknowledged}",
            f"acknowledged but lost        {len(self.lost)}",
            f"stored bytes differing       {len(self.mismatched)}",
            f"database rows / distinct     {self.database_rows} / {self.distinct_instances}",
            f"spool files                  {self.spool_files}",
            f"temporary files left         {self.leftover_parts}",
            f"listener peak memory         {self.listener_peak_mib:.1f} MiB",
            f"wall time                    {self.seconds:.1f} s",
        ]


def listener_layer(port: int, db_url: str) -> Layer:
    """A listener alone on `port` and `db_url`, logging warnings only."""
    return {
        "listener": {"port": port},
        "database": {"url": db_url},
        "logging": {"level": "WARNING"},
    }


def start_listener(config: Path, port: int, timeout: float = 60) -> subprocess.Popen[bytes]:
    """`appliance listen` as a process of its own, returned once it answers C-ECHO; its
    output goes to `listener.log` beside the configuration, quoted when it does not start."""
    log = config.parent / "listener.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "--config", str(config), "listen"],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(Verification)

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the listener exited: {log.read_text()[-2000:]}")
        association = ae.associate("127.0.0.1", port, ae_title="APPLIANCE")
        established = bool(association.is_established)
        if established:
            association.release()
        return established

    try:
        wait_for(answers, timeout, interval=0.05)
    except AssertionError:
        process.kill()
        raise
    return process


def run_sender(port: int, record: SenderRecord, stop: threading.Event) -> None:
    """Send until every file is acknowledged, opening a new association after each failure."""
    while record.pending and not stop.is_set():
        pending = record.pending
        assoc = associate(port, [(CTImageStorage, [EXPLICIT_LITTLE])], CALLING_AE)
        if not assoc.is_established:
            record.unreachable += 1
            time.sleep(0.05)
            continue
        record.associations += 1
        if not _send(assoc, pending, record):
            record.cut += 1
        if assoc.is_established:
            assoc.release()


def _send(assoc: Association, paths: list[Path], record: SenderRecord) -> bool:
    """Send `paths` in order until one is not acknowledged; True when all were."""
    for path in paths:
        record.attempts[path] = record.attempts.get(path, 0) + 1
        try:
            status = store(assoc, path)
        except (RuntimeError, OSError):
            return False
        if status != 0:
            return False
        record.acknowledged.append(path)
    return True


def _sample_peak(
    process: subprocess.Popen[bytes], peak: list[float], stop: threading.Event
) -> None:
    try:
        handle = psutil.Process(process.pid)
        while not stop.wait(0.05):
            peak[0] = max(peak[0], handle.memory_info().rss / 2**20)
    except psutil.Error:
        pass


def kill_repeatedly(
    directory: Path,
    port: int,
    db_url: str,
    senders: int,
    studies_per_sender: int,
    instances_per_study: int,
    kills: int,
    seed: int,
    pause: tuple[float, float] = (0.05, 0.6),
) -> KillReport:
    """Run `senders` senders against a listener SIGKILLed `kills` times, each kill after a
    random pause within `pause` seconds of its start; then restart it once more and let every
    sender finish."""
    rng = random.Random(seed)
    config = write_config(directory, listener_layer(port, db_url))
    engine = create_db_engine(db_url)
    upgrade(engine)
    records = []
    for index in range(senders):
        files: list[Path] = []
        for study in range(studies_per_sender):
            spec = new_series(instances_per_study)
            files += write_series(spec, directory / "sent" / f"sender{index}" / f"study{study}")
        records.append(SenderRecord(files))
    started = time.monotonic()
    stop = threading.Event()
    threads = [
        threading.Thread(target=run_sender, args=(port, record, stop), daemon=True)
        for record in records
    ]
    peak = [0.0]
    killed = 0
    try:
        for thread in threads:
            thread.start()
        while killed < kills and any(thread.is_alive() for thread in threads):
            listener = start_listener(config, port)
            sampling = threading.Event()
            threading.Thread(target=_sample_peak, args=(listener, peak, sampling)).start()
            time.sleep(rng.uniform(*pause))
            os.kill(listener.pid, signal.SIGKILL)
            listener.wait()
            sampling.set()
            killed += 1
        listener = start_listener(config, port)
        sampling = threading.Event()
        threading.Thread(target=_sample_peak, args=(listener, peak, sampling)).start()
        for thread in threads:
            thread.join(timeout=600)
        sampling.set()
        listener.terminate()
        listener.wait(timeout=30)
    finally:
        stop.set()
    seconds = time.monotonic() - started

    with Session(engine) as session:
        stored = {
            row.sop_instance_uid: row.path
            for row in session.execute(select(Instance.sop_instance_uid, Instance.path))
        }
        rows = session.scalar(select(func.count()).select_from(Instance)) or 0
    engine.dispose()
    spool = directory / "spool"
    lost, mismatched = [], []
    acknowledged = [path for record in records for path in record.acknowledged]
    for path in acknowledged:
        uid = path.stem
        if uid not in stored:
            lost.append(uid)
        elif dataset_bytes(spool / stored[uid]) != dataset_bytes(path):
            mismatched.append(uid)
    instances = sum(len(record.files) for record in records)
    return KillReport(
        kills=killed,
        instances=instances,
        acknowledged=len(set(acknowledged)),
        resent=sum(n - 1 for record in records for n in record.attempts.values()),
        lost=lost,
        mismatched=mismatched,
        database_rows=rows,
        distinct_instances=len(stored),
        spool_files=len(list(spool.rglob("*.dcm"))),
        leftover_parts=len(list((spool / ".incoming").glob("*.part"))),
        associations=sum(record.associations for record in records),
        cut_associations=sum(record.cut for record in records),
        unreachable=sum(record.unreachable for record in records),
        listener_peak_mib=peak[0],
        seconds=seconds,
    )
