"""Binary masks: the box around one, and one with its holes filled, worked out within that
box so that a mask in a whole CT costs the box, not the CT."""

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage


def bounding_box(mask: NDArray[np.generic], margins: Sequence[int]) -> tuple[slice, ...] | None:
    """The box around the True (non-zero) voxels of `mask`, grown by `margins` voxels along
    each axis and kept inside the array; None when `mask` is empty. Found from one projection
    per axis, so a mask of a whole CT costs no list of its voxels."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(other for other in range(mask.ndim) if other != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return grown(tuple(box), margins, mask.shape)


def grown(
    box: tuple[slice, ...], margins: Sequence[int], shape: Sequence[int]
) -> tuple[slice, ...]:
    """`box` grown by `margins` voxels along each axis, kept inside an array of `shape`."""
    return tuple(
        slice(max(part.start - margin, 0), min(part.stop + margin, size))
        for part, margin, size in zip(box, margins, shape, strict=True)
    )


def filled(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """`mask` with its enclosed holes filled, as `ndimage.binary_fill_holes` fills them: a
    hole is a face-connected part of the background that does not reach the array's edge.
    Worked out in the box around `mask` grown by one voxel (the background outside it reaches
    the edge either way), by labelling that box's background once, which is several times
    faster than ndimage's dilation from the edge (`tests/unit/test_masks.py` holds it to
    ndimage's answer)."""
    whole = np.zeros(mask.shape, dtype=bool)
    box = bounding_box(mask, (1,) * mask.ndim)
    if box is None:
        return whole
    background, count = ndimage.label(~mask[box])  # face-connected, as ndimage fills
    outside = np.zeros(count + 1, dtype=bool)
    for axis in range(mask.ndim):
        for edge in (0, -1):
            outside[np.take(background, edge, axis=axis)] = True
    outside[0] = False  # the mask itself
    whole[box] = ~outside[background]
    return whole
