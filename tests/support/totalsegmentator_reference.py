"""The reference for TotalSegmentator imports: its own Python API, run with the importers
venv's Python on volumes given as .npy with their NIfTI affine, its weights folder pointed
at a fixture (TOTALSEG_WEIGHTS_PATH) and its home at a scratch folder whose config sends no
usage statistics:

    .venv-nnunet/bin/python tests/support/totalsegmentator_reference.py REQUEST.json

REQUEST.json holds `weights`, `home`, and `cases`: a list of {"volume": NPY, "affine": NPY,
"task": "total", "fast": bool, "output": NPY}; each output holds the label map TotalSegmentator
returns (multilabel, the task's class ids), in the volume's own axis order.
"""

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def point_at(weights: Path, home: Path) -> None:
    """TotalSegmentator reads its weights from `weights` and keeps its state in `home`, whose
    config sends no usage statistics (set before the package is imported)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(json.dumps({
        "totalseg_id": "appliance-tests", "send_usage_stats": False, "prediction_counter": 0,
        "statistics_disclaimer_shown": True,
    }))  # fmt: skip
    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    os.environ["TOTALSEG_WEIGHTS_PATH"] = str(weights)


def main() -> None:
    request = json.loads(Path(sys.argv[1]).read_text())
    point_at(Path(request["weights"]), Path(request["home"]))
    from totalsegmentator.python_api import totalsegmentator

    for case in request["cases"]:
        image = nib.Nifti1Image(np.load(case["volume"]), np.load(case["affine"]))
        segmentation = totalsegmentator(
            image, None, ml=True, task=case["task"], fast=case["fast"], device="cpu",
            quiet=True, nr_thr_resamp=1, nr_thr_saving=1,
        )  # fmt: skip
        np.save(case["output"], np.asarray(segmentation.dataobj, dtype=np.uint8))


if __name__ == "__main__":
    main()
