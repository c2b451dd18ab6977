"""A series' acquisition facts read from its header, and whether a pipeline's models were
made for it (each model's declared domain, `domain.applicability`)."""

from collections.abc import Iterable, Sequence

from pydicom.dataset import Dataset

from appliance.domain.applicability import Acquisition, Verdict, check
from appliance.inference.contract import ModelContract


def acquisition_of(header: Dataset) -> Acquisition:
    """The facts of a series from one of its data sets; a malformed value reads as unstated,
    so the model's findings are flagged rather than the series refused for it."""
    spacing = _numbers(header, "PixelSpacing")
    if not spacing:
        regions = header.get("SequenceOfUltrasoundRegions") or []
        deltas = [
            abs(float(region.get(keyword))) * 10  # cm in the region calibration
            for region in regions[:1]
            for keyword in ("PhysicalDeltaX", "PhysicalDeltaY")
            if region.get(keyword) is not None
        ]
        spacing = deltas if len(deltas) == 2 else []
    rows, columns = _integer(header, "Rows"), _integer(header, "Columns")
    field_of_view = None
    if len(spacing) == 2 and rows and columns:
        field_of_view = max(rows * spacing[0], columns * spacing[1])
    thickness = _numbers(header, "SliceThickness")
    return Acquisition(
        modality=str(header.get("Modality", "") or ""),
        body_part=str(header.get("BodyPartExamined", "") or "") or None,
        image_type=tuple(str(value) for value in _values(header, "ImageType")),
        photometric=str(header.get("PhotometricInterpretation", "") or "") or None,
        rows=rows,
        columns=columns,
        pixel_spacing_mm=max(spacing) if len(spacing) == 2 else None,
        slice_thickness_mm=thickness[0] if thickness else None,
        field_of_view_mm=field_of_view,
    )


def verdict(contracts: Iterable[ModelContract], series: Acquisition) -> Verdict:
    """The series against every model of a pipeline: outside if outside any one's domain."""
    outside: list[str] = []
    unknown: list[str] = []
    for contract in contracts:
        if contract.domain is None:
            continue
        found = check(contract.domain, series)
        outside += [f"{contract.name} v{contract.version}: {why}" for why in found.outside]
        unknown += [why for why in found.unknown if why not in unknown]
    return Verdict(tuple(outside), tuple(unknown))


def _values(header: Dataset, keyword: str) -> list[object]:
    try:
        value = header.get(keyword)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):  # malformed
        return []
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return [value]
    return list(value)


def _numbers(header: Dataset, keyword: str) -> list[float]:
    try:
        return [float(value) for value in _values(header, keyword)]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []


def _integer(header: Dataset, keyword: str) -> int | None:
    numbers = _numbers(header, keyword)
    return int(numbers[0]) if numbers else None
