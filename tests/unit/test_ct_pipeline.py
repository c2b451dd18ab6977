"""The CT pipeline: series to volume, refusals with reasons, labels back on the source grid."""

import random
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from pydicom import dcmread
from scipy import ndimage

from appliance.inference.backend import OnnxRuntimeBackend
from appliance.inference.contract import ModelContract, load_contract
from appliance.inference.ct import (
    UnsupportedSeries,
    load_series,
    segment_ct,
    segment_mirrored_around,
    sliding_window,
)
from appliance.inference.masks import bounding_box, grown
from appliance.inference.repository import render_config
from appliance.phantoms.ct import Grid, generate_ct
from appliance.phantoms.dicom import write_ct_series

PATCH = [16, 16, 16]


def bone_model(
    repository: Path,
    spacing: list[float] | None,
    patch: list[int] = PATCH,
    fixed_grid: dict[str, object] | None = None,
) -> ModelContract:
    """A 1x1x1 convolution: label 1 wherever the normalised intensity exceeds one half (the
    CT window's midpoint); or, read as a whole-volume model with `fixed_grid`'s recipe,
    wherever its normalised intensity exceeds one."""
    weights = numpy_helper.from_array(np.array([[[[[-1.0]]]], [[[[1.0]]]]], np.float32), "w")
    bias = numpy_helper.from_array(np.array([0.5, -0.5], np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["logits"])],
        "bone",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, *patch])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2, *patch])],
        initializer=[weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    window = {"kind": "ct_window", "window": [-1000.0, 1400.0]}
    recipe = (
        {"fixed_grid": fixed_grid} if fixed_grid is not None
        else {"spacing_mm": spacing, "intensity": window}
    )  # fmt: skip
    contract = {
        "name": "bone", "version": 1, "modality": "CT", "synthetic": True,
        "input": {"name": "image", "dtype": "float32", "shape": [-1, 1, *patch]},
        "output": {"name": "logits", "dtype": "float32", "shape": [-1, 2, *patch]},
        "patch": patch, **recipe,
        "labels": [{"value": 7, "name": "vertebrae",
                    "category": {"scheme": "SCT", "value": "91723000",
                                 "meaning": "Anatomical Structure"},
                    "type": {"scheme": "SCT", "value": "421060004",
                             "meaning": "Vertebral column"}}],
    }  # fmt: skip
    directory = repository / "bone"
    (directory / "1").mkdir(parents=True)
    onnx.save(model, str(directory / "1" / "model.onnx"))
    (directory / "1" / "contract.yaml").write_text(yaml.safe_dump(contract))
    (directory / "config.pbtxt").write_text(render_config([ModelContract.model_validate(contract)]))
    (directory / "1" / "card.md").write_text("# bone\n")
    return load_contract(directory / "1")


@pytest.fixture(scope="module")
def phantom():  # type: ignore[no-untyped-def]
    return generate_ct(5, Grid((24, 48, 48), (5.0, 7.0, 7.0)), noise_hu=5.0)


def test_series_loads_in_geometric_order_with_rescale(phantom, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = write_ct_series(phantom, tmp_path)
    random.Random(1).shuffle(paths)
    volume = load_series(paths)
    assert volume.geometry.shape == phantom.hu.shape
    assert volume.geometry.spacing == pytest.approx((5.0, 7.0, 7.0))
    assert np.array_equal(volume.hu, phantom.hu.astype(np.float32))


def test_a_rescale_slope_is_applied_as_stored_values_times_slope_plus_intercept(
    phantom, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    paths = write_ct_series(phantom, tmp_path)
    for path in paths:
        dataset = dcmread(path)
        dataset.RescaleSlope, dataset.RescaleIntercept = "0.5", "-1000.25"
        dataset.save_as(path)
    stored = np.stack([dcmread(path).pixel_array for path in paths]).astype(np.float32)
    volume = load_series(paths)
    assert np.array_equal(volume.hu, stored * np.float32(0.5) + np.float32(-1000.25))


def test_irregular_series_is_refused_with_its_reason(phantom, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = write_ct_series(phantom, tmp_path)
    del paths[10]
    with pytest.raises(UnsupportedSeries, match="uneven or has gaps"):
        load_series(paths)
    tilted = dcmread(paths[3])
    del tilted.ImageOrientationPatient
    tilted.save_as(paths[3])
    with pytest.raises(UnsupportedSeries, match="lacks ImageOrientationPatient"):
        load_series(paths)


def test_sliding_window_covers_every_voxel_once_blended(tmp_path: Path) -> None:
    contract = bone_model(tmp_path, [5.0, 7.0, 7.0])
    volume = np.random.default_rng(0).random((21, 40, 33), dtype=np.float32)
    probabilities = sliding_window(volume, OnnxRuntimeBackend(tmp_path), contract)
    assert probabilities.shape == (2, 21, 40, 33)
    assert np.allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(probabilities.argmax(0), (volume > 0.5).astype(np.int64))


def test_labels_land_on_the_source_grid_within_half_a_voxel(phantom, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    contract = bone_model(tmp_path, [3.0, 3.0, 3.0])  # a finer model grid than the source
    volume = load_series(write_ct_series(phantom, tmp_path / "series"))
    labels = segment_ct(volume, OnnxRuntimeBackend(tmp_path), contract)
    truth = volume.hu > 200  # exactly what the model thresholds (window midpoint)
    assert labels.shape == volume.hu.shape
    assert set(np.unique(labels)) <= {0, 7}
    predicted = labels == 7
    dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    assert dice > 0.85  # boundary voxels of 7-mm slabs differ after two resamplings
    shift = np.array(ndimage.center_of_mass(predicted)) - np.array(ndimage.center_of_mass(truth))
    assert np.all(np.abs(shift) <= 0.5), shift


def test_cascade_segments_only_around_the_region(phantom, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from appliance.inference.ct import segment_in_region
    from appliance.phantoms.ct import Organ

    contract = bone_model(tmp_path, [2.5, 3.5, 3.5])  # finer than the source, as lesion_ct is
    volume = load_series(write_ct_series(phantom, tmp_path / "series"))
    region = phantom.organs == Organ.VERTEBRAE
    region[: region.shape[0] // 2] = False  # only the upper half of the spine
    limit = np.argwhere(region).min(axis=0)[0] - 2  # 7 mm of margin: two 5-mm slices
    stray = region.copy()
    stray[0, 30, 30] = True  # a first stage's stray voxel must not stretch the box

    labels = segment_in_region(volume, stray, OnnxRuntimeBackend(tmp_path), contract, 7.0)

    found = np.argwhere(labels == 7)
    assert len(found)
    assert found[:, 0].min() >= limit
    whole = segment_ct(volume, OnnxRuntimeBackend(tmp_path), contract)
    inside = labels == 7
    assert np.array_equal(whole[inside], labels[inside])
    empty = segment_in_region(volume, np.zeros_like(region), OnnxRuntimeBackend(tmp_path), contract)
    assert not empty.any()


def test_the_mirrored_second_opinion_lands_around_each_finding_only(
    phantom, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """With a voxel-wise model at the source spacing, the second opinion around each finding
    must be exactly the model's own answer there, the right way round, and nothing outside
    the box of reach 2 around each finding."""
    contract = bone_model(tmp_path, [5.0, 7.0, 7.0])
    volume = load_series(write_ct_series(phantom, tmp_path / "series"))
    backend = OnnxRuntimeBackend(tmp_path)
    z, y, x = np.argwhere(volume.hu > 200).max(axis=0)  # a corner of the bone
    boxes = [
        (slice(z - 3, z), slice(y - 4, y), slice(x - 3, x + 1)),
        (slice(z - 3, z), slice(y - 4, y), slice(x - 6, x - 4)),  # within the first's pass
        (slice(3, 6), slice(10, 14), slice(5, 9)),  # away from the centre, a flip would show
    ]
    first = np.zeros(volume.hu.shape, dtype=np.uint8)
    cores = np.zeros(first.shape, dtype=bool)
    for box in boxes:
        first[box] = 7
        cores[grown(box, (2, 2, 2), first.shape)] = True
    second = segment_mirrored_around(first, volume, backend, contract, reach=2)
    model = np.where(volume.hu > 200, 7, 0)  # what the model thresholds (window midpoint)
    assert np.array_equal(second[cores], model[cores])
    assert not second[~cores].any()
    assert (second[cores] == 7).any()
    assert (second[cores] == 0).any()
    assert not segment_mirrored_around(np.zeros_like(first), volume, backend, contract, 2).any()


def test_a_finding_wider_than_the_models_patch_gets_its_whole_second_opinion(
    phantom, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The pass around a finding wider than one patch of context (16 voxels here) covers the
    finding and its reach, not the finding alone."""
    contract = bone_model(tmp_path, [5.0, 7.0, 7.0])
    volume = load_series(write_ct_series(phantom, tmp_path / "series"))
    backend = OnnxRuntimeBackend(tmp_path)
    box = (slice(8, 12), slice(28, 32), slice(8, 38))  # 30 columns wide, across the spine
    first = np.zeros(volume.hu.shape, dtype=np.uint8)
    first[box] = 7
    core = grown(box, (2, 2, 2), first.shape)

    second = segment_mirrored_around(first, volume, backend, contract, reach=2)

    model = np.where(volume.hu > 200, 7, 0)
    assert (model[core] == 7).any()
    assert np.array_equal(second[core], model[core])


def test_a_whole_volume_models_second_opinion_reads_the_whole_volume_mirrored(
    phantom, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A whole-volume model (its patch the volume itself, so nothing is resampled) gets its
    second opinion from one pass over the whole volume mirrored, flipped back, and kept
    within reach 2 of each finding."""
    volume = load_series(write_ct_series(phantom, tmp_path / "series"))
    ras_shape = list(reversed(volume.hu.shape))  # an axial series: columns, rows, slices
    recipe = {"percentile_grid": ras_shape, "percentiles": [0.5, 99.5]}
    contract = bone_model(tmp_path, None, ras_shape, recipe)
    backend = OnnxRuntimeBackend(tmp_path)
    answer = segment_ct(volume, backend, contract)
    found = np.argwhere(answer == 7)
    right = found[found[:, 2] == found[:, 2].min()][0]  # the finding's rightmost voxel
    box = grown(tuple(slice(int(c), int(c) + 1) for c in right), (2, 2, 2), answer.shape)
    first = np.zeros_like(answer)
    first[box] = answer[box]
    cores = np.zeros(first.shape, dtype=bool)
    cores[grown(box, (2, 2, 2), first.shape)] = True
    assert not np.array_equal(answer[cores], answer[:, :, ::-1][cores])  # a flip would show

    second = segment_mirrored_around(first, volume, backend, contract, reach=2)

    # a voxel-wise model, its largest part and its holes filled: the same answer mirrored
    assert np.array_equal(second[cores], answer[cores])
    assert not second[~cores].any()


def test_bounding_box_grows_by_its_margins_inside_the_array() -> None:
    mask = np.zeros((10, 20, 30), dtype=bool)
    mask[4, 1, 20:25] = True
    mask[6, 3, 22] = True
    assert bounding_box(mask, (1, 2, 10)) == (slice(3, 8), slice(0, 6), slice(10, 30))
    assert bounding_box(np.zeros_like(mask), (1, 1, 1)) is None


def test_a_series_too_large_is_refused_before_its_pixels_are_read(phantom, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = write_ct_series(phantom, tmp_path)[:4]
    for path in paths:  # headers claiming 60,000 x 60,000 slices; the pixel data is tiny
        header = dcmread(path)
        header.Rows = header.Columns = 60_000
        header.save_as(path)
    with pytest.raises(UnsupportedSeries, match="more than the pipeline takes"):
        load_series(paths)


def test_pixel_data_that_does_not_fit_its_header_is_refused(phantom, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = write_ct_series(phantom, tmp_path)
    for path in paths:  # every header agrees, so the geometry is regular; the pixels do not
        header = dcmread(path)
        header.Rows = 40
        header.save_as(path)
    with pytest.raises(UnsupportedSeries, match="bytes of pixel data where its header says"):
        load_series(paths)


def test_a_position_with_two_values_is_refused(phantom, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = write_ct_series(phantom, tmp_path)
    broken = dcmread(paths[2])
    broken.ImagePositionPatient = broken.ImagePositionPatient[:2]  # found by the fuzzer
    broken.save_as(paths[2])
    with pytest.raises(UnsupportedSeries, match="hold 2, 6 and 2 values, not 3, 6 and 2"):
        load_series(paths)
