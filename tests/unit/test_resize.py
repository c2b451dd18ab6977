"""`nearest_zoom` is `ndimage.zoom` at order 0, voxel for voxel, whatever the factors."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from appliance.inference.resize import nearest_zoom


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    targets=st.lists(st.integers(1, 23), min_size=3, max_size=3),
    grid_mode=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_nearest_zoom_is_ndimage_order_0(
    shape: list[int], targets: list[int], grid_mode: bool, seed: int
) -> None:
    labels = np.random.default_rng(seed).integers(0, 200, shape).astype(np.uint8)
    factors = [target / size for target, size in zip(targets, shape, strict=False)]
    expected = ndimage.zoom(labels, factors, order=0, grid_mode=grid_mode, mode="nearest")
    resized = nearest_zoom(labels, factors, grid_mode)
    assert resized.dtype == labels.dtype
    np.testing.assert_array_equal(resized, expected)
    if not grid_mode:  # every coordinate lies inside: ndimage's default mode answers the same
        np.testing.assert_array_equal(resized, ndimage.zoom(labels, factors, order=0))


def test_a_ct_label_map_resized_back_as_ndimage_resizes_it() -> None:
    """The pipeline's case: a coarse model grid back onto a 512 x 512 source grid."""
    labels = np.random.default_rng(7).integers(0, 14, (61, 97, 103)).astype(np.uint8)
    factors = [180 / 61, 512 / 97, 512 / 103]
    np.testing.assert_array_equal(
        nearest_zoom(labels, factors, grid_mode=True),
        ndimage.zoom(labels, factors, order=0, grid_mode=True, mode="nearest"),
    )
