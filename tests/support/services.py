"""Real services the tests need, required in CI: with TESTS_REQUIRE_SERVICES=1 (set by
.ci/run) a missing PostgreSQL, dcmtk, Orthanc or broker fails the tests instead of skipping
them. And free loopback ports for the servers the tests start."""

import itertools
import os
import random
import socket
from collections.abc import Iterator

import pytest

REQUIRE_SERVICES = os.environ.get("TESTS_REQUIRE_SERVICES") == "1"
# For a test whose subject is not the database: one run on SQLite rather than one per
# database, which keeps the suite inside its time budget.
ON_SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def missing_service(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


# Ports for the servers tests start come from below the kernel's ephemeral range (32768 and
# up on Linux), so that no outgoing connection takes one between a test choosing it and its
# server binding it (seen: the listener refused with "Address already in use"); from a block
# of each pytest-xdist worker's own, so that two workers never choose the same; and not twice
# from one process until its block wraps round.
FIRST_PORT, PORTS_PER_WORKER, WORKER_BLOCKS = 21_000, 1_000, 4


def _port_candidates() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    block = (int(worker) if worker.isdigit() else 0) % WORKER_BLOCKS
    start = FIRST_PORT + block * PORTS_PER_WORKER
    offset = random.randrange(PORTS_PER_WORKER)  # two runs side by side seldom meet
    while True:
        yield start + offset
        offset = (offset + 1) % PORTS_PER_WORKER


_candidates = _port_candidates()


def free_port() -> int:
    """A loopback port nothing holds now, and that this process has not handed out lately."""
    for port in itertools.islice(_candidates, PORTS_PER_WORKER):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in this worker's block of {PORTS_PER_WORKER}")
