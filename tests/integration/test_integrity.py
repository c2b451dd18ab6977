"""Spool verification finds missing, corrupted and orphaned files, and nothing else."""

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.app.integrity import verify_spool
from tests.support.datasets import new_series, write_series
from tests.support.dcmtk import storescu

pytestmark = pytest.mark.usefixtures("dcmtk")


def test_verify_spool(start, tmp_path: Path) -> None:
    running = start()
    assert storescu(running.port, write_series(new_series(4), tmp_path / "in")).returncode == 0
    now = datetime.now(UTC)
    healthy = verify_spool(running.engine, running.spool, now)
    assert healthy.checked == 4
    assert healthy.healthy

    files = sorted(running.spool.rglob("*.dcm"))
    files[0].unlink()
    data = bytearray(files[1].read_bytes())
    data[-1] ^= 0xFF
    files[1].write_bytes(bytes(data))
    orphan = files[2].parent / "1.2.3.4.dcm"
    orphan.write_bytes(files[2].read_bytes())
    young = files[2].parent / "1.2.3.5.dcm"
    young.write_bytes(b"arriving")
    old = (now - timedelta(hours=2)).timestamp()
    os.utime(orphan, (old, old))

    report = verify_spool(running.engine, running.spool, now)

    relative = [str(p.relative_to(running.spool)) for p in files]
    assert report.missing == [relative[0]]
    assert report.corrupted == [relative[1]]
    assert report.orphans == [str(orphan.relative_to(running.spool))]
    assert not verify_spool(running.engine, running.spool, now, hashes=False).corrupted
