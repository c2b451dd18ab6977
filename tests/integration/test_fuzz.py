"""Hostile and broken DICOM (tests/support/fuzzing.py): a few hundred mutated instances through a
real association to `appliance listen` and through the pipelines' entry points. bench/fuzz.py runs
ten thousand and more.

Hypothesis draws new cases on every run; a failure prints the case that caused it."""

from collections import Counter
from pathlib import Path

import hypothesis
import pytest
from hypothesis import HealthCheck, Phase
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.store.db import create_db_engine, upgrade
from appliance.store.models import AuditEvent, Instance
from tests.support.dcmtk import echoscu
from tests.support.fuzzing import (
    AssociationTally,
    Case,
    PipelineTally,
    Sender,
    cases,
    feed_pipeline,
)
from tests.support.listener_kills import CALLING_AE, listener_layer, start_listener
from tests.support.services import free_port
from tests.support.settings import write_config

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # pydicom warns on every bad value
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning"),
]
CASES = 300
FUZZ = hypothesis.settings(
    max_examples=CASES,
    deadline=None,
    database=None,
    phases=[Phase.generate],  # no shrinking: a failure is reported with its case as drawn
    suppress_health_check=list(HealthCheck),
)


def test_mutated_instances_never_crash_the_pipeline_entry_points(tmp_path: Path) -> None:
    tally = PipelineTally()

    @FUZZ
    @hypothesis.given(case=cases())
    def feed(case: Case) -> None:
        feed_pipeline(case, tmp_path, tally)

    feed()
    assert tally.cases == CASES
    assert tally.crashes == []
    assert sum(tally.refused.values()) >= CASES // 4, tally.refused  # the mutations bite
    assert set(tally.refused) <= {"UnsupportedSeries", "UnsupportedFrames", "InvalidDicomError"}


def test_mutated_instances_over_an_association_each_get_a_status_and_a_recorded_reason(
    tmp_path: Path, db_url: str
) -> None:
    port = free_port()
    engine = create_db_engine(db_url)
    upgrade(engine)
    listener = start_listener(write_config(tmp_path, listener_layer(port, db_url)), port)
    tally = AssociationTally()
    sender = Sender(port, tmp_path, CALLING_AE, per_association=100)

    @FUZZ
    @hypothesis.given(case=cases())
    def feed(case: Case) -> None:
        sender.send(case, tally)

    try:
        feed()
        sender.close()
        assert listener.poll() is None, "the listener died"
        assert echoscu(port, calling=CALLING_AE).returncode == 0
    finally:
        listener.terminate()
        listener.wait(timeout=30)

    assert tally.unanswered == []
    assert tally.cases == CASES
    assert tally.refused >= 1
    assert tally.unsendable < CASES // 10
    with Session(engine) as session:
        events = list(session.execute(select(AuditEvent.event_type, AuditEvent.detail)))
        stored = session.scalar(select(func.count()).select_from(Instance)) or 0
    engine.dispose()
    rejected = [detail for kind, detail in events if kind == "instance_rejected"]
    assert len(rejected) == tally.refused
    assert all(reason for reason in rejected)
    kinds = Counter(kind for kind, _ in events)
    assert stored == kinds["instance_stored"]
    # hypothesis draws the same SOP Instance UID now and then: a duplicate, kept first
    assert kinds["instance_stored"] + kinds["instance_duplicate"] == tally.statuses[0]
