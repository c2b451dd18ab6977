"""Whether a finding is one the appliance can stand behind: its measurements against the
published ranges its model's contract declares per label, and the model's own confidence.

A finding that fails any check is not stated as fact: it is flagged "low confidence, review"
with the reasons, or withheld, as the site's setting says (`Handling`). The ranges belong to
the contract, not to code: an organ's adult volume (MODELS.md: liver 1281 +/- 219 mL), the HU
its tissue can have, how many separate parts it may come in, the share of a frame a target
can fill.
"""

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import ClassVar

Range = tuple[float, float]


class Handling(StrEnum):
    """What becomes of a finding flagged for review."""

    FLAG = "flag"  # delivered, marked low confidence in the SEG, the SR and the summary
    WITHHOLD = "withhold"  # not delivered; the summary and the job record say what was held


@dataclass(frozen=True)
class Plausible:
    """The published bounds of one structure; None accepts anything."""

    __pydantic_config__: ClassVar[dict[str, str]] = {
        "extra": "forbid"
    }  # read by pydantic when a contract is parsed

    volume_ml: Range | None = None
    mean_hu: Range | None = None
    max_parts: int | None = None  # separate parts of at least a tenth of the whole
    area_fraction: Range | None = None  # of the frame's pixels, frames stages
    min_confidence: float | None = None  # the model's mean probability over the structure
    # Dice between the structure and what a second, mirrored pass of its model finds there
    # (test-time augmentation): a finding that comes and goes with a flip is not one to state.
    min_agreement: float | None = None
    # HU between the structure's mean density and that of the tissue around it (its site,
    # within a few voxels), either way: a lesion as dense as the parenchyma around it is one
    # that noise or texture can make.
    min_contrast_hu: float | None = None
    # A lesion's longest axial diameter below which it is too small to characterise: RECIST
    # 1.1 counts a CT lesion measurable from 10 mm; smaller ones are reported for review.
    min_diameter_mm: float | None = None
    # The label of a paired structure of the same model (the other kidney) and how far, in
    # HU, the two mean densities may lie apart: paired organs enhance together, so one much
    # denser than the other is not a perfused organ, or is not that organ at all (a kidney
    # found in the empty fossa of a nephrectomy, on muscle and bowel). Both are flagged: the
    # appliance cannot tell which of the two is wrong.
    pair: str | None = None
    max_pair_difference_hu: float | None = None


@dataclass(frozen=True)
class Observed:
    """What was measured of one finding; None where the stage does not measure it."""

    volume_ml: float | None = None
    mean_hu: float | None = None
    parts: int | None = None
    cut_by_field_of_view: bool = False  # it touches the first or last slice
    area_fraction: float | None = None
    confidence: float | None = None
    agreement: float | None = None
    contrast_hu: float | None = None  # its mean density against the tissue around it
    diameter_mm: float | None = None  # a lesion's longest axial diameter
    pair_difference_hu: float | None = None  # its mean density less its pair's


def review_reasons(bounds: Plausible | None, seen: Observed) -> tuple[str, ...]:
    """Why a finding needs review, or nothing when it is plausible."""
    if bounds is None:
        return ()
    reasons = []
    if seen.cut_by_field_of_view and bounds.volume_ml is not None:
        reasons.append("cut by the field of view: its volume is of the part imaged")
        if seen.volume_ml is not None and seen.volume_ml <= bounds.volume_ml[1]:
            seen = replace(seen, volume_ml=None)  # small for being cut; too large is still wrong
    for name, value, limits, unit in (
        ("volume", seen.volume_ml, bounds.volume_ml, " mL"),
        ("mean density", seen.mean_hu, bounds.mean_hu, " HU"),
        ("share of the frame", seen.area_fraction, bounds.area_fraction, ""),
    ):
        if value is None or limits is None or limits[0] <= value <= limits[1]:
            continue
        shown = f"{value:.0f}" if abs(value) >= 10 else f"{value:.2g}"
        reasons.append(
            f"{name} {shown}{unit} outside the plausible {limits[0]:g} to {limits[1]:g}{unit}"
        )
    if bounds.max_parts is not None and seen.parts is not None and seen.parts > bounds.max_parts:
        reasons.append(f"in {seen.parts} separate parts (at most {bounds.max_parts} expected)")
    least = (
        (seen.confidence, bounds.min_confidence, "model confidence {:.2f} below {:.2f}"),
        (
            seen.agreement,
            bounds.min_agreement,
            "a mirrored pass of the model agrees {:.2f}, below {:.2f}",
        ),
        (
            None if seen.contrast_hu is None else abs(seen.contrast_hu),
            bounds.min_contrast_hu,
            "{:.0f} HU from the tissue around it, below {:g} HU",
        ),
        (
            seen.diameter_mm,
            bounds.min_diameter_mm,
            "{:.0f} mm across, too small to characterise (below {:g} mm)",
        ),
    )
    for value, bound, reason in least:
        if value is not None and bound is not None and value < bound:
            reasons.append(reason.format(value, bound))
    apart, most = seen.pair_difference_hu, bounds.max_pair_difference_hu
    if apart is not None and most is not None and abs(apart) > most:
        pair = (bounds.pair or "").replace("_", " ")
        reasons.append(
            f"mean density {abs(apart):.0f} HU from its pair's ({pair}), over {most:g} HU"
        )
    return tuple(reasons)
