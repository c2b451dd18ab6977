"""nnU-Net v2's inference, step for step, without PyTorch: what `nnUNetPredictor` does to one
volume of a 3d configuration, read from the recipe an imported model's contract carries.

The order is nnU-Net's own: transpose, crop to the non-zero box (holes filled), normalise,
resample to the model's spacing, pad to the patch (centred), slide the patch at `step` with
Gaussian weights accumulated in half precision, mirror for test-time augmentation, resample
the logits back to the cropped grid, argmax (or the regions' thresholds), put the box back,
undo the transpose, and keep the largest component where the model asks for it.

Resampling is nnU-Net's (`resample_data_or_seg`: scikit-image's spline resize in float64,
clipped to the input's range, the low-resolution axis apart when the spacing is anisotropic),
written as one linear operator per axis so that it runs in slabs: the logits of every class
are never held at full resolution, which is what makes large models run out of memory.
"""

import itertools
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from appliance.inference.backend import InferenceBackend
from appliance.inference.contract import ModelContract, NnunetRecipe, Normalisation, Resampling
from appliance.inference.masks import filled

# Inputs per backend call: one tile in all its mirrorings, or several tiles unmirrored.
BATCH_INPUTS = 8
# At most this many bytes of logits come back from one call: a model of many classes (117 in
# TotalSegmentator's) sends fewer tiles at once, which bounds the backend's buffers as well.
BATCH_OUTPUT_BYTES = 128 * 2**20
# A slab of resampled output holds about this many float64 values (64 MiB).
SLAB_VALUES = 8 * 1024 * 1024
# Input rows read at a time to find the clip bounds.
BOUND_ROWS = 16
# Operator weights below this share of a row's largest are left out (spline tails).
NEGLIGIBLE = 1e-10
_FULL = ndimage.generate_binary_structure(3, 3)  # skimage.measure.label's default in 3D


def segment(
    image: NDArray[np.float32],
    spacing: Sequence[float],
    backend: InferenceBackend,
    contract: ModelContract,
) -> NDArray[np.uint8]:
    """Label map on the grid of `image` (nnU-Net's axis order: SimpleITK's array, spacing
    in the same order), by the recipe of `contract`."""
    recipe = contract.nnunet
    if recipe is None:
        raise ValueError(f"model {contract.ref} has no nnU-Net recipe")
    data = np.asarray(image, dtype=np.float32).transpose(recipe.transpose_forward)
    source_spacing = [float(spacing[axis]) for axis in recipe.transpose_forward]
    box, nonzero = nonzero_box(data)
    cropped = data[box]
    mask = nonzero[box] if recipe.normalisation.use_mask else None
    normalised = normaliser(cropped, mask, recipe.normalisation)
    target = new_shape(cropped.shape, source_spacing, recipe.spacing_mm)
    model_grid = resample(
        normalised, cropped.shape, target, source_spacing, recipe.spacing_mm,
        recipe.resample_data, recipe,
    )  # fmt: skip
    del nonzero, mask, normalised
    if tuple(target) == cropped.shape:  # no resampling back: labels a slab at a time
        labels_cropped = np.empty(cropped.shape, dtype=np.uint8)
        for planes, block in logit_slabs(model_grid, backend, contract, recipe):
            labels_cropped[planes] = to_labels(block, recipe)
    else:
        logits = sliding_window(model_grid, backend, contract, recipe)
        labels_cropped = labels_from_logits(
            logits, cropped.shape, recipe.spacing_mm, source_spacing, recipe
        )
        del logits
    del model_grid
    labels = np.zeros(data.shape, dtype=np.uint8)
    labels[box] = labels_cropped
    del data
    labels = np.ascontiguousarray(labels.transpose(recipe.transpose_backward))
    for group in recipe.largest_component:
        labels = keep_largest_component(labels, group)
    return values_of_channels(labels, contract)


def values_of_channels(channels: NDArray[np.uint8], contract: ModelContract) -> NDArray[np.uint8]:
    """Each voxel's label value: its channel's label, listed in channel order (a merged
    label set numbers labels apart from channels); region-based maps hold values already."""
    values = [label.value for label in contract.labels]
    if (
        contract.nnunet is None
        or contract.nnunet.regions
        or values == list(range(1, len(values) + 1))
    ):
        return channels
    return np.asarray(np.array([0, *values], dtype=np.uint8)[channels], dtype=np.uint8)


def nonzero_box(data: NDArray[np.float32]) -> tuple[tuple[slice, ...], NDArray[np.bool_]]:
    """`crop_to_nonzero`: the non-zero voxels with enclosed holes filled, and the box around
    them (the whole array when every voxel is zero)."""
    mask = filled(data != 0)
    box = []
    for axis in range(data.ndim):
        others = tuple(other for other in range(data.ndim) if other != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(None))
    return tuple(box), mask


Rows = Callable[[slice], NDArray[np.floating[Any]]]  # a span of rows along axis 0


def normaliser(
    image: NDArray[np.float32], mask: NDArray[np.bool_] | None, scheme: Normalisation
) -> Rows:
    """nnU-Net's normalisers (`default_normalization_schemes`) as a function of a span of
    rows of `image`: the statistics a scheme needs are taken over the whole image first, then
    each span is normalised in float32 as nnU-Net normalises the whole, so no normalised
    copy of a large volume is ever held."""
    eps = 1e-8

    def copy(span: slice) -> NDArray[np.float32]:
        return np.array(image[span], dtype=np.float32)

    if scheme.scheme == "ct":
        assert scheme.clip is not None  # the contract's validator sees to all three
        assert scheme.mean is not None
        assert scheme.std is not None
        low, high, mean, std = scheme.clip[0], scheme.clip[1], scheme.mean, scheme.std

        def ct(span: slice) -> NDArray[np.float32]:
            rows = copy(span)
            np.clip(rows, low, high, out=rows)
            rows -= mean
            rows /= max(std, eps)
            return rows

        return ct
    if scheme.scheme == "zscore" and mask is not None:
        inside = image[mask]
        masked_mean, masked_std = inside.mean(), inside.std()
        del inside

        def zscore_inside(span: slice) -> NDArray[np.float32]:
            rows, where = copy(span), mask[span]
            rows[where] = (rows[where] - masked_mean) / max(masked_std, eps)
            return rows

        return zscore_inside
    if scheme.scheme == "zscore":
        whole_mean, whole_std = image.mean(), image.std()

        def zscore(span: slice) -> NDArray[np.float32]:
            rows = copy(span)
            rows -= whole_mean
            rows /= max(whole_std, eps)
            return rows

        return zscore
    if scheme.scheme == "rescale_to_01":
        lowest = np.float32(image.min())
        scale = np.clip(np.float32(image.max()) - lowest, a_min=eps, a_max=None)

        def rescale(span: slice) -> NDArray[np.float32]:
            rows = copy(span)
            rows -= lowest
            rows /= scale
            return rows

        return rescale
    return copy


def new_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[int, ...]:
    """`compute_new_shape`: the grid of the same extent at the target spacing."""
    return tuple(round(s / t * n) for s, t, n in zip(spacing, target, shape, strict=True))


def separate_axis(
    current: Sequence[float], new: Sequence[float], resampling: Resampling, threshold: float
) -> int | None:
    """`determine_do_sep_z_and_axis`: the axis resampled apart from the others (at
    `order_z`), or None. It is the one coarsest axis of the current spacing when that is
    anisotropic beyond `threshold`, else of the new one; never when two axes tie."""

    def coarsest(spacing: Sequence[float]) -> list[int]:
        largest = max(spacing)
        return [axis for axis, value in enumerate(spacing) if largest / value == 1]

    def anisotropic(spacing: Sequence[float]) -> bool:
        return bool(max(spacing) / min(spacing) > threshold)

    if resampling.force_separate_z is False:
        return None
    if resampling.force_separate_z or anisotropic(current):
        axes = coarsest(current)
    elif anisotropic(new):
        axes = coarsest(new)
    else:
        return None
    return axes[0] if len(axes) == 1 else None


def axis_operator(size_in: int, size_out: int, order: int, apart: bool) -> NDArray[np.float64]:
    """The (size_out, size_in) matrix one axis of nnU-Net's resampling applies: scikit-image's
    resize (spline of `order`, edge mode, no antialiasing) or, for the axis resampled
    `apart`, `map_coordinates` at nnU-Net's own coordinates in nearest mode. Both are linear,
    so their response to the identity is the operator itself."""
    identity = np.eye(size_in)
    if not apart:  # skimage.transform.resize is this zoom, then the clip the caller does
        zoom = 1 / (size_in / size_out)
        operator = ndimage.zoom(identity, (zoom, 1), order=order, mode="nearest", grid_mode=True)
    else:
        scale = size_in / size_out
        rows = scale * (np.arange(size_out) + 0.5) - 0.5
        coordinates = np.array(np.meshgrid(rows, np.arange(size_in), indexing="ij"))
        operator = ndimage.map_coordinates(identity, coordinates, order=order, mode="nearest")
    operator = np.asarray(operator, dtype=np.float64)
    operator[np.abs(operator) < NEGLIGIBLE * np.abs(operator).max(axis=1, keepdims=True)] = 0
    return operator


class _Resampler:
    """nnU-Net's resampling of one grid to another, by slabs of output along axis 0.

    Every axis but the one resampled apart gets its spline operator; the values are then
    clipped to the input's range (per slice along the axis apart, or over the whole volume,
    as scikit-image clips what it resized), and the axis apart gets its own."""

    def __init__(
        self,
        shape_in: Sequence[int],
        shape_out: Sequence[int],
        current: Sequence[float],
        new: Sequence[float],
        resampling: Resampling,
        threshold: float,
    ) -> None:
        self.apart = separate_axis(current, new, resampling, threshold)
        self.identity = tuple(shape_in) == tuple(shape_out)
        self.shape_in = tuple(shape_in)
        self.shape_out = tuple(shape_out)
        self.operators = [
            None
            if size_in == size_out
            else axis_operator(
                size_in,
                size_out,
                resampling.order_z if axis == self.apart else resampling.order,
                axis == self.apart,
            )
            for axis, (size_in, size_out) in enumerate(zip(shape_in, shape_out, strict=True))
        ]
        self.clips = resampling.order > 1

    def slabs(self, channels: Sequence[Rows], rows: int) -> Iterator[
        tuple[slice, NDArray[np.float64]]
    ]:  # fmt: skip
        """(output rows along axis 0, their values) for the input `channels`, each a
        function of a span of input rows along axis 0."""
        bounds = [self._bounds(channel) for channel in channels]
        for start in range(0, self.shape_out[0], rows):
            stop = min(start + rows, self.shape_out[0])
            out = np.empty((len(channels), stop - start, *self.shape_out[1:]))
            for index, channel in enumerate(channels):
                out[index] = self._slab(channel, start, stop, *bounds[index])
            yield slice(start, stop), out

    def _bounds(self, channel: Rows) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """A channel's clip bounds, read a few rows at a time: per slice along the axis
        apart, else one pair for the whole."""
        if not self.clips:
            return np.array(-np.inf), np.array(np.inf)
        lows, highs = [], []
        for start in range(0, self.shape_in[0], BOUND_ROWS):
            rows = channel(slice(start, start + BOUND_ROWS))
            axes = tuple(axis for axis in range(3) if axis != self.apart)
            lows.append(rows.min(axis=axes))
            highs.append(rows.max(axis=axes))
        if self.apart == 0:
            return np.concatenate(lows).astype(np.float64), np.concatenate(highs).astype(np.float64)
        return np.min(lows, axis=0).astype(np.float64), np.max(highs, axis=0).astype(np.float64)

    def _slab(
        self,
        channel: Rows,
        start: int,
        stop: int,
        low: NDArray[np.float64],
        high: NDArray[np.float64],
    ) -> NDArray[np.float64]:
        first = self.operators[0]
        if first is None:
            rows = channel(slice(start, stop)).astype(np.float64)
            weights = None
        else:
            band = first[start:stop]
            used = np.flatnonzero(np.any(band != 0, axis=0))
            rows = channel(slice(used[0], used[-1] + 1)).astype(np.float64)
            weights = band[:, used[0] : used[-1] + 1]
        if self.apart == 0:  # the slices apart are resized in-plane, clipped, then combined
            rows = self._in_plane(rows, (1, 2))
            if self.clips:
                span = slice(start, stop) if weights is None else slice(used[0], used[-1] + 1)
                rows = np.clip(rows, low[span, None, None], high[span, None, None])
            return rows if weights is None else np.tensordot(weights, rows, axes=(1, 0))
        if weights is not None:
            rows = np.tensordot(weights, rows, axes=(1, 0))
        if self.apart is None:
            rows = self._in_plane(rows, (1, 2))
            return np.clip(rows, low, high) if self.clips else rows
        other = 3 - self.apart
        rows = self._in_plane(rows, (other,))
        if self.clips:
            shape = [1, 1, 1]
            shape[self.apart] = -1
            rows = np.clip(rows, low.reshape(shape), high.reshape(shape))
        return self._in_plane(rows, (self.apart,))

    def _in_plane(self, rows: NDArray[np.float64], axes: Sequence[int]) -> NDArray[np.float64]:
        for axis in axes:
            operator = self.operators[axis]
            if operator is not None:
                rows = np.moveaxis(np.tensordot(operator, rows, axes=(1, axis)), 0, axis)
        return rows


def slab_rows(shape_out: Sequence[int], channels: int) -> int:
    return max(1, SLAB_VALUES // max(1, channels * int(np.prod(shape_out[1:]))))


def resample(
    image: Rows,
    shape_in: Sequence[int],
    shape_out: Sequence[int],
    current: Sequence[float],
    new: Sequence[float],
    resampling: Resampling,
    recipe: NnunetRecipe,
) -> NDArray[np.float32]:
    """The image, given as a function of its rows, on the grid `shape_out` (nnU-Net's data
    resampling, kept in float32)."""
    resampler = _Resampler(
        shape_in, shape_out, current, new, resampling, recipe.anisotropy_threshold
    )
    if resampler.identity:
        return image(slice(None))
    out = np.empty(tuple(shape_out), dtype=np.float32)
    for rows, values in resampler.slabs([image], slab_rows(shape_out, 1)):
        out[rows] = values[0]
    return out


def labels_from_logits(
    logits: NDArray[np.float16],
    shape_out: Sequence[int],
    current: Sequence[float],
    new: Sequence[float],
    recipe: NnunetRecipe,
) -> NDArray[np.uint8]:
    """Labels on the grid `shape_out` from logits (classes first) on the model's grid: each
    slab of logits is resampled, rounded to half precision as nnU-Net stores them, and turned
    into labels at once."""
    resampler = _Resampler(
        logits.shape[1:], shape_out, current, new, recipe.resample_logits,
        recipe.anisotropy_threshold,
    )  # fmt: skip
    if resampler.identity:
        return to_labels(logits, recipe)
    channels = [partial(_rows_of, channel) for channel in logits]
    labels = np.empty(tuple(shape_out), dtype=np.uint8)
    for rows, values in resampler.slabs(channels, slab_rows(shape_out, len(channels))):
        labels[rows] = to_labels(values.astype(np.float16), recipe)
    return labels


def _rows_of(array: NDArray[np.float16], span: slice) -> NDArray[np.float16]:
    return array[span]


def to_labels(logits: NDArray[np.float16], recipe: NnunetRecipe) -> NDArray[np.uint8]:
    """The argmax over classes, or for region-based models each region painted where its
    sigmoid exceeds one half (its logit is positive), in the model's order."""
    if recipe.regions is None:
        return np.asarray(logits.argmax(0), dtype=np.uint8)
    labels = np.zeros(logits.shape[1:], dtype=np.uint8)
    for channel, region in enumerate(recipe.regions):
        labels[logits[channel] > 0] = region.paints
    return labels


def keep_largest_component(labels: NDArray[np.uint8], group: Sequence[int]) -> NDArray[np.uint8]:
    """`remove_all_but_largest_component_from_segmentation`: of the voxels of the labels in
    `group`, only the largest 26-connected part (every part of that size) stays."""
    mask = np.isin(labels, list(group))
    components, count = ndimage.label(mask, structure=_FULL)
    if count <= 1:
        return labels
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    keep = np.flatnonzero(sizes == sizes.max())
    kept = labels.copy()
    kept[mask & ~np.isin(components, keep)] = 0
    return kept


def gaussian_weights(patch: Sequence[int]) -> NDArray[np.float16]:
    """`compute_gaussian`: sigma one eighth of the patch, peak scaled to 10, half precision,
    no zero weight."""
    centre = np.zeros(tuple(patch))
    centre[tuple(size // 2 for size in patch)] = 1
    weights = ndimage.gaussian_filter(centre, [size / 8 for size in patch], 0, mode="constant",
                                      cval=0)  # fmt: skip
    weights /= weights.max() / 10
    half = weights.astype(np.float16)
    half[half == 0] = half[half != 0].min()
    return np.asarray(half, dtype=np.float16)


def window_starts(size: int, patch: int, step: float) -> list[int]:
    """`compute_steps_for_sliding_window` along one axis."""
    steps = int(np.ceil((size - patch) / (patch * step))) + 1
    if steps == 1:
        return [0]
    actual = (size - patch) / (steps - 1)
    return [int(np.round(actual * index)) for index in range(steps)]


def mirrorings(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """The identity, then every combination of the mirror axes, in nnU-Net's order."""
    return [()] + [
        combination
        for count in range(1, len(axes) + 1)
        for combination in itertools.combinations(axes, count)
    ]


def sliding_window(
    volume: NDArray[np.float32],
    backend: InferenceBackend,
    contract: ModelContract,
    recipe: NnunetRecipe,
) -> NDArray[np.float16]:
    """Logits (classes first) on the grid of `volume`, whole (see `logit_slabs`)."""
    logits = np.empty((contract.output.shape[1], *volume.shape), dtype=np.float16)
    for planes, block in logit_slabs(volume, backend, contract, recipe):
        logits[:, planes] = block
    return logits


def logit_slabs(
    volume: NDArray[np.float32],
    backend: InferenceBackend,
    contract: ModelContract,
    recipe: NnunetRecipe,
) -> Iterator[tuple[slice, NDArray[np.float16]]]:
    """Logits (classes first) on the grid of `volume`, a slab of planes at a time, each slab
    as soon as no later tile reaches it: the patch slid at `step` over the volume padded
    (centred) to at least the patch; each tile's prediction is the mean over its mirrorings,
    weighted by the Gaussian and accumulated in half precision as nnU-Net does, tile by tile
    in its order, so the sums are its sums. Only two patches' depth of every class's logits
    is held at once (TotalSegmentator's 118 channels over a whole volume would be 0.7 GB)."""
    patch = contract.patch
    padded_shape = [max(size, p) for size, p in zip(volume.shape, patch, strict=True)]
    below = [(full - size) // 2 for full, size in zip(padded_shape, volume.shape, strict=True)]
    inside = tuple(slice(b, b + size) for b, size in zip(below, volume.shape, strict=True))
    padded = np.zeros(padded_shape, dtype=np.float32)
    padded[inside] = volume
    classes = contract.output.shape[1]
    weights = gaussian_weights(patch) if recipe.gaussian else np.float16(1)
    variants = mirrorings(recipe.mirror_axes)  # axes of one tile
    starts = [window_starts(size, p, recipe.step) for size, p in zip(padded_shape, patch,
                                                                     strict=True)]  # fmt: skip
    depth = patch[0] + max(np.diff(starts[0]), default=0)
    logits = np.zeros((classes, depth, *padded_shape[1:]), dtype=np.float16)
    counts = np.zeros((depth, *padded_shape[1:]), dtype=np.float16)
    tile_bytes = classes * int(np.prod(patch)) * 4 * len(variants)
    per_call = max(1, min(BATCH_INPUTS // len(variants), BATCH_OUTPUT_BYTES // tile_bytes))
    base = 0  # the plane of the padded volume at the buffers' first plane

    def finished(stop: int) -> Iterator[tuple[slice, NDArray[np.float16]]]:
        """Planes [base, stop) of the padded volume, final, as planes of `volume`."""
        first, last = max(base, inside[0].start), min(stop, inside[0].stop)
        if first < last:
            rows = slice(first - base, last - base)
            block = np.divide(logits[:, rows], counts[rows])
            if not np.all(np.isfinite(block)):
                raise ValueError("the model's logits overflowed half precision")
            yield slice(first - below[0], last - below[0]), block[(slice(None), slice(None),
                                                                  *inside[1:])]  # fmt: skip

    for z in starts[0]:
        yield from finished(z)
        kept = base + depth - z
        logits[:, :kept] = logits[:, z - base :].copy()
        counts[:kept] = counts[z - base :].copy()
        logits[:, kept:] = 0
        counts[kept:] = 0
        base = z
        tiles = [
            (slice(z, z + patch[0]), *(slice(c, c + p) for c, p in zip(corner, patch[1:],
                                                                        strict=True)))
            for corner in itertools.product(*starts[1:])
        ]  # fmt: skip
        for first in range(0, len(tiles), per_call):
            group = tiles[first : first + per_call]
            inputs = [np.flip(padded[tile], axes) for tile in group for axes in variants]
            batch = np.ascontiguousarray(np.stack(inputs)[:, None], dtype=np.float32)
            outputs = backend.infer(contract.ref, batch)
            for index, tile in enumerate(group):
                mine = outputs[index * len(variants) : (index + 1) * len(variants)]
                prediction = mine[0].copy()
                for output, axes in zip(mine[1:], variants[1:], strict=True):
                    prediction += np.flip(output, tuple(axis + 1 for axis in axes))
                if len(variants) > 1:
                    prediction /= np.float32(len(variants))
                prediction *= weights
                rows = (slice(0, patch[0]), *tile[1:])
                logits[(slice(None), *rows)] += prediction
                counts[rows] += weights
    yield from finished(padded_shape[0])
