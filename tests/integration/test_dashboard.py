"""The dashboard on a real database: every route but the health checks refuses a stranger,
roles limit what a user may do, patient identifiers stay masked until an admin reveals them
(audited), operator actions move jobs and are audited under the operator's name."""

import html
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from fastapi.testclient import TestClient
from pydicom import dcmread
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from appliance.app.dashboard_view import dashboard_ports
from appliance.domain.audit import AuditEventType
from appliance.domain.jobs import JobState
from appliance.store.account_ledger import AccountLedger
from appliance.store.audit_trail import record_event
from appliance.store.job_ledger import JobLedger
from appliance.store.models import AuditEvent, Job
from appliance.store.study_ledger import StudyLedger
from appliance.web.app import create_app
from appliance.web.server import DashboardServer
from tests.support.dashboard import client_for, dashboard, events
from tests.support.datasets import PATIENT_ID, PATIENT_NAME, new_series, write_series
from tests.support.dcmtk import storescu
from tests.support.services import ON_SQLITE_ONLY, free_port
from tests.support.waiting import wait_for, wait_for_http

__all__ = ["dashboard"]  # the fixture, from tests.support
pytestmark = pytest.mark.usefixtures("dcmtk")
PUBLIC = {"/healthz", "/readyz", "/login"}

FUZZ_EXAMPLES = 30  # per operation and per run; every run draws new cases


def failed_job(running: Any, tmp_path: Path) -> tuple[int, str]:
    """A received study whose job failed."""
    files = write_series(new_series(2), tmp_path / "series")
    assert storescu(running.port, files).returncode == 0
    uid = str(dcmread(files[0]).StudyInstanceUID)
    studies = StudyLedger(running.engine, running.settings.study.completion_policy())
    job_id = studies.force_complete(uid, datetime.now(UTC), "test").job_id
    jobs = JobLedger(running.engine)
    assert jobs.claim(
        job_id, datetime.now(UTC), running.settings.study.completion_policy().quiet_period
    )
    jobs.move(job_id, JobState.FAILED, datetime.now(UTC), "test failure", attempt=1)
    return job_id, uid


def api_routes(app: Any) -> list[RouteContext]:
    """Every route of the app, those of its included routers too."""
    return [r for r in iter_route_contexts(app.routes) if isinstance(r.route, APIRoute)]


@ON_SQLITE_ONLY
def test_every_route_but_health_refuses_a_stranger(dashboard: Any) -> None:
    stranger = client_for(dashboard.app)
    routes = api_routes(dashboard.app)
    guarded = [r for r in routes if r.path not in PUBLIC]
    assert len(guarded) >= 15
    for route in guarded:
        path = route.path.replace("{job_id}", "1").replace("{study_uid}", "1.2.3")
        for method in route.methods:
            for headers in ({}, {"Authorization": "Bearer not-a-token"}):
                answer = stranger.request(method, path, headers=headers)
                if path.startswith(("/api/", "/metrics")):
                    assert answer.status_code == 401, (method, path)
                else:
                    assert answer.status_code == 303, (method, path)
                    assert answer.headers["location"] == "/login"
    assert stranger.get("/healthz").status_code == 200
    assert stranger.get("/readyz").json()["checks"]["database"]["ok"] is True


@ON_SQLITE_ONLY
def test_readiness_says_whether_the_listener_accepts(dashboard: Any) -> None:
    """Where the dashboard shares its process with the listener, /readyz carries the accept
    loop's liveness: a listener that stopped accepting makes the appliance not ready."""
    listener = dashboard.listener
    ports = dashboard_ports(dashboard.settings, dashboard.engine, listening=listener.alive)
    stranger = client_for(create_app(dashboard.settings.dashboard, ports))
    assert stranger.get("/readyz").json()["checks"]["listener"]["ok"] is True
    listener.stop()
    wait_for(lambda: not listener.alive(), 5)
    answer = stranger.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["checks"]["listener"]["ok"] is False


def test_a_wrong_password_is_refused_and_audited_without_the_password(dashboard: Any) -> None:
    client = client_for(dashboard.app)
    answer = client.post("/login", data={"username": "otto", "password": "hunter2-wrong-pw"})
    assert answer.status_code == 401
    assert "appliance_session" not in answer.cookies
    (refused,) = [e for e in events(dashboard.engine, "user_login") if e.outcome != 0]
    assert refused.actor == "otto"
    assert "hunter2" not in (refused.detail or "")


def test_a_viewer_sees_but_may_not_act_or_reveal(dashboard: Any, tmp_path: Path) -> None:
    job_id, uid = failed_job(dashboard, tmp_path)
    vera = client_for(dashboard.app, "vera")
    page = vera.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    assert "test failure" in page.text
    assert f"/jobs/{job_id}/retry" not in page.text  # no buttons for a viewer
    for action in (f"/jobs/{job_id}/retry", f"/jobs/{job_id}/cancel", f"/studies/{uid}/reveal",
                   "/pipelines/ct/state", "/models/organ_ct/1/state"):  # fmt: skip
        refused = vera.post(action, data={"state": "disabled"})
        assert refused.status_code == 403, action
        assert "may not do this" in refused.text
    assert JobLedger(dashboard.engine).state(job_id) is JobState.FAILED
    assert events(dashboard.engine, "patient_data_shown") == []
    assert events(dashboard.engine, "governance_changed") == []
    assert "/state" not in vera.get("/models").text  # no controls for a viewer


def test_an_operator_retries_a_failed_job_under_their_name(dashboard: Any, tmp_path: Path) -> None:
    job_id, _ = failed_job(dashboard, tmp_path)
    otto = client_for(dashboard.app, "otto")
    assert otto.post(f"/jobs/{job_id}/retry").status_code == 303
    assert JobLedger(dashboard.engine).state(job_id) is JobState.QUEUED
    assert otto.post(f"/jobs/{job_id}/retry").status_code == 409  # queued: nothing to retry
    trail = otto.get(f"/api/jobs/{job_id}").json()["events"]
    assert trail[-1]["actor"] == "otto"
    assert trail[-1]["detail"] == "failed -> queued: retried by otto"
    with Session(dashboard.engine) as session:
        assert session.get_one(Job, job_id).attempts == 0
    assert otto.post(f"/jobs/{job_id}/cancel").status_code == 303
    assert JobLedger(dashboard.engine).state(job_id) is JobState.CANCELLED
    assert otto.post("/jobs/999999/retry").status_code == 404


def test_a_job_with_findings_of_low_confidence_says_so_in_the_tables_and_the_metrics(
    dashboard: Any, tmp_path: Path
) -> None:
    job_id, _ = failed_job(dashboard, tmp_path)
    vera = client_for(dashboard.app, "vera")
    assert "for review" not in vera.get("/jobs").text
    with Session(dashboard.engine) as session, session.begin():
        job = session.get_one(Job, job_id)
        job.flagged, job.withheld = 2, 1  # as the job runner records an encoded attempt
    for page in ("/jobs", f"/jobs/{job_id}"):
        text = vera.get(page).text
        assert "2 for review" in text, page
        assert "1 withheld" in text, page
    metrics = vera.get("/metrics").text
    assert 'appliance_findings_for_review_total{handling="flagged"} 2.0' in metrics
    assert 'appliance_findings_for_review_total{handling="withheld"} 1.0' in metrics


def test_patient_identifiers_are_masked_until_an_admin_reveals_them(
    dashboard: Any, tmp_path: Path
) -> None:
    _, uid = failed_job(dashboard, tmp_path)
    for name in ("vera", "otto", "ada"):
        client = client_for(dashboard.app, name)
        for path in ("/", "/studies", "/jobs", "/audit", "/api/jobs", "/api/overview", "/metrics"):
            text = client.get(path).text
            assert PATIENT_NAME.split("^")[0] not in text, (name, path)
            assert PATIENT_ID not in text, (name, path)
    ada = client_for(dashboard.app, "ada")
    shown = ada.post(f"/studies/{uid}/reveal")
    assert shown.status_code == 200
    assert PATIENT_ID in shown.text
    (audited,) = events(dashboard.engine, "patient_data_shown")
    assert (audited.actor, audited.study_instance_uid) == ("ada", uid)


def test_metrics_and_csv_for_a_token_and_an_export_audited(dashboard: Any, tmp_path: Path) -> None:
    failed_job(dashboard, tmp_path)
    token = AccountLedger(dashboard.engine).create_token(
        "vera", "prometheus", datetime.now(UTC), "test"
    )
    machine = TestClient(dashboard.app, headers={"Authorization": f"Bearer {token}"})
    metrics = machine.get("/metrics")
    assert metrics.status_code == 200
    assert 'appliance_jobs{state="failed"} 1.0' in metrics.text
    assert "appliance_studies_received_total 1.0" in metrics.text
    for stage in ("quiet", "dispatch"):  # the job completed and was claimed once
        assert f'appliance_stage_seconds_count{{model="",stage="{stage}"}} 1.0' in metrics.text
    assert 'stage="total"' not in metrics.text  # it never delivered
    csv = machine.get("/audit.csv", params={"event_type": "job_state"})
    assert csv.status_code == 200
    lines = csv.text.strip().splitlines()
    assert lines[0].startswith('"occurred_at","event_type"')
    assert len(lines) == 3  # header, running and failed
    assert all(',"job_state",' in line for line in lines[1:])
    assert events(dashboard.engine, "audit_exported")[0].actor == "vera"


@ON_SQLITE_ONLY
def test_a_name_typed_as_a_formula_is_exported_as_text(dashboard: Any) -> None:
    stranger = client_for(dashboard.app)
    formula = '=HYPERLINK("http://evil.example","x")'
    assert (
        stranger.post("/login", data={"username": formula, "password": "x" * 12}).status_code == 401
    )
    ada = client_for(dashboard.app, "ada")
    exported = ada.get("/audit.csv", params={"event_type": "user_login"})
    (row,) = [line for line in exported.text.splitlines() if "HYPERLINK" in line]
    assert ",\"'=HYPERLINK(" in row, row


def test_a_session_expires_after_its_lifetime(dashboard: Any) -> None:
    """A 4 s session: long enough for signing in and one page on a busy CI machine (at 1 s
    the first page sometimes found it expired already)."""
    brief = dashboard.settings.dashboard.model_copy(update={"session_hours": 4 / 3600})
    app = create_app(brief, dashboard.app.state.ports)
    vera = client_for(app, "vera")
    signed_in = time.monotonic()
    assert vera.get("/").status_code == 200
    time.sleep(max(0.0, signed_in + 4.5 - time.monotonic()))
    expired = vera.get("/")
    assert expired.status_code == 303
    assert expired.headers["location"].startswith("/login")


def test_pages_render_for_every_role(dashboard: Any, tmp_path: Path) -> None:
    job_id, uid = failed_job(dashboard, tmp_path)
    otto = client_for(dashboard.app, "otto")
    for path in ("/", "/studies", "/jobs", f"/jobs/{job_id}", "/models", "/audit"):
        answer = otto.get(path)
        assert answer.status_code == 200, path
        assert "otto (operator)" in answer.text
    assert uid in otto.get("/studies", params={"state": "complete"}).text
    assert uid not in otto.get("/studies", params={"state": "receiving"}).text
    assert otto.get("/studies", params={"state": "lost"}).status_code == 404
    assert "organ_ct" in otto.get("/models").text
    assert "synthetic: not for clinical use" in otto.get("/models").text
    assert otto.get("/audit", params={"since": "not a date"}).status_code == 422
    assert otto.post("/logout").status_code == 303
    assert otto.get("/").status_code == 303  # the session is gone


@ON_SQLITE_ONLY
def test_a_cross_site_post_is_refused_and_every_answer_carries_security_headers(
    dashboard: Any, tmp_path: Path
) -> None:
    job_id, _ = failed_job(dashboard, tmp_path)
    otto = client_for(dashboard.app, "otto")
    forged = otto.post(f"/jobs/{job_id}/retry", headers={"Origin": "https://evil.example"})
    assert forged.status_code == 403
    opaque = otto.post(f"/jobs/{job_id}/retry", headers={"Origin": "null"})  # sandboxed frame
    assert opaque.status_code == 403
    assert JobLedger(dashboard.engine).state(job_id) is JobState.FAILED
    same_site = otto.post(f"/jobs/{job_id}/retry", headers={"Origin": "http://testserver"})
    assert same_site.status_code == 303
    for answer in (otto.get("/"), otto.get("/healthz"), forged, client_for(dashboard.app).get("/")):
        assert "script-src" not in answer.headers["content-security-policy"]  # no scripts at all
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["cache-control"] == "no-store"


@ON_SQLITE_ONLY
def test_schemathesis_finds_no_open_route_and_no_server_error(
    dashboard: Any, tmp_path: Path
) -> None:
    """Every operation in the OpenAPI schema, fuzzed from its parameter schemas: refused without
    credentials (except health and the login form), never a server error with them."""
    failed_job(dashboard, tmp_path)
    accounts = AccountLedger(dashboard.engine)
    admin = accounts.create_token("ada", "fuzz", datetime.now(UTC), "test")
    server = DashboardServer(dashboard.app, "127.0.0.1", free_port())
    server.start()
    try:
        wait_for_http(f"{server.address}/healthz")
        assert requests.get(f"{server.address}/api/openapi.json", timeout=5).status_code == 401
        spec = requests.get(
            f"{server.address}/api/openapi.json",
            headers={"Authorization": f"Bearer {admin}"},
            timeout=5,
        ).json()
        schema = schemathesis.openapi.from_dict(spec)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 15
        for operation in operations:
            fuzz_operation(operation, server.address, admin)
    finally:
        server.stop()


def fuzz_operation(operation: Any, base_url: str, token: str) -> None:
    @hypothesis.given(case=operation.as_strategy())
    @hypothesis.settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def check(case: Any) -> None:
        stranger = case.call(base_url=base_url, allow_redirects=False)
        if operation.path not in PUBLIC:
            # 400: a NUL byte, refused before anything else is looked at
            assert stranger.status_code in (303, 400, 401), (operation.label, stranger.status_code)
        signed_in = case.call(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, allow_redirects=False
        )
        assert signed_in.status_code < 500, (operation.label, case.path_parameters, signed_in.text)

    check()


def test_every_action_and_every_reveal_of_identifiers_leaves_an_audit_row_by_name(
    dashboard: Any, tmp_path: Path
) -> None:
    """Every POST route but login and logout is an operator action or a reveal; each one that
    acts is audited under the acting user's name. The routes are enumerated, so a new action
    without its audit row fails here."""
    job_id, uid = failed_job(dashboard, tmp_path)
    ada = client_for(dashboard.app, "ada")
    actions = [
        route.path.replace("{job_id}", str(job_id)).replace("{study_uid}", uid)
        .replace("/models/{name}/{version}", "/models/organ_ct/1").replace("{name}", "ct")
        for route in api_routes(dashboard.app)
        if "POST" in route.methods and route.path not in ("/login", "/logout")
    ]  # fmt: skip
    assert len(actions) >= 5
    acted = []
    for path in actions:
        before = len(audited_by(dashboard.engine, "ada"))
        answer = ada.post(path, data={"state": "shadow"})  # what a change of state asks
        if answer.status_code in (200, 303):
            acted.append(path)
            assert len(audited_by(dashboard.engine, "ada")) > before, path
        else:
            assert answer.status_code == 409, (path, answer.status_code)  # nothing to do
    assert {f"/jobs/{job_id}/retry", f"/studies/{uid}/reveal", "/pipelines/ct/state",
            "/models/organ_ct/1/state"} <= set(acted)  # fmt: skip
    exported = len(audited_by(dashboard.engine, "ada"))
    assert ada.get("/audit.csv").status_code == 200
    assert len(audited_by(dashboard.engine, "ada")) == exported + 1


def audited_by(engine: Engine, actor: str) -> list[AuditEvent]:
    with Session(engine) as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.actor == actor)))


@ON_SQLITE_ONLY
def test_studies_link_their_jobs_and_the_audit_trail_comes_a_page_at_a_time(
    dashboard: Any, tmp_path: Path
) -> None:
    job_id, uid = failed_job(dashboard, tmp_path)
    vera = client_for(dashboard.app, "vera")
    studies = vera.get("/studies").text
    assert f'<a href="/jobs/{job_id}" title="its latest job">{uid}</a>' in studies
    assert "<td>CT</td>" in studies  # the modality column
    assert 'title="why it completed">forced</span>' in studies
    assert vera.get(f"/jobs/{job_id}/preview/0.png").status_code == 404  # failed: no preview
    assert client_for(dashboard.app).get(f"/jobs/{job_id}/preview/0.png").status_code in (
        303,
        401,
    )

    with Session(dashboard.engine) as session, session.begin():  # more than a page holds
        for attempt in range(120):
            record_event(
                session, AuditEventType.USER_LOGIN, occurred_at=datetime.now(UTC),
                actor=f"nobody{attempt}", outcome=4, detail="refused",
            )  # fmt: skip
    first = vera.get("/audit")
    assert first.text.count('<td class="when">') == 100
    older = re.search(r'href="/audit\?([^"]+)">Older events', first.text)
    assert older is not None
    second = vera.get(f"/audit?{html.unescape(older.group(1))}")
    assert second.status_code == 200
    shown_first = set(re.findall(r"nobody\d+", first.text))
    shown_second = set(re.findall(r"nobody\d+", second.text))
    assert shown_second
    assert not shown_first & shown_second, "the next page, not the same one"
    assert vera.get("/audit", params={"before": "x"}).status_code == 422
