"""A phantom's own labels as a pipeline's findings: what the result encoders, their tests and
the results benchmark take when the models are not what is being measured."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from appliance.app.pipelines import identity, volume_findings
from appliance.inference.catalog import load_catalog
from appliance.phantoms.ct import CTPhantom, LesionKind
from appliance.phantoms.dicom import write_ct_series
from appliance.results.findings import CTFindings

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


def truth_study(
    phantom: CTPhantom, folder: Path, pipeline_name: str = "ct"
) -> tuple[list[Dataset], CTFindings]:
    """The phantom written as a CT series into `folder`: its headers (no pixel data) in
    slice order, the sources of a result, and its own maps as findings."""
    sources = sorted(
        (dcmread(path, stop_before_pixels=True) for path in write_ct_series(phantom, folder)),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    return sources, truth_findings(phantom, [str(s.SOPInstanceUID) for s in sources], pipeline_name)


def truth_findings(
    phantom: CTPhantom, source_uids: Sequence[str], pipeline_name: str = "ct"
) -> CTFindings:
    """Findings from the phantom's organ and lesion maps, as the reference pipeline
    `pipeline_name` (`ct`: organs and liver lesions; `ct_organs`: organs) would code them."""
    catalog = load_catalog(REPOSITORY)
    pipeline = catalog.pipelines[pipeline_name]
    maps = {pipeline.stages[0].name: phantom.organs}
    if len(pipeline.stages) > 1:
        lesions = catalog.contract(pipeline.stages[1].model)
        values = {label.name: label.value for label in lesions.labels}
        classes = np.zeros(phantom.lesions.shape, dtype=np.uint8)
        for lesion in phantom.lesion_list:
            name = "cyst" if lesion.kind is LesionKind.CYST else "metastasis"
            classes[phantom.lesions == lesion.label] = values[name]
        maps[pipeline.stages[1].name] = classes
    run = identity(pipeline, catalog, source_uids)
    return volume_findings(run, pipeline, catalog, maps, phantom.grid.spacing)
