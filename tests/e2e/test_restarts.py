"""Restarts under the running appliance: the broker (Redis, RabbitMQ) or the database
(PostgreSQL) goes down and comes back while production's roles have jobs in flight, and a
worker is killed while it delivers. Every job ends done exactly once and the PACS holds one SEG,
one SR and one outlined cine per study, no more.

These stop and start the machine's own services, as `.ci/run` and the env notes start them,
so the suite's other tests must not run beside them (pytest runs tests one at a time)."""

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from appliance.phantoms.dicom import write_us_cine
from appliance.phantoms.ultrasound import generate_cine
from appliance.store.models import AuditEvent, Job
from tests.support.dcmtk import storescu
from tests.support.orthanc import AE_TITLE, running_orthanc
from tests.support.processes import (
    Mode,
    production_mode,
    running_roles,
    wait_for,
    wait_for_modalities,
)
from tests.support.services import free_port

# It stops the machine's PostgreSQL, Redis and RabbitMQ, which every other test may be using:
# scripts/test runs it alone, after the rest of the suite.
pytestmark = [pytest.mark.usefixtures("dcmtk"), pytest.mark.alone]
STUDIES = 3


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def restart_redis() -> None:
    run("redis-cli", "-h", "127.0.0.1", "shutdown", "nosave")
    time.sleep(2)
    run(
        "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
        "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
        "--logfile", "/var/log/redis/ci.log",
    )  # fmt: skip
    wait_for(lambda: subprocess.run(["redis-cli", "ping"], capture_output=True).returncode == 0, 30)


def restart_rabbitmq() -> None:
    run("rabbitmqctl", "stop_app")
    time.sleep(2)
    run("rabbitmqctl", "start_app")


def restart_postgresql() -> None:
    version = next(iter(Path("/etc/postgresql").iterdir())).name
    run("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "stop", "-m", "fast")
    time.sleep(2)
    run("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start")


RESTARTS: dict[str, tuple[str, Callable[[], None]]] = {
    "redis": ("redis", restart_redis),
    "rabbitmq": ("rabbitmq", restart_rabbitmq),
    "postgresql": ("redis", restart_postgresql),
}


def job_states(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            return list(session.scalars(select(Job.state).order_by(Job.id)))
    finally:
        engine.dispose()


@pytest.mark.parametrize("service", list(RESTARTS))
def test_a_service_restart_mid_flight_ends_every_job_done_once(
    service: str, tmp_path: Path, postgres_url: str
) -> None:
    broker, restart = RESTARTS[service]
    cines = [
        write_us_cine(generate_cine(300_100 + index, frames=8), tmp_path / "us" / f"{index}.dcm")
        for index in range(STUDIES)
    ]
    with production_mode(broker, postgres_url) as production:
        # Redis here keeps nothing on disk: a job sent before its restart is gone from the
        # broker, and the sweeper sends it again once it has waited `redispatch_seconds`. An
        # attempt that died with the database is taken again when its lease runs out.
        queue = {**production.settings["queue"], "redispatch_seconds": 10, "lease_seconds": 20}
        mode = Mode({**production.settings, "queue": queue}, production.roles)
        round_trip_through(restart, mode, cines, tmp_path, postgres_url)
    engine = create_engine(postgres_url)
    with Session(engine) as session:
        transitions = list(
            session.execute(
                select(AuditEvent.job_id, AuditEvent.detail)
                .where(AuditEvent.event_type == "job_state")
                .order_by(AuditEvent.id)
            )
        )
    engine.dispose()
    done = [job for job, detail in transitions if "-> done" in (detail or "")]
    assert sorted(done) == sorted(set(done)), transitions
    assert len(done) == STUDIES


def round_trip_through(
    restart: Callable[[], None], mode: Mode, cines: list[Path], tmp_path: Path, url: str
) -> None:
    """Send the cines, restart the service once their jobs exist, and wait for one SEG, one
    SR and one outlined cine of each at the PACS and every job done."""
    port = free_port()
    with (
        running_orthanc(tmp_path / "pacs") as pacs,
        running_roles(tmp_path, port, pacs.dicom_port, mode),
    ):
        assert storescu(port, cines, calling=AE_TITLE).returncode == 0
        wait_for(lambda: len(job_states(url)) == STUDIES, 60)
        restart()
        expected = ["SEG", "SR", "US"] * STUDIES
        modalities = wait_for_modalities(pacs, expected, 180)
        logs = "\n".join(log.read_text(errors="replace")[-2000:] for log in tmp_path.glob("*.log"))
        assert modalities == sorted(expected), logs
        wait_for(lambda: job_states(url) == ["done"] * STUDIES, 60)
        time.sleep(3)  # anything sent twice would have arrived by now
        assert pacs.instance_count() == 3 * STUDIES
