"""Several listener processes share the port (SO_REUSEPORT) under a supervising parent."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.audit.db import create_db_engine, upgrade
from appliance.audit.models import Instance
from tests.conftest import dcmtk_env, echoscu
from tests.factory import new_series, write_series
from tests.integration.test_crash import free_port

pytestmark = pytest.mark.usefixtures("dcmtk")


def wait_until(condition, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_two_processes_share_the_port_and_are_restarted(tmp_path: Path, db_url: str) -> None:
    port = free_port()
    config = tmp_path / "appliance.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listener": {"host": "127.0.0.1", "port": port, "processes": 2},
                "spool": {"path": str(tmp_path / "spool")},
                "database": {"url": db_url},
            }
        )
    )
    engine = create_db_engine(db_url)
    upgrade(engine)
    parent = subprocess.Popen(
        [sys.executable, "-m", "appliance", "--config", str(config), "listen"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def workers() -> list[psutil.Process]:
            alive = []
            for child in psutil.Process(parent.pid).children():
                try:
                    if "spawn_main" in " ".join(child.cmdline()):
                        alive.append(child)
                except psutil.Error:  # exited, not yet reaped by the supervisor
                    continue
            return alive

        wait_until(lambda: len(workers()) == 2 and echoscu(port).returncode == 0)
        files = write_series(new_series(80), tmp_path / "in")
        senders = [
            subprocess.Popen(
                [
                    "storescu",
                    "-R",
                    "-aet",
                    "STORESCU",
                    "-aec",
                    "APPLIANCE",
                    "127.0.0.1",
                    str(port),
                    *map(str, files[i::4]),
                ],
                env=dcmtk_env(),
            )
            for i in range(4)
        ]
        assert [sender.wait(timeout=120) for sender in senders] == [0, 0, 0, 0]

        victim = workers()[0].pid
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(workers()) == 2 and victim not in [p.pid for p in workers()])
        wait_until(lambda: echoscu(port).returncode == 0)
    finally:
        parent.send_signal(signal.SIGTERM)
        _, log = parent.communicate(timeout=30)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 80
    assert "listener-0 exited" in log or "listener-1 exited" in log
    assert parent.returncode == 0
    engine.dispose()
