"""TensorRT engines for production Triton: FP16 plans with an optimisation profile for batch,
each held to its FP32 answer before it is kept.

TensorRT FP16 is known to empty or corrupt the outputs of some nnU-Net networks (activations
beyond FP16's range), so an FP16 engine is kept only where its labels on the model's probe
inputs agree with ONNX Runtime's FP32 labels, class by class (Dice >= `PARITY_DICE`); a model
that fails, or that has no probe to prove it on, is built in FP32 instead, and the verdict is
written beside the plan (`parity.json`).

TensorRT is not obtainable from the package registries these machines reach, so this module is
exercised only where `import tensorrt` works (the GPU hosts; the FP16 engine is run there
through Polygraphy's runner, the `gpu` extra). Everything around the build,
the repository layout, Triton's `tensorrt_plan` configuration and the parity arithmetic, is
ordinary code tested anywhere.
"""

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from appliance.inference.backend import MODEL_FILE
from appliance.inference.contract import CONTRACT_FILE, ModelContract
from appliance.inference.repository import (
    CONFIG_FILE,
    model_directories,
    render_config,
    versions_of,
)

PLAN_FILE = "model.plan"
PARITY_FILE = "parity.json"
TENSORRT_PLATFORM = "tensorrt_plan"
PARITY_DICE = 0.99  # per class, FP16 labels against FP32 labels on the probe inputs


class TensorRTUnavailable(RuntimeError):
    """TensorRT's Python API cannot be imported on this machine."""


class EngineBuildFailed(RuntimeError):
    pass


class ProbeUnusable(ValueError):
    """A probe file that is not a batch of the model's input; says why."""


@dataclass(frozen=True)
class Parity:
    """What was built for one model version, and why."""

    model: str
    version: int
    precision: str  # "fp16" or "fp32"
    dice: dict[int, float]  # per label value, FP16 against FP32; empty where not measured
    reason: str


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
    contract: ModelContract,
    max_batch_size: int,
    fp16: bool = True,
    workspace_bytes: int = 4 << 30,
) -> bytes:
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
    return bytes(serialized)


def labels_of(output: NDArray[np.float32], contract: ModelContract) -> NDArray[np.int64]:
    """The label values a model's output (batch, channels, ...) stands for: the most probable
    channel's, or for one channel its probability above the recipe's threshold. A voxel with
    a value that is not finite is labelled -1, which agrees with nothing."""
    values = np.array([0] + [label.value for label in contract.labels], dtype=np.int64)
    if output.shape[1] == 1:
        threshold = contract.fixed_grid.threshold if contract.fixed_grid else 0.5
        labels = np.where(output[:, 0] > threshold, values[-1], 0)
    else:
        labels = values[np.nan_to_num(output, nan=-np.inf).argmax(axis=1)]
    return np.where(np.isfinite(output).all(axis=1), labels, -1)


def per_class_dice(
    reference: NDArray[np.int64], candidate: NDArray[np.int64], values: list[int]
) -> dict[int, float]:
    """Dice of each label value between two label maps; a value neither holds counts as 1
    (nothing to disagree on)."""
    dice = {}
    for value in values:
        truth, found = reference == value, candidate == value
        total = int(truth.sum()) + int(found.sum())
        dice[value] = 2 * int((truth & found).sum()) / total if total else 1.0
    return dice


def load_probe(path: Path, contract: ModelContract) -> NDArray[np.float32]:
    """A probe file (`.npy`): one input, or a batch of them, in the model's input shape, as
    the pipeline feeds it (normalised, on the model's grid)."""
    try:
        probe = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ProbeUnusable(f"{path}: not a numpy array file ({exc})") from exc
    dims = tuple(contract.input.shape[1:])
    if probe.shape == dims:
        probe = probe[None]
    fits = probe.ndim == len(dims) + 1 and all(
        want in (-1, got) for want, got in zip(dims, probe.shape[1:], strict=True)
    )
    if not fits or not np.isfinite(probe).all():
        raise ProbeUnusable(f"{path}: shape {probe.shape} is not finite inputs of shape {dims}")
    return np.ascontiguousarray(probe, dtype=np.float32)


def verdict(contract: ModelContract, dice: dict[int, float]) -> Parity:
    """FP16 where every class agrees with FP32 to `PARITY_DICE`; FP32 otherwise."""
    failing = {value: d for value, d in dice.items() if d < PARITY_DICE}
    if failing:
        worst = min(failing, key=lambda value: failing[value])
        reason = f"FP16 labels disagree with FP32: label {worst} Dice {failing[worst]:.4f}"
        return Parity(contract.name, contract.version, "fp32", dice, reason)
    return Parity(contract.name, contract.version, "fp16", dice, f"every class >= {PARITY_DICE}")


def fp16_agreement(
    plan: bytes, onnx_path: Path, contract: ModelContract, probe: NDArray[np.float32]
) -> dict[int, float]:
    """Per-class Dice of the FP16 engine's labels against ONNX Runtime's FP32 labels, pooled
    over the probe's inputs (one at a time: the engine's profile starts at batch 1)."""
    import onnxruntime
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner  # type: ignore[import-not-found]

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    reference, candidate = [], []
    with TrtRunner(EngineFromBytes(plan)) as runner:
        for one in probe:
            feed = {contract.input.name: one[None]}
            (fp32,) = session.run([contract.output.name], feed)
            fp16 = runner.infer(feed)[contract.output.name]
            reference.append(labels_of(np.asarray(fp32, dtype=np.float32), contract))
            candidate.append(labels_of(np.asarray(fp16, dtype=np.float32), contract))
    values = [label.value for label in contract.labels]
    return per_class_dice(np.stack(reference), np.stack(candidate), values)


def build_tensorrt_repository(
    source: Path,
    target: Path,
    max_batch_size: int = 8,
    fp16: bool = True,
    probes: Path | None = None,
) -> list[Parity]:
    """A Triton repository of TensorRT plans, every version with its contract and card, from
    `source`. With `fp16`, each version's FP16 engine is kept only if it agrees with FP32 on
    its probe (`probes/<model>.npy`, or `<model>.<version>.npy`), else it is built in FP32."""
    _tensorrt()  # fail before writing anything
    built = []
    for directory in model_directories(source):
        destination = target / directory.name
        versions = versions_of(directory)
        for contract in versions:
            version = str(contract.version)
            onnx_path = directory / version / MODEL_FILE
            probe = _probe_file(probes, contract) if fp16 else None
            if probe is None:
                why = "no probe to prove FP16 on" if fp16 else "FP32 asked for"
                parity = Parity(contract.name, contract.version, "fp32", {}, why)
                plan = build_engine(onnx_path, contract, max_batch_size, fp16=False)
            else:
                inputs = load_probe(probe, contract)
                plan = build_engine(onnx_path, contract, max_batch_size, fp16=True)
                parity = verdict(contract, fp16_agreement(plan, onnx_path, contract, inputs))
                if parity.precision == "fp32":
                    plan = build_engine(onnx_path, contract, max_batch_size, fp16=False)
            (destination / version).mkdir(parents=True, exist_ok=True)
            (destination / version / PLAN_FILE).write_bytes(plan)
            (destination / version / PARITY_FILE).write_text(
                json.dumps(asdict(parity), indent=2), encoding="utf-8"
            )
            for name in (CONTRACT_FILE, contract.card):
                shutil.copy2(directory / version / name, destination / version / name)
            built.append(parity)
        (destination / CONFIG_FILE).write_text(
            tensorrt_config(versions, max_batch_size), encoding="utf-8"
        )
    return built


def _probe_file(probes: Path | None, contract: ModelContract) -> Path | None:
    if probes is None:
        return None
    for name in (f"{contract.name}.{contract.version}.npy", f"{contract.name}.npy"):
        if (probes / name).exists():
            return probes / name
    return None
