"""Ingest benchmark: dcmtk storescu -> appliance listener vs dcmtk storescp, interleaved.

Sends synthetic 512x512 CT instances (about 0.5 MB each) over one association and over four
in parallel, to (a) the appliance listener with durable writes (fsync'd file and directory,
committed SQLite row per instance) and (b) dcmtk's storescp writing plain files (no fsync).
Prints instances per second for each, their ratio, and the listener's peak memory.

    .venv/bin/python -m bench.ingest [--counts 300 2000] [--repeats 1] [--processes 1 2]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from tests.support.datasets import new_series, write_series
from tests.support.dcmtk import dcmtk_env, storescu_command
from tests.support.services import free_port
from tests.support.settings import write_config
from tests.support.waiting import wait_for_port

DATA = Path(__file__).resolve().parent / ".data"
ENV = dcmtk_env()


def instances(count: int) -> list[Path]:
    directory = DATA / f"ct512_{count}"
    marker = DATA / f"ct512_{count}.complete"
    if not marker.exists():
        shutil.rmtree(directory, ignore_errors=True)
        write_series(new_series(count, rows=512, columns=512), directory)
        marker.touch()
    return sorted(directory.glob("*.dcm"))


class PeakMemory:
    """Polls the resident memory of a process and its children."""

    def __init__(self, pid: int) -> None:
        self.peak = 0
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                tree = [self._process, *self._process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            self._stop.wait(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def send(port: int, files: list[Path], associations: int) -> float:
    chunks = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            storescu_command(port, chunk),
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for chunk in chunks
    ]
    for sender in senders:
        _, errors = sender.communicate()
        if sender.returncode != 0:
            raise RuntimeError(f"storescu failed: {errors.decode()[-500:]}")
    return time.perf_counter() - started


def measure(
    command: list[str],
    port: int,
    files: list[Path],
    associations: int,
    stored: Path,
    pattern: str = "*",
    settle: float = 0.2,
) -> tuple[float, int]:
    """Start a receiver, send `files` to it, stop it; return seconds taken and peak memory."""
    server = subprocess.Popen(
        command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        time.sleep(settle)
        memory = PeakMemory(server.pid)
        elapsed = send(port, files, associations)
        peak = memory.stop()
    finally:
        server.terminate()
        server.wait()
    count = sum(1 for path in stored.rglob(pattern) if path.is_file())
    assert count == len(files), f"{command[0]} stored {count} of {len(files)}"
    return elapsed, peak


def run_storescp(workdir: Path, files: list[Path], associations: int) -> tuple[float, int]:
    """dcmtk's storescp writing plain files (no fsync); --fork for parallel associations."""
    port = free_port()
    out = workdir / "storescp"
    out.mkdir()
    fork = ["--fork"] if associations > 1 else []
    command = ["storescp", *fork, "-aet", "APPLIANCE", "-od", str(out), str(port)]
    return measure(command, port, files, associations, out)


def run_orthanc(workdir: Path, files: list[Path], associations: int) -> tuple[float, int]:
    """Orthanc as a second named peer: its own SQLite index, storage synced per file."""
    port, http = free_port(), free_port()
    config = workdir / "orthanc.json"
    config.write_text(json.dumps({
        "Name": "bench", "DicomAet": "APPLIANCE", "DicomPort": port, "HttpPort": http,
        "StorageDirectory": str(workdir / "orthanc-storage"),
        "IndexDirectory": str(workdir / "orthanc-index"),
        "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "StorageCompression": False, "SyncStorageArea": True, "Plugins": [],
        "DicomThreadsCount": max(4, associations), "ConcurrentJobs": 1,
    }))  # fmt: skip
    return measure(["Orthanc", str(config)], port, files, associations, workdir / "orthanc-storage")


def run_appliance(
    workdir: Path, files: list[Path], associations: int, processes: int
) -> tuple[float, int]:
    """The appliance listener: fsync'd file and directory, committed SQLite row per instance."""
    port = free_port()
    config = write_config(
        workdir,
        {"listener": {"port": port, "processes": processes}, "logging": {"level": "WARNING"}},
    )
    appliance = [sys.executable, "-m", "appliance", "--config", str(config)]
    subprocess.run([*appliance, "db", "upgrade"], check=True, stdout=subprocess.DEVNULL)
    settle = 1.0 if processes > 1 else 0.2  # let every process bind
    return measure(
        [*appliance, "listen"], port, files, associations, workdir / "spool", "*.dcm", settle
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[300, 2000])
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--skip-peers", action="store_true", help="only the appliance (for A/B runs of it)"
    )
    args = parser.parse_args()
    print(
        f"{'instances':>9} {'assoc':>5}  {'receiver':<26} {'inst/s':>8} {'ratio':>6} "
        f"{'peak MiB':>8}"
    )
    for count in args.counts:
        files = instances(count)
        for associations in args.associations:
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory(dir=DATA) as tmp:
                    base, base_peak = run_storescp(Path(tmp), files, associations)
                base_rate = count / base
                print(
                    f"{count:>9} {associations:>5}  {'dcmtk storescp':<26} {base_rate:>8.1f} "
                    f"{1.0:>6.2f} {base_peak / 2**20:>8.1f}",
                    flush=True,
                )
                if shutil.which("Orthanc"):
                    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
                        elapsed, peak = run_orthanc(Path(tmp), files, associations)
                    rate = count / elapsed
                    print(
                        f"{count:>9} {associations:>5}  {'Orthanc 1.10':<26} {rate:>8.1f} "
                        f"{rate / base_rate:>6.2f} {peak / 2**20:>8.1f}",
                        flush=True,
                    )
                for processes in args.processes:
                    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
                        elapsed, peak = run_appliance(Path(tmp), files, associations, processes)
                    rate = count / elapsed
                    label = f"appliance ({processes} process{'es' if processes > 1 else ''})"
                    print(
                        f"{count:>9} {associations:>5}  {label:<26} {rate:>8.1f} "
                        f"{rate / base_rate:>6.2f} {peak / 2**20:>8.1f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
