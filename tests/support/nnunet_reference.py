"""The reference: nnU-Net v2's own predictor on DICOM series, read as its SimpleITKIO reads
images (SimpleITK's array and spacing, z first). Run with the importers venv's Python:

    .venv-nnunet/bin/python tests/support/nnunet_reference.py CASES.json

CASES.json is a list of {"series": DIR, "model": RESULT_FOLDER, "folds": [..], "step": s,
"mirroring": bool, "postprocessing": FILE or null, "output": NPY}; each output holds the
label map, and OUTPUT.json beside it the image's origin, spacing and direction.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813 - SimpleITK's own name
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.postprocessing.remove_connected_components import (
    remove_all_but_largest_component_from_segmentation,
)


def read_series(directory: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(directory)))
    return reader.Execute()


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # one per core: more only contend
    predictors: dict[tuple[str, tuple[int, ...], float, bool], nnUNetPredictor] = {}
    for case in cases:
        key = (case["model"], tuple(case["folds"]), case["step"], case["mirroring"])
        if key not in predictors:
            predictor = nnUNetPredictor(
                tile_step_size=case["step"], use_gaussian=True, use_mirroring=case["mirroring"],
                perform_everything_on_device=False, device=torch.device("cpu"),
                allow_tqdm=False,
            )  # fmt: skip
            predictor.initialize_from_trained_model_folder(case["model"], tuple(case["folds"]))
            predictors[key] = predictor
        image = read_series(Path(case["series"]))
        array = sitk.GetArrayFromImage(image).astype(np.float32)[None]
        spacing = list(image.GetSpacing())[::-1]
        labels = predictors[key].predict_single_npy_array(array, {"spacing": spacing})
        if case.get("postprocessing"):
            steps = json.loads(Path(case["postprocessing"]).read_text())
            for kwargs in steps["postprocessing_kwargs"]:
                labels = remove_all_but_largest_component_from_segmentation(labels, **kwargs)
        np.save(case["output"], np.asarray(labels, dtype=np.uint8))
        Path(case["output"] + ".json").write_text(json.dumps({
            "origin": image.GetOrigin(), "spacing": image.GetSpacing(),
            "direction": image.GetDirection(),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
