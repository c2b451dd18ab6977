"""A TotalSegmentator-shaped task through the appliance against TotalSegmentator's own runner
(its Python API, `task="total", fast=True`), on the same CPU, interleaved (bench/peer.py says
how each side is measured). The weights are the fixture shaped like its `total --fast`
weights (tests/fixtures/totalsegmentator: its folder, trainer and 117 classes, a tiny network
trained here), so the network is a small share and what is compared is everything around it.
The input is a 512 x 512 x 300 phantom CT at 1.5 x 0.8 x 0.8 mm: the appliance reads the 300
DICOM files, TotalSegmentator an uncompressed NIfTI of the same voxels.

    .venv/bin/python -m bench.totalsegmentator [--rounds 2] [--slices 300]
"""

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np

from bench.peer import (
    APPLIANCE,
    DATA,
    ROOT,
    THREADS,
    Side,
    appliance_command,
    compare,
    run_appliance,
    side_arguments,
    timed,
    write_nifti,
)

WEIGHTS = ROOT / "tests" / "fixtures" / "totalsegmentator"
SPACING = (1.5, 0.8, 0.8)
RUNNER = Side("totalsegmentator", "TotalSegmentator", importer=True)


def run_totalsegmentator(nifti: Path, home: Path, output: Path) -> dict[str, float]:
    from tests.support.totalsegmentator_reference import point_at

    point_at(WEIGHTS, home)
    import nibabel as nib
    import torch
    from totalsegmentator.python_api import totalsegmentator

    def segment() -> np.ndarray:
        image = nib.load(nifti)
        found = totalsegmentator(
            image, None, ml=True, task="total", fast=True, device="cpu", quiet=True,
            nr_thr_resamp=1, nr_thr_saving=1,
        )  # fmt: skip
        return np.asarray(found.dataobj, dtype=np.uint8)

    torch.set_num_threads(THREADS)
    return timed(segment, output)


def prepare(slices: int) -> tuple[Path, Path, Path]:
    """The series and its NIfTI (made once) and a repository with the task imported."""
    from appliance.phantoms.ct import Grid, generate_ct
    from appliance.phantoms.dicom import write_ct_series

    series = DATA / f"totalseg-ct-{slices}"
    nifti = DATA / f"totalseg-ct-{slices}.nii"  # uncompressed: no gzip in its timing
    if not (series / "done").exists():
        print(f"writing a {slices} x 512 x 512 phantom series to {series} ...", flush=True)
        write_ct_series(generate_ct(906_000, Grid((slices, 512, 512), SPACING)), series)
        write_nifti(series, nifti)
        (series / "done").touch()
    repository = DATA / "totalseg-repository"
    if not (repository / "totalsegmentator_total_fast" / "1").exists():
        appliance = appliance_command("totalseg")
        subprocess.run([*appliance, "db", "upgrade"], check=True)
        subprocess.run(
            [*appliance, "models", "import", "totalsegmentator", str(WEIGHTS), "--task",
             "total_fast"],
            check=True,
        )  # fmt: skip
    return series, nifti, repository


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slices", type=int, default=300)
    side_arguments(parser, "series", "nifti", "repository")
    args = parser.parse_args()
    if args.side == APPLIANCE.name:
        print(
            json.dumps(
                run_appliance(
                    args.series, args.repository, ["totalsegmentator_total_fast"], args.output
                )
            )
        )
        return
    if args.side == RUNNER.name:
        home = DATA / "totalseg-home"
        print(json.dumps(run_totalsegmentator(args.nifti, home, args.output)))
        return
    series, nifti, repository = prepare(args.slices)
    ours, theirs = compare(
        "bench.totalsegmentator", RUNNER, APPLIANCE,
        ["--series", str(series), "--nifti", str(nifti), "--repository", str(repository)],
        args.rounds, f"{args.slices} x 512 x 512 CT at {SPACING} mm, total --fast",
    )  # fmt: skip
    print(f"identical voxels {float(np.mean(ours == theirs)):.5f}")


if __name__ == "__main__":
    main()
