"""A phantom's own labels as pipeline findings: what the result encoders, their tests and the
results benchmark take when the models are not what is being measured."""

from collections.abc import Sequence

import numpy as np

from appliance.app.pipelines import algorithm, ct_findings
from appliance.inference.contract import ModelContract
from appliance.phantoms.ct import CTPhantom, LesionKind
from appliance.results.findings import CTFindings, RunIdentity


def truth_findings(
    phantom: CTPhantom,
    source_uids: Sequence[str],
    organs: ModelContract,
    lesions: ModelContract | None = None,
) -> CTFindings:
    """Findings from the phantom's organ and lesion maps, coded by the given contracts (the
    lesion contract's labels named `metastasis` and `cyst`)."""
    lesion_classes = None
    if lesions is not None:
        values = {label.name: label.value for label in lesions.labels}
        lesion_classes = np.zeros(phantom.lesions.shape, dtype=np.uint8)
        for lesion in phantom.lesion_list:
            name = "cyst" if lesion.kind is LesionKind.CYST else "metastasis"
            lesion_classes[phantom.lesions == lesion.label] = values[name]
    contracts = (organs,) if lesions is None else (organs, lesions)
    identity = RunIdentity("ct", tuple(algorithm(c) for c in contracts), tuple(source_uids))
    return ct_findings(
        identity, phantom.organs, organs, phantom.grid.spacing, lesion_classes, lesions
    )
