"""The appliance end to end on its embedded defaults: a real Orthanc auto-routes a stable
study to `appliance serve` (listener, sweeper and a Celery worker on kombu's SQLite
transport), and receives the SEG and SR back into the same study, untouched by anyone."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from pydicom import dcmread

from appliance.inference.triton_cpu import CpuTritonServer, TritonUnavailable
from appliance.phantoms.dicom import write_us_cine
from appliance.phantoms.ultrasound import generate_cine
from tests.conftest import free_port, missing_service, storescu
from tests.orthanc import AE_TITLE, Orthanc, running_orthanc

pytestmark = pytest.mark.usefixtures("dcmtk")
REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
REDIS_DB = 13  # a database of its own on the machine's Redis, flushed before and after


@pytest.fixture(params=["embedded", "redis+postgresql", "triton"])
def mode(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Settings that differ per way of running: the embedded defaults; production's broker and
    database; inference through the real Triton server."""
    if request.param == "embedded":
        yield {}
    elif request.param == "redis+postgresql":
        try:
            client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_timeout=3)
            client.flushdb()
        except redis.RedisError as exc:
            missing_service(f"Redis on 127.0.0.1:6379: {exc}")
        yield {
            "database": {"url": request.getfixturevalue("postgres_url")},
            "queue": {"broker_url": f"redis://127.0.0.1:6379/{REDIS_DB}"},
        }
        client.flushdb()
    else:
        server = CpuTritonServer(REPOSITORY, tmp_path / "triton")
        try:
            server.start()
        except TritonUnavailable as exc:
            missing_service(str(exc))
        yield {
            "inference": {
                "backend": "triton",
                "triton_url": f"127.0.0.1:{server.grpc_port}",
                "triton_protocol": "grpc",
            }
        }
        server.stop()


def serve(
    tmp_path: Path, port: int, pacs_port: int, overrides: dict[str, Any]
) -> subprocess.Popen[bytes]:
    config = tmp_path / "appliance.yaml"
    tree: dict[str, Any] = {
        "listener": {
            "host": "127.0.0.1",
            "port": port,
            "peers": [{"ae_title": AE_TITLE, "hosts": ["127.0.0.1"]}],
        },
        "spool": {"path": str(tmp_path / "spool")},
        "database": {"url": f"sqlite:///{tmp_path}/appliance.db"},
        "study": {"quiet_period_seconds": 2, "sweep_interval_seconds": 0.5},
        "inference": {"repository": str(REPOSITORY), "threads": 2},
        "queue": {"broker_url": f"sqla+sqlite:///{tmp_path}/broker.db"},
        "delivery": {
            "outbox": str(tmp_path / "outbox"),
            "interval_seconds": 0.5,
            "destinations": [
                {
                    "name": "pacs",
                    "ae_title": AE_TITLE,
                    "host": "127.0.0.1",
                    "port": pacs_port,
                }
            ],
        },
    }
    for section, values in overrides.items():
        tree[section] = {**tree.get(section, {}), **values}
    config.write_text(yaml.safe_dump(tree))
    log = open(tmp_path / "appliance.log", "wb")  # noqa: SIM115 - the process owns it
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "--config", str(config), "serve"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def wait_for_modalities(pacs: Orthanc, expected: list[str], seconds: float) -> list[str]:
    """The sorted modalities of the PACS's instances, once they are `expected` or when
    `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while True:
        modalities = sorted(
            pacs.get(f"/instances/{i}/simplified-tags")["Modality"] for i in pacs.get("/instances")
        )
        if modalities == sorted(expected) or time.monotonic() > deadline:
            return modalities
        time.sleep(0.5)


def test_orthanc_routes_a_cine_and_gets_seg_and_sr_back(
    mode: dict[str, Any], tmp_path: Path
) -> None:
    cine = write_us_cine(generate_cine(300_005, frames=8), tmp_path / "cine.dcm")
    study = str(dcmread(cine, stop_before_pixels=True).StudyInstanceUID)
    port = free_port()
    with running_orthanc(tmp_path / "pacs", route_to=("APPLIANCE", port)) as pacs:
        appliance = serve(tmp_path, port, pacs.dicom_port, mode)
        try:
            sent = storescu(pacs.dicom_port, [cine], called=AE_TITLE)
            assert sent.returncode == 0, sent.stderr
            modalities = wait_for_modalities(pacs, ["SEG", "SR", "US"], 120)
            log = (tmp_path / "appliance.log").read_text(errors="replace")
            assert modalities == ["SEG", "SR", "US"], log[-6000:]
            for identifier in pacs.get("/instances"):
                stored = dcmread(BytesIO(pacs.get(f"/instances/{identifier}/file")))
                assert stored.StudyInstanceUID == study
            time.sleep(4)  # Orthanc's study is stable again: it must not route it twice
            assert pacs.instance_count() == 3
        finally:
            appliance.terminate()
            appliance.wait(timeout=30)


def test_demo_follows_its_studies_to_the_pacs(tmp_path: Path) -> None:
    port = free_port()
    with running_orthanc(tmp_path / "pacs") as pacs:
        appliance = serve(tmp_path, port, pacs.dicom_port, {})
        try:
            demo = subprocess.run(
                [
                    sys.executable, "-m", "appliance", "--config", str(tmp_path / "appliance.yaml"),
                    "demo", "--port", str(port), "--calling", AE_TITLE, "--ct-slices", "80",
                    "--frames", "6", "--timeout", "240",
                ],
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
        finally:
            appliance.terminate()
            appliance.wait(timeout=30)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert demo.stdout.count("-> pacs: delivered") == 4  # SEG and SR for each study
        assert "delivering -> done" in demo.stdout
        assert pacs.instance_count() == 4
