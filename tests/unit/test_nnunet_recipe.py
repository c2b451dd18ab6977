"""The nnU-Net recipe as pure logic: the contract's named errors, reading a result folder's
JSON, and the predictor's small rules (window steps, the Gaussian, the separate axis, regions,
largest components). Parity with nnUNetPredictor itself is tests/integration/test_nnunet.py."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from appliance.inference import nnunet
from appliance.inference.contract import (
    ModelContract,
    NnunetRecipe,
    Normalisation,
    Region,
    Resampling,
)
from appliance.inference.importing import ImportRefused
from appliance.inference.nnunet_import import (
    configuration_of,
    label_values,
    postprocessing_groups,
    read_codes,
    read_folder,
)

LIVER = {
    "value": 1, "name": "liver",
    "category": {"scheme": "SCT", "value": "91723000", "meaning": "Anatomical Structure"},
    "type": {"scheme": "SCT", "value": "10200004", "meaning": "Liver"},
}  # fmt: skip
RECIPE: dict[str, Any] = {
    "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
    "spacing_mm": [5.0, 3.5, 3.5],
    "resample_data": {"order": 3, "order_z": 0},
    "resample_logits": {"order": 1, "order_z": 0},
    "normalisation": {"scheme": "ct", "clip": [18.0, 182.0], "mean": 102.2, "std": 29.0},
    "mirror_axes": [0, 1, 2], "folds": [0, 1],
}  # fmt: skip


def contract(recipe: dict[str, Any] | None = None, **changes: Any) -> ModelContract:
    tree = {
        "name": "organs", "version": 1, "modality": "CT", "source": "nnunet", "synthetic": True,
        "input": {"name": "image", "dtype": "float32", "shape": [-1, 1, 16, 64, 64]},
        "output": {"name": "logits", "dtype": "float32", "shape": [-1, 2, 16, 64, 64]},
        "patch": [16, 64, 64], "nnunet": {**RECIPE, **(recipe or {})}, "labels": [LIVER],
    }  # fmt: skip
    return ModelContract.model_validate({**tree, **changes})


@pytest.mark.parametrize(
    ("recipe", "changes", "error"),
    [
        ({"transpose_forward": [0, 0, 2]}, {}, "transpose_forward must be a permutation"),
        ({"transpose_forward": [2, 0, 1]}, {}, "transpose_backward must undo"),
        ({"mirror_axes": [3]}, {}, "mirror_axes are axes 0, 1 and 2"),
        ({"normalisation": {"scheme": "ct"}}, {}, "ct normalisation needs clip, mean and std"),
        ({"normalisation": {"scheme": "bogus"}}, {}, "Input should be 'ct', 'zscore'"),
        ({"step": 1.5}, {}, "less than or equal to 1"),
        ({"resample_data": {"order": 7, "order_z": 0}}, {}, "less than or equal to 5"),
        ({"regions": [{"labels": [1], "paints": 1}] * 3}, {}, "one per region"),
        ({"regions": [{"labels": [1], "paints": 1}, {"labels": [2], "paints": 2}]},
         {}, "labels are the values its regions paint"),
        ({}, {"intensity": {"kind": "scale", "scale": 1.0}}, "one of an intensity"),
    ],
)  # fmt: skip
def test_a_recipe_that_cannot_be_run_is_refused_with_its_reason(
    recipe: dict[str, Any], changes: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValidationError, match=error):
        contract(recipe, **changes)


def test_a_valid_recipe_round_trips() -> None:
    made = contract({"regions": [{"labels": [1], "paints": 1}, {"labels": [1], "paints": 1}]})
    assert made.nnunet == NnunetRecipe.model_validate(made.nnunet.model_dump())  # type: ignore[union-attr]


def test_window_starts_follow_nnunet() -> None:
    # nnU-Net's own example: an image of 110 and a patch of 64 at step 0.5 start 0, 23, 46.
    assert nnunet.window_starts(110, 64, 0.5) == [0, 23, 46]
    assert nnunet.window_starts(64, 64, 0.5) == [0]
    assert nnunet.window_starts(100, 64, 0.8) == [0, 36]


def test_gaussian_weights_peak_at_ten_in_half_precision_without_zeros() -> None:
    weights = nnunet.gaussian_weights([16, 64, 64])
    assert weights.dtype == np.float16
    assert weights[8, 32, 32] == 10
    assert weights.min() > 0
    assert weights[0, 0, 0] < weights[8, 0, 0] < weights[8, 32, 32]


@pytest.mark.parametrize(
    ("current", "new", "force", "axis"),
    [
        ((5.0, 1.0, 1.0), (2.0, 2.0, 2.0), None, 0),  # the source is anisotropic
        ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), None, 1),  # the target is
        ((1.0, 1.2, 1.5), (2.0, 2.0, 2.0), None, None),  # neither
        ((5.0, 5.0, 1.0), (2.0, 2.0, 2.0), None, None),  # two coarse axes: none apart
        ((5.0, 1.0, 1.0), (2.0, 2.0, 2.0), False, None),
        ((1.0, 1.2, 1.5), (2.0, 2.0, 2.0), True, 2),
    ],
)
def test_the_axis_resampled_apart(
    current: tuple[float, ...], new: tuple[float, ...], force: bool | None, axis: int | None
) -> None:
    resampling = Resampling(order=3, order_z=0, force_separate_z=force)
    assert nnunet.separate_axis(current, new, resampling, 3.0) == axis


def test_an_axis_operator_is_a_partition_of_unity_and_nearest_picks_one_slice() -> None:
    linear = nnunet.axis_operator(10, 23, order=1, apart=False)
    nearest = nnunet.axis_operator(10, 23, order=0, apart=True)
    np.testing.assert_allclose(linear.sum(axis=1), 1.0, atol=1e-12)
    assert set(np.unique(nearest)) == {0.0, 1.0}
    assert (nearest.sum(axis=1) == 1).all()


def test_regions_are_painted_in_the_models_order() -> None:
    recipe = NnunetRecipe.model_validate({
        **RECIPE, "regions": [{"labels": [1, 2], "paints": 1}, {"labels": [2], "paints": 2}],
    })  # fmt: skip
    logits = np.array([[[[1.0, 1.0, -1.0]]], [[[-1.0, 2.0, 3.0]]]], dtype=np.float16)
    assert nnunet.to_labels(logits, recipe).tolist() == [[[1, 2, 2]]]
    assert recipe.regions == [Region(labels=[1, 2], paints=1), Region(labels=[2], paints=2)]


def test_keep_largest_component_counts_diagonal_neighbours_and_keeps_ties() -> None:
    labels = np.zeros((1, 6, 6), dtype=np.uint8)
    labels[0, 0, 0] = labels[0, 1, 1] = 1  # diagonal: one part of two voxels
    labels[0, 4, 4] = 2
    labels[0, 3, 0] = labels[0, 3, 1] = 2  # another part of two: a tie
    kept = nnunet.keep_largest_component(labels, [1, 2])
    assert kept[0, 4, 4] == 0
    assert kept[0, 0, 0] == 1
    assert kept[0, 3, 0] == 2


def test_the_non_zero_box_fills_holes() -> None:
    data = np.zeros((5, 6, 7), dtype=np.float32)
    data[1:4, 1:5, 2:6] = 3.0
    data[2, 2, 3] = 0.0  # a hole inside
    box, mask = nnunet.nonzero_box(data)
    assert box == (slice(1, 4), slice(1, 5), slice(2, 6))
    assert mask[2, 2, 3]


def write_result(tmp_path: Path, plans: dict[str, Any], dataset: dict[str, Any]) -> Path:
    folder = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"not read here")
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


PLANS: dict[str, Any] = {
    "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2],
    "transpose_backward": [0, 1, 2], "label_manager": "LabelManager",
    "configurations": {
        "3d_fullres": {
            "patch_size": [16, 64, 64], "spacing": [5.0, 3.5, 3.5],
            "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        },
        "2d": {"inherits_from": "3d_fullres", "patch_size": [64, 64]},
        "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
    },
}  # fmt: skip
DATASET = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}}


def test_configurations_inherit_as_nnunet_resolves_them() -> None:
    settings = configuration_of(PLANS, "2d")
    assert settings["patch_size"] == [64, 64]
    assert settings["spacing"] == [5.0, 3.5, 3.5]
    assert "inherits_from" not in settings


@pytest.mark.parametrize(
    ("configuration", "plans", "dataset", "error"),
    [
        ("2d", {}, {}, "is not 3d"),
        ("3d_cascade_fullres", {}, {}, "is a cascade stage"),
        ("3d_lowres", {}, {}, "'3d_lowres' is not in plans.json"),
        ("3d_fullres", {"image_reader_writer": "NibabelIO"}, {}, "unknown image reader"),
        ("3d_fullres", {}, {"channel_names": {"0": "T1", "1": "T2"}}, "2 input channels"),
    ],
)
def test_a_folder_the_appliance_cannot_run_is_refused(
    tmp_path: Path, configuration: str, plans: dict[str, Any], dataset: dict[str, Any],
    error: str,
) -> None:  # fmt: skip
    folder = write_result(tmp_path, {**PLANS, **plans}, {**DATASET, **dataset})
    folder = folder.rename(folder.with_name(f"nnUNetTrainer__nnUNetPlans__{configuration}"))
    with pytest.raises(ImportRefused, match=error):
        read_folder(folder)


def test_labels_must_be_consecutive_and_regions_need_their_order(tmp_path: Path) -> None:
    gap = read_folder(write_result(tmp_path / "a", PLANS, DATASET))
    object.__setattr__(gap, "dataset", {**DATASET, "labels": {"background": 0, "liver": 2}})
    with pytest.raises(ImportRefused, match="numbered 1, 2"):
        label_values(gap)
    regions = {"background": 0, "whole": [1, 2], "core": 2}
    object.__setattr__(gap, "dataset", {**DATASET, "labels": regions})
    with pytest.raises(ImportRefused, match="regions_class_order"):
        label_values(gap)
    ordered = {**DATASET, "labels": regions, "regions_class_order": [1, 2]}
    object.__setattr__(gap, "dataset", ordered)
    painted, found = label_values(gap)
    assert painted == {"whole": 1, "core": 2}
    assert found == [Region(labels=[1, 2], paints=1), Region(labels=[2], paints=2)]


def test_codes_are_read_and_a_malformed_one_is_named(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text(
        "name,category,type,modifier\n"
        "kidney_left,SCT:91723000:Anatomical Structure,SCT:64033007:Kidney,SCT:7771000:Left\n"
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("name,category,type\nliver,SCT:91723000:Anatomical Structure,Liver\n")
    codes = read_codes(good)["kidney_left"]
    assert (codes.type.value, codes.modifier.meaning) == ("64033007", "Left")  # type: ignore[union-attr]
    with pytest.raises(ImportRefused, match="line 2: 'Liver' is not SCHEME:VALUE:Meaning"):
        read_codes(bad)


def test_postprocessing_groups_come_from_nnunets_json(tmp_path: Path) -> None:
    path = tmp_path / "postprocessing.json"
    path.write_text(json.dumps({
        "postprocessing_fns": ["remove_all_but_largest_component_from_segmentation"] * 2,
        "postprocessing_kwargs": [{"labels_or_regions": [1, 2]}, {"labels_or_regions": 2}],
    }))  # fmt: skip
    assert postprocessing_groups(path, {"liver": 1, "spleen": 2}) == [[1, 2], [2]]
    with pytest.raises(ImportRefused, match="names labels the model has not"):
        postprocessing_groups(path, {"liver": 1})


def test_normalisers_by_span_match_nnunets_schemes_on_the_whole() -> None:
    image = np.random.default_rng(3).normal(50, 20, (6, 8, 8)).astype(np.float32)
    mask = np.zeros(image.shape, dtype=bool)
    mask[1:5, 2:6, 2:6] = True
    ct = Normalisation(scheme="ct", clip=(20.0, 80.0), mean=50.0, std=10.0)
    whole = nnunet.normaliser(image, None, ct)(slice(None))
    halves = [nnunet.normaliser(image, None, ct)(span) for span in (slice(0, 3), slice(3, 6))]

    assert np.array_equal(np.concatenate(halves), whole)
    np.testing.assert_allclose(whole, (np.clip(image, 20, 80) - 50) / 10, rtol=1e-6)
    inside = nnunet.normaliser(image, mask, Normalisation(scheme="zscore", use_mask=True))
    normalised = inside(slice(None))
    assert np.array_equal(normalised[~mask], image[~mask])  # outside the mask: as it was
    assert abs(float(normalised[mask].mean())) < 1e-5
    rescaled = nnunet.normaliser(image, None, Normalisation(scheme="rescale_to_01"))
    assert (float(rescaled(slice(None)).min()), float(rescaled(slice(None)).max())) == (0.0, 1.0)
