"""The CT pipeline: a series becomes a volume, the volume a label map on the source grid.

Slices are ordered by the domain's geometry rules (never by Instance Number) and a series that
is not one regular volume is refused with the reason. Intensities get the stored rescale and the
model's HU window; the volume is resampled to the model's spacing, segmented by overlapping
patches blended with a Gaussian importance map (as in nnU-Net), and the labels are resampled
back onto the source grid.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset
from scipy import ndimage

from appliance.domain.geometry import GeometryError, SliceGeometry, VolumeGeometry, build_volume
from appliance.inference import fixed_grid, nnunet, preresample
from appliance.inference.backend import InferenceBackend
from appliance.inference.contract import Intensity, ModelContract
from appliance.inference.masks import bounding_box, grown
from appliance.inference.resize import nearest_zoom

OVERLAP = 0.5
BATCH = 2
BODY_HU = -500.0  # air and lung below; skin, fat, the table and everything inside above
# Larger series are refused before their pixels are read: 4,500 slices of 512 x 512 fit.
MAX_VOXELS = 4_500 * 512 * 512


class UnsupportedSeries(ValueError):
    """The series cannot be segmented; the message says why."""


@dataclass(frozen=True)
class CTVolume:
    hu: NDArray[np.float32]  # (slices, rows, columns), slices along the normal
    geometry: VolumeGeometry
    headers: tuple[Dataset, ...]  # each slice's data set without pixels, in volume order


def load_series(paths: Sequence[Path]) -> CTVolume:
    """The series as one volume in HU; a series that is not one, or whose data cannot be
    read, is refused with the reason (`UnsupportedSeries`), whatever the parser raised."""
    headers = {}
    for path in paths:
        with _refusing(path):
            header = dcmread(path, stop_before_pixels=True)
            missing = [
                keyword
                for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
                if keyword not in header
            ]
            if missing:
                raise UnsupportedSeries(f"a slice lacks {', '.join(missing)}")
            headers[str(header.SOPInstanceUID)] = (path, header)
    slices = []
    for uid, (path, header) in headers.items():
        with _refusing(path):
            slices.append(_slice_geometry(uid, header))
    try:
        geometry = build_volume(slices)
    except GeometryError as exc:
        raise UnsupportedSeries(str(exc)) from exc
    voxels = int(np.prod(geometry.shape))
    if voxels > MAX_VOXELS:
        raise UnsupportedSeries(
            f"{' x '.join(map(str, geometry.shape))} voxels: more than the pipeline takes "
            f"({MAX_VOXELS:,})"
        )
    hu = np.empty(geometry.shape, dtype=np.float32)
    for k, uid in enumerate(geometry.sop_instance_uids):
        path = headers[uid][0]
        with _refusing(path):
            _read_hu(path, hu[k])
    return CTVolume(hu, geometry, tuple(headers[uid][1] for uid in geometry.sop_instance_uids))


@contextmanager
def _refusing(path: Path) -> Iterator[None]:
    """Any failure on the data of `path` becomes a refusal with the reason: pydicom and numpy
    meet hostile data with any exception type."""
    try:
        yield
    except UnsupportedSeries:
        raise
    except Exception as exc:
        raise UnsupportedSeries(f"{path.name}: {type(exc).__name__}: {exc}") from exc


def _slice_geometry(uid: str, header: Dataset) -> SliceGeometry:
    position = tuple(float(v) for v in header.ImagePositionPatient)
    orientation = tuple(float(v) for v in header.ImageOrientationPatient)
    spacing = tuple(float(v) for v in header.PixelSpacing)
    if (len(position), len(orientation), len(spacing)) != (3, 6, 2):
        raise UnsupportedSeries(
            f"Image Position, Image Orientation and Pixel Spacing hold {len(position)}, "
            f"{len(orientation)} and {len(spacing)} values, not 3, 6 and 2"
        )
    return SliceGeometry(
        sop_instance_uid=uid,
        image_position=position,  # type: ignore[arg-type]
        image_orientation=orientation,  # type: ignore[arg-type]
        pixel_spacing=spacing,  # type: ignore[arg-type]
        rows=int(header.Rows),
        columns=int(header.Columns),
    )


def _read_hu(path: Path, hu: NDArray[np.float32]) -> None:
    """The slice at `path` into `hu` (its place in the volume) in HU, worked in place."""
    shape = hu.shape
    dataset = dcmread(path)
    if not dataset.file_meta.TransferSyntaxUID.is_compressed:  # pydicom would cut or pad it
        expected = int(np.prod(shape)) * int(dataset.BitsAllocated) // 8
        if len(dataset.PixelData) not in (expected, expected + 1):
            raise UnsupportedSeries(
                f"{path.name}: {len(dataset.PixelData)} bytes of pixel data where its header "
                f"says {expected}"
            )
    pixels = dataset.pixel_array
    if pixels.shape != shape:
        raise UnsupportedSeries(f"{path.name}: pixel data is {pixels.shape}, not {shape}")
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    np.copyto(hu, pixels, casting="unsafe")
    hu *= np.float32(slope)
    hu += np.float32(intercept)


def normalise(hu: NDArray[np.float32], intensity: Intensity | None) -> NDArray[np.float32]:
    """Clip to the model's HU window and map it to [0, 1]."""
    if intensity is None or intensity.window is None:
        raise UnsupportedSeries("the model has no CT window")
    low, high = intensity.window
    # One float32 copy, then worked in place: a CT's volume is 300 MB a copy.
    normalised = np.clip(hu, np.float32(low), np.float32(high)).astype(np.float32, copy=False)
    normalised -= np.float32(low)
    normalised /= np.float32(high - low)
    return normalised


def importance_map(patch: Sequence[int]) -> NDArray[np.float32]:
    """Gaussian weights (sigma one eighth of the patch), so patch centres count most."""
    centre = np.zeros(tuple(patch), dtype=np.float32)
    centre[tuple(size // 2 for size in patch)] = 1.0
    weights: NDArray[np.float32] = ndimage.gaussian_filter(centre, [size / 8 for size in patch])
    normalised: NDArray[np.float32] = np.maximum(weights / weights.max(), np.float32(1e-3))
    return normalised


def _starts(size: int, patch: int) -> list[int]:
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1 - OVERLAP)))
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def sliding_window(
    volume: NDArray[np.float32], backend: InferenceBackend, contract: ModelContract
) -> NDArray[np.float32]:
    """Class probabilities (classes, z, y, x) from overlapping patches of `volume`."""
    patch = contract.patch
    padded_shape = [max(size, p) for size, p in zip(volume.shape, patch, strict=True)]
    padded = np.zeros(padded_shape, dtype=np.float32)
    padded[: volume.shape[0], : volume.shape[1], : volume.shape[2]] = volume
    classes = contract.output.shape[1]
    totals = np.zeros((classes, *padded_shape), dtype=np.float32)
    weights = np.zeros(padded_shape, dtype=np.float32)
    importance = importance_map(patch)
    corners = [
        (z, y, x)
        for z in _starts(padded_shape[0], patch[0])
        for y in _starts(padded_shape[1], patch[1])
        for x in _starts(padded_shape[2], patch[2])
    ]
    for first in range(0, len(corners), BATCH):
        group = corners[first : first + BATCH]
        batch = np.stack(
            [padded[z : z + patch[0], y : y + patch[1], x : x + patch[2]] for z, y, x in group]
        )[:, None]
        # Worked in place: a patch's probabilities are megabytes, and each fresh temporary
        # of that size costs its page faults again.
        probabilities = backend.infer(contract.ref, batch)
        probabilities -= probabilities.max(axis=1, keepdims=True)
        np.exp(probabilities, out=probabilities)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        for (z, y, x), probability in zip(group, probabilities, strict=True):
            window = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
            probability *= importance
            totals[(slice(None), *window)] += probability
            weights[window] += importance
    totals /= weights
    return totals[:, : volume.shape[0], : volume.shape[1], : volume.shape[2]]


def largest_component(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The largest face-connected part of `mask` (all of it when it has one part or none)."""
    box = bounding_box(mask, (0,) * mask.ndim)
    if box is None:
        return mask
    components, count = ndimage.label(mask[box])
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    largest = np.zeros(mask.shape, dtype=bool)
    largest[box] = components == int(sizes.argmax())
    return largest


# Face-connected components, as lesions are counted (`measurements`).
_FACES = ndimage.generate_binary_structure(3, 1)


def confine_to_filled(
    labels: NDArray[np.uint8], filled_region: NDArray[np.bool_]
) -> NDArray[np.uint8]:
    """A cascade's hard constraint. The region with its enclosed holes filled (`filled`: a
    lesion the first stage did not call liver still lies in the liver) is where findings may
    be: a connected finding of `labels` lying mostly outside it is dropped, the rest of each
    finding is cut to it. The region comes filled, as a stage confines more than one map
    (its pass and its mirrored one) to it."""
    confined = np.zeros(labels.shape, dtype=labels.dtype)
    box = bounding_box(labels > 0, (0,) * labels.ndim)
    if box is None:
        return confined
    inside = filled_region[box]  # nothing to keep outside the findings' box
    found = labels[box]
    components, _ = ndimage.label(found > 0, structure=_FACES)
    total = np.bincount(components.ravel())
    kept = np.bincount(components.ravel(), weights=inside.ravel(), minlength=len(total))
    outside = 2 * kept <= total  # not mostly inside
    outside[0] = False
    confined[box] = np.where(inside & ~outside[components], found, 0)
    return confined


def segment_in_region(
    volume: CTVolume,
    region: NDArray[np.bool_],
    backend: InferenceBackend,
    contract: ModelContract,
    margin_mm: float = 10.0,
) -> NDArray[np.uint8]:
    """The cascade's second stage: segment only the box around `region` (for example the liver
    found by the organ model), at the second model's finer spacing; zero elsewhere.

    The box is drawn around the largest connected part of `region`, so that a few stray voxels
    of the first stage's output cannot stretch it across the body."""
    labels = np.zeros(volume.hu.shape, dtype=np.uint8)
    margins = [int(np.ceil(margin_mm / s)) for s in volume.geometry.spacing]
    box = bounding_box(largest_component(region), margins)
    if box is not None:
        labels[box] = segment_grid(volume.hu[box], volume.geometry, backend, contract)
    return labels


def segment_mirrored_around(
    labels: NDArray[np.uint8],
    volume: CTVolume,
    backend: InferenceBackend,
    contract: ModelContract,
    reach: int,
) -> NDArray[np.uint8]:
    """The model run again on `volume` mirrored left to right, around each finding of
    `labels` only: the box `reach` voxels around it, labelled by a pass over a box centred
    on it that gives the model one whole patch of real context (or the finding, if larger;
    the whole volume where the model's patch extent is unknown or it reads whole volumes).
    Findings whose box an earlier pass covered take their answer from it. A second opinion
    on each finding, for a patch or two each instead of the whole region again."""
    second = np.zeros(labels.shape, dtype=labels.dtype)
    box = bounding_box(labels > 0, (0,) * labels.ndim)
    if box is None:
        return second
    components, _ = ndimage.label(labels[box] > 0)
    context = _context_voxels(contract, volume.geometry.spacing)
    runs: list[tuple[tuple[slice, ...], NDArray[np.uint8]]] = []
    for found in ndimage.find_objects(components):
        finding = tuple(
            slice(part.start + corner.start, part.stop + corner.start)
            for part, corner in zip(found, box, strict=True)
        )
        core = grown(finding, (reach,) * labels.ndim, labels.shape)
        covering = [run for run in runs if _inside(core, run[0])]
        if covering:
            run, labelled = covering[0]
        else:
            run = _centred(core, context, labels.shape)  # holds the core, however large
            mirrored = np.ascontiguousarray(volume.hu[run][:, :, ::-1])
            labelled = segment_grid(mirrored, volume.geometry, backend, contract)[:, :, ::-1]
            runs.append((run, labelled))
        second[core] = labelled[
            tuple(
                slice(c.start - r.start, c.stop - r.start) for c, r in zip(core, run, strict=True)
            )
        ]
    return second


def _context_voxels(contract: ModelContract, spacing: Sequence[float]) -> list[int]:
    """Per axis, the voxels of `spacing` within one patch of the model (its largest side at
    its coarsest spacing, so the axis order of its patch does not matter; rounded down, so
    that they resample to no more than one patch); a whole axis where the model's spacing
    is unknown or the model reads whole volumes."""
    model_spacing = contract.grid_spacing_mm
    if model_spacing is None or contract.fixed_grid is not None:
        return [2**31] * len(spacing)
    extent_mm = max(contract.patch) * max(model_spacing)
    return [int(extent_mm // s) for s in spacing]


def _centred(
    box: tuple[slice, ...], sizes: Sequence[int], shape: Sequence[int]
) -> tuple[slice, ...]:
    """A box of `sizes` (or of `box`, where larger) centred on `box`, moved to lie inside an
    array of `shape` rather than cut by its edge, and cut only where `shape` is smaller."""
    centred = []
    for part, size, limit in zip(box, sizes, shape, strict=True):
        length = min(max(size, part.stop - part.start), limit)
        start = (part.start + part.stop - length) // 2
        start = min(max(start, 0), limit - length)
        centred.append(slice(start, start + length))
    return tuple(centred)


def _inside(inner: tuple[slice, ...], outer: tuple[slice, ...]) -> bool:
    return all(a.start >= b.start and a.stop <= b.stop for a, b in zip(inner, outer, strict=True))


def segment_ct(
    volume: CTVolume, backend: InferenceBackend, contract: ModelContract
) -> NDArray[np.uint8]:
    """Label map (contract label values, 0 background) on the source grid of `volume`.

    Only the box around the body is segmented: the air around a patient holds no anatomy and
    is often half of the field of view, and so half of the patches. An imported nnU-Net model
    gets the whole volume, as its own predictor would (it crops to the non-zero box itself),
    and so does a whole-volume model, which needs its axes' directions too."""
    if contract.fixed_grid is not None or contract.nnunet is not None:
        return segment_grid(volume.hu, volume.geometry, backend, contract)
    return segment_in_region(volume, volume.hu > BODY_HU, backend, contract)


def ras_directions(geometry: VolumeGeometry) -> NDArray[np.float64]:
    """The directions of the volume's axes (slice, row, column) as columns, in RAS (DICOM's
    patient axes are LPS)."""
    lps = np.array([geometry.normal, geometry.column_direction, geometry.row_direction]).T
    return np.asarray(lps * np.array([[-1.0], [-1.0], [1.0]]), dtype=np.float64)


def segment_grid(
    hu: NDArray[np.float32],
    geometry: VolumeGeometry,
    backend: InferenceBackend,
    contract: ModelContract,
) -> NDArray[np.uint8]:
    """Label map on the grid of `hu` (slice, row, column; part or all of the volume of
    `geometry`, whose spacing and axes it shares; all of it for a whole-volume model)."""
    spacing = geometry.spacing
    if contract.nnunet is not None and contract.nnunet.preresample is not None:
        return preresample.segment(hu, spacing, ras_directions(geometry), backend, contract)
    if contract.nnunet is not None:
        return nnunet.segment(hu, spacing, backend, contract)
    if contract.fixed_grid is not None:
        if hu.shape != geometry.shape:
            raise UnsupportedSeries(f"{contract.ref} reads whole volumes, not a region of one")
        try:
            return fixed_grid.segment(hu, ras_directions(geometry), backend, contract)
        except fixed_grid.NotSegmentable as exc:
            raise UnsupportedSeries(str(exc)) from exc
    if contract.spacing_mm is None:
        raise UnsupportedSeries("the model has no target spacing")
    factors = [s / t for s, t in zip(spacing, contract.spacing_mm, strict=True)]
    # grid_mode: both grids cover the same physical extent, voxel edges to voxel edges.
    model_grid = ndimage.zoom(
        normalise(hu, contract.intensity), factors, order=1, grid_mode=True, mode="nearest"
    )
    probabilities = sliding_window(model_grid, backend, contract)
    channel_values = np.array([0] + [label.value for label in contract.labels], dtype=np.uint8)
    labels = channel_values[probabilities.argmax(axis=0)]
    back = [target / current for target, current in zip(hu.shape, labels.shape, strict=True)]
    on_source = nearest_zoom(labels, back, grid_mode=True)
    return np.asarray(on_source[: hu.shape[0], : hu.shape[1], : hu.shape[2]], dtype=np.uint8)
