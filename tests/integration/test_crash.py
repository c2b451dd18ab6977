"""Crash safety: SIGKILL the listener again and again while three senders push studies; every
acknowledged instance must survive, and every instance whose Success never arrived is sent
again and ends up stored once. bench/kills.py runs the same for a hundred kills and more."""

from pathlib import Path

from tests.support.listener_kills import kill_repeatedly
from tests.support.services import free_port

KILLS = 6


def test_repeated_sigkills_lose_no_acknowledged_instance(tmp_path: Path, db_url: str) -> None:
    report = kill_repeatedly(
        tmp_path,
        free_port(),
        db_url,
        senders=3,
        studies_per_sender=2,
        instances_per_study=150,
        kills=KILLS,
        seed=20261125,
    )

    assert report.kills == KILLS, "the senders finished before the kills did"
    assert report.cut_associations >= 1, "no kill landed mid-transfer"
    assert report.resent >= 1
    assert report.lost == []
    assert report.mismatched == []
    assert report.acknowledged == report.instances
    assert report.database_rows == report.distinct_instances == report.instances
    assert report.spool_files == report.instances
    assert report.leftover_parts == 0
