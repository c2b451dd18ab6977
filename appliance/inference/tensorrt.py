"""TensorRT engines for production Triton: FP16 plans with an optimisation profile for batch.

TensorRT is not obtainable from the package registries these machines reach, so this module is
exercised only where `import tensorrt` works (the GPU hosts). Everything around the build, the
repository layout and Triton's `tensorrt_plan` configuration, is ordinary code tested anywhere.
"""

import shutil
from pathlib import Path
from typing import Any

from appliance.inference.backend import MODEL_FILE
from appliance.inference.contract import CONTRACT_FILE, ModelContract
from appliance.inference.repository import (
    CONFIG_FILE,
    model_directories,
    render_config,
    versions_of,
)

PLAN_FILE = "model.plan"
TENSORRT_PLATFORM = "tensorrt_plan"


class TensorRTUnavailable(RuntimeError):
    """TensorRT's Python API cannot be imported on this machine."""


class EngineBuildFailed(RuntimeError):
    pass


def tensorrt_config(versions: list[ModelContract], max_batch_size: int) -> str:
    return render_config(versions, TENSORRT_PLATFORM, max_batch_size=max_batch_size, gpu=True)


def _tensorrt() -> Any:
    try:
        import tensorrt  # type: ignore[import-not-found]
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT is not installed here; build engines on the GPU host"
        ) from exc
    return tensorrt


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    contract: ModelContract,
    max_batch_size: int,
    fp16: bool = True,
    workspace_bytes: int = 4 << 30,
) -> None:
    """Parse the ONNX file and serialise an engine for batches of 1 to `max_batch_size`."""
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildFailed(f"{onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16 and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    dims = contract.input.shape[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(
        contract.input.name,
        (1, *dims),
        (max(1, max_batch_size // 2), *dims),
        (max_batch_size, *dims),
    )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildFailed(f"{onnx_path}: TensorRT could not build an engine")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))


def build_tensorrt_repository(
    source: Path, target: Path, max_batch_size: int = 8, fp16: bool = True
) -> list[str]:
    """A Triton repository of TensorRT plans, every version with its contract and card, from
    `source`; returns the models' names."""
    _tensorrt()  # fail before writing anything
    built = []
    for directory in model_directories(source):
        destination = target / directory.name
        versions = versions_of(directory)
        for contract in versions:
            version = str(contract.version)
            build_engine(
                directory / version / MODEL_FILE,
                destination / version / PLAN_FILE,
                contract,
                max_batch_size,
                fp16,
            )
            for name in (CONTRACT_FILE, contract.card):
                shutil.copy2(directory / version / name, destination / version / name)
        (destination / CONFIG_FILE).write_text(
            tensorrt_config(versions, max_batch_size), encoding="utf-8"
        )
        built.append(directory.name)
    return built
