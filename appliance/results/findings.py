"""What a pipeline run found, in the form the SEG and SR encoders need.

A run's findings are numbered segments (each with its coded concepts, tracking identifier and
tracking UID), a map of segment numbers on the source grid, and the measurements that refer to
the segments. Every UID is derived from the run's identity (the sorted source instances, the
pipeline and each model's name and version), so a re-run makes the same objects.
"""

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from appliance.domain.uids import Uid, derive_uid


class SegmentationType(StrEnum):
    BINARY = "binary"
    LABELMAP = "labelmap"


@dataclass(frozen=True)
class Code:
    """A coded concept (PS3.3 Table 8.8-1)."""

    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class Algorithm:
    """The model that made a segment: the SEG's algorithm identification, the SR's device."""

    name: str
    version: int
    family: str
    synthetic: bool  # trained on phantoms: never for clinical use


@dataclass(frozen=True)
class RunIdentity:
    """The inputs, pipeline and models of one run; every result UID is a function of them."""

    pipeline: str
    models: tuple[Algorithm, ...]
    source_uids: tuple[str, ...]  # SOP Instance UIDs of the source images

    def uid(self, *role: str) -> Uid:
        models = [f"{model.name}:{model.version}" for model in self.models]
        return derive_uid(self.pipeline, *models, *sorted(self.source_uids), *role)

    @property
    def software_version(self) -> str:
        return ", ".join(f"{model.name} {model.version}" for model in self.models)


@dataclass(frozen=True)
class Segment:
    number: int  # 1-based, as in the SEG
    label: str
    category: Code
    type: Code
    tracking_id: str
    tracking_uid: Uid
    algorithm: Algorithm
    finding_site: Code | None = None  # where a lesion lies


@dataclass(frozen=True)
class VolumeMeasurement:
    segment: int
    volume_ml: float
    longest_axial_diameter_mm: float | None = None  # lesions only


@dataclass(frozen=True)
class CTFindings:
    identity: RunIdentity
    labels: NDArray[np.uint8]  # segment numbers on the source grid (slice, row, column)
    segments: tuple[Segment, ...]
    measurements: tuple[VolumeMeasurement, ...]


@dataclass(frozen=True)
class FrameArea:
    frame: int  # 1-based frame number in the source
    area_mm2: float | None  # None when the source gives no pixel size
    area_px: int


@dataclass(frozen=True)
class UltrasoundFindings:
    identity: RunIdentity
    masks: NDArray[np.bool_]  # (frames, rows, columns) on the source frames
    segment: Segment
    present: tuple[FrameArea, ...]  # the frames where the structure is present
