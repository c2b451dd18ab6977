"""A run's findings to the objects that go to the outbox: SEG and SR, each through the gate."""

from collections.abc import Sequence

from pydicom.dataset import Dataset

from appliance.domain.findings import RunIdentity, SegmentationType
from appliance.results.findings import CTFindings, UltrasoundFindings
from appliance.results.report import ct_report, ultrasound_report
from appliance.results.segmentation import (
    Equipment,
    ct_segmentation,
    us_segmentation,
)
from appliance.results.validate import CheckedResult, check

_LO = 64  # a Series Description is a Long String


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
    identity = findings.identity
    seg = ct_segmentation(sources, findings, kind, equipment, description(identity, "SEG"))
    sr = ct_report(sources, seg, findings, equipment, description(identity, "report"))
    return [check(seg, sources), check(sr, sources)]


def ultrasound_results(
    source: Dataset, findings: UltrasoundFindings, equipment: Equipment
) -> list[CheckedResult]:
    """A SEG when the structure is present in some frame, and the SR in every case."""
    identity = findings.identity
    seg = (
        us_segmentation(source, findings, equipment, description(identity, "SEG"))
        if findings.present
        else None
    )
    sr = ultrasound_report(source, seg, findings, equipment, description(identity, "report"))
    return [*([check(seg, [source])] if seg is not None else []), check(sr, [source])]
