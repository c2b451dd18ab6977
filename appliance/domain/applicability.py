"""Where a model may be trusted: the domain its contract declares, checked against the facts
of a series before the model ever sees it.

A model declares the modalities, body parts, image types, photometric interpretations and
acquisition ranges (pixel spacing, slice thickness, field of view, frame size) it was made
for. A series is outside the domain when a fact it states contradicts the declaration (a
cardiac echo at a liver-cyst model): the pipeline abstains and says why. A fact the series
does not state leaves the domain unknown: the model runs and every finding is flagged for
review with the reason. Image Type's values from the third on carry the exam type
(PS3.3 C.8.5.6.1.1 for ultrasound: ABDOMINAL, EPICARDIAL, ...) and the kind of image
(LOCALIZER for CT).
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

Range = tuple[float, float]


@dataclass(frozen=True)
class Acquisition:
    """What a series' first header says about how it was made; None where it says nothing."""

    modality: str
    body_part: str | None = None
    image_type: tuple[str, ...] = ()
    photometric: str | None = None
    rows: int | None = None
    columns: int | None = None
    pixel_spacing_mm: float | None = None  # the larger of row and column spacing
    slice_thickness_mm: float | None = None
    field_of_view_mm: float | None = None  # the larger in-plane extent


@dataclass(frozen=True)
class Domain:
    """What a model was made for. An empty list or a None range accepts anything."""

    __pydantic_config__: ClassVar[dict[str, str]] = {
        "extra": "forbid"
    }  # read by pydantic when a contract is parsed

    modalities: list[str] = field(default_factory=list)
    body_parts: list[str] = field(default_factory=list)
    image_types: list[str] = field(default_factory=list)  # one of these from value 3 on
    excluded_image_types: list[str] = field(default_factory=list)  # none of these
    photometric: list[str] = field(default_factory=list)
    pixel_spacing_mm: Range | None = None
    slice_thickness_mm: Range | None = None
    field_of_view_mm: Range | None = None
    rows: Range | None = None
    columns: Range | None = None

    def describe(self) -> str:
        """The domain in a few words, for the report's statement of limits: "CT (abdomen),
        slices 0.5 to 5 mm"."""
        text = "/".join(self.modalities) or "any modality"
        kinds = self.body_parts[:1] + self.image_types
        if kinds:
            text += " (" + ", ".join(kind.lower() for kind in kinds) + ")"
        for name, bounds in (
            ("slices", self.slice_thickness_mm),
            ("pixels", self.pixel_spacing_mm),
            ("field of view", self.field_of_view_mm),
        ):
            if bounds:
                text += f", {name} {bounds[0]:g} to {bounds[1]:g} mm"
        return text


@dataclass(frozen=True)
class Verdict:
    """Why a series is outside a domain (the model must not run), and which facts could not
    be checked (its findings are for review)."""

    outside: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()

    @property
    def inside(self) -> bool:
        return not self.outside


def check(domain: Domain, series: Acquisition) -> Verdict:
    """The series against the domain, every fact in turn."""
    outside: list[str] = []
    unknown: list[str] = []
    for problem, known in _checks(domain, series):
        (outside if known else unknown).append(problem)
    return Verdict(tuple(outside), tuple(unknown))


def _checks(domain: Domain, series: Acquisition) -> Iterator[tuple[str, bool]]:
    """(problem, whether the series stated the fact) for each fact that does not fit."""
    yield from _one_of("modality", series.modality or None, domain.modalities)
    yield from _one_of("body part", series.body_part, domain.body_parts)
    yield from _one_of("photometric interpretation", series.photometric, domain.photometric)
    terms = {term.strip().upper() for term in series.image_type[2:] if term.strip()}
    excluded = sorted(terms & {term.upper() for term in domain.excluded_image_types})
    if excluded:
        yield f"image type {', '.join(excluded)} is excluded", True
    if domain.image_types:
        if not terms:
            yield "image type states no exam type", False
        elif not terms & {term.upper() for term in domain.image_types}:
            yield (
                f"image type {', '.join(sorted(terms))} is none of {', '.join(domain.image_types)}",
                True,
            )
    for name, value, bounds in (
        ("pixel spacing", series.pixel_spacing_mm, domain.pixel_spacing_mm),
        ("slice thickness", series.slice_thickness_mm, domain.slice_thickness_mm),
        ("field of view", series.field_of_view_mm, domain.field_of_view_mm),
        ("rows", series.rows, domain.rows),
        ("columns", series.columns, domain.columns),
    ):
        if bounds is None:
            continue
        if value is None:
            yield f"{name} not stated", False
        elif not bounds[0] <= value <= bounds[1]:
            yield f"{name} {value:g} is outside {bounds[0]:g} to {bounds[1]:g}", True


def _one_of(name: str, value: str | None, allowed: list[str]) -> Iterator[tuple[str, bool]]:
    if not allowed:
        return
    if not value:
        yield f"{name} not stated", False
    elif value.upper() not in {item.upper() for item in allowed}:
        yield f"{name} {value} is not {' or '.join(allowed)}", True
