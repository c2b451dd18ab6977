"""The whole-volume recipe's pure parts (deepbet's, reproduced in numpy). The integration test
holds the whole against deepbet's own run; these pin each step to the rule it reproduces."""

import numpy as np
import pytest
from pydantic import ValidationError

from appliance.inference.contract import Locator, ModelContract
from appliance.inference.fixed_grid import (
    NotSegmentable,
    closest_ras,
    from_ras,
    largest_part,
    locate,
    nearest_exact,
    quantile,
    resize,
    to_ras,
)


def test_nearest_exact_follows_pytorchs_rule() -> None:
    # floor((i + 0.5) * 3 / 5): 0.3, 0.9, 1.5, 2.1, 2.7
    assert nearest_exact(3, 5).tolist() == [0, 0, 1, 2, 2]
    # shrinking: floor((i + 0.5) * 2.5): 1.25, 3.75
    assert nearest_exact(5, 2).tolist() == [1, 3]
    assert nearest_exact(7, 7).tolist() == list(range(7))


@pytest.mark.parametrize("shape", [(7, 9, 4), (2, 3, 5), (4, 6, 5)])
def test_resizing_picks_each_voxel_by_the_rule_on_every_axis(shape: tuple[int, int, int]) -> None:
    volume = np.arange(4 * 6 * 5, dtype=np.float32).reshape(4, 6, 5)
    transposed = volume.transpose(2, 0, 1)  # a view in RAS order is what the recipe resizes
    for source in (volume, transposed):
        picks = np.ix_(*(nearest_exact(n, m) for n, m in zip(source.shape, shape, strict=True)))
        resized = resize(source, shape)
        assert resized.shape == shape
        assert np.array_equal(resized, source[picks])


def test_an_axial_lps_volume_turns_to_ras_and_back() -> None:
    # slices toward the head, rows toward the back, columns toward the patient's left (LPS),
    # as RAS directions of the array axes (columns of the matrix)
    directions = np.array([[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    orientation = closest_ras(directions)
    assert orientation.tolist() == [[2, 1], [1, -1], [0, -1]]
    volume = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    canonical = to_ras(volume, orientation)
    assert canonical.shape == (4, 3, 2)
    assert canonical[0, 0, 0] == volume[0, 2, 3]  # right, posterior, inferior corner
    assert np.array_equal(from_ras(canonical, orientation), volume)


def test_quantile_interpolates_as_torch_does() -> None:
    values = np.arange(11, dtype=np.float32)
    assert quantile(values, 0.25) == pytest.approx(2.5)
    assert quantile(values, 0.995) == pytest.approx(9.95)


def test_the_box_is_grown_by_its_margin_and_kept_inside_the_grid() -> None:
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[2:6, 3:7, 0:10] = True
    locator = Locator(name="locator", version=1, patch=[10, 10, 10], margin=0.25)
    # centre 4, size 4 on axis 0 at double resolution: centre 8, size 8 * 1.5 = 12
    assert locate(mask, (20, 20, 20), locator) == (slice(2, 14), slice(4, 16), slice(0, 20))
    with pytest.raises(NotSegmentable, match="too little"):
        locate(np.zeros((10, 10, 10), dtype=bool), (20, 20, 20), locator)


def test_only_the_largest_26_connected_part_stays() -> None:
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # touching by a corner: one part
    mask[4:6, 4:6, 4:6] = True
    assert np.count_nonzero(largest_part(mask)) == 8
    mask[4:6, 4:6, 4:6] = False
    assert np.count_nonzero(largest_part(mask)) == 2


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"labels": "two"}, "one label"),
        ({"fixed_grid": {"percentile_grid": [8, 8, 8], "channel": 2}}, "channel"),
        ({"fixed_grid": {"percentile_grid": [8, 8, 8], "percentiles": [90, 10]}}, "percentiles"),
    ],
)
def test_a_whole_volume_contract_that_cannot_be_run_is_refused(
    change: dict[str, object], error: str
) -> None:
    label = {
        "value": 1, "name": "brain",
        "category": {"scheme": "SCT", "value": "91723000", "meaning": "Anatomical Structure"},
        "type": {"scheme": "SCT", "value": "12738006", "meaning": "Brain"},
    }  # fmt: skip
    tree: dict[str, object] = {
        "name": "whole", "version": 1, "modality": "MR", "synthetic": False,
        "input": {"name": "image", "dtype": "float32", "shape": [-1, 1, 8, 8, 8]},
        "output": {"name": "probabilities", "dtype": "float32", "shape": [-1, 2, 8, 8, 8]},
        "patch": [8, 8, 8], "fixed_grid": {"percentile_grid": [8, 8, 8]}, "labels": [label],
    }  # fmt: skip
    ModelContract.model_validate(tree)
    if change.get("labels") == "two":
        change = {
            "labels": [label, {**label, "value": 2, "name": "other"}],
            "output": {"name": "probabilities", "dtype": "float32", "shape": [-1, 3, 8, 8, 8]},
        }
    with pytest.raises(ValidationError, match=error):
        ModelContract.model_validate({**tree, **change})
