"""Volume geometry of a CT series from its slices (PS3.3 C.7.6.2, Image Plane Module).

Slices are sorted along the slice normal (the cross product of the row and column direction
cosines), never by Instance Number. A series is refused with a reason, rather than turned into
a volume with wrong geometry, when its slices disagree: mixed orientations, matrix sizes or
pixel spacings, duplicate positions, gaps or uneven spacing, or positions that drift sideways
(a tilted gantry or a mixed localiser).
"""

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median

Vector = tuple[float, float, float]

ORIENTATION_TOLERANCE = 1e-3
SPACING_TOLERANCE = 0.01  # relative, between consecutive slices
POSITION_TOLERANCE_MM = 0.05
MIN_SLICES = 3


class GeometryError(ValueError):
    """The slices do not form one regular volume; the message says why."""


@dataclass(frozen=True, slots=True)
class SliceGeometry:
    sop_instance_uid: str
    image_position: Vector  # (0020,0032), mm, patient coordinates (LPS)
    image_orientation: tuple[float, float, float, float, float, float]  # (0020,0037)
    pixel_spacing: tuple[float, float]  # (0028,0030): row spacing, column spacing
    rows: int
    columns: int


@dataclass(frozen=True, slots=True)
class VolumeGeometry:
    """A regular grid: voxel (k, i, j) = slice k, row i, column j."""

    sop_instance_uids: tuple[str, ...]  # in slice order, along the normal
    origin: Vector  # centre of the first voxel of the first slice
    row_direction: Vector  # direction of increasing column index j
    column_direction: Vector  # direction of increasing row index i
    normal: Vector  # direction of increasing slice index k
    spacing: tuple[float, float, float]  # (slice, row, column) in mm
    shape: tuple[int, int, int]  # (slices, rows, columns)

    def to_patient(self, k: float, i: float, j: float) -> Vector:
        """Patient coordinates (mm) of the voxel at (slice k, row i, column j)."""
        slice_mm, row_mm, column_mm = self.spacing
        return _add(
            self.origin,
            _add(
                _scale(self.normal, k * slice_mm),
                _add(
                    _scale(self.column_direction, i * row_mm),
                    _scale(self.row_direction, j * column_mm),
                ),
            ),
        )


def _dot(a: Vector, b: Vector) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: Vector, b: Vector) -> Vector:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _add(a: Vector, b: Vector) -> Vector:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _scale(a: Vector, factor: float) -> Vector:
    return (a[0] * factor, a[1] * factor, a[2] * factor)


def _sub(a: Vector, b: Vector) -> Vector:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def _unit(a: Vector, what: str) -> Vector:
    length = math.sqrt(_dot(a, a))
    if not math.isfinite(length) or abs(length - 1.0) > ORIENTATION_TOLERANCE:
        raise GeometryError(f"{what} is not a unit vector")
    return a


def build_volume(slices: Sequence[SliceGeometry]) -> VolumeGeometry:
    """Sort `slices` into a regular volume, or raise `GeometryError` with the reason."""
    if len(slices) < MIN_SLICES:
        raise GeometryError(f"a volume needs at least {MIN_SLICES} slices, got {len(slices)}")
    first = slices[0]
    row = _unit(tuple(first.image_orientation[:3]), "the row direction")  # type: ignore[arg-type]
    column = _unit(tuple(first.image_orientation[3:]), "the column direction")  # type: ignore[arg-type]
    if abs(_dot(row, column)) > ORIENTATION_TOLERANCE:
        raise GeometryError("row and column directions are not orthogonal")
    normal = _cross(row, column)
    for item in slices[1:]:
        if any(
            abs(a - b) > ORIENTATION_TOLERANCE
            for a, b in zip(item.image_orientation, first.image_orientation, strict=True)
        ):
            raise GeometryError("the series mixes image orientations")
        if (item.rows, item.columns) != (first.rows, first.columns):
            raise GeometryError("the series mixes matrix sizes")
        if any(
            abs(a - b) > 1e-4 for a, b in zip(item.pixel_spacing, first.pixel_spacing, strict=True)
        ):
            raise GeometryError("the series mixes pixel spacings")
    ordered = sorted(slices, key=lambda s: _dot(s.image_position, normal))
    distances = [_dot(s.image_position, normal) for s in ordered]
    steps = [b - a for a, b in itertools.pairwise(distances)]
    if min(steps) < POSITION_TOLERANCE_MM:
        raise GeometryError("two slices share a position")
    typical = median(steps)
    if max(abs(step - typical) for step in steps) > SPACING_TOLERANCE * typical + 1e-3:
        raise GeometryError(
            f"slice spacing is uneven or has gaps ({min(steps):.2f} to {max(steps):.2f} mm)"
        )
    origin = ordered[0].image_position
    for index, item in enumerate(ordered):
        expected = _add(origin, _scale(normal, index * typical))
        drift = _sub(item.image_position, expected)
        if math.sqrt(_dot(drift, drift)) > max(POSITION_TOLERANCE_MM, 0.02 * typical):
            raise GeometryError("slice positions drift off the normal (tilted or mixed stack)")
    return VolumeGeometry(
        sop_instance_uids=tuple(s.sop_instance_uid for s in ordered),
        origin=origin,
        row_direction=row,
        column_direction=column,
        normal=normal,
        spacing=(typical, first.pixel_spacing[0], first.pixel_spacing[1]),
        shape=(len(ordered), first.rows, first.columns),
    )
