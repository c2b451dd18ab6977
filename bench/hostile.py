"""Hostile clients benchmark: the trusted PACS's C-ECHO and C-STORE while slow, hostile
connections hold the listener's port, the listener's memory under a thousand of them, and
login attempts a minute against the dashboard's throttle.

The listener runs as production's `appliance listen` (a process of its own, its resident
memory read from outside) with a peer that may call from any address, the hardest case: no
hostile connection can be refused by its address alone. The attackers connect from their
own loopback addresses (127.0.x.y), announce an A-ASSOCIATE-RQ and trickle it a byte at a
time, reconnecting whenever they are cut off. The peer, in the same run: the same trusted
sender with no attackers.

    .venv/bin/python -m bench.hostile [--attackers 64] [--crowd 1000] [--seconds 20]
"""

import argparse
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psutil
from fastapi.testclient import TestClient

from appliance.app.dashboard_view import dashboard_ports
from appliance.config import Settings
from appliance.domain.accounts import Role
from appliance.store.account_ledger import AccountLedger
from appliance.store.db import create_db_engine, upgrade
from appliance.web.app import create_app
from tests.support.datasets import new_series, write_series
from tests.support.dcmtk import echoscu, storescu
from tests.support.load import percentiles
from tests.support.services import free_port
from tests.support.settings import make_settings, write_config
from tests.support.waiting import wait_for

RSS_CAP_MIB = 400  # the listener's resident memory with a thousand hostile connections open
ANNOUNCED = struct.pack(">BxL", 0x01, 64 * 1024)  # an A-ASSOCIATE-RQ of 64 KiB, to come


def source(index: int) -> str:
    return f"127.0.{2 + index // 250}.{1 + index % 250}"


@contextmanager
def attackers(port: int, count: int) -> Iterator[list[int]]:
    """`count` connections, one per address, each trickling a byte every 200 ms and opening
    again when cut off; yields [connections opened] as they go."""
    stop = threading.Event()
    opened = [0]

    def attack(index: int) -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(
                    ("127.0.0.1", port), timeout=5, source_address=(source(index), 0)
                ) as raw:
                    opened[0] += 1
                    raw.sendall(ANNOUNCED)
                    while not stop.wait(0.2):
                        raw.sendall(b"\0")
            except OSError:
                stop.wait(0.2)

    threads = [threading.Thread(target=attack, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield opened
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)


def trusted_sender(
    port: int, files: list[Path], rounds: int
) -> tuple[list[float], list[float], int]:
    """C-ECHO round trips, C-STORE association times and failures of the trusted PACS."""
    echoes, stores, failures = [], [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        failures += echoscu(port).returncode != 0
        echoes.append(time.perf_counter() - started)
        started = time.perf_counter()
        failures += storescu(port, files).returncode != 0
        stores.append(time.perf_counter() - started)
    return echoes, stores, failures


def rss_mib(process: subprocess.Popen[bytes]) -> float:
    return psutil.Process(process.pid).memory_info().rss / 2**20


def listener(scratch: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = write_config(
        scratch,
        {"listener": {"port": port, "peers": [{"ae_title": "STORESCU"}]},
         "study": {"quiet_period_seconds": 3600}},
    )  # fmt: skip
    engine = create_db_engine(f"sqlite:///{scratch}/appliance.db")
    upgrade(engine)
    engine.dispose()
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "--config", str(config), "listen"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(lambda: echoscu(port).returncode == 0, 60, interval=0.3)
    return process, port


def logins(scratch: Path, seconds: float) -> None:
    """One address guessing passwords as fast as it can for `seconds`: how many guesses the
    dashboard checked, and how many it refused unchecked (429)."""
    settings: Settings = make_settings(
        scratch / "web", {"database": {"url": f"sqlite:///{scratch}/web.db"}}
    )
    engine = create_db_engine(settings.database.url)
    upgrade(engine)
    AccountLedger(engine).add(
        "ada", "correct horse battery", Role.ADMIN, datetime.now(UTC), "bench"
    )
    client = TestClient(create_app(settings.dashboard, dashboard_ports(settings, engine)))
    answers: dict[int, int] = {}
    ended = time.monotonic() + seconds
    while time.monotonic() < ended:
        status = client.post("/login", data={"username": "ada", "password": "a wrong guess!"},
                             follow_redirects=False).status_code  # fmt: skip
        answers[status] = answers.get(status, 0) + 1
    per_minute = 60 / seconds
    print(f"== login guesses from one address for {seconds:.0f} s ==")
    print(f"checked (401)                {answers.get(401, 0)} "
          f"({answers.get(401, 0) * per_minute:.0f} a minute; the throttle allows "
          f"{settings.dashboard.login_failures_per_account} per "
          f"{settings.dashboard.login_lockout_minutes:g} min)")  # fmt: skip
    print(f"refused unchecked (429)      {answers.get(429, 0)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attackers", type=int, default=64)
    parser.add_argument("--crowd", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hostile-") as scratch_name:
        scratch = Path(scratch_name)
        files = write_series(new_series(4), scratch / "study")
        process, port = listener(scratch / "listener")
        try:
            idle = rss_mib(process)
            quiet = trusted_sender(port, files, args.rounds)
            with attackers(port, args.attackers) as opened:
                time.sleep(2)
                attacked = trusted_sender(port, files, args.rounds)
            print(f"== trusted PACS, {args.rounds} rounds of C-ECHO and a 4-instance C-STORE ==")
            for name, (echoes, stores, failures) in (
                ("peer: no attackers", quiet),
                (f"{args.attackers} slow attackers", attacked),
            ):
                print(f"{name:28s} C-ECHO {percentiles(echoes)}")
                print(f"{'':28s} C-STORE {percentiles(stores)}; failures {failures}")
            print(f"attacker connections opened  {opened[0]}")
            peak = idle
            with attackers(port, args.crowd) as opened:
                ended = time.monotonic() + args.seconds
                while time.monotonic() < ended:
                    peak = max(peak, rss_mib(process))
                    time.sleep(0.5)
                crowded = trusted_sender(port, files, 3)
            print(f"== {args.crowd} hostile connections for {args.seconds:.0f} s ==")
            verdict = "met" if peak <= RSS_CAP_MIB else "NOT MET"
            print(f"listener resident memory     idle {idle:.0f} MiB, peak {peak:.0f} MiB "
                  f"(cap {RSS_CAP_MIB} MiB: {verdict})")  # fmt: skip
            print(f"attacker connections opened  {opened[0]}")
            print(f"trusted PACS meanwhile       failures {crowded[2]} of 6")
        finally:
            process.terminate()
            process.wait(timeout=30)
        logins(scratch, 20)


if __name__ == "__main__":
    main()
