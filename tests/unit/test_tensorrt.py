"""TensorRT: the repository layout, configs and the FP16 parity arithmetic are tested here;
engines, and the gate on them, where TensorRT imports."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from appliance.inference.contract import ModelContract, load_contract
from appliance.inference.tensorrt import (
    PARITY_FILE,
    ProbeUnusable,
    TensorRTUnavailable,
    build_tensorrt_repository,
    labels_of,
    load_probe,
    per_class_dice,
    tensorrt_config,
    verdict,
)
from tests.support.models import SIZE, write_tiny_model

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_tensorrt_config_serves_a_plan_on_the_gpu(tmp_path: Path) -> None:
    contract = load_contract(write_tiny_model(tmp_path) / "1")
    config = tensorrt_config([contract], max_batch_size=4)
    assert 'platform: "tensorrt_plan"' in config
    assert "max_batch_size: 4" in config
    assert "kind: KIND_GPU" in config
    assert 'name: "image"' in config
    assert "dims: [ 1, 32, 32 ]" in config


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_without_tensorrt_nothing_is_written(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "source")
    with pytest.raises(TensorRTUnavailable, match="GPU host"):
        build_tensorrt_repository(tmp_path / "source", tmp_path / "plans")
    assert not (tmp_path / "plans").exists()


def _contract(tmp_path: Path) -> ModelContract:
    return load_contract(write_tiny_model(tmp_path) / "1")


def test_labels_are_the_contracts_values_and_non_finite_voxels_agree_with_nothing(
    tmp_path: Path,
) -> None:
    contract = _contract(tmp_path)  # one label, value 1, from two channels
    output = np.array([[[0.9, 0.2, 0.4, np.nan]], [[0.1, 0.8, 0.6, 0.5]]], np.float32)[None]
    np.testing.assert_array_equal(labels_of(output, contract), [[[0, 1, 1, -1]]])
    one_channel = np.array([[[0.2, 0.7, np.inf]]], np.float32)[None]
    np.testing.assert_array_equal(labels_of(one_channel, contract), [[[0, 1, -1]]])


def test_per_class_dice_counts_a_class_neither_holds_as_agreement() -> None:
    reference = np.array([0, 1, 1, 1, 2, 0])
    candidate = np.array([0, 1, 1, 0, 2, 2])
    dice = per_class_dice(reference, candidate, [1, 2, 3])
    assert dice == {1: pytest.approx(0.8), 2: pytest.approx(2 / 3), 3: 1.0}


def test_an_fp16_engine_that_empties_a_class_is_built_in_fp32(tmp_path: Path) -> None:
    """TensorRT FP16's known failure on nnU-Net networks: outputs of one class gone, or not
    finite. Either way the version is built in FP32 and the reason names the class."""
    contract = _contract(tmp_path)
    fp32 = np.zeros((1, 2, SIZE, SIZE), np.float32)
    fp32[:, 1, :10] = 1.0  # the cyst found on ten rows
    emptied = np.zeros_like(fp32)
    overflowed = fp32.copy()
    overflowed[:, :, 5] = np.inf
    for fp16 in (emptied, overflowed):
        dice = per_class_dice(labels_of(fp32, contract), labels_of(fp16, contract), [1])
        parity = verdict(contract, dice)
        assert parity.precision == "fp32"
        assert "label 1" in parity.reason
    close = fp32.copy()
    close[:, 1, 0, 0] = -1.0  # one voxel of 320 lost to rounding: Dice 0.998
    kept = verdict(
        contract, per_class_dice(labels_of(fp32, contract), labels_of(close, contract), [1])
    )
    assert kept.precision == "fp16"


def test_a_probe_must_be_finite_inputs_of_the_models_shape(tmp_path: Path) -> None:
    contract = _contract(tmp_path)
    one = tmp_path / "one.npy"
    np.save(one, np.zeros((1, SIZE, SIZE), np.float64))
    assert load_probe(one, contract).shape == (1, 1, SIZE, SIZE)
    batch = tmp_path / "batch.npy"
    np.save(batch, np.zeros((3, 1, SIZE, SIZE), np.float32))
    assert load_probe(batch, contract).dtype == np.float32
    for name, array in (
        ("small", np.zeros((1, 1, 8, 8))),
        ("nan", np.full((1, SIZE, SIZE), np.nan)),
    ):
        np.save(tmp_path / f"{name}.npy", array)
        with pytest.raises(ProbeUnusable, match="shape"):
            load_probe(tmp_path / f"{name}.npy", contract)
    (tmp_path / "text.npy").write_text("not an array")
    with pytest.raises(ProbeUnusable, match="numpy"):
        load_probe(tmp_path / "text.npy", contract)


@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT imports only on the GPU hosts")
def test_engine_builds_with_a_batch_profile_in_fp32_without_a_probe(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "source")
    (built,) = build_tensorrt_repository(tmp_path / "source", tmp_path / "plans", 4)
    assert (built.model, built.precision) == ("tiny", "fp32")
    assert (tmp_path / "plans" / "tiny" / "1" / "model.plan").stat().st_size > 0
    assert (tmp_path / "plans" / "tiny" / "1" / "contract.yaml").exists()
    recorded = json.loads((tmp_path / "plans" / "tiny" / "1" / PARITY_FILE).read_text())
    assert recorded["reason"] == "no probe to prove FP16 on"


@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT imports only on the GPU hosts")
def test_fp16_is_kept_where_it_agrees_and_refused_where_it_overflows(tmp_path: Path) -> None:
    """The tiny model thresholds its input at 0.5: inputs well away from it agree in FP16;
    inputs beyond FP16's range (65,504) overflow its convolution."""
    write_tiny_model(tmp_path / "source")
    probes = tmp_path / "probes"
    probes.mkdir()
    rng = np.random.default_rng(0)
    np.save(probes / "tiny.npy", rng.choice([0.1, 0.9], (2, 1, SIZE, SIZE)).astype(np.float32))
    (kept,) = build_tensorrt_repository(tmp_path / "source", tmp_path / "fp16", 4, True, probes)
    assert kept.precision == "fp16", kept
    np.save(probes / "tiny.npy", np.full((1, 1, SIZE, SIZE), 1e5, np.float32))
    (refused,) = build_tensorrt_repository(tmp_path / "source", tmp_path / "fp32", 4, True, probes)
    assert refused.precision == "fp32", refused
