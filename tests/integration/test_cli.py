"""The `appliance` command as an operator uses it."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from appliance.domain.jobs import JobState
from appliance.inference.contract import load_contract
from appliance.inference.tensorrt import load_probe
from appliance.phantoms.ct import Grid, generate_ct
from appliance.phantoms.dicom import write_ct_series
from appliance.store.job_ledger import JobLedger
from appliance.store.models import AuditEvent
from tests.support.cli import run_cli
from tests.support.datasets import PATIENT_ID, PATIENT_NAME, new_series, write_series
from tests.support.dcmtk import storescu


def test_config_check_names_the_bad_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("listener:\n  port: 99999\nstudy:\n  quiet_period_seconds: -1\n")
    result = run_cli(config, "config", "check")
    assert result.returncode == 2
    assert "listener.port" in result.stderr
    assert "study.quiet_period_seconds" in result.stderr


def test_config_check_prints_resolved_settings() -> None:
    result = run_cli(Path("deploy/appliance.example.yaml"), "config", "check")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["listener"]["ae_title"] == "APPLIANCE"
    assert resolved["listener"]["peers"]


def test_config_check_masks_the_passwords_in_urls(tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(
        "database: {url: 'postgresql+psycopg://appliance:db-s3cret@db/appliance'}\n"
        "queue: {broker_url: 'amqp://appliance:mq-s3cret@mq:5672//'}\n"
    )
    result = run_cli(config, "config", "check")
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["database"]["url"] == "postgresql+psycopg://appliance:<masked>@db/appliance"
    assert resolved["queue"]["broker_url"] == "amqp://appliance:<masked>@mq:5672//"


@pytest.mark.usefixtures("dcmtk")
def test_studies_commands(start, tmp_path: Path, db_url: str) -> None:
    running = start()
    spec = new_series(3)
    storescu(running.port, write_series(spec, tmp_path / "in"))
    config = tmp_path / "appliance.yaml"
    config.write_text(
        yaml.safe_dump({"database": {"url": db_url}, "spool": {"path": str(running.spool)}})
    )

    assert run_cli(config, "db", "upgrade").returncode == 0, "upgrade is idempotent"
    listed = run_cli(config, "studies", "list")
    assert spec.study_uid in listed.stdout
    assert "receiving" in listed.stdout
    forced = run_cli(config, "studies", "force-complete", spec.study_uid, "--operator", "bob")
    assert forced.returncode == 0, forced.stderr
    assert "version 1 complete: job" in forced.stdout
    shown = run_cli(config, "studies", "show", spec.study_uid, "--json")
    detail = json.loads(shown.stdout)
    assert detail["study"]["state"] == "complete"
    assert detail["study"]["instance_count"] == 3
    assert [job["state"] for job in detail["jobs"]] == ["queued"]
    again = run_cli(config, "studies", "force-complete", spec.study_uid)
    assert again.returncode == 4
    assert "already complete" in again.stderr
    missing = run_cli(config, "studies", "show", "1.2.3")
    assert missing.returncode == 3
    job_id = detail["jobs"][0]["id"]
    jobs = JobLedger(running.engine)
    assert jobs.claim(job_id, datetime.now(UTC), timedelta(minutes=1))
    jobs.move(job_id, JobState.FAILED, datetime.now(UTC), "ValueError: the reason", attempt=1)
    plain = run_cli(config, "studies", "show", spec.study_uid)
    assert f"job {job_id} version 1: failed\n    ValueError: the reason" in plain.stdout
    for output in (listed.stdout, shown.stdout, forced.stdout, plain.stdout):
        assert PATIENT_ID not in output
        assert PATIENT_NAME not in output


def test_listen_refuses_an_old_schema(tmp_path: Path) -> None:
    config = tmp_path / "appliance.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": {"url": f"sqlite:///{tmp_path}/fresh.db"},
                "listener": {"host": "127.0.0.1", "port": 0},
                "spool": {"path": str(tmp_path / "spool")},
            }
        )
    )
    result = run_cli(config, "listen")
    assert result.returncode != 0
    assert "run `appliance db upgrade`" in result.stderr
    assert "Traceback" not in result.stderr


def test_models_commands_on_the_committed_repository(tmp_path: Path) -> None:
    config = tmp_path / "appliance.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": f"sqlite:///{tmp_path}/a.db"}}))
    assert run_cli(config, "db", "upgrade").returncode == 0
    listed = run_cli(config, "models", "list")
    assert listed.returncode == 0
    assert (
        "us_frame v1 [US, reference] enabled: cyst  (synthetic training data; not for clinical "
        "use)" in listed.stdout
    )
    checked = run_cli(None, "models", "check")
    assert checked.returncode == 0, checked.stdout
    assert "us_frame: ok" in checked.stdout


def test_probes_are_what_each_model_of_a_pipeline_reads(tmp_path: Path) -> None:
    """`models probes` runs the `ct` pipeline on a series and keeps, per model, inputs as the
    model reads them (its CT window, on its grid), which `build-trt --probes` accepts."""
    phantom = generate_ct(300_200, Grid((80, 160, 160), (2.5, 2.2, 2.2)), lesion_count=2)
    write_ct_series(phantom, tmp_path / "series")
    probes = tmp_path / "probes"
    made = run_cli(
        None, "models", "probes", "ct", str(tmp_path / "series"),
        "--output", str(probes), "--keep", "4", timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    for model in ("organ_ct", "lesion_ct"):
        assert f"{model} v1:" in made.stdout
        probe = load_probe(
            probes / f"{model}.1.npy", load_contract(Path("model_repository") / model / "1")
        )
        assert 1 <= len(probe) <= 4
        assert 0.0 <= float(probe.min()) < float(probe.max()) <= 1.0  # the window, normalised
        assert len({one.tobytes() for one in probe}) == len(probe)  # from across the run
    unknown = run_cli(
        None, "models", "probes", "nope", str(tmp_path / "series"), "--output", str(probes)
    )
    assert unknown.returncode == 4
    assert "no pipeline 'nope'" in unknown.stderr


def test_states_are_set_from_the_console_and_audited(tmp_path: Path) -> None:
    config = tmp_path / "appliance.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": f"sqlite:///{tmp_path}/a.db"}}))
    assert run_cli(config, "db", "upgrade").returncode == 0
    shadowed = run_cli(config, "models", "shadow", "us_frame", "--version", "1")
    assert shadowed.stdout.strip() == "model us_frame v1 shadow (was enabled)"
    assert "us_frame v1 [US, reference] shadow" in run_cli(config, "models", "list").stdout
    pipelines = run_cli(config, "pipelines", "list").stdout
    assert "us enabled, runs shadow: " in pipelines
    assert "  lesion: lesion_ct v1, region of organs (liver)" in pipelines
    assert run_cli(config, "pipelines", "disable", "ct").returncode == 0
    unknown = run_cli(config, "pipelines", "disable", "nope")
    assert (unknown.returncode, unknown.stderr.strip()) == (
        3, "appliance: no pipeline nope in the model repository"
    )  # fmt: skip
    assert run_cli(config, "rules", "dry-run", "--since", "3x").returncode == 2
    replay = run_cli(config, "rules", "dry-run", "--since", "2d")
    assert replay.returncode == 0
    assert "0 studies (0 series) received since" in replay.stdout
    engine = create_engine(f"sqlite:///{tmp_path}/a.db")
    with Session(engine) as session:
        changes = session.execute(
            select(AuditEvent.actor, AuditEvent.detail)
            .where(AuditEvent.event_type == "governance_changed")
            .order_by(AuditEvent.id)
        ).all()
    assert [detail for _, detail in changes] == [
        "model us_frame v1: enabled -> shadow",
        "pipeline ct: enabled -> disabled",
    ]
    assert all(actor.startswith("console:") for actor, _ in changes)


def test_models_check_fails_on_a_broken_model(tmp_path: Path) -> None:
    from tests.support.models import write_tiny_model

    directory = write_tiny_model(tmp_path / "repository")
    (directory / "1" / "card.md").unlink()
    config = tmp_path / "appliance.yaml"
    config.write_text(yaml.safe_dump({"inference": {"repository": str(tmp_path / "repository")}}))
    result = run_cli(config, "models", "check")
    assert result.returncode == 4
    assert "tiny: FAILED" in result.stdout
    assert "version 1: model card card.md is missing" in result.stdout
