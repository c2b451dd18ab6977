"""An imported nnU-Net model on a clinical-size CT (512 x 512 x 300): the appliance against
nnU-Net's own `nnUNetPredictor`, on the same DICOM series and the same CPU, interleaved
(bench/peer.py says how each side is measured). The predictor reads the series with
SimpleITK, as its SimpleITKIO would.

    .venv/bin/python -m bench.nnunet [--rounds 2] [--slices 300]
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
)

RESULT = (
    ROOT / "tests" / "fixtures" / "nnunet" / "Dataset901_Phantom"
    / "nnUNetTrainer_20epochs__nnUNetPlans__3d_fullres"
)  # fmt: skip
SPACING = (1.5, 0.8, 0.8)  # slices, rows, columns in mm: a routine abdominal CT
RUNNER = Side("nnunet", "nnUNetPredictor", importer=True)


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

    def predict() -> np.ndarray:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
        image = reader.Execute()
        array = sitk.GetArrayFromImage(image).astype(np.float32)[None]
        spacing = list(image.GetSpacing())[::-1]
        labels = predictor.predict_single_npy_array(array, {"spacing": spacing})
        return np.asarray(labels, dtype=np.uint8)

    return timed(predict, output)


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
        appliance = appliance_command("nnunet")
        subprocess.run([*appliance, "db", "upgrade"], check=True)
        subprocess.run(
            [*appliance, "models", "import", "nnunet", str(RESULT), "--name", "phantom_organs",
             "--codes", str(RESULT.parents[1] / "codes.csv"), "--synthetic"],
            check=True,
        )  # fmt: skip
    return series, repository


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slices", type=int, default=300)
    side_arguments(parser, "series", "repository")
    args = parser.parse_args()
    if args.side == APPLIANCE.name:
        print(
            json.dumps(run_appliance(args.series, args.repository, ["phantom_organs"], args.output))
        )
        return
    if args.side == RUNNER.name:
        print(json.dumps(run_predictor(args.series, args.output)))
        return
    series, repository = prepare(args.slices)
    ours, theirs = compare(
        "bench.nnunet", RUNNER, APPLIANCE,
        ["--series", str(series), "--repository", str(repository)], args.rounds,
        f"{args.slices} x 512 x 512 CT at {SPACING} mm",
    )  # fmt: skip
    print(f"identical voxels {float(np.mean(ours == theirs)):.5f}")


if __name__ == "__main__":
    main()
