"""The references for deepbet, run with the importers venv's Python (it has nilearn, nibabel,
deepbet and PyTorch):

    .venv-nnunet/bin/python tests/support/deepbet_reference.py REQUEST.json

REQUEST.json holds `output` (a folder) and either `template` (export the MNI152 2009a T1
template from nilearn's package, its affine, and a brain mask from its grey- and white-matter
maps) or `deepbet` (a list of {"volume": NPY, "affine": NPY}: deepbet's own masks of each, on
the CPU). Prints a JSON map of what it wrote.
"""

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def template(output: Path) -> dict[str, str]:
    import nilearn

    data = Path(nilearn.__file__).parent / "datasets" / "data"
    t1 = nib.load(data / TEMPLATE.format("t1"))
    matter = sum(nib.load(data / TEMPLATE.format(kind)).get_fdata() for kind in ("gm", "wm"))
    brain = ndimage.binary_fill_holes(matter > 0.5)  # the ventricles are inside the brain
    written = {
        "volume": np.asarray(t1.get_fdata(), dtype=np.float32),
        "affine": t1.affine,
        "brain": brain,
    }
    for name, array in written.items():
        np.save(output / f"{name}.npy", array)
    return {name: str(output / f"{name}.npy") for name in written}


def deepbet(cases: list[dict[str, str]], output: Path) -> dict[str, str]:
    import torch
    from deepbet.bet import BrainExtraction

    torch.set_num_threads(2)
    extraction = BrainExtraction(no_gpu=True)
    found = {}
    for index, case in enumerate(cases):
        image = nib.Nifti1Image(np.load(case["volume"]), np.load(case["affine"]))
        _, mask, _ = extraction.run(image)
        path = output / f"mask_{index}.npy"
        np.save(path, np.asarray(mask.dataobj) > 0)
        found[f"mask_{index}"] = str(path)
    return found


def main() -> None:
    request = json.loads(Path(sys.argv[1]).read_text())
    output = Path(request["output"])
    if "template" in request:
        print(json.dumps(template(output)))
    else:
        print(json.dumps(deepbet(request["deepbet"], output)))


if __name__ == "__main__":
    main()
