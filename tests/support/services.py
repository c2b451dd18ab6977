"""Real services the tests need, required in CI: with TESTS_REQUIRE_SERVICES=1 (set by
.ci/run) a missing PostgreSQL, dcmtk, Orthanc or broker fails the tests instead of skipping
them. And free loopback ports for the servers the tests start."""

import os
import socket

import pytest

REQUIRE_SERVICES = os.environ.get("TESTS_REQUIRE_SERVICES") == "1"
# For a test whose subject is not the database: one run on SQLite rather than one per
# database, which keeps the suite inside its time budget.
ON_SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def missing_service(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
