"""The appliance under test as its users run it: a configuration file, `appliance serve` or
production's roles as processes of their own, and waits on what they do."""

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqp.exceptions import ChannelError
from kombu.exceptions import KombuError

from appliance.config import QueueSettings
from appliance.queue.celery_app import QUEUES, make_app
from tests.support.cli import run_cli
from tests.support.dcmtk import echoscu
from tests.support.orthanc import AE_TITLE, Orthanc
from tests.support.services import free_port, missing_service
from tests.support.settings import Layer, write_config
from tests.support.waiting import wait_for

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


@dataclass(frozen=True)
class Mode:
    settings: dict[str, Any]
    roles: tuple[str, ...] = ("serve",)


PRODUCTION_ROLES = ("listen", "sweep", "worker")
REDIS_DB = 13  # a database of its own on the machine's Redis, flushed before and after
BROKER_URLS = {
    "redis": f"redis://127.0.0.1:6379/{REDIS_DB}",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
}


@contextmanager
def production_mode(broker: str, database_url: str) -> Iterator[Mode]:
    """Production's roles as processes of their own on PostgreSQL and `broker` (redis or
    rabbitmq), its queues emptied before and after: the machine's broker is shared."""
    queue = QueueSettings(broker_url=BROKER_URLS[broker])
    purge_queues(queue)
    yield Mode(
        {"database": {"url": database_url}, "queue": {"broker_url": queue.broker_url}},
        PRODUCTION_ROLES,
    )
    purge_queues(queue)


def purge_queues(settings: QueueSettings) -> None:
    """Empty the job queues on a shared broker, so no earlier run's message is taken."""
    try:
        with make_app(settings).connection_for_write() as connection:
            connection.ensure_connection(max_retries=2)
            for name in QUEUES:
                connection.default_channel.queue_purge(name)
    except (OSError, KombuError) as exc:
        missing_service(f"the broker at {settings.broker_url}: {exc}")
    except ChannelError:
        pass  # a queue never declared holds nothing


def wait_for_listener(port: int) -> None:
    wait_for(lambda: echoscu(port, calling=AE_TITLE).returncode == 0, 60, interval=0.2)


def serve(
    tmp_path: Path, port: int, pacs_port: int, overrides: dict[str, Any]
) -> subprocess.Popen[bytes]:
    """`appliance serve`: every role from one command; returns once it answers C-ECHO."""
    process = start_role(appliance_config(tmp_path, port, pacs_port, overrides), "serve")
    wait_for_listener(port)
    return process


def appliance_config(tmp_path: Path, port: int, pacs_port: int, overrides: Layer) -> Path:
    """The appliance as a site runs it, quick to complete and deliver: results to the PACS
    at `pacs_port`, the reference models on two threads."""
    return write_config(
        tmp_path,
        {
            "listener": {"port": port},
            "study": {"quiet_period_seconds": 2, "sweep_interval_seconds": 0.5},
            "inference": {"repository": str(REPOSITORY), "threads": 2},
            "dashboard": {"port": free_port()},
            "delivery": {
                "interval_seconds": 0.5,
                "destinations": [
                    {"name": "pacs", "ae_title": AE_TITLE, "host": "127.0.0.1", "port": pacs_port}
                ],
            },
        },
        overrides,
    )


def start_role(config: Path, role: str) -> subprocess.Popen[bytes]:
    """One `appliance` command in the background, its output in `<role>.log` (serve's in
    appliance.log) beside the configuration."""
    name = "appliance" if role == "serve" else role
    log = open(config.parent / f"{name}.log", "wb")  # noqa: SIM115 - the process owns it
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "--config", str(config), role],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


@contextmanager
def running_roles(
    tmp_path: Path, port: int, pacs_port: int, mode: Mode
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The appliance as the mode runs it: `serve`, or production's roles as processes of
    their own after `db upgrade`."""
    config = appliance_config(tmp_path, port, pacs_port, mode.settings)
    if mode.roles != ("serve",):
        upgrade = run_cli(config, "db", "upgrade")
        assert upgrade.returncode == 0, upgrade.stderr
    processes = [start_role(config, role) for role in mode.roles]
    try:
        wait_for_listener(port)
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def modalities(pacs: Orthanc) -> list[str]:
    """The sorted modalities of the PACS's instances."""
    return sorted(
        pacs.get(f"/instances/{i}/simplified-tags")["Modality"] for i in pacs.get("/instances")
    )


def wait_for_modalities(pacs: Orthanc, expected: list[str], seconds: float) -> list[str]:
    """The PACS's modalities once they are `expected`, or what it holds after `seconds`, for
    the caller's assertion to show."""
    seen: list[str] = []

    def arrived() -> bool:
        seen[:] = modalities(pacs)
        return seen == sorted(expected)

    with contextlib.suppress(AssertionError):
        wait_for(arrived, seconds, interval=0.5)
    return seen
