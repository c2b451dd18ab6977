"""The real Triton server (the tritonserver binary from nvidia-pytriton, CPU, Python backend)
serving the committed models: identical outputs to ONNX Runtime, one backend contract."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.domain.pipelines import ModelRef
from appliance.inference.backend import (
    InferenceBackend,
    OnnxRuntimeBackend,
    PermanentBackendError,
    RetryableBackendError,
)
from appliance.inference.triton import TritonBackend
from appliance.inference.triton_cpu import CpuTritonServer, TritonUnavailable
from tests.support.services import free_port, missing_service

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
US_FRAME = ModelRef("us_frame", 1)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    server = CpuTritonServer(REPOSITORY, tmp_path_factory.mktemp("triton"))
    try:
        server.start()
    except TritonUnavailable as exc:
        missing_service(str(exc))
    yield server.http_port, server.grpc_port
    server.stop()


@pytest.fixture(params=["onnxruntime", "triton-http", "triton-grpc"])
def backend(request: pytest.FixtureRequest) -> InferenceBackend:
    if request.param == "onnxruntime":
        return OnnxRuntimeBackend(REPOSITORY, threads=2)
    http, grpc = request.getfixturevalue("triton")
    if request.param == "triton-http":
        return TritonBackend(f"127.0.0.1:{http}", "http", timeout_s=60)
    return TritonBackend(f"127.0.0.1:{grpc}", "grpc", timeout_s=60)


def test_backend_contract(backend: InferenceBackend) -> None:
    batch = np.random.default_rng(0).random((11, 1, 256, 256), dtype=np.float32)  # > max batch
    reference = OnnxRuntimeBackend(REPOSITORY, threads=2).infer(US_FRAME, batch)

    output = backend.infer(US_FRAME, batch)
    metadata = backend.metadata(US_FRAME)

    assert backend.ready(US_FRAME)
    assert not backend.ready(ModelRef("no_such_model", 1))
    assert output.shape == (11, 2, 256, 256)
    np.testing.assert_allclose(output, reference, rtol=1e-5, atol=1e-5)
    assert metadata.inputs[0].name == "image"
    assert metadata.inputs[0].shape[1:] == (1, 256, 256)
    assert metadata.outputs[0].name == "logits"
    with pytest.raises(PermanentBackendError):
        backend.infer(ModelRef("no_such_model", 1), batch)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unreachable_server_is_retryable(protocol: str) -> None:
    backend = TritonBackend(f"127.0.0.1:{free_port()}", protocol, timeout_s=2)  # type: ignore[arg-type]
    with pytest.raises(RetryableBackendError):
        backend.infer(US_FRAME, np.zeros((1, 1, 256, 256), np.float32))
    assert not backend.ready(US_FRAME)
