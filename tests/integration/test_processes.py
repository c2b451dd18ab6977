"""Several listener processes share the port (SO_REUSEPORT) under a supervising parent."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.store.db import create_db_engine, upgrade
from appliance.store.models import Instance
from tests.support.datasets import new_series, write_series
from tests.support.dcmtk import dcmtk_env, echoscu, storescu_command
from tests.support.services import ON_SQLITE_ONLY, free_port
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


def appliances(config: Path) -> list[psutil.Process]:
    """Every process running with `config` on its command line (an appliance), and every
    process below one (its children, spawned with a command line of their own)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if str(config) in " ".join(process.info["cmdline"] or []):
                found += [process, *process.children(recursive=True)]
    return [process for process in found if process.is_running()]


def serve_in_own_session(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`python -m appliance serve` as a terminal runs it: its own process group, which a
    closing terminal sends SIGHUP as a whole."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "appliance", "--config", str(config), "serve"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def serving(tmp_path: Path, db_url: str) -> tuple[Path, int, subprocess.Popen[bytes]]:
    """`serve` in its own session, once it answers C-ECHO and its worker child is up."""
    port = free_port()
    config = write_config(
        tmp_path,
        {"listener": {"port": port}, "database": {"url": db_url},
         "dashboard": {"port": free_port()}},
    )  # fmt: skip
    appliance = serve_in_own_session(config, tmp_path / "serve.log")
    wait_for(lambda: echoscu(port).returncode == 0, 60, interval=0.3)
    wait_for(lambda: len(appliances(config)) >= 2, 30)
    return config, port, appliance


@ON_SQLITE_ONLY
def test_a_hangup_stops_serve_cleanly_and_leaves_no_appliance_behind(
    tmp_path: Path, db_url: str
) -> None:
    """Before: serve died without its shutdown, and its Celery worker, restarting on SIGHUP,
    executed the command line again: a second, parentless appliance on the same ports."""
    config, port, appliance = serving(tmp_path, db_url)
    try:
        time.sleep(3)  # its Celery worker ready
        family = appliances(config)
        os.killpg(appliance.pid, signal.SIGHUP)
        assert appliance.wait(timeout=60) == 0
        wait_for(lambda: not any(p.is_running() for p in family), 30)
        time.sleep(2)  # a re-executed appliance would be running again by now
        assert appliances(config) == []
        assert echoscu(port).returncode != 0
    finally:
        for process in appliances(config):
            process.kill()
    assert "stopped" in (tmp_path / "serve.log").read_text()


@ON_SQLITE_ONLY
def test_a_port_already_taken_stops_every_role_started_and_exits_nonzero(
    tmp_path: Path, db_url: str
) -> None:
    """Before: "Address already in use", then a hang that ignored SIGTERM, its worker child
    never stopped."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path,
            {"listener": {"host": "127.0.0.1", "port": port}, "database": {"url": db_url},
             "dashboard": {"port": free_port()}},
        )  # fmt: skip
        appliance = serve_in_own_session(config, tmp_path / "serve.log")
        try:
            assert appliance.wait(timeout=90) != 0
            wait_for(lambda: appliances(config) == [], 30)
        finally:
            for process in appliances(config):
                process.kill()
    assert "Address already in use" in (tmp_path / "serve.log").read_text()


@ON_SQLITE_ONLY
def test_the_children_of_a_killed_serve_stop_with_it(tmp_path: Path, db_url: str) -> None:
    """kill -9 of serve leaves no orphaned worker consuming jobs beside the next appliance."""
    config, _, appliance = serving(tmp_path, db_url)
    try:
        children = [p for p in appliances(config) if p.pid != appliance.pid]
        appliance.kill()
        appliance.wait(timeout=10)
        wait_for(lambda: not any(p.is_running() and p.status() != "zombie" for p in children), 60)
    finally:
        for process in appliances(config):
            process.kill()
