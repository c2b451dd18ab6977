"""Crash safety: SIGKILL the listener mid-transfer; every acknowledged instance must survive.

The sender's own record of Success responses is the ground truth. After each kill the listener
restarts, the sender re-sends what was not acknowledged, and every instance ends stored once.
"""

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.audit.db import create_db_engine, upgrade
from appliance.audit.models import Instance
from tests.conftest import free_port
from tests.factory import dataset_bytes, new_series, write_series
from tests.scu import associate, send_files

ROUNDS = 3
INSTANCES_PER_ROUND = 300


def start_listener_process(config: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "--config", str(config), "listen"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assoc = ae.associate("127.0.0.1", port, ae_title="APPLIANCE")
        if assoc.is_established:
            assoc.release()
            return process
        time.sleep(0.1)
    process.kill()
    raise AssertionError("listener did not start")


def send(port: int, paths: list[Path], acknowledged: list[Path]) -> None:
    """Send until the association dies; append each path whose Success response arrived."""
    assoc = associate(port, [(CTImageStorage, ["1.2.840.10008.1.2.1"])])
    if not assoc.is_established:
        return
    send_files(assoc, paths, acknowledged)
    if assoc.is_established:
        assoc.release()


def test_sigkill_mid_transfer_loses_no_acknowledged_instance(tmp_path: Path, db_url: str) -> None:
    port = free_port()
    config = tmp_path / "appliance.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listener": {
                    "host": "127.0.0.1",
                    "port": port,
                    "peers": [{"ae_title": "PYSCU", "hosts": ["127.0.0.1"]}],
                },
                "spool": {"path": str(tmp_path / "spool")},
                "database": {"url": db_url},
            }
        )
    )
    engine = create_db_engine(db_url)
    upgrade(engine)
    rng = random.Random(20261124)
    all_sent: list[Path] = []
    kills = 0
    for round_index in range(ROUNDS):
        paths = write_series(new_series(INSTANCES_PER_ROUND), tmp_path / f"round{round_index}")
        all_sent += paths
        acknowledged: list[Path] = []
        listener = start_listener_process(config, port)
        sender = threading.Thread(target=send, args=(port, paths, acknowledged))
        sender.start()
        kill_after = rng.randint(20, INSTANCES_PER_ROUND - 50)
        while len(acknowledged) < kill_after and sender.is_alive():
            time.sleep(0.002)
        os.kill(listener.pid, signal.SIGKILL)
        listener.wait()
        kills += 1
        sender.join(timeout=60)
        assert 0 < len(acknowledged) < INSTANCES_PER_ROUND, "the kill must land mid-transfer"

        with Session(engine) as session:
            stored = {
                row.sop_instance_uid: row.path
                for row in session.execute(select(Instance.sop_instance_uid, Instance.path))
            }
        for path in acknowledged:
            uid = path.stem
            assert uid in stored, f"acknowledged instance {uid} lost"
            assert dataset_bytes(tmp_path / "spool" / stored[uid]) == dataset_bytes(path)

        listener = start_listener_process(config, port)
        try:
            resent: list[Path] = []
            remaining = [p for p in paths if p not in acknowledged]
            send(port, remaining, resent)
            assert resent == remaining
        finally:
            listener.terminate()
            listener.wait(timeout=30)

    with Session(engine) as session:
        uids = list(session.scalars(select(Instance.sop_instance_uid)))
    assert kills == ROUNDS
    assert sorted(uids) == sorted(p.stem for p in all_sent)
    assert len(list((tmp_path / "spool").rglob("*.dcm"))) == len(all_sent)
    assert not list((tmp_path / "spool" / ".incoming").glob("*.part"))
    engine.dispose()
