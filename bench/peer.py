"""A model through the appliance against its own runner, on the same input and CPU,
interleaved: each side runs in a process of its own (the appliance in .venv, the runner in
.venv-nnunet, which holds PyTorch), loads its model, then is timed from reading its input to
the mask on the source grid. Peak memory is the process's peak resident set; "working" is that
peak less the resident set once libraries and model were loaded (PyTorch alone weighs more than
the whole appliance, so both are shown). The answers are compared too: a faster wrong answer
would be no win."""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / ".data"
IMPORTER = ROOT / ".venv-nnunet" / "bin" / "python"
TIME_TARGET = 0.8  # of the runner's wall time
MEMORY_TARGET = 0.5  # of its peak memory
THREADS = 2


def rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_mib() -> float:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries
    that over from the parent through fork and exec, so a side would report its launcher's
    peak when that was higher."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def timed(run: Callable[[], NDArray[np.generic]], output: Path) -> dict[str, float]:
    """Run one side's timed part (after its model is loaded) and save its answer."""
    baseline = rss_mib()
    started = time.perf_counter()
    answer = run()
    seconds = time.perf_counter() - started
    np.save(output, answer)
    return {"seconds": seconds, "peak_mib": peak_mib(), "baseline_mib": baseline}


@dataclass(frozen=True)
class Side:
    name: str  # as `--side` takes it
    label: str  # as the table shows it
    importer: bool  # runs in .venv-nnunet


APPLIANCE = Side("appliance", "appliance (ONNX RT)", importer=False)


def run_appliance(
    series: Path, repository: Path, models: Sequence[str], output: Path
) -> dict[str, float]:
    """The appliance's side: version 1 of each of `models` loaded, then the first one run on
    the DICOM series, timed from reading it to the labels on its grid."""
    from appliance.inference.backend import OnnxRuntimeBackend
    from appliance.inference.contract import load_contract
    from appliance.inference.ct import load_series, segment_ct

    contracts = [load_contract(repository / model / "1") for model in models]
    backend = OnnxRuntimeBackend(repository, threads=THREADS)
    for contract in contracts:
        backend.ready(contract.ref)
    return timed(
        lambda: segment_ct(load_series(sorted(series.glob("*.dcm"))), backend, contracts[0]),
        output,
    )


def side(module: str, which: Side, arguments: list[str], output: Path) -> dict[str, float]:
    python = str(IMPORTER) if which.importer else sys.executable
    command = [python, "-m", module, "--side", which.name, *arguments, "--output", str(output)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{which.name} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def compare(
    module: str, runner: Side, appliance: Side, arguments: list[str], rounds: int, title: str
) -> tuple[NDArray[np.generic], NDArray[np.generic]]:
    """Interleave the two sides for `rounds`, print every run and the medians with both
    ratios against their targets; return the answers (appliance, runner) of the last round."""
    if not IMPORTER.exists():
        raise SystemExit("needs .venv-nnunet (scripts/test makes it)")
    runs: dict[str, list[dict[str, float]]] = {runner.name: [], appliance.name: []}
    outputs = {which.name: DATA / f"{module.split('.')[-1]}-{which.name}.npy"
               for which in (runner, appliance)}  # fmt: skip
    for round_number in range(1, rounds + 1):
        order = (runner, appliance) if round_number % 2 else (appliance, runner)
        for which in order:
            figures = side(module, which, arguments, outputs[which.name])
            runs[which.name].append(figures)
            print(
                f"round {round_number} {which.name:9s} {figures['seconds']:7.1f} s  peak "
                f"{figures['peak_mib']:7.0f} MiB  working "
                f"{figures['peak_mib'] - figures['baseline_mib']:7.0f} MiB",
                flush=True,
            )
    median = {name: {key: statistics.median(run[key] for run in found) for key in found[0]}
              for name, found in runs.items()}  # fmt: skip
    working = {name: m["peak_mib"] - m["baseline_mib"] for name, m in median.items()}
    print(f"\n{title}, {THREADS} threads, {rounds} rounds (medians)")
    print(f"{'':24s}{'seconds':>9s}{'peak MiB':>10s}{'working MiB':>13s}")
    for which in (runner, appliance):
        m = median[which.name]
        print(
            f"{which.label:24s}{m['seconds']:9.1f}{m['peak_mib']:10.0f}{working[which.name]:13.0f}"
        )
    time_ratio = median[appliance.name]["seconds"] / median[runner.name]["seconds"]
    peak_ratio = median[appliance.name]["peak_mib"] / median[runner.name]["peak_mib"]
    print(
        f"time ratio {time_ratio:.2f} (target <= {TIME_TARGET}), peak memory ratio "
        f"{peak_ratio:.2f} (target <= {MEMORY_TARGET}), working memory ratio "
        f"{working[appliance.name] / working[runner.name]:.2f}"
    )
    return np.load(outputs[appliance.name]), np.load(outputs[runner.name])


def appliance_command(name: str) -> list[str]:
    """`appliance --config` on settings of its own under bench/.data: the repository
    `<name>-repository` and a database beside it."""
    DATA.mkdir(parents=True, exist_ok=True)
    config = DATA / f"{name}-appliance.yaml"
    config.write_text(
        f"inference: {{repository: {DATA / f'{name}-repository'}}}\n"
        f"database: {{url: 'sqlite:///{DATA}/{name}-appliance.db'}}\n"
    )
    return [sys.executable, "-m", "appliance", "--config", str(config)]


def side_arguments(parser: argparse.ArgumentParser, *paths: str) -> None:
    """The hidden arguments `side` passes to a side's own process: which side, the `paths`
    it reads, and where it writes its answer."""
    parser.add_argument("--side", help=argparse.SUPPRESS)
    for name in (*paths, "output"):
        parser.add_argument(f"--{name}", type=Path, help=argparse.SUPPRESS)


def write_nifti(series: Path, nifti: Path) -> None:
    """A NIfTI of the voxels the appliance reads from `series` (its volume array and the
    affine of its geometry), for a runner that reads NIfTI only; nibabel is in the importers
    venv, so that venv writes it."""
    from appliance.inference.ct import load_series
    from tests.support.mr import ras_affine

    volume = load_series(sorted(series.glob("*.dcm")))
    arrays = {"volume": volume.hu, "affine": ras_affine(volume.geometry)}
    paths = {name: nifti.with_name(f"{nifti.name}.{name}.npy") for name in arrays}
    for name, array in arrays.items():
        np.save(paths[name], array)
    subprocess.run(
        [str(IMPORTER), "-c",
         "import sys, numpy as np, nibabel as nib; "
         "nib.save(nib.Nifti1Image(np.load(sys.argv[1]), np.load(sys.argv[2])), sys.argv[3])",
         str(paths["volume"]), str(paths["affine"]), str(nifti)],
        check=True,
    )  # fmt: skip
