"""Pipelines: a series in, findings out, on the configured inference backend.

This is wiring between two edges: `inference` turns pixels into label maps with the models'
contracts, and `results` encodes findings (numbered, coded segments and their measurements)
as SEG and SR. Neither knows the other; this module translates.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset

from appliance.config import InferenceSettings
from appliance.domain.concepts import CodedConcept
from appliance.domain.findings import (
    Algorithm,
    FrameArea,
    RunIdentity,
    Segment,
    VolumeMeasurement,
)
from appliance.inference.backend import InferenceBackend, OnnxRuntimeBackend
from appliance.inference.contract import ModelContract
from appliance.inference.ct import CTVolume, load_series, segment_ct, segment_in_region
from appliance.inference.measurements import number_lesions
from appliance.inference.ultrasound import decode_cine, segment_cine
from appliance.results.findings import CTFindings, UltrasoundFindings

LIVER = CodedConcept("SCT", "10200004", "Liver")


def make_backend(settings: InferenceSettings) -> InferenceBackend:
    """ONNX Runtime in this process (embedded), or a Triton server (production)."""
    if settings.backend == "triton":
        from appliance.inference.triton import TritonBackend  # the [triton] extra only

        return TritonBackend(settings.triton_url, settings.triton_protocol)
    return OnnxRuntimeBackend(settings.repository, threads=settings.threads)


@dataclass(frozen=True)
class CTRun:
    volume: CTVolume
    findings: CTFindings


@dataclass(frozen=True)
class UltrasoundRun:
    source: Dataset  # the cine's data set without pixel data
    findings: UltrasoundFindings


def algorithm(contract: ModelContract) -> Algorithm:
    return Algorithm(contract.name, contract.version, contract.family.value, contract.synthetic)


def run_ct(
    paths: Sequence[Path],
    backend: InferenceBackend,
    organs: ModelContract,
    lesions: ModelContract | None = None,
) -> CTRun:
    """Organs over the whole series, then (when a lesion model is given) the cascade's lesion
    stage in the box around the liver the organ model found."""
    volume = load_series(paths)
    organ_labels = segment_ct(volume, backend, organs)
    lesion_labels = None
    if lesions is not None:
        liver = [label.value for label in organs.labels if label.type == LIVER]
        if not liver:
            raise ValueError(f"{organs.name} has no liver label for the lesion cascade")
        region = organ_labels == liver[0]
        lesion_labels = segment_in_region(volume, region, backend, lesions)
    contracts = (organs,) if lesions is None else (organs, lesions)
    identity = RunIdentity(
        "ct", tuple(algorithm(c) for c in contracts), volume.geometry.sop_instance_uids
    )
    findings = ct_findings(
        identity, organ_labels, organs, volume.geometry.spacing, lesion_labels, lesions
    )
    return CTRun(volume, findings)


def ct_findings(
    identity: RunIdentity,
    organs: NDArray[np.uint8],
    organ_contract: ModelContract,
    spacing: tuple[float, float, float],
    lesions: NDArray[np.uint8] | None = None,
    lesion_contract: ModelContract | None = None,
) -> CTFindings:
    """Segments for every organ found and for every connected lesion, lesions last and painted
    over their organ (segments do not overlap, so one map serves LABELMAP and BINARY alike)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    labels = np.zeros(organs.shape, dtype=np.uint8)
    segments: list[Segment] = []
    for label in organ_contract.labels:
        where = organs == label.value
        if not where.any():
            continue
        number = len(segments) + 1
        labels[where] = number
        segments.append(
            Segment(
                number, label.name.replace("_", " "), label.category, label.type,
                label.name, identity.uid("segment", label.name), algorithm(organ_contract),
            )
        )  # fmt: skip
    organ_segments = len(segments)
    measurements: list[VolumeMeasurement] = []
    if lesions is not None and lesion_contract is not None:
        numbered, found = number_lesions(lesions > 0, spacing)
        kinds = {label.value: label for label in lesion_contract.labels}
        for lesion in found:
            where = numbered == lesion.tracking_number
            values, counts = np.unique(lesions[where], return_counts=True)
            kind = kinds[int(values[counts.argmax()])]  # the lesion's majority class
            number = len(segments) + 1
            labels[where] = number
            name = f"lesion {lesion.tracking_number}"
            segments.append(
                Segment(
                    number, name, kind.category, kind.type, name,
                    identity.uid("lesion", str(lesion.tracking_number)),
                    algorithm(lesion_contract), LIVER,
                )
            )  # fmt: skip
            measurements.append(
                VolumeMeasurement(number, lesion.volume_ml, lesion.longest_axial_diameter_mm)
            )
    # Organ volumes are counted after the lesions are painted: a voxel has one segment.
    counts = np.bincount(labels.ravel(), minlength=organ_segments + 1)
    organ_volumes = [
        VolumeMeasurement(number, float(counts[number]) * voxel_ml)
        for number in range(1, organ_segments + 1)
    ]
    return CTFindings(identity, labels, tuple(segments), (*organ_volumes, *measurements))


def run_ultrasound(path: Path, backend: InferenceBackend, contract: ModelContract) -> UltrasoundRun:
    source = dcmread(path, stop_before_pixels=True)
    cine = decode_cine(path)
    frames, masks = segment_cine(cine, backend, contract)
    (label,) = contract.labels
    identity = RunIdentity("us", (algorithm(contract),), (str(source.SOPInstanceUID),))
    segment = Segment(
        1, label.name.replace("_", " "), label.category, label.type, label.name,
        identity.uid("segment", label.name), algorithm(contract),
    )  # fmt: skip
    present = tuple(
        FrameArea(frame.index + 1, frame.area_mm2, frame.area_px)
        for frame in frames
        if frame.present
    )
    return UltrasoundRun(source, UltrasoundFindings(identity, masks, segment, present))
