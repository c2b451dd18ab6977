"""What a pipeline run found, apart from the pixels: numbered, coded segments, their
measurements, and the run's identity from which every result UID is derived (so a re-run
makes the same objects). The label maps and masks travel beside these in `results.findings`.
"""

from dataclasses import dataclass
from enum import StrEnum

from appliance.domain.concepts import CodedConcept
from appliance.domain.uids import Uid, derive_uid


class SegmentationType(StrEnum):
    """Segmentation Type (0062,0001) of a CT result: BINARY, which every receiver takes, or
    LABELMAP (the Label Map Segmentation IOD), which newer ones do."""

    BINARY = "binary"
    LABELMAP = "labelmap"


@dataclass(frozen=True)
class Algorithm:
    """The model that made a segment: the SEG's algorithm identification, the SR's device."""

    name: str
    version: int
    synthetic: bool  # trained on phantoms: never for clinical use
    limits: str = ""  # what it was made for, in words (its declared domain)


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
    category: CodedConcept
    type: CodedConcept
    tracking_id: str
    tracking_uid: Uid
    algorithm: Algorithm
    finding_site: CodedConcept | None = None  # where a lesion lies
    stage: str = ""  # the pipeline stage that found it
    type_modifier: CodedConcept | None = None  # laterality, for example
    colour: tuple[int, int, int] | None = None  # recommended display colour, RGB
    review: tuple[str, ...] = ()  # why it is low confidence; empty: a plain finding


@dataclass(frozen=True)
class Withheld:
    """A finding of low confidence that the site's setting keeps from delivery: what it was
    and why, for the summary and the job's record."""

    label: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Search:
    """A stage that looked for separate findings (lesions) and where: the report says what
    it found, and that it found none, only for what was searched."""

    stage: str
    site: CodedConcept | None


@dataclass(frozen=True)
class VolumeMeasurement:
    segment: int
    volume_ml: float
    longest_axial_diameter_mm: float | None = None  # lesions only


@dataclass(frozen=True)
class FrameArea:
    frame: int  # 1-based frame number in the source
    area_mm2: float | None  # None when the source gives no pixel size
    area_px: int
    review: tuple[str, ...] = ()  # why this frame's outline is low confidence
