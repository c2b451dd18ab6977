"""A wrapper's own resampling around nnU-Net's predictor, as TotalSegmentator's
`nnUNet_predict_image` does it: the volume turned to the closest RAS axes (nibabel's
`as_closest_canonical`), resampled to an isotropic spacing by `scipy.ndimage.zoom` (its
`change_spacing`: order 1, edges 'nearest', computed in float64, cast to int32 by
truncation), handed to the predictor as the NIfTI SimpleITK would read back (axes reversed),
in three overlapping slabs when it is very large (the multi-part tasks); the labels come back
by order-0 zoom to the canonical shape, then to the source axes.
"""

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from appliance.inference import nnunet
from appliance.inference.backend import InferenceBackend
from appliance.inference.contract import ModelContract, Preresample
from appliance.inference.fixed_grid import closest_ras, from_ras, to_ras
from appliance.inference.resize import nearest_zoom

SPLIT_MIN_PLANES = 200  # `nnUNet_predict_image`: no split of a volume of fewer planes


def segment(
    volume: NDArray[np.float32],
    spacing: Sequence[float],
    directions: NDArray[np.float64],
    backend: InferenceBackend,
    contract: ModelContract,
) -> NDArray[np.uint8]:
    """The label map on the grid of `volume` (slice, row, column; `spacing` in the same
    order; `directions` its axes in RAS, as columns)."""
    wrap = contract.nnunet.preresample if contract.nnunet else None
    if wrap is None:
        raise ValueError(f"model {contract.ref} has no preresampling wrapper")
    orientation = closest_ras(directions)
    canonical = to_ras(volume, orientation)
    zooms = np.array([spacing[axis] for axis in np.argsort(orientation[:, 0])], dtype=float)
    target = np.full(3, wrap.spacing_mm)
    if np.array_equal(zooms, target):  # `change_spacing` returns the image untouched
        resampled = np.asarray(canonical, dtype=np.float32)
    else:
        zoomed = ndimage.zoom(
            canonical, zooms / target, output=np.float64, order=wrap.order, mode="nearest"
        )
        resampled = zoomed.astype(wrap.dtype).astype(np.float32)
        del zoomed
    on_canonical = predict_resampled(resampled, wrap, list(target), backend, contract)
    del resampled
    if on_canonical.shape != canonical.shape:
        factors = np.array(canonical.shape) / np.array(on_canonical.shape)
        on_canonical = nearest_zoom(on_canonical, factors)
    return np.ascontiguousarray(from_ras(on_canonical, orientation), dtype=np.uint8)


def predict_resampled(
    resampled: NDArray[np.float32],
    wrap: Preresample,
    spacing: list[float],
    backend: InferenceBackend,
    contract: ModelContract,
) -> NDArray[np.uint8]:
    """The predictor's labels on the resampled canonical grid: of the whole, or of three
    slabs up the body put back together where each is furthest from its cut."""
    if not _split(resampled.shape, wrap):
        # SimpleITK's array of the NIfTI the wrapper writes: the canonical axes reversed.
        labels = nnunet.segment(resampled.transpose(2, 1, 0), spacing, backend, contract)
        return labels.transpose(2, 1, 0)
    third, margin = resampled.shape[2] // 3, wrap.split_margin
    slabs = (
        slice(None, third + margin),
        slice(third + 1 - margin, third * 2 + margin),
        slice(third * 2 + 1 - margin, None),
    )
    kept = (slice(None, -margin), slice(margin - 1, -margin), slice(margin - 1, None))
    combined = np.zeros(resampled.shape, dtype=np.uint8)
    starts = (0, third, third * 2)
    for slab, keep, start in zip(slabs, kept, starts, strict=True):
        part = resampled[:, :, slab]
        labels = nnunet.segment(part.transpose(2, 1, 0), spacing, backend, contract)
        piece = labels.transpose(2, 1, 0)[:, :, keep]
        combined[:, :, start : start + piece.shape[2]] = piece
    return combined


def _split(shape: tuple[int, ...], wrap: Preresample) -> bool:
    return (
        wrap.split_above is not None
        and int(np.prod(shape)) > wrap.split_above
        and shape[2] > SPLIT_MIN_PLANES
    )
