"""deepbet (T1 MR brain extraction, real weights) through the appliance against deepbet's own
Python runner, on the same CPU, interleaved (bench/peer.py says how each side is measured).
The input is the MNI152 2009a T1 template (from nilearn's package, 197 x 233 x 189 at 1 mm):
the appliance reads it as the DICOM MR series a PACS would send, deepbet as the NIfTI file it
reads natively (made from the same series' voxels), so the appliance does the more work.

    .venv/bin/python -m bench.deepbet [--rounds 3]
"""

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np

from bench.peer import (
    APPLIANCE,
    DATA,
    THREADS,
    Side,
    appliance_command,
    compare,
    run_appliance,
    side_arguments,
    timed,
    write_nifti,
)

RUNNER = Side("deepbet", "deepbet (PyTorch)", importer=True)


def run_deepbet(nifti: Path, output: Path) -> dict[str, float]:
    import torch
    from deepbet.bet import BrainExtraction

    torch.set_num_threads(THREADS)
    extraction = BrainExtraction(no_gpu=True)
    return timed(lambda: np.asarray(extraction.run(str(nifti))[1].dataobj) > 0, output)


def prepare() -> tuple[Path, Path, Path]:
    """The series and its NIfTI (made once) and a repository with deepbet imported."""
    from tests.support.mr import mni_template, write_mr_series

    series = DATA / "deepbet-mni152"
    nifti = DATA / "deepbet-mni152.nii.gz"
    if not (series / "done").exists():
        template = mni_template(DATA / "deepbet-template")
        write_mr_series(np.load(template["volume"]), np.load(template["affine"]), series)
        write_nifti(series, nifti)
        (series / "done").touch()
    repository = DATA / "deepbet-repository"
    if not (repository / "deepbet" / "1").exists():
        appliance = appliance_command("deepbet")
        subprocess.run([*appliance, "db", "upgrade"], check=True)
        subprocess.run([*appliance, "models", "import", "deepbet"], check=True)
    return series, nifti, repository


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    side_arguments(parser, "series", "nifti", "repository")
    args = parser.parse_args()
    if args.side == APPLIANCE.name:
        print(
            json.dumps(
                run_appliance(
                    args.series, args.repository, ["deepbet", "deepbet_locator"], args.output
                )
            )
        )
        return
    if args.side == RUNNER.name:
        print(json.dumps(run_deepbet(args.nifti, args.output)))
        return
    series, nifti, repository = prepare()
    ours, theirs = compare(
        "bench.deepbet", RUNNER, APPLIANCE,
        ["--series", str(series), "--nifti", str(nifti), "--repository", str(repository)],
        args.rounds, "MNI152 2009a T1, 197 x 233 x 189 at 1 mm",
    )  # fmt: skip
    both = np.count_nonzero(ours & theirs)
    dice = 2 * both / (np.count_nonzero(ours) + np.count_nonzero(theirs))
    print(f"Dice to deepbet's own mask {dice:.5f}")


if __name__ == "__main__":
    main()
