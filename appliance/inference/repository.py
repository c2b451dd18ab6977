"""The model repository: Triton's layout plus the appliance's contracts, and its checks.

`model_repository/<name>/<version>/` holds a version's `model.onnx`, `contract.yaml` and
`card.md`; `model_repository/<name>/config.pbtxt` is rendered from the versions' contracts, so
the two cannot drift. `check_model` proves a model is servable: every version's ONNX checker
passes, every operator is one that TensorRT's ONNX parser supports, the graph's tensors match
its contract, and the versions agree on the tensors Triton's one configuration describes.
"""

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
import yaml

from appliance.inference.backend import MODEL_FILE
from appliance.inference.contract import (
    CONTRACT_FILE,
    ContractError,
    ModelContract,
    load_contract,
)

CONFIG_FILE = "config.pbtxt"
DEFAULT_MAX_BATCH = 16

# Operators of the onnx-tensorrt operator support table (TensorRT 10) that our networks may use.
TENSORRT_OPERATORS = frozenset(
    [
        "Abs",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Ceil",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "Gemm",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "GroupNormalization",
        "HardSigmoid",
        "Identity",
        "InstanceNormalization",
        "LayerNormalization",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "Min",
        "Mod",
        "Mul",
        "Neg",
        "Not",
        "Or",
        "Pad",
        "Pow",
        "PRelu",
        "Range",
        "Reciprocal",
        "ReduceL2",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "Relu",
        "Reshape",
        "Resize",
        "Round",
        "Selu",
        "Shape",
        "Sigmoid",
        "Sign",
        "Sin",
        "Slice",
        "Softmax",
        "Softplus",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tanh",
        "Tile",
        "TopK",
        "Transpose",
        "Unsqueeze",
        "Where",
        "Xor",
    ]
)

_TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8",
                 "int64": "TYPE_INT64"}  # fmt: skip
_ONNX_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
               onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT64: "int64"}  # fmt: skip
_PLATFORM = re.compile(r'^(?:platform|backend):\s*"([^"]+)"', re.MULTILINE)


def render_config(
    versions: Sequence[ModelContract],
    platform: str = "onnxruntime_onnx",
    max_batch_size: int = DEFAULT_MAX_BATCH,
    gpu: bool = False,
) -> str:
    """Triton's config.pbtxt for a model and its `versions` (which share their tensors); the
    batch dimension is Triton's, not in dims."""
    contract = versions[-1]

    def tensor(kind: str, name: str, dtype: str, dims: list[int]) -> str:
        return (
            f'{kind} [\n  {{\n    name: "{name}"\n    data_type: {_TRITON_TYPES[dtype]}\n'
            f"    dims: [ {', '.join(map(str, dims))} ]\n  }}\n]\n"
        )

    numbers = ", ".join(str(version.version) for version in versions)
    return (
        f'name: "{contract.name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch_size}\n'
        + tensor("input", contract.input.name, contract.input.dtype, contract.input.shape[1:])
        + tensor("output", contract.output.name, contract.output.dtype, contract.output.shape[1:])
        + f"version_policy: {{ specific {{ versions: [ {numbers} ] }} }}\n"
        + "dynamic_batching { }\n"
        + f"instance_group [ {{ count: 1 kind: {'KIND_GPU' if gpu else 'KIND_CPU'} }} ]\n"
    )


def model_directories(repository: Path) -> list[Path]:
    """`repository/<name>/` of every model that has at least one version."""
    return sorted({path.parent for path in version_directories(repository)})


def version_folders(model_directory: Path) -> list[Path]:
    """A model's version folders (numbered, holding a contract), oldest first."""
    found = [
        path.parent
        for path in model_directory.glob(f"*/{CONTRACT_FILE}")
        if path.parent.name.isdigit() and not path.parent.name.startswith("0")
    ]
    return sorted(found, key=lambda directory: int(directory.name))


def version_directories(repository: Path) -> list[Path]:
    """`repository/<name>/<version>/` of every model version, by name, then version."""
    if not repository.is_dir():
        return []
    models = sorted(path for path in repository.iterdir() if path.is_dir())
    return [version for model in models for version in version_folders(model)]


def versions_of(model_directory: Path) -> list[ModelContract]:
    """The contracts of a model's versions, oldest first. Raises ContractError."""
    return [load_contract(directory) for directory in version_folders(model_directory)]


def _shape(value: onnx.ValueInfoProto) -> list[int]:
    return [
        d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
    ]


def _check_version(directory: Path, contract: ModelContract) -> list[str]:
    """What is wrong with one version's files and contract."""
    problems = []
    if contract.name != directory.parent.name:
        problems.append(f"contract name {contract.name!r} differs from the directory")
    if str(contract.version) != directory.name:
        problems.append(f"contract version {contract.version} differs from its folder")
    path = directory / MODEL_FILE
    try:
        onnx.checker.check_model(str(path), full_check=True)
        graph = onnx.load(str(path)).graph
    except (OSError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return [*problems, f"{path}: {exc}"]
    unsupported = sorted({node.op_type for node in graph.node} - TENSORRT_OPERATORS)
    if unsupported:
        problems.append(f"operators TensorRT cannot parse: {', '.join(unsupported)}")
    for kind, spec, values in (
        ("input", contract.input, graph.input),
        ("output", contract.output, graph.output),
    ):
        found = {value.name: value for value in values}
        if spec.name not in found:
            problems.append(f"{kind} {spec.name!r} is not in the graph")
            continue
        value = found[spec.name]
        dtype = _ONNX_TYPES.get(value.type.tensor_type.elem_type, "unsupported")
        if dtype != spec.dtype:
            problems.append(f"{kind} {spec.name!r} is {dtype}, the contract says {spec.dtype}")
        if _shape(value) != spec.shape:
            problems.append(
                f"{kind} {spec.name!r} has shape {_shape(value)}, the contract says {spec.shape}"
            )
    if not (directory / contract.card).exists():
        problems.append(f"model card {contract.card} is missing")
    return [f"version {directory.name}: {problem}" for problem in problems]


def check_model(directory: Path) -> list[str]:
    """Everything wrong with one model directory and its versions; empty when it is
    servable."""
    folders = version_folders(directory)
    try:
        versions = [load_contract(folder) for folder in folders]
    except ContractError as exc:
        return [str(exc)]
    if not versions:
        return [f"{directory}: no version folder with a {CONTRACT_FILE}"]
    problems = []
    for folder, contract in zip(folders, versions, strict=True):
        problems += _check_version(folder, contract)
    if any((v.input, v.output) != (versions[0].input, versions[0].output) for v in versions):
        problems.append("versions differ in their tensors; Triton serves them from one config")
    config = directory / CONFIG_FILE
    if not config.exists():
        problems.append("config.pbtxt is missing")
    else:
        text = config.read_text(encoding="utf-8")
        platform = _PLATFORM.search(text)
        if platform is None or text != render_config(
            versions, platform.group(1), _max_batch(text), "KIND_GPU" in text
        ):
            problems.append("config.pbtxt does not match the contracts (re-render it)")
    return problems


def _max_batch(text: str) -> int:
    found = re.search(r"^max_batch_size:\s*(\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else DEFAULT_MAX_BATCH


def write_config(model_directory: Path) -> None:
    """Render `config.pbtxt` over the model's versions, replacing the old one in one step."""
    text = render_config(versions_of(model_directory))
    staged = model_directory / f".{CONFIG_FILE}.new"
    staged.write_text(text, encoding="utf-8")
    os.replace(staged, model_directory / CONFIG_FILE)


def add_version(
    repository: Path, name: str, version: int, stage: Callable[[Path], ModelContract]
) -> ModelContract:
    """Add `name` version `version` to the repository in one step, or not at all.

    `stage(folder)` fills a staging folder with the model file and card and returns the
    contract; the contract is written beside them and the version is checked as `check_model`
    would (ONNX checker, TensorRT operators, tensors against the contract and against the
    model's other versions). Only a servable version is renamed into place; whatever fails,
    the repository is as it was."""
    repository.mkdir(parents=True, exist_ok=True)
    model_directory = repository / name
    target = model_directory / str(version)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=repository))
    try:
        folder = staging / name / str(version)
        folder.mkdir(parents=True)
        contract = stage(folder)
        write_contract(folder, contract)
        problems = _check_version(folder, contract)
        existing = versions_of(model_directory) if model_directory.is_dir() else []
        if any((other.input, other.output) != (contract.input, contract.output)
               for other in existing):  # fmt: skip
            problems.append(
                f"its tensors differ from model {name}'s other versions; Triton serves a "
                "model's versions from one config (import it under another name)"
            )
        if problems:
            raise ContractError("; ".join(problems))
        if target.exists():
            raise ContractError(f"model {name} already has version {version}")
        created = not model_directory.exists()
        model_directory.mkdir(exist_ok=True)
        os.rename(folder, target)
        try:
            write_config(model_directory)
        except Exception:
            shutil.rmtree(model_directory if created else target)
            raise
        return contract
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_contract(version_directory: Path, contract: ModelContract) -> None:
    (version_directory / CONTRACT_FILE).write_text(
        yaml.safe_dump(contract.model_dump(mode="json", exclude_none=True), sort_keys=False),
        encoding="utf-8",
    )
