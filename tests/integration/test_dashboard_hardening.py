"""The dashboard against guessing and hostile requests: login throttling with a lockout that
is audited, the same cost for an unknown name as for a wrong password, idle sessions ending,
forwarded headers believed from configured proxies only, a Host allow-list, a body limit,
CSV cells a spreadsheet cannot run, filters out of range refused, scoped and expiring tokens,
and accounts that can be listed, disabled, re-roled and deleted, each change audited."""

import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi.testclient import TestClient

from appliance.app.dashboard_view import dashboard_ports
from appliance.domain.accounts import Scope
from appliance.store.account_ledger import AccountLedger
from appliance.web.app import create_app
from appliance.web.server import DashboardServer
from tests.support.cli import run_cli
from tests.support.dashboard import PASSWORD, client_for, dashboard, events
from tests.support.services import ON_SQLITE_ONLY, free_port
from tests.support.waiting import wait_for_http

__all__ = ["dashboard"]  # the fixture, from tests.support


def app_with(running: Any, **changes: object) -> Any:
    """The dashboard app with some dashboard settings changed."""
    settings = running.settings.model_copy(
        update={"dashboard": running.settings.dashboard.model_copy(update=changes)}
    )
    return create_app(settings.dashboard, dashboard_ports(settings, running.engine))


def login(client: TestClient, username: str, password: str) -> int:
    return client.post("/login", data={"username": username, "password": password}).status_code


def test_guessing_a_password_locks_the_name_and_the_lock_is_audited(dashboard: Any) -> None:
    app = app_with(dashboard, login_failures_per_account=3, login_failures_per_host=100)
    guesser = TestClient(app, follow_redirects=False)
    assert [login(guesser, "otto", f"guess number {n}") for n in range(3)] == [401] * 3
    locked = guesser.post("/login", data={"username": "otto", "password": PASSWORD})
    assert locked.status_code == 429  # the right password, too late
    assert int(locked.headers["Retry-After"]) == 15 * 60
    assert [login(guesser, "nobody", f"guess number {n}") for n in range(4)] == [401] * 3 + [429]
    assert login(guesser, "vera", PASSWORD) == 303  # other names are not locked
    refused = [e.detail for e in events(dashboard.engine, "user_login") if e.actor == "otto"]
    assert refused[-1] == (
        "dashboard login refused; further logins refused for 15 min: too many failures"
    )
    assert len(refused) == 3  # the refusals after the lock are not audited one by one


def test_guessing_from_one_address_locks_the_address(dashboard: Any) -> None:
    app = app_with(dashboard, login_failures_per_account=100, login_failures_per_host=4)
    guesser = TestClient(app, follow_redirects=False)
    names = ["otto", "vera", "ada", "eve"]
    assert [login(guesser, name, "wrong password!") for name in names] == [401] * 4
    assert login(guesser, "ada", PASSWORD) == 429


@ON_SQLITE_ONLY
def test_an_unknown_name_costs_one_password_hash_like_a_known_one(
    dashboard: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real: Callable[..., bytes] = hashlib.scrypt

    def counted(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        return real(*args, **kwargs)

    client = client_for(dashboard.app)
    login(client, "nobody-at-all", "first decoy")  # the decoy hash is made once, up front
    monkeypatch.setattr(hashlib, "scrypt", counted)
    for name in ("otto", "nobody-at-all"):
        calls.clear()
        assert login(client, name, "a wrong password") == 401
        assert len(calls) == 1, name


@ON_SQLITE_ONLY
def test_a_session_left_idle_ends(dashboard: Any) -> None:
    app = app_with(dashboard, session_idle_minutes=1 / 60)  # one second
    vera = client_for(app, "vera")
    assert vera.get("/").status_code == 200
    time.sleep(1.5)
    assert vera.get("/").status_code == 303


@ON_SQLITE_ONLY
def test_forwarded_headers_are_believed_from_configured_proxies_only(dashboard: Any) -> None:
    for proxies, expected in (([], "127.0.0.1"), (["127.0.0.1"], "203.0.113.7")):
        port = free_port()
        settings = dashboard.settings.dashboard.model_copy(update={"trusted_proxies": proxies})
        app = create_app(settings, dashboard_ports(dashboard.settings, dashboard.engine))
        server = DashboardServer(app, "127.0.0.1", port, proxies)
        server.start()
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz", 10)
            requests.post(
                f"http://127.0.0.1:{port}/login",
                data={"username": "ada", "password": "not the password"},
                headers={"X-Forwarded-For": "203.0.113.7"},
                allow_redirects=False,
                timeout=10,
            )
        finally:
            server.stop()
        tried = [e for e in events(dashboard.engine, "user_login") if e.actor == "ada"]
        assert tried[-1].actor_host == expected, proxies


@ON_SQLITE_ONLY
def test_a_host_not_allowed_and_a_body_too_large_are_refused(dashboard: Any) -> None:
    client = TestClient(dashboard.app, follow_redirects=False)
    assert client.get("/login", headers={"Host": "rebound.example"}).status_code == 400
    assert client.get("/login", headers={"Host": "LOCALHOST:8080"}).status_code == 200
    # probes and scrapes come by the pod's address
    assert client.get("/healthz", headers={"Host": "10.1.2.3:8080"}).status_code == 200
    huge = {"username": "otto", "password": "x" * 100_000}
    assert client.post("/login", data=huge).status_code == 413
    assert client.get("/healthz").status_code == 200


@ON_SQLITE_ONLY
def test_csv_cells_are_quoted_and_never_start_a_formula(dashboard: Any) -> None:
    stranger = TestClient(dashboard.app, follow_redirects=False)
    login(stranger, "a;=cmd|'/c calc'!A1", "wrong password!")
    ada = client_for(dashboard.app, "ada")
    exported = ada.get("/audit.csv", params={"event_type": "user_login"}).text
    header, *rows = exported.splitlines()
    assert header.startswith('"occurred_at","event_type"')
    (row,) = [line for line in rows if "cmd" in line]
    assert "\"a;'=cmd|'/c calc'!A1\"" in row


@pytest.mark.parametrize(
    "since", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00", "1969-12-31", "nope"]
)
@ON_SQLITE_ONLY
def test_filters_out_of_range_answer_422(dashboard: Any, since: str) -> None:
    ada = client_for(dashboard.app, "ada")
    assert ada.get("/audit", params={"since": since}).status_code == 422
    assert ada.get("/audit.csv", params={"until": since}).status_code == 422


@ON_SQLITE_ONLY
def test_a_metrics_token_opens_metrics_only_and_an_expired_token_nothing(dashboard: Any) -> None:
    ledger = AccountLedger(dashboard.engine)
    now = datetime.now(UTC)
    metrics = ledger.create_token("vera", "prometheus", now, "test", scope=Scope.METRICS)
    scraper = TestClient(dashboard.app, headers={"Authorization": f"Bearer {metrics}"})
    assert scraper.get("/metrics").status_code == 200
    assert scraper.get("/api/jobs").status_code == 403
    expired = ledger.create_token("vera", "old", now, "test", expires=now - timedelta(seconds=1))
    late = TestClient(dashboard.app, headers={"Authorization": f"Bearer {expired}"})
    assert late.get("/metrics").status_code == 401


@ON_SQLITE_ONLY
def test_accounts_and_tokens_are_managed_at_the_console_and_audited(
    dashboard: Any, tmp_path: Path
) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(f"database: {{url: '{dashboard.settings.database.url}'}}\n")

    def cli(*args: str) -> str:
        result = run_cli(config, "users", *args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    otto = client_for(dashboard.app, "otto")
    token = cli("token", "otto", "--name", "script", "--expires-days", "30").strip()
    machine = TestClient(dashboard.app, headers={"Authorization": f"Bearer {token}"})
    assert machine.get("/api/jobs").status_code == 200
    assert "otto\toperator\tenabled" in cli("list")
    (listed,) = [line for line in cli("tokens").splitlines() if "\tscript\t" in line]
    assert "\tall\texpires " in listed
    assert listed.endswith("\tactive")
    cli("revoke-token", listed.split("\t")[0])
    assert machine.get("/api/jobs").status_code == 401
    cli("role", "otto", "viewer")
    assert "otto\tviewer" in cli("list")
    cli("disable", "otto")
    assert otto.get("/").status_code == 303  # its session stopped working at once
    cli("enable", "otto")
    cli("delete", "otto")
    assert "otto" not in cli("list")
    assert run_cli(config, "users", "disable", "otto").returncode != 0
    changes = [e.detail for e in events(dashboard.engine, "account_changed")]
    for said in ("revoked", "otto: operator -> viewer", "otto disabled", "otto enabled",
                 "otto deleted"):  # fmt: skip
        assert any(said in (detail or "") for detail in changes), said
    assert login(TestClient(dashboard.app, follow_redirects=False), "ada", PASSWORD) == 303
