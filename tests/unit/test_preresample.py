"""TotalSegmentator's wrapper, the parts that are pure arithmetic: its three overlapping slabs
put back together plane for plane, and a merged label set's values written over channels."""

import numpy as np
import pytest

from appliance.inference import nnunet, preresample
from appliance.inference.contract import ModelContract


def _contract(values: list[int], split_above: int | None = None) -> ModelContract:
    coded = {"scheme": "SCT", "value": "1", "meaning": "Structure"}
    return ModelContract.model_validate({
        "name": "parts", "version": 1, "modality": "CT", "synthetic": True,
        "input": {"name": "image", "dtype": "float32", "shape": [-1, 1, 8, 8, 8]},
        "output": {"name": "logits", "dtype": "float32", "shape": [-1, len(values) + 1, 8, 8, 8]},
        "patch": [8, 8, 8],
        "nnunet": {
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "spacing_mm": [3.0, 3.0, 3.0],
            "resample_data": {"order": 3, "order_z": 0},
            "resample_logits": {"order": 1, "order_z": 0},
            "normalisation": {"scheme": "none"}, "folds": [0],
            "preresample": {"spacing_mm": 3.0, "split_above": split_above},
        },
        "labels": [
            {"value": value, "name": f"class_{value}", "category": coded, "type": coded}
            for value in values
        ],
    })  # fmt: skip


def test_labels_of_a_merged_set_take_their_values_not_their_channels() -> None:
    channels = np.array([[[0, 1, 2, 1]]], dtype=np.uint8)
    assert nnunet.values_of_channels(channels, _contract([52, 5])).tolist() == [[[0, 52, 5, 52]]]
    plain = _contract([1, 2])
    assert nnunet.values_of_channels(channels, plain) is channels


@pytest.mark.parametrize("planes", [201, 300, 451])
def test_three_slabs_are_put_back_plane_for_plane(
    planes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each plane is predicted as its own index: the assembled planes must be 0, 1, 2, ..."""
    contract = _contract([1], split_above=10)
    assert contract.nnunet is not None
    wrap = contract.nnunet.preresample
    assert wrap is not None
    seen = []

    def plane_index(image, spacing, backend, contract):  # type: ignore[no-untyped-def]
        seen.append(image.shape[0])
        return (image % 251).astype(np.uint8)  # SimpleITK order: planes first

    monkeypatch.setattr(nnunet, "segment", plane_index)
    volume = np.broadcast_to(np.arange(planes, dtype=np.float32), (2, 2, planes)).copy()
    labels = preresample.predict_resampled(volume, wrap, [3.0] * 3, None, contract)  # type: ignore[arg-type]
    assert labels[0, 0].tolist() == [plane % 251 for plane in range(planes)]
    third = planes // 3
    assert seen == [third + 20, third + 39, planes - 2 * third + 19], "slabs overlap by 20"


def test_a_volume_below_the_limit_is_predicted_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    contract = _contract([1], split_above=10**9)
    assert contract.nnunet is not None
    wrap = contract.nnunet.preresample
    assert wrap is not None
    calls = []

    def record(image, spacing, backend, contract):  # type: ignore[no-untyped-def]
        calls.append(image.shape)
        return np.zeros(image.shape, np.uint8)

    monkeypatch.setattr(nnunet, "segment", record)
    volume = np.zeros((4, 5, 300), np.float32)
    preresample.predict_resampled(volume, wrap, [3.0] * 3, None, contract)  # type: ignore[arg-type]
    assert calls == [(300, 5, 4)], "one call, on SimpleITK's axis order"
