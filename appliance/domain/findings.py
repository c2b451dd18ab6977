"""What a pipeline run found, apart from the pixels: numbered, coded segments, their
measurements, and the run's identity from which every result UID is derived (so a re-run
makes the same objects). The label maps and masks travel beside these in `results.findings`.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

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
    """The inputs, pipeline and models of one run; every UID of its results is a function of
    them. A finding's tracking UID depends on these alone, so a finding keeps it however it is
    encoded; an object's UIDs depend on its `content` too (a fingerprint of everything that
    changes its bytes), so a changed object never collides with an earlier one at a PACS."""

    pipeline: str
    models: tuple[Algorithm, ...]
    source_uids: tuple[str, ...]  # SOP Instance UIDs of the source images
    content: str = ""  # set by the encoder before it makes any object

    def uid(self, *role: str) -> Uid:
        models = [f"{model.name}:{model.version}" for model in self.models]
        return derive_uid(self.pipeline, *models, *sorted(self.source_uids), *role)

    def object_uid(self, *role: str) -> Uid:
        """A UID of an encoded object (SEG or SR, instance or series)."""
        if not self.content:
            raise ValueError("an object's UIDs need the fingerprint of its content")
        return self.uid(self.content, *role)

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
    colour: tuple[int, int, int] | None = None  # recommended display colour, RGB (domain.colours)
    review: tuple[str, ...] = ()  # why it is low confidence; empty: a plain finding


@dataclass(frozen=True)
class Withheld:
    """A finding of low confidence that the site's setting keeps from delivery: what it was
    and why, for the summary and the job's record."""

    label: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Sensitivity:
    """What a search that reports nothing is worth: how many of the findings it looks for it
    reported in studies it never saw, and which studies. A model's contract declares it (CI
    holds the reference lesion model's to its measurement); the report says it beside the
    search, so that "none" never reads as "there are none"."""

    __pydantic_config__: ClassVar[dict[str, str]] = {
        "extra": "forbid"
    }  # read by pydantic when a contract is parsed

    found: int
    present: int
    what: str  # what it looks for: "lesions over 10 mm"
    studies: str  # where it was measured: "4 studies of an independent synthetic generator"

    def __post_init__(self) -> None:
        if not 0 <= self.found <= self.present or self.present < 1:
            raise ValueError(f"found {self.found} of {self.present}: not a measured share")

    def describe(self) -> str:
        return f"found {self.found} of {self.present} {self.what} in {self.studies} it never saw"


@dataclass(frozen=True)
class Search:
    """A stage that looked for separate findings (lesions) and where: the report says what
    it found, and that it found none, only for what was searched, with what the search is
    known to miss."""

    stage: str
    site: CodedConcept | None
    sensitivity: Sensitivity | None = None


@dataclass(frozen=True)
class AxialLine:
    """A polyline on one source slice, as a viewer draws it (closed where its first and last
    points are the same): (column, row) image coordinates with the origin at the outer corner
    of the top-left pixel (SCOORD Graphic Data, PS3.3 C.18.6)."""

    slice_index: int  # into the source slices, in the label map's order
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class VolumeMeasurement:
    segment: int
    volume_ml: float
    longest_axial_diameter_mm: float | None = None  # lesions only
    long_axis: AxialLine | None = None  # where that diameter lies
    outline: AxialLine | None = None  # its outline on the slice where it is largest


@dataclass(frozen=True)
class FrameArea:
    frame: int  # 1-based frame number in the source
    area_mm2: float | None  # None when the source gives no pixel size
    area_px: int
    review: tuple[str, ...] = ()  # why this frame's outline is low confidence
    # The outline a viewer draws: a closed polygon in (column, row) image coordinates with the
    # origin at the outer corner of the top-left pixel (SCOORD Graphic Data).
    outline: tuple[tuple[float, float], ...] = ()
