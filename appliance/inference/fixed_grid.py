"""Whole-volume models (`FixedGridRecipe`): the volume, turned to the closest RAS axes, is
resized to the model's patch in one piece, optionally inside the box a smaller locator model
finds first; the foreground probability comes back to the source grid, and only its largest
part, holes filled, is kept.

This is deepbet's recipe, reproduced step by step in numpy so that its answers hold without
PyTorch: nibabel's `io_orientation` and `apply_orientation`, PyTorch's `nearest-exact`
interpolation and `quantile`, deepbet's `normalize`, `get_bbox_with_margin` (in float32, as
torch computes it), `keep_largest_connected_component` (cc3d's 26-connectivity) and
`fill_voids.fill` (holes in the 6-connected sense, as scipy fills them).
"""

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from appliance.domain.pipelines import ModelRef
from appliance.inference.backend import InferenceBackend
from appliance.inference.contract import FixedGridRecipe, Locator, ModelContract
from appliance.inference.masks import filled

Element = TypeVar("Element", bound=np.generic)
Orientation = NDArray[np.int64]  # (3, 2): per array axis, its RAS axis and its sign
_CORNERS = ndimage.generate_binary_structure(3, 3)  # 26-connectivity, as cc3d's default


class NotSegmentable(ValueError):
    """The volume cannot be read by the recipe (no contrast, nothing located); says why."""


def closest_ras(directions: NDArray[np.float64]) -> Orientation:
    """nibabel's `io_orientation` (5.x): for each array axis, strongest first, the RAS axis
    closest to its direction (`directions[:, axis]`, RAS) after the matrix is made
    orthogonal, and its sign; each RAS axis is taken once."""
    u, _, vt = np.linalg.svd(directions / np.linalg.norm(directions, axis=0))
    closest = u @ vt
    orientation = np.zeros((3, 2), dtype=np.int64)
    for axis in np.argsort(np.min(-(closest**2), axis=0), kind="stable"):
        column = closest[:, axis]
        target = int(np.argmax(np.abs(column)))
        orientation[axis] = (target, 1 if column[target] > 0 else -1)
        closest[target, :] = 0
    return orientation


def to_ras(array: NDArray[Element], orientation: Orientation) -> NDArray[Element]:
    """`array` with its axes flipped and ordered as RAS (a view, as nibabel's
    `apply_orientation` makes it)."""
    flipped = np.flip(array, axis=tuple(int(a) for a in np.flatnonzero(orientation[:, 1] < 0)))
    return flipped.transpose(np.argsort(orientation[:, 0]))


def from_ras(array: NDArray[Element], orientation: Orientation) -> NDArray[Element]:
    """The inverse of `to_ras`."""
    back = array.transpose(orientation[:, 0])
    return np.flip(back, axis=tuple(int(a) for a in np.flatnonzero(orientation[:, 1] < 0)))


def nearest_exact(size_in: int, size_out: int) -> NDArray[np.int64]:
    """PyTorch's `nearest-exact` source index of each output index: floorf((i + 0.5) *
    scale) with the scale in float32, at most the last input index."""
    scale = np.float32(size_in) / np.float32(size_out)
    sources = np.floor(((np.arange(size_out) + 0.5) * np.float64(scale)).astype(np.float32))
    return np.minimum(sources.astype(np.int64), size_in - 1)


def resize(array: NDArray[Element], shape: Sequence[int]) -> NDArray[Element]:
    """`array` (3D) resized to `shape` by `nearest_exact`, one output plane at a time: no
    whole-volume intermediate (a take along each axis in turn held two, 42 MiB more on
    deepbet's way to 256^3), and less fresh memory to fault in."""
    depth, height, width = shape
    rows, columns = nearest_exact(array.shape[1], height), nearest_exact(array.shape[2], width)
    resized = np.empty((depth, height, width), dtype=array.dtype)
    for plane, source in zip(resized, nearest_exact(array.shape[0], depth), strict=True):
        np.take(array[source].take(rows, axis=0), columns, axis=1, out=plane)
    return resized


def quantile(values: NDArray[np.float32], q: float) -> np.float32:
    """torch.quantile's linear interpolation, computed in float32 as it computes it."""
    flat = values.ravel()
    rank = np.float32(q) * np.float32(flat.size - 1)
    below = int(np.floor(rank))
    above = min(below + 1, flat.size - 1)
    low, high = np.partition(flat, (below, above))[[below, above]]
    weight = rank - np.float32(below)
    if weight < 0.5:  # torch.lerp's two formulas
        return np.float32(low + weight * (high - low))
    return np.float32(high - (high - low) * (np.float32(1) - weight))


def normalise(
    array: NDArray[np.float32], low: np.float32, high: np.float32, recipe: FixedGridRecipe
) -> NDArray[np.float32]:
    """deepbet's `normalize`, in place (`array` is a resized copy): (x - low) / (high - low)
    clipped to [0, 1], z-scored with the unbiased deviation, then scale * z + shift."""
    out = array
    out -= low
    np.divide(out, high - low, out=out)
    np.maximum(out, 0, out=out)
    np.minimum(out, 1, out=out)
    flat = out.reshape(-1)
    count = flat.size
    mean = float(flat.sum(dtype=np.float64)) / count
    squares = float(np.dot(flat, flat))  # values in [0, 1]: no cancellation to fear
    deviation = np.float32(np.sqrt(max(squares - count * mean * mean, 0.0) / (count - 1)))
    out -= np.float32(mean)
    out /= deviation
    out *= np.float32(recipe.scale)
    out += np.float32(recipe.shift)
    return out


def _window(image: NDArray[np.float32], recipe: FixedGridRecipe) -> tuple[np.float32, np.float32]:
    """The recipe's percentiles of `image` resized to its percentile grid."""
    sample = resize(image, recipe.percentile_grid)
    low = quantile(sample, recipe.percentiles[0] / 100)
    high = quantile(sample, recipe.percentiles[1] / 100)
    if not high > low:
        raise NotSegmentable(
            f"the volume has no contrast: its {recipe.percentiles[0]:g} and "
            f"{recipe.percentiles[1]:g} percentiles are equal"
        )
    return low, high


def _found(
    backend: InferenceBackend,
    model: ModelRef,
    image: NDArray[np.float32],
    channel: int,
    threshold: float,
) -> NDArray[np.bool_]:
    """Where the model's `channel` probability on `image` exceeds `threshold`."""
    output = backend.infer(model, np.ascontiguousarray(image[None, None], dtype=np.float32))
    return np.asarray(output[0, channel] > threshold)


def largest_part(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The largest 26-connected part of `mask`."""
    components, count = ndimage.label(mask, structure=_CORNERS)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return np.asarray(components == sizes.argmax())


def locate(mask: NDArray[np.bool_], shape: Sequence[int], locator: Locator) -> tuple[slice, ...]:
    """deepbet's `get_bbox_with_margin`: the box, on a grid of `shape`, around the planes of
    `mask` (the locator's grid) where more than `min_fraction` of the plane is inside, grown
    by `margin` of its size on each side; in float32 throughout, as torch computes it."""
    f32 = np.float32
    centres, sizes = [], []
    for axis in range(3):
        others = tuple(other for other in range(3) if other != axis)
        hits = np.flatnonzero(mask.mean(axis=others) > locator.min_fraction)
        if hits.size == 0:
            raise NotSegmentable("the locator found too little of the structure to place its box")
        centres.append(f32(hits[-1] + 1 + hits[0]) / f32(2))
        sizes.append(f32(hits[-1] + 1 - hits[0]))
    factor = np.asarray(shape, dtype=f32) / np.asarray(mask.shape, dtype=f32)
    centre = np.round(factor * np.asarray(centres, dtype=f32))
    size = np.round((f32(1) + f32(2) * f32(locator.margin)) * (factor * np.asarray(sizes, f32)))
    box = []
    for c, s, extent in zip(centre, size, shape, strict=True):
        start, stop = int(c - s / f32(2)), int(c + s / f32(2))
        box.append(slice(max(0, start), min(extent, stop)))
    return tuple(box)


def segment(
    volume: NDArray[np.float32],
    directions: NDArray[np.float64],
    backend: InferenceBackend,
    contract: ModelContract,
) -> NDArray[np.uint8]:
    """The label map of `contract`'s one structure on the grid of `volume`, whose array axes
    point along `directions` (columns, RAS)."""
    recipe = contract.fixed_grid
    assert recipe is not None
    orientation = closest_ras(directions)
    # One copy, laid out in RAS order: resizing reads it plane by plane three times, and from
    # the strided view of an axial series every voxel read was a cache line of its own
    # (0.26 s of deepbet's resizing, 0.03 s from the copy).
    finite = volume if np.isfinite(volume).all() else np.nan_to_num(volume)
    image = np.ascontiguousarray(to_ras(finite, orientation))
    del finite
    low, high = _window(image, recipe)
    box: tuple[slice, ...] = (slice(None),) * 3
    if recipe.locator is not None:
        locator = recipe.locator
        found = _found(
            backend, locator.ref, normalise(resize(image, locator.patch), low, high, recipe),
            locator.channel, locator.threshold,
        )  # fmt: skip
        box = locate(largest_part(found), image.shape, locator)
    inside = image[box]
    found = _found(
        backend, contract.ref, normalise(resize(inside, contract.patch), low, high, recipe),
        recipe.channel, recipe.threshold,
    )  # fmt: skip
    mask = np.zeros(image.shape, dtype=bool)
    # nearest-exact resizing picks voxels, so thresholding first gives the same mask
    found_inside = resize(found, inside.shape)
    if found_inside.any():
        if recipe.largest_component:
            found_inside = largest_part(found_inside)
        if recipe.fill_holes:
            found_inside = filled(found_inside)
    mask[box] = found_inside
    labels = np.where(from_ras(mask, orientation), np.uint8(contract.labels[0].value), np.uint8(0))
    return np.ascontiguousarray(labels, dtype=np.uint8)
