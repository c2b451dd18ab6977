"""Lesion measurements in the source geometry, for the TID 1500 report (PS3.16 TID 1411).

Each connected lesion gets its volume and its longest axial diameter: the longest in-plane
distance between two of its voxel centres on any one slice, as a radiologist measures on the
axial image (RECIST-style), using the row and column spacing of the source grid.
"""

import contextlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from appliance.inference.ct import bounding_box

# Face-connected components only: lesions touching at an edge are two lesions.
_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class LesionMeasurement:
    tracking_number: int  # 1-based, ordered by volume, largest first
    volume_ml: float
    longest_axial_diameter_mm: float
    centroid_voxel: tuple[float, float, float]  # (slice, row, column)
    slice_of_longest_diameter: int


def _longest_in_plane(points_mm: NDArray[np.float64]) -> float:
    if len(points_mm) < 2:
        return 0.0
    if len(points_mm) >= 3:
        with contextlib.suppress(QhullError):  # collinear points: all of them are on the hull
            points_mm = points_mm[ConvexHull(points_mm).vertices]
    differences = points_mm[:, None, :] - points_mm[None, :, :]
    return float(np.sqrt((differences**2).sum(axis=-1)).max())


def measure_lesions(
    mask: NDArray[np.bool_], spacing: tuple[float, float, float], min_voxels: int = 1
) -> list[LesionMeasurement]:
    """Measure every connected component of `mask` (slice, row, column; spacing in mm)."""
    return number_lesions(mask, spacing, min_voxels)[1]


def number_lesions(
    mask: NDArray[np.bool_], spacing: tuple[float, float, float], min_voxels: int = 1
) -> tuple[NDArray[np.uint16], list[LesionMeasurement]]:
    """`measure_lesions`, and a map of `mask`'s grid holding each measured lesion's tracking
    number (0 elsewhere, and on components under `min_voxels`)."""
    numbered = np.zeros(mask.shape, dtype=np.uint16)
    found: list[tuple[float, float, tuple[float, ...], int, int]] = []
    box = bounding_box(mask, (0, 0, 0))
    if box is None:
        return numbered, []
    origin = [axis.start for axis in box]
    components, _ = ndimage.label(mask[box], structure=_CONNECTIVITY)
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    for index, bounds in enumerate(ndimage.find_objects(components), start=1):
        if bounds is None:
            continue
        lesion = components[bounds] == index
        voxels = int(lesion.sum())
        if voxels < min_voxels:
            continue
        longest, longest_slice = 0.0, origin[0] + bounds[0].start
        for offset, plane in enumerate(lesion):
            points = np.argwhere(plane).astype(np.float64) * (spacing[1], spacing[2])
            diameter = _longest_in_plane(points) + min(spacing[1], spacing[2])  # voxel extent
            if plane.any() and diameter > longest:
                longest, longest_slice = diameter, origin[0] + bounds[0].start + offset
        centre = ndimage.center_of_mass(lesion)
        found.append(
            (
                voxels * voxel_ml,
                longest,
                tuple(
                    float(c + b.start + o) for c, b, o in zip(centre, bounds, origin, strict=True)
                ),
                longest_slice,
                index,
            )
        )
    found.sort(key=lambda item: -item[0])
    renumber = np.zeros(len(found) and int(components.max()) + 1, dtype=np.uint16)
    for number, item in enumerate(found, start=1):
        renumber[item[4]] = number
    if found:
        numbered[box] = renumber[components]
    return numbered, [
        LesionMeasurement(number, volume, diameter, centroid, slice_index)  # type: ignore[arg-type]
        for number, (volume, diameter, centroid, slice_index, _) in enumerate(found, start=1)
    ]
