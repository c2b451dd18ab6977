"""Load (tests/support/load.py): sixteen senders hold sixteen associations at once against the
listener while the dashboard is polled; nothing acknowledged is lost, no association or
instance is refused, and no role's memory grows. bench/load.py runs the same for minutes and
prints the latency percentiles and peak memory."""

from pathlib import Path

from tests.support.load import run_load

SENDERS = 16


def test_sixteen_associations_and_a_polled_dashboard_lose_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    report = run_load(tmp_path, postgres_url, senders=SENDERS, seconds=15)

    assert report.most_concurrent == SENDERS
    assert report.lost == []
    # stored can exceed acknowledged by a response a stalled sender never read
    assert SENDERS * 40 < report.acknowledged <= report.stored
    # pynetdicom as a sender now and then waits out its 30 s DIMSE timeout for a response
    # (against dcmtk's storescp too), then aborts and reconnects: the only failures allowed.
    aborted = sum(sender.aborted_associations for sender in report.senders)
    assert sum(sender.failed for sender in report.senders) <= aborted
    assert sum(sender.refused_associations for sender in report.senders) <= aborted, (
        report.refusal_reasons
    )
    assert report.dashboard_errors == 0
    assert len(report.dashboard_seconds) >= 10
    for role, memory in report.memory.items():
        assert len(memory.samples) >= 10, role
        assert memory.growth() < 0.25 * memory.peak, (role, memory.samples)
