"""TensorRT: the repository layout and configs are tested here; engines where TensorRT imports."""

import importlib.util
from pathlib import Path

import pytest

from appliance.inference.contract import load_contract
from appliance.inference.tensorrt import (
    TensorRTUnavailable,
    build_tensorrt_repository,
    tensorrt_config,
)
from tests.support.models import write_tiny_model

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


@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT imports only on the GPU hosts")
def test_engine_builds_with_a_batch_profile(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "source")
    assert build_tensorrt_repository(tmp_path / "source", tmp_path / "plans", 4) == ["tiny"]
    assert (tmp_path / "plans" / "tiny" / "1" / "model.plan").stat().st_size > 0
    assert (tmp_path / "plans" / "tiny" / "1" / "contract.yaml").exists()
