"""Volume geometry from slices: sorted along the normal, refused with a reason when irregular."""

import math
import random
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.domain.geometry import GeometryError, SliceGeometry, build_volume

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def stack(
    count: int = 10, spacing: float = 3.0, orientation=AXIAL, origin=(-200.0, -180.0, 50.0)
) -> list[SliceGeometry]:  # type: ignore[no-untyped-def]
    row, column = orientation[:3], orientation[3:]
    normal = (
        row[1] * column[2] - row[2] * column[1],
        row[2] * column[0] - row[0] * column[2],
        row[0] * column[1] - row[1] * column[0],
    )
    return [
        SliceGeometry(
            sop_instance_uid=f"1.2.3.{index}",
            image_position=(
                origin[0] + normal[0] * spacing * index,
                origin[1] + normal[1] * spacing * index,
                origin[2] + normal[2] * spacing * index,
            ),
            image_orientation=orientation,
            pixel_spacing=(0.8, 0.7),
            rows=64,
            columns=48,
        )
        for index in range(count)
    ]


def test_sorted_along_the_normal_whatever_the_arrival_order() -> None:
    slices = stack()
    shuffled = slices[:]
    random.Random(4).shuffle(shuffled)
    volume = build_volume(shuffled)
    assert volume.sop_instance_uids == tuple(s.sop_instance_uid for s in slices)
    assert volume.shape == (10, 64, 48)
    assert volume.spacing == pytest.approx((3.0, 0.8, 0.7))
    assert volume.origin == slices[0].image_position
    assert volume.to_patient(9, 2, 3) == pytest.approx((-200 + 3 * 0.7, -180 + 2 * 0.8, 50 + 27))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda s: s[:2], "at least 3 slices"),
        (lambda s: s[:4] + s[5:], "uneven or has gaps"),
        (lambda s: [*s, replace(s[3], sop_instance_uid="dup")], "share a position"),
        (lambda s: [*s[:-1], replace(s[-1], rows=65)], "matrix sizes"),
        (lambda s: [*s[:-1], replace(s[-1], pixel_spacing=(0.9, 0.7))], "pixel spacings"),
        (
            lambda s: [*s[:-1], replace(s[-1], image_orientation=(1, 0, 0, 0, 0, -1))],
            "mixes image orientations",
        ),
        (
            lambda s: [
                replace(x, image_position=(x.image_position[0] + 0.5 * i, *x.image_position[1:]))
                for i, x in enumerate(s)
            ],
            "drift off the normal",
        ),
        (
            lambda s: [replace(x, image_orientation=(1, 0, 0, 0, 0.9, 0)) for x in s],
            "not a unit vector",
        ),
    ],
)
def test_irregular_series_are_refused_with_a_reason(change, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(GeometryError, match=reason):
        build_volume(change(stack()))


@given(
    st.floats(-math.pi, math.pi),
    st.floats(-math.pi / 2, math.pi / 2),
    st.floats(0.5, 6.0),
    st.integers(3, 40),
    st.randoms(use_true_random=False),
)
def test_any_oblique_regular_stack_round_trips(
    yaw: float, pitch: float, spacing: float, count: int, shuffle: random.Random
) -> None:
    row = (math.cos(yaw), math.sin(yaw), 0.0)
    column = (-math.sin(yaw) * math.cos(pitch), math.cos(yaw) * math.cos(pitch), math.sin(pitch))
    slices = stack(count, spacing, (*row, *column))
    shuffled = slices[:]
    shuffle.shuffle(shuffled)
    volume = build_volume(shuffled)
    assert volume.sop_instance_uids == tuple(s.sop_instance_uid for s in slices)
    assert volume.spacing[0] == pytest.approx(spacing, rel=1e-6)
    for k in (0, count - 1):
        assert volume.to_patient(k, 0, 0) == pytest.approx(slices[k].image_position, abs=1e-6)
