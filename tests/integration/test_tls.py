"""DICOM TLS with mutual authentication, against dcmtk's storescu as the TLS client."""

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from appliance.app.delivery import Deliverer
from appliance.config import DeliverySettings, DestinationSettings
from appliance.results.validate import check
from appliance.store.models import Association, AuditEvent
from tests.support.datasets import new_series, write_series
from tests.support.dcmtk import dcmtk_env, storescu
from tests.support.pki import hospital_pki
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("dcmtk")


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    leaves = {"server": "hospital-ca", "pacs": "hospital-ca", "impostor": "rogue-ca"}
    return hospital_pki(tmp_path / "pki", leaves)


def mutual_tls(pki: Path) -> dict[str, object]:
    """Listener TLS settings that require a client certificate signed by the hospital CA."""
    return {
        "enabled": True,
        "certificate": str(pki / "server.pem"),
        "private_key": str(pki / "server.key"),
        "ca_certificates": str(pki / "hospital-ca.pem"),
        "require_client_certificate": True,
    }


def tls_storescu(
    port: int, pki: Path, files: list[Path], *client: str
) -> subprocess.CompletedProcess[str]:
    """storescu over TLS, trusting the hospital CA; `client`: its own certificate options."""
    return storescu(port, files, *client, "+cf", str(pki / "hospital-ca.pem"))


def test_mutual_tls(start, pki: Path, tmp_path: Path) -> None:
    running = start(listener={"tls": mutual_tls(pki)})
    files = write_series(new_series(2), tmp_path / "in")

    trusted = tls_storescu(
        running.port, pki, files, "+tls", str(pki / "pacs.key"), str(pki / "pacs.pem")
    )
    impostor = tls_storescu(
        running.port, pki, files, "+tls", str(pki / "impostor.key"), str(pki / "impostor.pem")
    )
    anonymous = tls_storescu(running.port, pki, files, "+tla")
    plain = subprocess.run(
        ["echoscu", "-aet", "STORESCU", "-aec", "APPLIANCE", "127.0.0.1", str(running.port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert trusted.returncode == 0, trusted.stderr
    assert impostor.returncode != 0
    assert anonymous.returncode != 0
    assert plain.returncode != 0
    assert len(list(running.spool.rglob("*.dcm"))) == 2
    # A refused peer may hang up before its refusal is written.
    refusals = wait_for(lambda: refused_associations(running.engine, 3), 10)
    with Session(running.engine) as session:
        associations = list(session.scalars(select(Association)))
    assert [a.tls for a in associations] == [True]
    assert len(refusals) == 3
    assert all("TLS handshake failed" in (r.detail or "") for r in refusals)


def test_results_go_out_over_mutual_tls(start, pki: Path, tmp_path: Path) -> None:
    """The delivery SCU as the TLS client, with the listener as the receiving node."""
    running = start(listener={"tls": mutual_tls(pki)})
    datasets = [dcmread(path) for path in write_series(new_series(2), tmp_path / "in")]
    checked = [check(dataset, [dataset]) for dataset in datasets]
    study = str(datasets[0].StudyInstanceUID)
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    def deliverer(client: str) -> tuple[Deliverer, DestinationSettings]:
        destination = {
            "name": "node", "ae_title": "APPLIANCE", "host": "127.0.0.1", "port": running.port,
            "tls": True, "ca_certificates": str(pki / "hospital-ca.pem"),
            "certificate": str(pki / f"{client}.pem"), "private_key": str(pki / f"{client}.key"),
        }  # fmt: skip
        settings = DeliverySettings.model_validate(
            {
                "outbox": str(tmp_path / client),
                "calling_ae_title": "PYSCU",
                "destinations": [destination],
            }
        )
        return Deliverer(settings, running.engine), settings.destinations[0]

    impostor, _ = deliverer("impostor")
    impostor.queue(checked, study, now)
    refused = impostor.deliver_due(now)
    assert (refused.delivered, refused.retrying) == (0, 2)
    assert all(
        "may not trust our client certificate" in (row.reason or "")
        for row in impostor.ledger.rows()
    )
    assert list(running.spool.rglob("*.dcm")) == []

    trusted, node = deliverer("pacs")
    assert trusted.check(node) == "C-ECHO 0x0000 Success"
    trusted.queue(checked, study, now)  # the same UIDs: the rows are queued afresh
    report = trusted.deliver_due(now)
    assert report.delivered == 2
    assert len(list(running.spool.rglob("*.dcm"))) == 2


def refused_associations(engine: Engine, at_least: int) -> list[AuditEvent]:
    """The refused associations' audit events, once there are `at_least` (else empty)."""
    with Session(engine) as session:
        refusals = list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.event_type == "association_refused")
            )
        )
    return refusals if len(refusals) >= at_least else []
