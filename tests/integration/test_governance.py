"""Governance on a real database and a real PACS: a shadow pipeline runs beside the enabled one
and keeps its results without delivering them; a disabled pipeline is passed over; a disabled
model version disables every pipeline that runs it; each change is audited under the
operator's name; `rules dry-run` replays routing of the stored studies and changes nothing."""

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from appliance.app.catalog import Governor
from appliance.app.delivery import Deliverer
from appliance.app.job_runner import JobRunner
from appliance.app.rules import dry_run
from appliance.domain.delivery import DeliveryState
from appliance.domain.jobs import JobState
from appliance.domain.pipelines import ModelRef, State
from appliance.domain.routing import RouteRule
from appliance.inference.backend import OnnxRuntimeBackend
from appliance.phantoms.dicom import write_us_cine
from appliance.phantoms.ultrasound import generate_cine
from appliance.store.models import AuditEvent, Delivery, Job
from appliance.store.study_ledger import StudyLedger
from tests.support.dcmtk import storescu
from tests.support.misbehaving_pacs import MisbehavingPacs
from tests.support.services import ON_SQLITE_ONLY
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("dcmtk")
REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
CANDIDATE = """name: us_candidate
description: The same model, on trial
state: shadow
stages:
  - name: frames
    kind: frames
    model: {name: us_frame, version: 1}
    measurements: [area]
"""


@pytest.fixture
def governed(start, tmp_path: Path) -> Any:  # type: ignore[no-untyped-def]
    """A listener whose repository holds the reference models and `us_candidate`, a shadow
    pipeline of the same model; rules send cines to `us`, and to `us_candidate` beside it."""
    repository = tmp_path / "repository"
    shutil.copytree(REPOSITORY, repository)
    (repository / "us_candidate.pipeline.yaml").write_text(CANDIDATE)
    pacs = MisbehavingPacs()
    running = start(
        inference={"repository": str(repository), "threads": 2},
        routing={
            "rules": [
                {"name": "cine", "pipeline": "us", "sop_classes": [US_MULTIFRAME]},
                {"name": "trial", "pipeline": "us_candidate", "sop_classes": [US_MULTIFRAME]},
            ]
        },
        delivery={
            "destinations": [
                {"name": "pacs", "ae_title": "MISFIT", "host": "127.0.0.1", "port": pacs.port}
            ]
        },
    )
    running.pacs = pacs
    running.governor = Governor(repository, running.engine)
    yield running
    pacs.stop()


def job_for(running: Any, path: Path, seed: int) -> int:
    """A job for one cine sent by storescu, once the listener has recorded the association's
    end (written just after storescu has its release, so a test counting rows could see it
    land later)."""
    ended = len(audited(running.engine, "association_ended"))
    cine = write_us_cine(generate_cine(seed, frames=6), path)
    assert storescu(running.port, [cine]).returncode == 0
    wait_for(lambda: len(audited(running.engine, "association_ended")) > ended, 10)
    studies = StudyLedger(running.engine, running.settings.study.completion_policy())
    studies.fold_pending(datetime.now(UTC))
    uid = str(dcmread(cine).StudyInstanceUID)
    return studies.force_complete(uid, datetime.now(UTC), "test").job_id


def deliveries(engine: Engine, job_id: int) -> dict[str, int]:
    with Session(engine) as session:
        rows = session.execute(
            select(Delivery.state, func.count())
            .where(Delivery.job_id == job_id)
            .group_by(Delivery.state)
        ).all()
    return {state: count for state, count in rows}


def audited(engine: Engine, event_type: str) -> list[AuditEvent]:
    with Session(engine) as session:
        query = select(AuditEvent).where(AuditEvent.event_type == event_type)
        return list(session.scalars(query.order_by(AuditEvent.id)))


@ON_SQLITE_ONLY
def test_a_shadow_pipeline_keeps_its_results_and_delivers_none(
    governed: Any, tmp_path: Path
) -> None:
    job = job_for(governed, tmp_path / "one.dcm", 300_201)
    runner = JobRunner(governed.settings, governed.engine)
    assert runner.run(job) is JobState.DELIVERING
    deliverer = Deliverer(governed.settings.delivery, governed.engine)
    assert deliverer.deliver_due(datetime.now(UTC)).delivered == 3  # us: SEG, SR, outlined cine
    assert runner.jobs.settle_deliveries(datetime.now(UTC)) == [(job, JobState.DONE)]
    assert deliveries(governed.engine, job) == {
        DeliveryState.DELIVERED.value: 3,
        DeliveryState.SHADOW.value: 3,  # us_candidate: SEG, SR and outlined cine, kept
    }
    assert len(governed.pacs.received) == 3
    kept = audited(governed.engine, "result_kept")
    assert len(kept) == 3
    assert all((tmp_path / "outbox").joinpath(e.study_instance_uid or "").is_dir() for e in kept)
    # A re-send is the operator's; it resends what was delivered, never what was kept.
    runner.jobs.resend(job, datetime.now(UTC), "otto")
    assert deliveries(governed.engine, job)[DeliveryState.SHADOW.value] == 3
    changes = [e.detail or "" for e in audited(governed.engine, "job_state")]
    assert any("3 results, 3 kept in shadow" in change for change in changes), changes


@ON_SQLITE_ONLY
def test_disabling_passes_a_pipeline_over_and_is_audited(governed: Any, tmp_path: Path) -> None:
    governor = governed.governor
    assert governor.set_pipeline("us", State.DISABLED, "console:otto") is State.ENABLED
    job = job_for(governed, tmp_path / "two.dcm", 300_202)
    runner = JobRunner(governed.settings, governed.engine)
    assert runner.run(job) is JobState.FAILED  # only the shadow pipeline would take it
    with Session(governed.engine) as session:
        reason = session.scalar(select(Job.reason).where(Job.id == job)) or ""
    assert "no routing rule takes any series" in reason

    assert governor.set_pipeline("us", State.ENABLED, "console:otto") is State.DISABLED
    assert governor.set_model(ModelRef("us_frame", 1), State.DISABLED, "ada") is State.ENABLED
    states = {row.name: row.effective for row in governor.pipelines()}
    assert states["us"] == states["us_candidate"] == "disabled"
    assert states["ct"] == "enabled"
    changes = audited(governed.engine, "governance_changed")
    assert [(e.actor, e.detail) for e in changes] == [
        ("console:otto", "pipeline us: enabled -> disabled"),
        ("console:otto", "pipeline us: disabled -> enabled"),
        ("ada", "model us_frame v1: enabled -> disabled"),
    ]


def test_a_dry_run_replays_routing_and_changes_nothing(governed: Any, tmp_path: Path) -> None:
    job_for(governed, tmp_path / "three.dcm", 300_203)
    current = governed.settings.routing.route_rules()
    candidate = [RouteRule("cine", "us_candidate", sop_classes=frozenset({US_MULTIFRAME}))]
    with Session(governed.engine) as session:
        before = session.scalar(select(func.count()).select_from(AuditEvent))
    since = datetime.now(UTC) - timedelta(days=1)
    result = dry_run(governed.engine, governed.governor, current, candidate, since)
    assert (result.studies, result.series) == (1, 1)
    (change,) = result.changes
    assert (change.modality, change.now) == ("US", "us + shadow us_candidate")
    assert change.candidate == "shadow us_candidate"
    assert dry_run(governed.engine, governed.governor, current, current, since).changes == []
    with Session(governed.engine) as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == before


class _Recording:
    """The worker's backend, recording which models run and on what."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.runs: list[tuple[ModelRef, tuple[int, ...]]] = []

    def ready(self, model: ModelRef) -> bool:
        return bool(self._backend.ready(model))

    def metadata(self, model: ModelRef) -> Any:
        return self._backend.metadata(model)

    def infer(self, model: ModelRef, batch: Any) -> Any:
        self.runs.append((model, tuple(batch.shape)))
        return self._backend.infer(model, batch)


@ON_SQLITE_ONLY
def test_a_worker_warms_the_models_in_service_and_not_a_disabled_pipelines(
    governed: Any,
) -> None:
    """Each model of an enabled or shadow pipeline runs once before the first job, the real
    model on a batch of one; a model only a disabled pipeline runs is left cold."""
    backend = _Recording(OnnxRuntimeBackend(governed.settings.inference.repository, threads=1))
    runner = JobRunner(governed.settings, governed.engine, backend=backend)
    assert runner.warm() == 3
    assert sorted(model.name for model, _ in backend.runs) == ["lesion_ct", "organ_ct", "us_frame"]
    assert all(shape[0] == 1 for _, shape in backend.runs)
    governed.governor.set_pipeline("ct", State.DISABLED, "console:otto")
    governed.governor.set_pipeline("ct_organs", State.DISABLED, "console:otto")
    backend.runs.clear()
    assert runner.warm() == 1
    assert [model.name for model, _ in backend.runs] == ["us_frame"]
