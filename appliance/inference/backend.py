"""The inference backend protocol, and its embedded implementation on ONNX Runtime.

Two implementations share one contract (and one set of contract tests): ONNX Runtime in the
worker process, the embedded default on a machine without a GPU, and Triton Inference Server in
production. Failures are classified where they arise: retryable (a server that is down or busy)
or permanent (a model that does not exist, an input of the wrong shape).
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime
from numpy.typing import NDArray
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from appliance.domain.pipelines import ModelRef
from appliance.inference.contract import ContractError, ModelContract, load_contract

MODEL_FILE = "model.onnx"
# A whole-volume model's run gives its arena's free memory back when it ends: it runs once a
# series, and a worker need not hold its peak through what follows (the next model, the
# encoding) or while idle. Patch models keep theirs across their many batches (giving it
# back after each cost the organ model 10-15 % of its time).
_SHRINK = onnxruntime.RunOptions()
_SHRINK.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


class BackendError(Exception):
    """The backend could not answer; which subclass says whether to try again."""


class RetryableBackendError(BackendError):
    """Try again later: the backend is unreachable, starting or overloaded."""


class PermanentBackendError(BackendError):
    """Retrying cannot help: unknown model, bad input, broken model file."""


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    name: str
    dtype: str
    shape: tuple[int, ...]  # -1 for dynamic dimensions


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    version: int
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


class InferenceBackend(Protocol):
    """Runs model versions by reference; every method names the version it means."""

    def ready(self, model: ModelRef) -> bool: ...
    def metadata(self, model: ModelRef) -> ModelMetadata: ...
    def infer(self, model: ModelRef, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """The model's output for `batch`: a fresh array, the caller's to work in place."""
        ...


class WrappedBackend:
    """A backend in front of another, to which every call passes; wrappers add to `infer`."""

    def __init__(self, backend: InferenceBackend) -> None:
        self._backend = backend

    def ready(self, model: ModelRef) -> bool:
        return self._backend.ready(model)

    def metadata(self, model: ModelRef) -> ModelMetadata:
        return self._backend.metadata(model)

    def infer(self, model: ModelRef, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        return self._backend.infer(model, batch)


class RecordingBackend(WrappedBackend):
    """Keeps up to `keep` of the inputs each model version is fed, spread evenly over the run
    (every input while there is room, then every second, fourth, ...): probes of what the
    model reads in service, to hold an engine's answers to the model's own."""

    def __init__(self, backend: InferenceBackend, keep: int) -> None:
        super().__init__(backend)
        self._keep = keep
        self.inputs: dict[ModelRef, list[NDArray[np.float32]]] = {}
        self._seen: dict[ModelRef, int] = {}
        self._stride: dict[ModelRef, int] = {}

    def infer(self, model: ModelRef, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        kept = self.inputs.setdefault(model, [])
        for one in batch:
            seen = self._seen.get(model, 0)
            self._seen[model] = seen + 1
            stride = self._stride.get(model, 1)
            if seen % stride:
                continue
            kept.append(one.copy())
            if len(kept) > self._keep:  # keep the multiples of twice the stride
                kept[:] = kept[::2]
                self._stride[model] = stride * 2
        return super().infer(model, batch)


class TimedBackend(WrappedBackend):
    """A backend that adds up the time its `infer` calls take, per model: the model compute
    share of a job, as opposed to everything around it."""

    def __init__(self, backend: InferenceBackend) -> None:
        super().__init__(backend)
        self.by_model: dict[str, float] = {}

    def infer(self, model: ModelRef, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        started = time.perf_counter()
        try:
            return super().infer(model, batch)
        finally:
            elapsed = time.perf_counter() - started
            key = str(model)
            self.by_model[key] = self.by_model.get(key, 0.0) + elapsed


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
              "tensor(int64)": "int64"}  # fmt: skip


# ONNX Runtime's errors derive from Exception directly, so they are named one by one.
_ORT_ERRORS = (
    ort_state.Fail, ort_state.NoSuchFile, ort_state.InvalidProtobuf, ort_state.InvalidGraph,
    ort_state.InvalidArgument, ort_state.NotImplemented, ort_state.RuntimeException, OSError,
)  # fmt: skip


class OnnxRuntimeBackend:
    """Runs the repository's ONNX files in this process (CPU execution provider)."""

    def __init__(self, repository: Path, threads: int = 0) -> None:
        self._repository = repository
        self._threads = threads
        self._sessions: dict[ModelRef, tuple[ModelContract, onnxruntime.InferenceSession]] = {}

    def _session(self, model: ModelRef) -> tuple[ModelContract, onnxruntime.InferenceSession]:
        if model not in self._sessions:
            directory = self._repository / model.name / str(model.version)
            try:
                contract = load_contract(directory)
            except ContractError as exc:
                raise PermanentBackendError(f"model {model}: {exc}") from exc
            path = directory / MODEL_FILE
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self._threads
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            # A memory pattern is planned and kept for every input shape a session sees: from
            # the second run on, deepbet's 256^3 network held 1,353 MiB with them and 903
            # without, at the same speed (bench/README.md, bench.deepbet).
            options.enable_mem_pattern = False
            try:
                session = onnxruntime.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
            except _ORT_ERRORS as exc:
                raise PermanentBackendError(f"model {model} does not load: {exc}") from exc
            self._sessions[model] = (contract, session)
        return self._sessions[model]

    def ready(self, model: ModelRef) -> bool:
        try:
            self._session(model)
        except PermanentBackendError:
            return False
        return True

    def metadata(self, model: ModelRef) -> ModelMetadata:
        contract, session = self._session(model)

        def describe(nodes: list[onnxruntime.NodeArg]) -> tuple[TensorMetadata, ...]:
            return tuple(
                TensorMetadata(
                    node.name,
                    _ORT_TYPES.get(node.type, node.type),
                    tuple(d if isinstance(d, int) else -1 for d in node.shape),
                )
                for node in nodes
            )

        return ModelMetadata(
            contract.name,
            contract.version,
            describe(session.get_inputs()),
            describe(session.get_outputs()),
        )

    def infer(self, model: ModelRef, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        contract, session = self._session(model)
        expected = contract.input.shape[1:]
        if list(batch.shape[1:]) != expected or batch.dtype != np.float32:
            raise PermanentBackendError(
                f"model {model} takes float32 [batch, {', '.join(map(str, expected))}], "
                f"got {batch.dtype} {list(batch.shape)}"
            )
        try:
            (output,) = session.run(
                [contract.output.name],
                {contract.input.name: batch},
                _SHRINK if contract.fixed_grid is not None else None,
            )
        except _ORT_ERRORS as exc:
            raise PermanentBackendError(f"model {model} failed: {exc}") from exc
        return np.asarray(output, dtype=np.float32)
