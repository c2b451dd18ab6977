"""Training nnU-Net fixtures with the real nnunetv2 (run in the importers venv): its folders
in a scratch directory, its planning cut down to a network of a few thousand weights, and its
commands. The fixture scripts under tests/fixtures share these."""

import json
import os
import subprocess
import sys
from pathlib import Path

REDUCED = {  # a three-stage U-Net of a few thousand weights
    "n_stages": 3,
    "features_per_stage": [8, 16, 32],
    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [1, 1, 1],
    "n_conv_per_stage_decoder": [1, 1],
}


def run(*command: str) -> None:
    subprocess.run(command, check=True)


def nnunet_folders(work: Path, dataset: str) -> Path:
    """nnU-Net's raw, preprocessed and results folders under `work`, named in its
    environment; returns the dataset's raw folder, ready for its cases."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(work / name)
    raw = work / "nnUNet_raw" / dataset
    for folder in ("imagesTr", "labelsTr"):
        (raw / folder).mkdir(parents=True)
    return raw


def plan_reduced(
    work: Path, dataset: str, patch: list[int], splits: list[dict[str, list[str]]]
) -> None:
    """nnU-Net's own planning and preprocessing of `dataset`, then its 3d_fullres plans cut
    down to `patch` and the REDUCED network, and the folds fixed to `splits`."""
    bin_dir = Path(sys.executable).parent
    number = dataset.split("_")[0].removeprefix("Dataset")
    run(str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", number, "-c", "3d_fullres",
        "--verify_dataset_integrity", "-np", "2")  # fmt: skip
    preprocessed = work / "nnUNet_preprocessed" / dataset
    plans_path = preprocessed / "nnUNetPlans.json"
    plans = json.loads(plans_path.read_text())
    configuration = plans["configurations"]["3d_fullres"]
    configuration["patch_size"] = patch
    configuration["batch_size"] = 2
    configuration["architecture"]["arch_kwargs"].update(REDUCED)
    plans_path.write_text(json.dumps(plans, indent=2))
    (preprocessed / "splits_final.json").write_text(json.dumps(splits, indent=2))
