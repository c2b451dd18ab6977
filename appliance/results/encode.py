"""A run's findings to the objects that go to the outbox: SEG and SR, each through the gate.

Before anything is encoded, the run's identity takes a fingerprint of everything that shapes
the objects' bytes (the findings with their pixels, the SEG form, the equipment and the
encoder's version), and the objects' UIDs derive from it: a re-run that makes the same
objects makes the same UIDs, and a changed object gets new ones.
"""

import hashlib
from collections.abc import Sequence
from dataclasses import replace

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from appliance.domain.findings import RunIdentity, SegmentationType
from appliance.results.companion import outlined_cine
from appliance.results.findings import CTFindings, UltrasoundFindings
from appliance.results.report import ct_report, ultrasound_report
from appliance.results.segmentation import (
    Equipment,
    ct_segmentation,
    us_segmentation,
)
from appliance.results.validate import CheckedResult, check

_LO = 64  # a Series Description is a Long String
# Bump the first part when the appliance's own encoding changes what it writes.
ENCODER = f"results 3; highdicom {hd.__version__}; pydicom {pydicom.__version__}"


def fingerprint(*parts: object, pixels: np.ndarray) -> str:
    """A digest of the encoder's version, `parts` (their reprs) and `pixels`."""
    digest = hashlib.sha256()  # the fastest of hashlib's digests where CPUs have SHA extensions
    for part in (ENCODER, *parts):
        digest.update(repr(part).encode())
        digest.update(b"\0")
    digest.update(np.ascontiguousarray(pixels).view(np.uint8).data)
    return digest.hexdigest()[:32]


def description(identity: RunIdentity, what: str) -> str:
    """Series description a worklist shows: what it is, which models, and a warning where the
    models are synthetic references."""
    text = f"AI {what}: {identity.software_version}"
    if any(model.synthetic for model in identity.models):
        text += " (SYNTHETIC)"
    return text[:_LO]


def ct_results(
    sources: Sequence[Dataset],
    findings: CTFindings,
    kind: SegmentationType,
    equipment: Equipment,
) -> list[CheckedResult]:
    """The SEG of `kind` and the SR that references it, each marked with its SEG form."""
    content = fingerprint(
        kind, equipment, findings.segments, findings.measurements, findings.searches,
        findings.withheld, pixels=findings.labels,
    )  # fmt: skip
    findings = replace(findings, identity=replace(findings.identity, content=content))
    identity = findings.identity
    seg = ct_segmentation(sources, findings, kind, equipment, description(identity, "SEG"))
    sr = ct_report(sources, seg, findings, equipment, description(identity, "report"))
    return [replace(check(seg, sources), form=kind), replace(check(sr, sources), form=kind)]


def ultrasound_results(
    source: Dataset,
    findings: UltrasoundFindings,
    equipment: Equipment,
    frames: np.ndarray | None = None,
) -> list[CheckedResult]:
    """A SEG when the structure is present in some frame, and the SR in every case; with the
    cine's luminance `frames`, also the outlined cine viewers display, when there is an
    outline to draw."""
    content = fingerprint(
        equipment, findings.segment, findings.present, findings.absent, findings.withheld,
        pixels=findings.masks,
    )  # fmt: skip
    findings = replace(findings, identity=replace(findings.identity, content=content))
    identity = findings.identity
    seg = (
        us_segmentation(source, findings, equipment, description(identity, "SEG"))
        if findings.present
        else None
    )
    sr = ultrasound_report(source, seg, findings, equipment, description(identity, "report"))
    made: list[Dataset] = [seg, sr] if seg is not None else [sr]
    if frames is not None and seg is not None:
        made.append(
            outlined_cine(source, frames, findings, equipment, description(identity, "outlines"))
        )
    return [check(result, [source]) for result in made]
