"""Lesion volume and longest axial diameter, against spheres of known size; the diameter's
line and a frame's outline, as a viewer draws them."""

import numpy as np
import pytest

from appliance.inference.measurements import measure_lesions, outline
from appliance.phantoms.ct import Grid, generate_ct


def sphere(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    centre_mm: tuple[float, float, float],
    diameter_mm: float,
) -> np.ndarray:
    grids = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    distance = sum((g - c) ** 2 for g, c in zip(grids, centre_mm, strict=True))
    return distance <= (diameter_mm / 2) ** 2


@pytest.mark.parametrize("spacing", [(1.0, 0.5, 0.5), (2.5, 0.8, 0.8), (5.0, 0.7, 0.7)])
def test_sphere_volume_and_diameter(spacing: tuple[float, float, float]) -> None:
    shape = (int(60 / spacing[0]), int(60 / spacing[1]), int(60 / spacing[2]))
    mask = sphere(shape, spacing, (30.0, 30.0, 30.0), 20.0)
    (lesion,) = measure_lesions(mask, spacing)
    assert lesion.volume_ml == pytest.approx(4 / 3 * np.pi * 10**3 / 1000, rel=0.12)
    assert lesion.longest_axial_diameter_mm == pytest.approx(20.0, abs=max(spacing[1:]) * 1.5)
    assert lesion.centroid_voxel == pytest.approx(
        (30 / spacing[0], 30 / spacing[1], 30 / spacing[2]), abs=0.6
    )


def test_lesions_are_separated_and_ordered_largest_first() -> None:
    spacing = (2.0, 1.0, 1.0)
    shape = (40, 80, 80)
    small = sphere(shape, spacing, (40.0, 20.0, 20.0), 8.0)
    large = sphere(shape, spacing, (40.0, 55.0, 55.0), 24.0)
    lesions = measure_lesions(small | large, spacing)
    assert [lesion.tracking_number for lesion in lesions] == [1, 2]
    assert lesions[0].longest_axial_diameter_mm == pytest.approx(24, abs=1.5)
    assert lesions[1].longest_axial_diameter_mm == pytest.approx(8, abs=1.5)
    assert measure_lesions(small | large, spacing, min_voxels=200)[0].tracking_number == 1
    assert len(measure_lesions(small | large, spacing, min_voxels=200)) == 1


def test_phantom_lesions_measure_close_to_their_design() -> None:
    grid = Grid((60, 100, 100), (2.0, 1.5, 1.5))
    phantom = generate_ct(12, grid, lesion_count=3)
    measured = measure_lesions(phantom.lesions > 0, grid.spacing)
    assert measured
    designed = sorted((lesion.diameter_mm for lesion in phantom.lesion_list), reverse=True)
    # a lesion at the liver's edge is clipped by it; the largest is rarely clipped much
    assert measured[0].longest_axial_diameter_mm <= designed[0] + 2 * grid.spacing[1]
    assert measured[0].longest_axial_diameter_mm >= 0.5 * designed[0]


@pytest.mark.parametrize("spacing", [(1.0, 0.5, 0.5), (2.5, 0.8, 1.1)])
def test_the_diameter_line_is_as_long_as_the_diameter_and_lies_on_the_lesion(
    spacing: tuple[float, float, float],
) -> None:
    shape = (int(60 / spacing[0]), int(60 / spacing[1]), int(60 / spacing[2]))
    mask = sphere(shape, spacing, (30.0, 30.0, 30.0), 20.0)
    (lesion,) = measure_lesions(mask, spacing)
    (row0, column0), (row1, column1) = lesion.diameter_ends
    drawn = np.hypot((row1 - row0) * spacing[1], (column1 - column0) * spacing[2])
    # the ends are pushed out by half the smaller pixel side, along a slanted line
    assert drawn == pytest.approx(lesion.longest_axial_diameter_mm, abs=min(spacing[1:]) * 0.5)
    plane = mask[lesion.slice_of_longest_diameter]
    for row, column in (
        (row0, column0),
        (row1, column1),
        ((row0 + row1) / 2, (column0 + column1) / 2),
    ):
        near = plane[
            max(0, round(row) - 1) : round(row) + 2, max(0, round(column) - 1) : round(column) + 2
        ]
        assert near.any(), "every point of the line is on the lesion or next to it"


def polygon_area(points: tuple[tuple[float, float], ...]) -> float:
    xy = np.array(points)
    return 0.5 * abs(float(np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1])))


def test_an_outline_encloses_exactly_the_largest_regions_pixels() -> None:
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:20, 10:30] = True  # a notched rectangle...
    mask[12:20, 18:22] = False
    mask[8:10, 12:14] = False  # ...with a hole, which the outline encloses
    mask[30:33, 40:43] = True  # a smaller second region, which it leaves out
    points = outline(mask)
    assert points[0] == points[-1], "closed"
    assert points[0] == (10.0, 5.0), "pixel-corner coordinates: (column, row)"
    assert polygon_area(points) == mask[:25].sum() + 4
    assert len(points) == 9, "straight runs merged into their corners"
    assert outline(np.zeros((4, 4), dtype=bool)) == ()
