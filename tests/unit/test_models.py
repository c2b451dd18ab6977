"""Model contracts, repository checks and the ONNX Runtime backend, on a tiny ONNX model."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from appliance.inference.backend import OnnxRuntimeBackend, PermanentBackendError
from appliance.inference.contract import ContractError, ModelContract, load_contract
from appliance.inference.repository import check_model, render_config
from tests.support.models import CONTRACT, SIZE, threshold_model, write_tiny_model


def test_a_consistent_model_passes_every_check(tmp_path: Path) -> None:
    directory = write_tiny_model(tmp_path)
    assert check_model(directory) == []
    contract = load_contract(directory)
    assert contract.labels[0].type.meaning == "Cyst"


def test_operators_tensorrt_cannot_parse_are_reported(tmp_path: Path) -> None:
    directory = write_tiny_model(tmp_path, threshold_model("Hardmax"))
    problems = check_model(directory)
    assert any("operators TensorRT cannot parse: Hardmax" in p for p in problems)


def test_config_drift_and_missing_card_are_reported(tmp_path: Path) -> None:
    directory = write_tiny_model(tmp_path)
    config = directory / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 1, 32, 32 ]", "dims: [ 1, 64, 64 ]"))
    (directory / "card.md").unlink()
    problems = check_model(directory)
    assert "config.pbtxt does not match the contract (re-render it)" in problems
    assert "model card card.md is missing" in problems


def test_contract_shape_mismatch_is_reported(tmp_path: Path) -> None:
    directory = write_tiny_model(tmp_path)
    wrong = {
        **CONTRACT,
        "patch": [16, 16],
        "input": {**CONTRACT["input"], "shape": [-1, 1, 16, 16]},  # type: ignore[dict-item]
        "output": {**CONTRACT["output"], "shape": [-1, 2, 16, 16]},
    }  # type: ignore[dict-item]
    (directory / "contract.yaml").write_text(yaml.safe_dump(wrong))
    (directory / "config.pbtxt").write_text(render_config(ModelContract.model_validate(wrong)))
    problems = check_model(directory)
    assert any("input 'image' has shape [-1, 1, 32, 32]" in p for p in problems)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": []}, "labels"),
        ({"output": {**CONTRACT["output"], "shape": [-1, 3, 32, 32]}}, "one per label"),  # type: ignore[dict-item]
        ({"intensity": {"kind": "ct_window", "window": [300, -200]}}, "low < high"),
        ({"name": "Bad Name"}, "name"),
    ],
)
def test_invalid_contracts_are_refused(tmp_path: Path, change: dict, message: str) -> None:  # type: ignore[type-arg]
    directory = write_tiny_model(tmp_path)
    (directory / "contract.yaml").write_text(yaml.safe_dump({**CONTRACT, **change}))
    with pytest.raises(ContractError, match=message):
        load_contract(directory)


def test_onnxruntime_backend_runs_the_model(tmp_path: Path) -> None:
    write_tiny_model(tmp_path)
    backend = OnnxRuntimeBackend(tmp_path, threads=1)
    batch = np.random.default_rng(0).random((3, 1, SIZE, SIZE), dtype=np.float32)
    logits = backend.infer("tiny", batch)
    assert logits.shape == (3, 2, SIZE, SIZE)
    assert np.array_equal(logits.argmax(1), (batch[:, 0] > 0.5).astype(np.int64))
    metadata = backend.metadata("tiny")
    assert metadata.inputs[0].shape == (-1, 1, SIZE, SIZE)
    assert backend.ready("tiny")
    assert not backend.ready("absent")


def test_onnxruntime_backend_classifies_failures_as_permanent(tmp_path: Path) -> None:
    write_tiny_model(tmp_path)
    backend = OnnxRuntimeBackend(tmp_path)
    with pytest.raises(PermanentBackendError, match="takes float32"):
        backend.infer("tiny", np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(PermanentBackendError, match="absent"):
        backend.infer("absent", np.zeros((1, 1, SIZE, SIZE), np.float32))
    (tmp_path / "tiny" / "1" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(PermanentBackendError, match="does not load"):
        OnnxRuntimeBackend(tmp_path).infer("tiny", np.zeros((1, 1, SIZE, SIZE), np.float32))
