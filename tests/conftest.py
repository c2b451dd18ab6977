"""Shared fixtures: databases (SQLite and a real PostgreSQL), a running listener, dcmtk tools.

Services are required in CI: with TESTS_REQUIRE_SERVICES=1 (set by .ci/run) a missing
PostgreSQL or dcmtk fails the tests instead of skipping them.
"""

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from sqlalchemy import Engine

from appliance.audit.db import create_db_engine, upgrade
from appliance.config import Settings
from appliance.dicom.listener import Listener
from appliance.runtime import start_listener

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REQUIRE_SERVICES = os.environ.get("TESTS_REQUIRE_SERVICES") == "1"


def missing_service(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_http(url: str, timeout: float = 30) -> None:
    """Return once something answers HTTP at `url`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise AssertionError(f"nothing answered at {url}")


def dcmtk_env() -> dict[str, str]:
    """dcmtk leaves Nagle's algorithm on unless TCP_NODELAY is set: every C-STORE stalls."""
    return {**os.environ, "TCP_NODELAY": "1"}


@pytest.fixture(scope="session")
def dcmtk() -> None:
    for tool in ("storescu", "echoscu", "storescp"):
        if shutil.which(tool) is None:
            missing_service(f"dcmtk tool {tool} is not installed")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    name = f"appliance_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        missing_service(f"PostgreSQL on 127.0.0.1:5432: {exc}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/appliance.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def make_settings(tmp_path: Path, db_url: str, **sections: dict[str, Any]) -> Settings:
    tree: dict[str, Any] = {
        "listener": {
            "host": "127.0.0.1",
            "port": 0,
            "peers": [
                {"ae_title": "STORESCU", "hosts": ["127.0.0.1"]},
                {"ae_title": "PYSCU", "hosts": ["127.0.0.0/8"]},
                {"ae_title": "FARAWAY", "hosts": ["192.0.2.10"]},
            ],
        },
        "spool": {"path": str(tmp_path / "spool")},
        "database": {"url": db_url},
        "study": {"quiet_period_seconds": 30, "hint_settle_seconds": 1},
    }
    for section, values in sections.items():
        tree[section] = {**tree.get(section, {}), **values}
    return Settings.model_validate(tree)


@dataclass
class RunningListener:
    listener: Listener
    settings: Settings
    engine: Engine

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def spool(self) -> Path:
        return self.settings.spool.path


@pytest.fixture
def start(tmp_path: Path, engine: Engine, db_url: str) -> Iterator[Any]:
    """Start a listener in this process; keyword arguments override settings sections."""
    running: list[Listener] = []

    def _start(**sections: dict[str, Any]) -> RunningListener:
        settings = make_settings(tmp_path, db_url, **sections)
        listener = start_listener(settings, engine)
        running.append(listener)
        return RunningListener(listener, settings, engine)

    yield _start
    for listener in running:
        listener.stop()


def storescu(
    port: int, files: list[Path], *args: str, calling: str = "STORESCU", called: str = "APPLIANCE"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "storescu",
            "-R",
            "-aet",
            calling,
            "-aec",
            called,
            *args,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def echoscu(port: int, calling: str = "STORESCU") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", calling, "-aec", "APPLIANCE", "127.0.0.1", str(port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
