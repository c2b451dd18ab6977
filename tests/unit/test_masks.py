"""Filling a mask's holes by labelling its box's background answers as scipy's fill over the
whole array does, in three dimensions and in two."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from appliance.inference.masks import filled


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12)),
    seed=st.integers(0, 2**32 - 1),
    density=st.floats(0.05, 0.95),
)
def test_filling_holes_in_the_box_is_filling_them_in_the_whole(
    shape: tuple[int, int, int], seed: int, density: float
) -> None:
    """Shells with cavities, masks touching the array's faces, empty masks: the same as
    scipy's fill over the whole array."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < density
    if rng.random() < 0.5:  # a hollow box somewhere, its cavity a hole
        shell = np.zeros(shape, dtype=bool)
        shell[1:-1, 1:-1, 1:-1] = True
        shell[2:-2, 2:-2, 2:-2] = False
        mask = shell
    assert np.array_equal(filled(mask), ndimage.binary_fill_holes(mask))


@settings(max_examples=200, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 16), st.integers(1, 16)),
    seed=st.integers(0, 2**32 - 1),
    density=st.floats(0.05, 0.95),
)
def test_filling_holes_in_a_plane(shape: tuple[int, int], seed: int, density: float) -> None:
    mask = np.random.default_rng(seed).random(shape) < density
    assert np.array_equal(filled(mask), ndimage.binary_fill_holes(mask))
