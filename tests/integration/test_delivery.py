"""Delivery to a real PACS (Orthanc) and real DICOM peers: stored and read back, retried while
the PACS is down and delivered exactly once when it comes up, dead letters with reasons."""

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
)
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from appliance.app.delivery import Deliverer
from appliance.app.pipelines import run_frames
from appliance.config import DeliverySettings
from appliance.domain.delivery import DeliveryState
from appliance.domain.findings import SegmentationType
from appliance.inference.backend import OnnxRuntimeBackend
from appliance.inference.catalog import load_catalog
from appliance.phantoms.ct import Grid, generate_ct
from appliance.phantoms.dicom import write_us_cine
from appliance.phantoms.ultrasound import generate_cine
from appliance.results.encode import ct_results, ultrasound_results
from appliance.results.segmentation import Equipment
from appliance.results.validate import CheckedResult
from appliance.store.models import AuditEvent
from tests.support.cli import run_cli
from tests.support.misbehaving_pacs import MisbehavingPacs
from tests.support.orthanc import AE_TITLE, running_orthanc
from tests.support.services import free_port
from tests.support.truth import truth_study

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
EQUIPMENT = Equipment("Appliance project", "DICOM inference appliance", "0.1.0", "test-1")
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[CheckedResult]]:
    """A SEG and an SR from the ultrasound pipeline on a phantom cine."""
    path = write_us_cine(
        generate_cine(300_003, frames=8), tmp_path_factory.mktemp("us") / "cine.dcm"
    )
    catalog = load_catalog(REPOSITORY)
    run = run_frames(catalog.pipelines["us"], catalog, path, OnnxRuntimeBackend(REPOSITORY, 2))
    found = ultrasound_results(run.source, run.findings, EQUIPMENT)
    assert [r.modality for r in found] == ["SEG", "SR"]
    return str(run.source.StudyInstanceUID), found


def settings(
    tmp_path: Path, destinations: list[dict[str, Any]], **retry: float
) -> DeliverySettings:
    return DeliverySettings.model_validate(
        {
            "outbox": str(tmp_path / "outbox"),
            "destinations": destinations,
            "retry_initial_seconds": retry.get("initial", 10),
            "retry_max_seconds": retry.get("maximum", 60),
            "deadline_seconds": retry.get("deadline", 3600),
        }
    )


def dimse(name: str, port: int, ae_title: str = AE_TITLE) -> dict[str, Any]:
    return {"name": name, "ae_title": ae_title, "host": "127.0.0.1", "port": port}


def test_results_reach_orthanc_and_read_back_byte_for_byte(
    results: tuple[str, list[CheckedResult]], engine: Engine, tmp_path: Path
) -> None:
    study, objects = results
    with running_orthanc(tmp_path / "pacs") as pacs:
        deliverer = Deliverer(settings(tmp_path, [dimse("pacs", pacs.dicom_port)]), engine)
        deliverer.queue(objects, study, T0)
        report = deliverer.deliver_due(T0)
        assert (report.delivered, report.retrying, report.dead_letters) == (2, 0, 0)
        assert pacs.sop_instance_uids() == sorted(r.sop_instance_uid for r in objects)
        for identifier in pacs.get("/instances"):
            stored = dcmread(BytesIO(pacs.get(f"/instances/{identifier}/file")))
            sent = next(r for r in objects if r.sop_instance_uid == stored.SOPInstanceUID)
            assert stored.Modality == sent.modality
            assert stored.StudyInstanceUID == study
    rows = deliverer.ledger.rows()
    assert {row.state for row in rows} == {DeliveryState.DELIVERED}
    with Session(engine) as session:
        events = session.scalars(
            select(AuditEvent.event_type).where(AuditEvent.actor == "delivery")
        ).all()
    assert sorted(events) == ["result_delivered"] * 2 + ["result_queued"] * 2


def test_a_pacs_down_at_first_receives_each_result_exactly_once(
    results: tuple[str, list[CheckedResult]], engine: Engine, tmp_path: Path
) -> None:
    study, objects = results
    port = free_port()
    deliverer = Deliverer(settings(tmp_path, [dimse("pacs", port)], initial=10), engine)
    deliverer.queue(objects, study, T0)

    first = deliverer.deliver_due(T0)  # nothing listens on the port yet
    assert (first.delivered, first.retrying) == (0, 2)
    pending = deliverer.ledger.rows(DeliveryState.PENDING)
    assert [row.attempts for row in pending] == [1, 1]
    assert all("Connection refused" in (row.reason or "") for row in pending)
    assert all(row.next_attempt_at == T0 + timedelta(seconds=10) for row in pending)

    with running_orthanc(tmp_path / "pacs", dicom_port=port) as pacs:
        early = deliverer.deliver_due(T0 + timedelta(seconds=5))  # backoff not over: no attempt
        assert (early.delivered, early.retrying) == (0, 0)
        assert pacs.instance_count() == 0
        later = deliverer.deliver_due(T0 + timedelta(seconds=10))
        assert later.delivered == 2
        assert deliverer.deliver_due(T0 + timedelta(seconds=60)).delivered == 0  # nothing due
        # A re-run of the job makes the same UIDs: queued again, the PACS replaces them.
        deliverer.queue(objects, study, T0 + timedelta(seconds=70))
        assert deliverer.deliver_due(T0 + timedelta(seconds=70)).delivered == 2
        assert pacs.instance_count() == 2
        assert pacs.sop_instance_uids() == sorted(r.sop_instance_uid for r in objects)


def test_a_pacs_dropping_the_association_mid_transfer_gets_each_result_once(
    results: tuple[str, list[CheckedResult]], engine: Engine, tmp_path: Path
) -> None:
    study, objects = results
    pacs = MisbehavingPacs(abort_next=1)
    try:
        deliverer = Deliverer(settings(tmp_path, [dimse("misfit", pacs.port, "MISFIT")]), engine)
        deliverer.queue(objects, study, T0)
        first = deliverer.deliver_due(T0)
        assert (first.delivered, first.retrying) == (0, 2)
        (row, _) = deliverer.ledger.rows(DeliveryState.PENDING)
        assert row.reason is not None
        assert "abort" in row.reason.lower(), row.reason
        later = deliverer.deliver_due(T0 + timedelta(seconds=10))
    finally:
        pacs.stop()
    assert later.delivered == 2
    assert sorted(pacs.stored) == sorted(r.sop_instance_uid for r in objects)


def test_a_pacs_too_slow_to_answer_is_retried_until_it_answers_in_time(
    results: tuple[str, list[CheckedResult]], engine: Engine, tmp_path: Path
) -> None:
    study, objects = results
    pacs = MisbehavingPacs(delay=3.0)
    destination = {**dimse("misfit", pacs.port, "MISFIT"), "timeout_seconds": 1.0}
    try:
        deliverer = Deliverer(settings(tmp_path, [destination]), engine)
        deliverer.queue(objects[:1], study, T0)
        first = deliverer.deliver_due(T0)
        (row,) = deliverer.ledger.rows(DeliveryState.PENDING)
        pacs.delay = 0.0
        later = deliverer.deliver_due(T0 + timedelta(seconds=10))
    finally:
        pacs.stop()
    assert (first.delivered, first.retrying) == (0, 1)
    assert row.reason == "association with MISFIT broke: timed out"
    assert later.delivered == 1
    # The slow answer may have stored it before the timeout: a PACS keeps one instance per
    # SOP Instance UID, so the second store replaces the first.
    assert set(pacs.stored) == {objects[0].sop_instance_uid}


def test_a_failure_status_leaves_a_dead_letter_with_the_reason(
    results: tuple[str, list[CheckedResult]], engine: Engine, tmp_path: Path
) -> None:
    study, objects = results
    pacs = MisbehavingPacs(refuse_sr=True)
    try:
        deliverer = Deliverer(settings(tmp_path, [dimse("refuser", pacs.port, "MISFIT")]), engine)
        deliverer.queue(objects, study, T0)
        report = deliverer.deliver_due(T0)
    finally:
        pacs.stop()
    assert (report.delivered, report.retrying, report.dead_letters) == (1, 0, 1)
    assert len(pacs.received) == 2  # one association, both sent
    (dead,) = deliverer.ledger.rows(DeliveryState.DEAD_LETTER)
    assert dead.sop_class_uid == Comprehensive3DSRStorage
    assert dead.last_status == 0xA900
    assert dead.reason == "refused: 0xA900 Error: data set does not match SOP Class"
    assert deliverer.deliver_due(T0 + timedelta(hours=1)).dead_letters == 0  # never retried


def test_an_unreachable_pacs_becomes_a_dead_letter_at_the_deadline(
    results: tuple[str, list[CheckedResult]], engine: Engine, tmp_path: Path
) -> None:
    study, objects = results
    delivery = settings(tmp_path, [dimse("gone", free_port())], initial=10, maximum=20, deadline=75)
    deliverer = Deliverer(delivery, engine)
    deliverer.queue(objects[:1], study, T0)
    waits = []
    now = T0
    while deliverer.ledger.rows(DeliveryState.PENDING):
        deliverer.deliver_due(now)
        (row,) = deliverer.ledger.rows()
        waits.append((row.next_attempt_at - now).total_seconds())
        now = row.next_attempt_at
    (dead,) = deliverer.ledger.rows(DeliveryState.DEAD_LETTER)
    assert waits[:4] == [10, 20, 20, 20]  # doubling, capped at the maximum
    # Attempts at 0, 10, 30, 50 and 70 s; the next would be at 90 s, past the 75 s deadline.
    assert dead.attempts == 5
    assert dead.reason is not None
    assert dead.reason.startswith("deadline passed after 5 attempts")
    assert "Connection refused" in dead.reason


def test_stow_rs_to_orthanc_dicomweb(
    results: tuple[str, list[CheckedResult]], engine: Engine, tmp_path: Path
) -> None:
    study, objects = results
    with running_orthanc(tmp_path / "pacs", dicomweb=True) as pacs:
        delivery = settings(tmp_path, [{"name": "web", "kind": "stow", "url": pacs.dicomweb_url}])
        deliverer = Deliverer(delivery, engine)
        assert deliverer.check(delivery.destinations[0]) == "HTTP 200"
        deliverer.queue(objects, study, T0)
        assert deliverer.deliver_due(T0).delivered == 2
        assert pacs.sop_instance_uids() == sorted(r.sop_instance_uid for r in objects)


def test_echo_reports_health(engine: Engine, tmp_path: Path) -> None:
    with running_orthanc(tmp_path / "pacs") as pacs:
        delivery = settings(tmp_path, [dimse("pacs", pacs.dicom_port)])
        assert (
            Deliverer(delivery, engine).check(delivery.destinations[0]) == "C-ECHO 0x0000 Success"
        )


def test_operator_commands(results: tuple[str, list[CheckedResult]], tmp_path: Path) -> None:
    _, objects = results
    files = []
    for result in objects:
        files.append(tmp_path / f"{result.sop_instance_uid}.dcm")
        files[-1].write_bytes(result.encoded)
    config = tmp_path / "appliance.yaml"
    with running_orthanc(tmp_path / "pacs") as pacs:
        config.write_text(
            yaml.safe_dump(
                {
                    "database": {"url": f"sqlite:///{tmp_path}/appliance.db"},
                    "delivery": {
                        "outbox": str(tmp_path / "outbox"),
                        "destinations": [dimse("pacs", pacs.dicom_port)],
                    },
                }
            )
        )
        assert run_cli(config, "db", "upgrade").returncode == 0
        checked = run_cli(config, "destinations", "check")
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.strip() == "pacs: C-ECHO 0x0000 Success"
        sent = run_cli(config, "send", *map(str, files))
        assert sent.returncode == 0, sent.stderr
        assert "delivered 2, retrying 0, dead letters 0" in sent.stdout
        assert pacs.instance_count() == 2
    listed = run_cli(config, "outbox", "list", "--json")
    assert {row["state"] for row in json.loads(listed.stdout)} == {"delivered"}
    down = run_cli(config, "destinations", "check")
    assert down.returncode == 4
    assert down.stdout.startswith("pacs: DOWN")


def test_orthanc_stores_a_label_map_seg(engine: Engine, tmp_path: Path) -> None:
    """Orthanc 1.10 predates the Label Map SEG class, and stores it only because the test's
    configuration sets UnknownSopClassAccepted; it is offered and taken in RLE Lossless."""
    phantom = generate_ct(12, Grid((24, 64, 64), (5.0, 5.0, 5.0)))
    sources, findings = truth_study(phantom, tmp_path / "ct", "ct_organs")
    objects = ct_results(sources, findings, SegmentationType.LABELMAP, EQUIPMENT)
    with running_orthanc(tmp_path / "pacs") as pacs:
        deliverer = Deliverer(settings(tmp_path, [dimse("pacs", pacs.dicom_port)]), engine)
        deliverer.queue(objects, str(sources[0].StudyInstanceUID), T0)
        assert deliverer.deliver_due(T0).delivered == 2
        stored = {
            pacs.get(f"/instances/{i}/simplified-tags")["SOPClassUID"]
            for i in pacs.get("/instances")
        }
    assert stored == {"1.2.840.10008.5.1.4.1.1.66.7", Comprehensive3DSRStorage}


def test_two_senders_at_once_send_each_result_once(
    results: tuple[str, list[CheckedResult]], engine: Engine, tmp_path: Path
) -> None:
    """A worker and the sweeper delivering at the same moment: each result is claimed by one
    of them just before it goes out, so the wire carries it once."""
    study, objects = results
    pacs = MisbehavingPacs(delay=1.0)  # both have read the due rows before either answer
    try:
        delivery = settings(tmp_path, [dimse("pacs", pacs.port, "MISFIT")])
        senders = [Deliverer(delivery, engine), Deliverer(delivery, engine)]
        senders[0].queue(objects, study, T0)
        with ThreadPoolExecutor(len(senders)) as pool:
            reports = list(pool.map(lambda sender: sender.deliver_due(T0), senders))
    finally:
        pacs.stop()
    assert sorted(pacs.received) == sorted(r.sop_instance_uid for r in objects)
    assert sum(report.delivered for report in reports) == 2
    assert {row.state for row in senders[0].ledger.rows()} == {DeliveryState.DELIVERED}
