"""Shared fixtures: databases (SQLite and a real PostgreSQL), a running listener, dcmtk tools.
Fixtures only: the helpers they and the tests use live in `tests.support`."""

import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from appliance.app.ingest import start_listener
from appliance.config import Settings
from appliance.dicom.listener import Listener
from appliance.store.db import create_db_engine, upgrade
from tests.support.services import missing_service
from tests.support.settings import make_settings

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# Studies complete when a test says (or 1 s after their count hints say they are whole).
LISTENER_UNDER_TEST = {"study": {"quiet_period_seconds": 30, "hint_settle_seconds": 1}}


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

    def _start(ended: Callable[[], None] | None = None, **sections: Any) -> RunningListener:
        settings = make_settings(
            tmp_path, LISTENER_UNDER_TEST, {"database": {"url": db_url}}, sections
        )
        listener = start_listener(settings, engine, ended=ended)
        running.append(listener)
        return RunningListener(listener, settings, engine)

    yield _start
    for listener in running:
        listener.stop()
