"""Lesion measurements in the source geometry, for the TID 1500 report (PS3.16 TID 1411).

Each connected lesion gets its volume and its longest axial diameter: the longest in-plane
distance between two of its voxel centres on any one slice, as a radiologist measures on the
axial image (RECIST-style), using the row and column spacing of the source grid, plus one
voxel for the extent of the two end voxels. Its line is kept for the report to draw: the two
end voxels' centres, pushed half a voxel outwards along the line so that the drawn line is
as long as the stated diameter.
"""

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from appliance.inference.masks import bounding_box, filled

# Face-connected components only: lesions touching at an edge are two lesions.
_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class LesionMeasurement:
    tracking_number: int  # 1-based, ordered by volume, largest first
    volume_ml: float
    longest_axial_diameter_mm: float
    centroid_voxel: tuple[float, float, float]  # (slice, row, column)
    slice_of_longest_diameter: int
    # The diameter's ends on that slice, (row, column) in voxel units from the slice's
    # top-left voxel centre.
    diameter_ends: tuple[tuple[float, float], tuple[float, float]]


def _longest_in_plane(
    points: NDArray[np.float64], spacing: tuple[float, float]
) -> tuple[float, tuple[tuple[float, float], tuple[float, float]]]:
    """The longest distance (mm) between two of `points` (row, column voxel indices) plus one
    voxel, and its line's ends, each pushed out by half a voxel."""
    voxel = min(spacing)
    if len(points) < 2:  # one voxel: its own extent, drawn along the row
        (row, column) = points[0]
        half = voxel / 2 / spacing[1]
        return voxel, ((row, column - half), (row, column + half))
    if len(points) >= 3:
        with contextlib.suppress(QhullError):  # collinear points: all of them are on the hull
            points = points[ConvexHull(points * spacing).vertices]
    millimetres = points * spacing
    differences = millimetres[:, None, :] - millimetres[None, :, :]
    distances = np.sqrt((differences**2).sum(axis=-1))
    first, second = np.unravel_index(int(distances.argmax()), distances.shape)
    length = float(distances[first, second])
    outwards = (millimetres[second] - millimetres[first]) / length * (voxel / 2) / spacing
    start, end = points[first] - outwards, points[second] + outwards
    return length + voxel, ((start[0], start[1]), (end[0], end[1]))


def measure_lesions(
    mask: NDArray[np.bool_], spacing: tuple[float, float, float], min_voxels: int = 1
) -> list[LesionMeasurement]:
    """Measure every connected component of `mask` (slice, row, column; spacing in mm)."""
    return number_lesions(mask, spacing, min_voxels)[1]


def number_lesions(
    mask: NDArray[np.bool_],
    spacing: tuple[float, float, float],
    min_voxels: int = 1,
    at: Sequence[int] = (0, 0, 0),
) -> tuple[NDArray[np.uint16], list[LesionMeasurement]]:
    """`measure_lesions`, and a map of `mask`'s grid holding each measured lesion's tracking
    number (0 elsewhere, and on components under `min_voxels`). Where `mask` is a box cut
    from a volume, `at` is the box's first voxel in it, and the lesions' positions are
    given in the volume's voxels."""
    numbered = np.zeros(mask.shape, dtype=np.uint16)
    found: list[tuple[float, float, tuple[float, ...], int, int, tuple[object, ...]]] = []
    box = bounding_box(mask, (0, 0, 0))
    if box is None:
        return numbered, []
    origin = [axis.start + offset for axis, offset in zip(box, at, strict=True)]
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
        ends: tuple[tuple[float, ...], ...] = ()
        corner = np.array([origin[1] + bounds[1].start, origin[2] + bounds[2].start])
        for offset, plane in enumerate(lesion):
            if not plane.any():
                continue
            points = np.argwhere(plane).astype(np.float64) + corner
            diameter, line = _longest_in_plane(points, (spacing[1], spacing[2]))
            if diameter > longest:
                longest, longest_slice = diameter, origin[0] + bounds[0].start + offset
                ends = tuple(tuple(float(v) for v in end) for end in line)
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
                ends,
            )
        )
    found.sort(key=lambda item: -item[0])
    renumber = np.zeros(len(found) and int(components.max()) + 1, dtype=np.uint16)
    for number, item in enumerate(found, start=1):
        renumber[item[4]] = number
    if found:
        numbered[box] = renumber[components]
    return numbered, [
        LesionMeasurement(number, volume, diameter, centroid, slice_index, ends)  # type: ignore[arg-type]
        for number, (volume, diameter, centroid, slice_index, _, ends) in enumerate(found, start=1)
    ]


def outline(mask: NDArray[np.bool_]) -> tuple[tuple[float, float], ...]:
    """The outer boundary of `mask`'s largest connected region, as a closed polygon along the
    pixels' edges: (column, row) image coordinates with the origin at the outer corner of the
    top-left pixel, first point repeated last, straight runs merged. The polygon encloses the
    region's pixels exactly (holes included), so its area is theirs. Empty for an empty mask."""
    components, count = ndimage.label(mask)
    if count == 0:
        return ()
    sizes = np.bincount(components.ravel())[1:]
    region = filled(components == int(sizes.argmax()) + 1)
    padded = np.pad(region, 1)
    inside = padded[1:-1, 1:-1]
    rows, columns = np.nonzero(inside)
    # Each pixel edge between the region and the outside, clockwise on screen (rows down).
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for (dr, dc), start, end in (
        ((-1, 0), (0, 0), (1, 0)),  # above: left to right along the top
        ((0, 1), (1, 0), (1, 1)),  # right: down the right side
        ((1, 0), (1, 1), (0, 1)),  # below: right to left along the bottom
        ((0, -1), (0, 1), (0, 0)),  # left: up the left side
    ):
        outside = ~padded[rows + 1 + dr, columns + 1 + dc]
        for row, column in zip(rows[outside], columns[outside], strict=True):
            edges.setdefault((column + start[0], row + start[1]), []).append(
                (column + end[0], row + end[1])
            )
    first = min(edges)  # the top-left corner: on the outer boundary
    points, here = [first], first
    while True:
        here = edges[here].pop()
        if here == first:
            break
        points.append(here)
    corners = [
        point
        for index, point in enumerate(points)
        if _turns(points[index - 1], point, points[(index + 1) % len(points)])
    ]
    return tuple((float(x), float(y)) for x, y in [*corners, corners[0]])


def _turns(before: tuple[int, int], at: tuple[int, int], after: tuple[int, int]) -> bool:
    return (at[0] - before[0]) * (after[1] - at[1]) != (at[1] - before[1]) * (after[0] - at[0])
