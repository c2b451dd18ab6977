"""The real Triton server (the tritonserver binary from nvidia-pytriton, CPU, Python backend)
serving the committed models: identical outputs to ONNX Runtime, one backend contract."""

import importlib.util
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.inference.backend import (
    InferenceBackend,
    OnnxRuntimeBackend,
    PermanentBackendError,
    RetryableBackendError,
)
from appliance.inference.triton import TritonBackend
from appliance.inference.triton_cpu import build_cpu_repository
from tests.conftest import missing_service
from tests.integration.test_crash import free_port

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def _pytriton_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")  # not imported: it pins an older numpy
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    root = _pytriton_root()
    if root is None or not (root / "bin" / "tritonserver").exists():
        missing_service("tritonserver from the nvidia-pytriton wheel")
    assert root is not None
    work = tmp_path_factory.mktemp("triton")
    backend = work / "backends" / "python"
    backend.mkdir(parents=True)
    for source in (
        "backends/python/libtriton_python.so",
        "backends/python/triton_python_backend_utils.py",
        f"python_backend_stubs/{PYTHON_VERSION}/triton_python_backend_stub",
    ):
        shutil.copy2(root / source, backend)
    stub = backend / "triton_python_backend_stub"
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    repository = work / "repository"
    assert build_cpu_repository(REPOSITORY, repository)
    http, grpc = free_port(), free_port()
    libs = root.parent.parent / "nvidia_pytriton.libs"
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": f"{sysconfig.get_config_var('LIBDIR')}:{libs}",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    log = (work / "tritonserver.log").open("w")
    server = subprocess.Popen(
        [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={work / 'backends'}",
            "--http-address=127.0.0.1",
            f"--http-port={http}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={grpc}",
            "--allow-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--exit-on-error=true",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1):
                break
        except OSError:
            if server.poll() is not None:
                pytest.fail("tritonserver exited:\n" + (work / "tritonserver.log").read_text())
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("tritonserver not ready:\n" + (work / "tritonserver.log").read_text())
    yield http, grpc
    server.terminate()
    try:
        server.wait(timeout=45)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    log.close()


@pytest.fixture(params=["onnxruntime", "triton-http", "triton-grpc"])
def backend(request: pytest.FixtureRequest) -> InferenceBackend:
    if request.param == "onnxruntime":
        return OnnxRuntimeBackend(REPOSITORY, threads=2)
    http, grpc = request.getfixturevalue("triton")
    if request.param == "triton-http":
        return TritonBackend(f"127.0.0.1:{http}", "http", timeout_s=60)
    return TritonBackend(f"127.0.0.1:{grpc}", "grpc", timeout_s=60)


def test_backend_contract(backend: InferenceBackend) -> None:
    batch = np.random.default_rng(0).random((3, 1, 256, 256), dtype=np.float32)
    reference = OnnxRuntimeBackend(REPOSITORY, threads=2).infer("us_frame", batch)

    output = backend.infer("us_frame", batch)
    metadata = backend.metadata("us_frame")

    assert backend.ready("us_frame")
    assert not backend.ready("no_such_model")
    assert output.shape == (3, 2, 256, 256)
    np.testing.assert_allclose(output, reference, rtol=1e-5, atol=1e-5)
    assert metadata.inputs[0].name == "image"
    assert metadata.inputs[0].shape[1:] == (1, 256, 256)
    assert metadata.outputs[0].name == "logits"
    with pytest.raises(PermanentBackendError):
        backend.infer("no_such_model", batch)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unreachable_server_is_retryable(protocol: str) -> None:
    backend = TritonBackend(f"127.0.0.1:{free_port()}", protocol, timeout_s=2)  # type: ignore[arg-type]
    with pytest.raises(RetryableBackendError):
        backend.infer("us_frame", np.zeros((1, 1, 256, 256), np.float32))
    assert not backend.ready("us_frame")
