"""A restart finds the jobs its crashed workers held and queues them again at once, rather
than leaving them "running" for the rest of their lease; jobs of live workers, and of workers
on other hosts (which only their lease can speak for), stay as they are."""

import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread

from appliance.domain.jobs import JobState
from appliance.domain.workers import process_identity, still_running
from appliance.store.job_ledger import JobLedger
from appliance.store.study_ledger import StudyLedger
from tests.support.datasets import new_series, write_series
from tests.support.dcmtk import storescu

pytestmark = pytest.mark.usefixtures("dcmtk")


def a_dead_worker() -> str:
    """The identity of a process that ran and is gone."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    identity = process_identity(child.pid)
    child.kill()
    child.wait()
    return identity


def test_a_restart_requeues_the_jobs_of_workers_that_no_longer_run(start, tmp_path: Path) -> None:
    running = start()
    studies = StudyLedger(running.engine, running.settings.study.completion_policy())
    jobs = JobLedger(running.engine)
    now = datetime.now(UTC)
    holders = {
        "dead": a_dead_worker(),
        "alive": process_identity(),
        "elsewhere": "another-host:4242:123",
    }
    held = {}
    for index, (name, worker) in enumerate(holders.items()):
        files = write_series(new_series(1), tmp_path / name)
        assert storescu(running.port, files).returncode == 0
        uid = str(dcmread(files[0]).StudyInstanceUID)
        job = studies.force_complete(uid, now + timedelta(seconds=index), "test").job_id
        assert jobs.claim(job, now, timedelta(minutes=15), worker) is not None
        held[name] = job

    assert jobs.requeue_orphans(socket.gethostname(), datetime.now(UTC)) == 1
    assert jobs.state(held["dead"]) is JobState.QUEUED
    assert jobs.state(held["alive"]) is JobState.RUNNING
    assert jobs.state(held["elsewhere"]) is JobState.RUNNING
    history = " ".join(detail for _, detail in jobs.history(held["dead"]))
    assert f"worker {holders['dead']} no longer runs" in history


def test_a_process_is_known_by_its_start_as_well_as_its_number() -> None:
    host = socket.gethostname()
    me = process_identity()
    assert still_running(me, host) is True
    number = me.split(":")[1]
    assert still_running(f"{host}:{number}:1", host) is False  # the number, reused
    assert still_running(a_dead_worker(), host) is False
    assert still_running("another-host:1:1", host) is None
