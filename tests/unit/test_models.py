"""Model contracts, repository checks and the ONNX Runtime backend, on a tiny ONNX model."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from appliance.domain.pipelines import ModelRef
from appliance.inference.backend import OnnxRuntimeBackend, PermanentBackendError
from appliance.inference.contract import ContractError, ModelContract, load_contract
from appliance.inference.repository import check_model, render_config
from tests.support.models import CONTRACT, SIZE, threshold_model, write_tiny_model

TINY = ModelRef("tiny", 1)
ABSENT = ModelRef("absent", 1)


def test_a_consistent_model_passes_every_check(tmp_path: Path) -> None:
    directory = write_tiny_model(tmp_path)
    assert check_model(directory) == []
    contract = load_contract(directory / "1")
    assert contract.labels[0].type.meaning == "Cyst"


def test_operators_tensorrt_cannot_parse_are_reported(tmp_path: Path) -> None:
    directory = write_tiny_model(tmp_path, threshold_model("Hardmax"))
    problems = check_model(directory)
    assert any("operators TensorRT cannot parse: Hardmax" in p for p in problems)


def test_config_drift_and_missing_card_are_reported(tmp_path: Path) -> None:
    directory = write_tiny_model(tmp_path)
    config = directory / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 1, 32, 32 ]", "dims: [ 1, 64, 64 ]"))
    (directory / "1" / "card.md").unlink()
    problems = check_model(directory)
    assert "config.pbtxt does not match the contracts (re-render it)" in problems
    assert "version 1: model card card.md is missing" in problems


def test_contract_shape_mismatch_is_reported(tmp_path: Path) -> None:
    directory = write_tiny_model(tmp_path)
    wrong = {
        **CONTRACT,
        "patch": [16, 16],
        "input": {**CONTRACT["input"], "shape": [-1, 1, 16, 16]},  # type: ignore[dict-item]
        "output": {**CONTRACT["output"], "shape": [-1, 2, 16, 16]},
    }  # type: ignore[dict-item]
    (directory / "1" / "contract.yaml").write_text(yaml.safe_dump(wrong))
    (directory / "config.pbtxt").write_text(render_config([ModelContract.model_validate(wrong)]))
    problems = check_model(directory)
    assert any("input 'image' has shape [-1, 1, 32, 32]" in p for p in problems)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": []}, "labels"),
        ({"output": {**CONTRACT["output"], "shape": [-1, 3, 32, 32]}}, "one per label"),  # type: ignore[dict-item]
        ({"intensity": {"kind": "ct_window", "window": [300, -200]}}, "low < high"),
        ({"name": "Bad Name"}, "name"),
        (
            {"labels": [{**CONTRACT["labels"][0], "plausible": {"pair": "kidney"}}]},  # type: ignore[index]
            "cyst's pair kidney is not another of the model's labels",
        ),
        (
            {"sensitivity": {"found": 11, "present": 10, "what": "cysts", "studies": "4 studies"}},
            "found 11 of 10: not a measured share",
        ),
    ],
)
def test_invalid_contracts_are_refused(tmp_path: Path, change: dict, message: str) -> None:  # type: ignore[type-arg]
    directory = write_tiny_model(tmp_path)
    (directory / "1" / "contract.yaml").write_text(yaml.safe_dump({**CONTRACT, **change}))
    with pytest.raises(ContractError, match=message):
        load_contract(directory / "1")


def test_onnxruntime_backend_runs_the_model(tmp_path: Path) -> None:
    write_tiny_model(tmp_path)
    backend = OnnxRuntimeBackend(tmp_path, threads=1)
    batch = np.random.default_rng(0).random((3, 1, SIZE, SIZE), dtype=np.float32)
    logits = backend.infer(TINY, batch)
    assert logits.shape == (3, 2, SIZE, SIZE)
    assert np.array_equal(logits.argmax(1), (batch[:, 0] > 0.5).astype(np.int64))
    metadata = backend.metadata(TINY)
    assert metadata.inputs[0].shape == (-1, 1, SIZE, SIZE)
    assert backend.ready(TINY)
    assert not backend.ready(ABSENT)


def test_onnxruntime_backend_classifies_failures_as_permanent(tmp_path: Path) -> None:
    write_tiny_model(tmp_path)
    backend = OnnxRuntimeBackend(tmp_path)
    with pytest.raises(PermanentBackendError, match="takes float32"):
        backend.infer(TINY, np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(PermanentBackendError, match="absent"):
        backend.infer(ABSENT, np.zeros((1, 1, SIZE, SIZE), np.float32))
    (tmp_path / "tiny" / "1" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(PermanentBackendError, match="does not load"):
        OnnxRuntimeBackend(tmp_path).infer(TINY, np.zeros((1, 1, SIZE, SIZE), np.float32))


def test_a_second_version_is_served_beside_the_first(tmp_path: Path) -> None:
    """Versions are folders of one model: each has its own contract and file, Triton's one
    config lists them all, and a backend runs the version it is asked for."""
    directory = write_tiny_model(tmp_path)
    second = directory / "2"
    second.mkdir()
    onnx_file = (directory / "1" / "model.onnx").read_bytes()
    (second / "model.onnx").write_bytes(onnx_file)
    (second / "contract.yaml").write_text(yaml.safe_dump({**CONTRACT, "version": 2}))
    (second / "card.md").write_text("# tiny 2\n")
    assert "config.pbtxt does not match the contracts (re-render it)" in check_model(directory)
    versions = [ModelContract.model_validate({**CONTRACT, "version": v}) for v in (1, 2)]
    (directory / "config.pbtxt").write_text(render_config(versions))
    assert check_model(directory) == []
    assert "versions: [ 1, 2 ]" in (directory / "config.pbtxt").read_text()
    backend = OnnxRuntimeBackend(tmp_path, threads=1)
    assert backend.metadata(ModelRef("tiny", 2)).version == 2
    assert not backend.ready(ModelRef("tiny", 3))
    (second / "contract.yaml").write_text(yaml.safe_dump({**CONTRACT, "version": 3}))
    assert "version 2: contract version 3 differs from its folder" in check_model(directory)
