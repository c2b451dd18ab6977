"""An imported nnU-Net model on a clinical-size CT (512 x 512 x 300): the appliance against
nnU-Net's own `nnUNetPredictor`, on the same DICOM series and the same CPU, interleaved.

Each side runs in a process of its own (the appliance in .venv, the predictor in
.venv-nnunet), loads its model, then is timed from reading the series to the label map on the
source grid. Peak memory is the process's peak resident set; "working" is that peak less the
resident set once the libraries and the model were loaded (PyTorch alone weighs more than the
whole appliance, so both are shown). The answers are compared too: a faster wrong answer
would be no win.

    .venv/bin/python -m bench.nnunet [--rounds 2] [--slices 300]
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / ".data"
IMPORTER = ROOT / ".venv-nnunet" / "bin" / "python"
RESULT = (
    ROOT / "tests" / "fixtures" / "nnunet" / "Dataset901_Phantom"
    / "nnUNetTrainer_20epochs__nnUNetPlans__3d_fullres"
)  # fmt: skip
SPACING = (1.5, 0.8, 0.8)  # slices, rows, columns in mm: a routine abdominal CT
TIME_TARGET = 0.8  # of the predictor's wall time
MEMORY_TARGET = 0.5  # of its peak memory
THREADS = 2


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_appliance(series: Path, repository: Path, output: Path) -> dict[str, float]:
    from appliance.inference.backend import OnnxRuntimeBackend
    from appliance.inference.contract import load_contract
    from appliance.inference.ct import load_series, segment_ct

    contract = load_contract(repository / "phantom_organs" / "1")
    backend = OnnxRuntimeBackend(repository, threads=THREADS)
    backend.ready(contract.ref)
    baseline = _rss_mib()
    started = time.perf_counter()
    labels = segment_ct(load_series(sorted(series.glob("*.dcm"))), backend, contract)
    seconds = time.perf_counter() - started
    np.save(output, labels)
    return {"seconds": seconds, "peak_mib": _peak_mib(), "baseline_mib": baseline}


def run_predictor(series: Path, output: Path) -> dict[str, float]:
    import SimpleITK as sitk  # noqa: N813 - SimpleITK's own name
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(THREADS)
    predictor = nnUNetPredictor(
        tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
        perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False,
    )  # fmt: skip
    predictor.initialize_from_trained_model_folder(str(RESULT), (0, 1))
    baseline = _rss_mib()
    started = time.perf_counter()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    image = reader.Execute()
    array = sitk.GetArrayFromImage(image).astype(np.float32)[None]
    labels = predictor.predict_single_npy_array(array, {"spacing": list(image.GetSpacing())[::-1]})
    seconds = time.perf_counter() - started
    np.save(output, np.asarray(labels, dtype=np.uint8))
    return {"seconds": seconds, "peak_mib": _peak_mib(), "baseline_mib": baseline}


def prepare(slices: int) -> tuple[Path, Path]:
    """The series (made once) and a repository with the fixture imported."""
    from appliance.phantoms.ct import Grid, generate_ct
    from appliance.phantoms.dicom import write_ct_series

    series = DATA / f"nnunet-ct-{slices}"
    if not (series / "done").exists():
        print(f"writing a {slices} x 512 x 512 phantom series to {series} ...", flush=True)
        write_ct_series(generate_ct(903_000, Grid((slices, 512, 512), SPACING)), series)
        (series / "done").touch()
    repository = DATA / "nnunet-repository"
    if not (repository / "phantom_organs" / "1").exists():
        config = DATA / "nnunet-appliance.yaml"
        config.write_text(
            f"inference: {{repository: {repository}}}\n"
            f"database: {{url: 'sqlite:///{DATA}/nnunet-appliance.db'}}\n"
        )
        appliance = [sys.executable, "-m", "appliance", "--config", str(config)]
        subprocess.run([*appliance, "db", "upgrade"], check=True)
        subprocess.run(
            [*appliance, "models", "import", "nnunet", str(RESULT), "--name", "phantom_organs",
             "--codes", str(RESULT.parents[1] / "codes.csv"), "--synthetic"],
            check=True,
        )  # fmt: skip
    return series, repository


def side(name: str, series: Path, repository: Path, output: Path) -> dict[str, float]:
    python = sys.executable if name == "appliance" else str(IMPORTER)
    command = [python, "-m", "bench.nnunet", "--side", name, "--series", str(series),
               "--repository", str(repository), "--output", str(output)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--side", choices=["appliance", "nnunet"], help=argparse.SUPPRESS)
    parser.add_argument("--series", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repository", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "appliance":
        print(json.dumps(run_appliance(args.series, args.repository, args.output)))
        return
    if args.side == "nnunet":
        print(json.dumps(run_predictor(args.series, args.output)))
        return
    if not IMPORTER.exists():
        raise SystemExit("needs .venv-nnunet (scripts/test makes it)")
    series, repository = prepare(args.slices)
    runs: dict[str, list[dict[str, float]]] = {"appliance": [], "nnunet": []}
    for round_number in range(1, args.rounds + 1):
        for name in ("nnunet", "appliance") if round_number % 2 else ("appliance", "nnunet"):
            figures = side(name, series, repository, DATA / f"nnunet-labels-{name}.npy")
            runs[name].append(figures)
            working = figures["peak_mib"] - figures["baseline_mib"]
            print(
                f"round {round_number} {name:9s} {figures['seconds']:7.1f} s  peak "
                f"{figures['peak_mib']:7.0f} MiB  working {working:7.0f} MiB",
                flush=True,
            )
    ours, theirs = (np.load(DATA / f"nnunet-labels-{name}.npy") for name in ("appliance", "nnunet"))
    agreement = float(np.mean(ours == theirs))
    median = {name: {key: statistics.median(run[key] for run in found) for key in found[0]}
              for name, found in runs.items()}  # fmt: skip
    time_ratio = median["appliance"]["seconds"] / median["nnunet"]["seconds"]
    peak_ratio = median["appliance"]["peak_mib"] / median["nnunet"]["peak_mib"]
    working = {name: m["peak_mib"] - m["baseline_mib"] for name, m in median.items()}
    print(f"\n{args.slices} x 512 x 512 CT at {SPACING} mm, {THREADS} threads, "
          f"{args.rounds} rounds (medians)")  # fmt: skip
    print(f"{'':22s}{'seconds':>9s}{'peak MiB':>10s}{'working MiB':>13s}")
    for name, label in (("nnunet", "nnUNetPredictor"), ("appliance", "appliance (ONNX RT)")):
        print(f"{label:22s}{median[name]['seconds']:9.1f}{median[name]['peak_mib']:10.0f}"
              f"{working[name]:13.0f}")  # fmt: skip
    print(
        f"time ratio {time_ratio:.2f} (target <= {TIME_TARGET}), peak memory ratio "
        f"{peak_ratio:.2f} (target <= {MEMORY_TARGET}), working memory ratio "
        f"{working['appliance'] / working['nnunet']:.2f}; identical voxels {agreement:.5f}"
    )


if __name__ == "__main__":
    main()
