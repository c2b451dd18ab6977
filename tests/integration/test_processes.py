"""Several listener processes share the port (SO_REUSEPORT) under a supervising parent."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.store.db import create_db_engine, upgrade
from appliance.store.models import Instance
from tests.support.datasets import new_series, write_series
from tests.support.dcmtk import dcmtk_env, echoscu, storescu_command
from tests.support.services import free_port
from tests.support.settings import write_config
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("dcmtk")


def test_two_processes_share_the_port_and_are_restarted(tmp_path: Path, db_url: str) -> None:
    port = free_port()
    config = write_config(
        tmp_path, {"listener": {"port": port, "processes": 2}, "database": {"url": db_url}}
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

        wait_for(lambda: len(workers()) == 2 and echoscu(port).returncode == 0, 30)
        files = write_series(new_series(80), tmp_path / "in")
        senders = [
            subprocess.Popen(storescu_command(port, files[i::4]), env=dcmtk_env()) for i in range(4)
        ]
        assert [sender.wait(timeout=120) for sender in senders] == [0, 0, 0, 0]

        victim = workers()[0].pid
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(workers()) == 2 and victim not in [p.pid for p in workers()], 30)
        wait_for(lambda: echoscu(port).returncode == 0, 30)
    finally:
        parent.send_signal(signal.SIGTERM)
        _, log = parent.communicate(timeout=30)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 80
    assert "listener-0 exited" in log or "listener-1 exited" in log
    assert parent.returncode == 0
    engine.dispose()
