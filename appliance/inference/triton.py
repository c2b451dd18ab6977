"""The Triton Inference Server backend (KServe v2 protocol through tritonclient).

HTTP or gRPC, binary tensors, a timeout on every call. Failures are classified where they are
born: a server that cannot be reached, is not ready or answers "unavailable" is retryable; an
unknown model or a rejected input is permanent.
"""

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from appliance.domain.pipelines import ModelRef
from appliance.inference.backend import (
    BackendError,
    ModelMetadata,
    PermanentBackendError,
    RetryableBackendError,
    TensorMetadata,
)

_DTYPES = {"FP32": "float32", "FP16": "float16", "UINT8": "uint8", "INT64": "int64"}
_RETRYABLE_STATUS = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED",
                     "StatusCode.RESOURCE_EXHAUSTED", "503", "502", "504", "429")  # fmt: skip


class TritonBackend:
    def __init__(
        self, url: str, protocol: Literal["http", "grpc"] = "http", timeout_s: float = 60.0
    ) -> None:
        self._protocol = protocol
        self._timeout = timeout_s
        if protocol == "http":
            import tritonclient.http as client_module

            self._client: Any = client_module.InferenceServerClient(
                url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        else:
            import tritonclient.grpc as client_module

            self._client = client_module.InferenceServerClient(url)
        self._module: Any = client_module
        self._metadata: dict[ModelRef, ModelMetadata] = {}
        self._max_batch: dict[str, int] = {}

    def _classify(self, model: ModelRef, exc: Exception) -> BackendError:
        status = str(getattr(exc, "status", lambda: "")() or "")
        message = f"Triton, model {model}: {exc}"
        if isinstance(exc, ConnectionError | TimeoutError | OSError) or any(
            code in status for code in _RETRYABLE_STATUS
        ):
            return RetryableBackendError(message)
        return PermanentBackendError(message)

    def ready(self, model: ModelRef) -> bool:
        try:
            return bool(
                self._client.is_server_ready()
                and self._client.is_model_ready(model.name, str(model.version))
            )
        except Exception as exc:  # noqa: BLE001 - tritonclient raises many kinds; any means "no"
            del exc
            return False

    def metadata(self, model: ModelRef) -> ModelMetadata:
        if model not in self._metadata:
            try:
                raw = self._client.get_model_metadata(model.name, str(model.version))
            except (self._module.InferenceServerException, ConnectionError, OSError) as exc:
                raise self._classify(model, exc) from exc
            if not isinstance(raw, dict):  # gRPC returns a protobuf message
                from google.protobuf.json_format import MessageToDict

                raw = MessageToDict(raw, preserving_proto_field_name=True)

            def tensors(items: list[dict[str, Any]]) -> tuple[TensorMetadata, ...]:
                return tuple(
                    TensorMetadata(
                        item["name"],
                        _DTYPES.get(item["datatype"], item["datatype"]),
                        tuple(int(d) for d in item["shape"]),
                    )
                    for item in items
                )

            self._metadata[model] = ModelMetadata(
                raw["name"], model.version, tensors(raw["inputs"]), tensors(raw["outputs"])
            )
        return self._metadata[model]

    def max_batch_size(self, model: ModelRef) -> int:
        """The server's batch limit for `model` (one configuration serves every version);
        larger batches are sent in parts."""
        if model.name not in self._max_batch:
            try:
                config = self._client.get_model_config(model.name)
            except (self._module.InferenceServerException, ConnectionError, OSError) as exc:
                raise self._classify(model, exc) from exc
            if not isinstance(config, dict):  # gRPC: a response message holding the config
                config = {"max_batch_size": config.config.max_batch_size}
            self._max_batch[model.name] = max(1, int(config.get("max_batch_size", 1)))
        return self._max_batch[model.name]

    def infer(self, model: ModelRef, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        limit = self.max_batch_size(model)
        parts = [self._infer(model, batch[i : i + limit]) for i in range(0, len(batch), limit)]
        return np.concatenate(parts)

    def _infer(self, model: ModelRef, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        metadata = self.metadata(model)
        (input_meta,), (output_meta,) = metadata.inputs, metadata.outputs
        tensor = self._module.InferInput(input_meta.name, list(batch.shape), "FP32")
        requested = self._module.InferRequestedOutput(output_meta.name)
        if self._protocol == "http":
            tensor.set_data_from_numpy(batch, binary_data=True)
            requested = self._module.InferRequestedOutput(output_meta.name, binary_data=True)
        else:
            tensor.set_data_from_numpy(batch)
        try:
            if self._protocol == "http":
                result = self._client.infer(
                    model.name, [tensor], model_version=str(model.version), outputs=[requested],
                    timeout=int(self._timeout * 1_000_000),
                )  # fmt: skip
            else:
                result = self._client.infer(
                    model.name, [tensor], model_version=str(model.version), outputs=[requested],
                    client_timeout=self._timeout,
                )  # fmt: skip
        except (self._module.InferenceServerException, ConnectionError, OSError) as exc:
            raise self._classify(model, exc) from exc
        return np.asarray(result.as_numpy(output_meta.name), dtype=np.float32)
