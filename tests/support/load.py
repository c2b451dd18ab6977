"""Load: sixteen senders, each a study per association, for a fixed time against production's
listen, sweep and dashboard roles, while a poller reads the dashboard as an operator's browser
and Prometheus would. Shared by tests/integration/test_load.py (seconds) and bench/load.py
(minutes).

Every C-STORE's round trip and every dashboard answer is timed; every role's resident memory
is sampled each second; at the end every acknowledged instance is looked up in the database.
"""

import multiprocessing
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil
import requests
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from appliance.domain.accounts import Role
from appliance.store.account_ledger import AccountLedger
from appliance.store.db import create_db_engine, upgrade
from appliance.store.models import AuditEvent, Instance
from tests.support.datasets import ct_slice, new_series
from tests.support.dcmtk import echoscu
from tests.support.listener_kills import CALLING_AE, EXPLICIT_LITTLE, listener_layer
from tests.support.processes import start_role
from tests.support.scu import associate, store
from tests.support.services import free_port
from tests.support.settings import write_config
from tests.support.waiting import wait_for, wait_for_http

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ROLES = ("listen", "sweep", "dashboard")
DASHBOARD_PATHS = ("/", "/api/overview", "/jobs", "/studies", "/metrics")


@dataclass
class Sender:
    acknowledged: list[str] = field(default_factory=list)
    failed: int = 0
    refused_associations: int = 0
    aborted_associations: int = 0
    store_seconds: list[float] = field(default_factory=list)


@dataclass
class Memory:
    samples: list[float] = field(default_factory=list)  # MiB, one a second

    @property
    def peak(self) -> float:
        return max(self.samples, default=0.0)

    def growth(self) -> float:
        """MiB from the mean of the run's second quarter to the mean of its last: what a leak
        would add, after start-up and warm caches have settled."""
        quarter = max(len(self.samples) // 4, 1)
        settled = self.samples[quarter : 2 * quarter] or self.samples
        last = self.samples[-quarter:]
        return float(np.mean(last) - np.mean(settled))


@dataclass
class LoadReport:
    seconds: float
    senders: list[Sender]
    most_concurrent: int
    stored: int
    lost: list[str]
    dashboard_seconds: list[float]
    dashboard_errors: int
    memory: dict[str, Memory]
    refusal_reasons: list[str]

    @property
    def acknowledged(self) -> int:
        return sum(len(sender.acknowledged) for sender in self.senders)

    @property
    def store_seconds(self) -> list[float]:
        return [value for sender in self.senders for value in sender.store_seconds]

    def lines(self) -> list[str]:
        lines = [
            f"run                          {self.seconds:.0f} s, {len(self.senders)} senders",
            f"associations held at once    {self.most_concurrent}",
            f"instances acknowledged       {self.acknowledged} "
            f"({self.acknowledged / self.seconds:.0f}/s)",
            f"instances failed (status)    {sum(s.failed for s in self.senders)}",
            f"associations refused         {sum(s.refused_associations for s in self.senders)}",
            f"associations aborted         {sum(s.aborted_associations for s in self.senders)}",
            f"acknowledged but lost        {len(self.lost)}",
            f"refusal reasons              {sorted(set(self.refusal_reasons)) or 'none'}",
            f"C-STORE round trip           {percentiles(self.store_seconds)}",
            f"dashboard answers            {len(self.dashboard_seconds)}, "
            f"{self.dashboard_errors} errors",
            f"dashboard answer time        {percentiles(self.dashboard_seconds)}",
        ]
        for role, memory in self.memory.items():
            lines.append(
                f"memory {role:<10}            peak {memory.peak:.0f} MiB, "
                f"growth {memory.growth():+.1f} MiB over the run"
            )
        return lines


def send_studies(port: int, seconds: float, instances_per_study: int) -> Sender:
    """One sender, in a process of its own (pynetdicom stalls now and then with several
    associations in one process's threads): a study per association, as a PACS routes them,
    for `seconds`."""
    sender = Sender()
    template = ct_slice(new_series(1), 0)
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        spec = new_series(instances_per_study)
        assoc = associate(port, [(CT_IMAGE_STORAGE, [EXPLICIT_LITTLE])], CALLING_AE)
        if not assoc.is_established:
            sender.refused_associations += 1
            time.sleep(0.1)
            continue
        for index in range(instances_per_study):
            dataset = template.copy()
            dataset.StudyInstanceUID = spec.study_uid
            dataset.SeriesInstanceUID = spec.series_uid
            dataset.SOPInstanceUID = generate_uid()
            dataset.InstanceNumber = index + 1
            dataset.ImagePositionPatient = [-200.0, -200.0, -3.0 * index]
            started = time.perf_counter()
            try:
                status = store(assoc, dataset)
            except RuntimeError:  # the association was aborted
                sender.aborted_associations += 1
                break
            sender.store_seconds.append(time.perf_counter() - started)
            if status == 0:
                sender.acknowledged.append(str(dataset.SOPInstanceUID))
            else:
                sender.failed += 1
        if assoc.is_established:
            assoc.release()
    return sender


def run_senders(port: int, senders: int, seconds: float, instances_per_study: int) -> list[Sender]:
    with multiprocessing.get_context("spawn").Pool(senders) as pool:
        return pool.starmap(send_studies, [(port, seconds, instances_per_study)] * senders)


def percentiles(values: list[float]) -> str:
    p50, p95, p99 = np.percentile(values, [50, 95, 99]) * 1000 if values else (0, 0, 0)
    top = max(values, default=0.0) * 1000
    return f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms, max {top:.0f} ms"


def _poll_dashboard(
    address: str, token: str, stop: threading.Event, report: list[float], errors: list[int]
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    while not stop.is_set():
        for path in DASHBOARD_PATHS:
            started = time.perf_counter()
            try:
                answer = requests.get(address + path, headers=headers, timeout=30)
                ok = answer.status_code == 200
            except requests.RequestException:
                ok = False
            report.append(time.perf_counter() - started)
            errors[0] += not ok
        stop.wait(0.5)


def _sample(
    processes: dict[str, subprocess.Popen[bytes]], memory: dict[str, Memory], stop: threading.Event
) -> None:
    handles = {role: psutil.Process(p.pid) for role, p in processes.items()}
    while not stop.wait(1.0):
        for role, handle in handles.items():
            try:
                tree = [handle, *handle.children(recursive=True)]
                memory[role].samples.append(sum(p.memory_info().rss for p in tree) / 2**20)
            except psutil.Error:
                pass


def _concurrency(
    listener: subprocess.Popen[bytes], port: int, stop: threading.Event, most: list[int]
) -> None:
    """The most established connections to the listener's port at once, as the kernel saw."""
    handle = psutil.Process(listener.pid)
    while not stop.wait(0.2):
        try:
            held = [
                c
                for c in handle.net_connections("tcp")
                if c.status == "ESTABLISHED" and c.laddr.port == port
            ]
        except psutil.Error:
            return
        most[0] = max(most[0], len(held))


def run_load(
    directory: Path, db_url: str, senders: int, seconds: float, instances_per_study: int = 40
) -> LoadReport:
    engine = create_db_engine(db_url)
    upgrade(engine)
    token = _operator_token(engine)
    port, dashboard_port = free_port(), free_port()
    config = write_config(
        directory,
        listener_layer(port, db_url),
        {
            "listener": {"max_associations": 16},
            "study": {"quiet_period_seconds": 2, "sweep_interval_seconds": 0.5},
            "routing": {"rules": []},  # ingest under load: no study turns into inference
            "dashboard": {"host": "127.0.0.1", "port": dashboard_port},
            "logging": {"level": "INFO"},
        },
    )
    processes = {"listen": start_role(config, "listen")}
    wait_for(lambda: echoscu(port, calling=CALLING_AE).returncode == 0, 60)
    for role in ROLES[1:]:
        processes[role] = start_role(config, role)
    address = f"http://127.0.0.1:{dashboard_port}"
    wait_for_http(address + "/healthz")
    memory = {role: Memory() for role in ROLES}
    stop = threading.Event()
    dashboard_seconds: list[float] = []
    dashboard_errors = [0]
    most = [0]
    helpers = [
        threading.Thread(target=_sample, args=(processes, memory, stop)),
        threading.Thread(
            target=_poll_dashboard, args=(address, token, stop, dashboard_seconds, dashboard_errors)
        ),
        threading.Thread(target=_concurrency, args=(processes["listen"], port, stop, most)),
    ]
    try:
        for thread in helpers:
            thread.start()
        started = time.monotonic()
        records = run_senders(port, senders, seconds, instances_per_study)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        for thread in helpers:
            thread.join()
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(timeout=30)
    with Session(engine) as session:
        stored = set(session.scalars(select(Instance.sop_instance_uid)))
        refusals = list(
            session.scalars(
                select(AuditEvent.detail).where(AuditEvent.event_type == "association_refused")
            )
        )
    engine.dispose()
    acknowledged = [uid for record in records for uid in record.acknowledged]
    return LoadReport(
        seconds=elapsed,
        senders=records,
        most_concurrent=most[0],
        stored=len(stored),
        lost=[uid for uid in acknowledged if uid not in stored],
        dashboard_seconds=dashboard_seconds,
        dashboard_errors=dashboard_errors[0],
        memory=memory,
        refusal_reasons=[r or "" for r in refusals],
    )


def _operator_token(engine: Engine) -> str:
    accounts = AccountLedger(engine)
    accounts.add("loadtest", "load test password", Role.VIEWER, datetime.now(UTC), "load")
    return accounts.create_token("loadtest", "poller", datetime.now(UTC), "load")
