"""Export a PyTorch network as the repository's ONNX: opset 17, a dynamic batch dimension,
static spatial shapes, the contract's tensor names; operators TensorRT's parser takes. Used
by reference-model training and by importers, which alone have PyTorch installed."""

import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from appliance.inference.onnx_graph import (
    bound_transposed_columns,
    foreground_probability,
    unfold_channel_softmax,
)

OPSET = 17


def export_onnx(
    model: nn.Module,
    path: Path,
    input_shape: Sequence[int],
    input_name: str,
    output_name: str,
    *,
    foreground: int | None = None,
) -> None:
    """Write `model` to `path`; `input_shape` is one item's, without the batch. With
    `foreground`, the model's two-channel softmax output keeps only that channel's
    probability (`onnx_graph.foreground_probability`). Transposed convolutions whose column
    buffers would be large are split (`onnx_graph.bound_transposed_columns`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    example = torch.zeros(1, *input_shape)
    with torch.no_grad(), warnings.catch_warnings():
        # Benign, and alarming on an operator's console: the TorchScript exporter's own
        # deprecation, and instance normalisation exported with its input statistics, which
        # is what it always uses.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", message=".*instance_norm.*", category=UserWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    exported = onnx.load(str(path))
    if foreground is not None:
        exported = foreground_probability(exported, output_name, foreground)
    onnx.save(bound_transposed_columns(unfold_channel_softmax(exported)), str(path))


def export_torchscript(
    source: Path,
    path: Path,
    input_shape: Sequence[int],
    input_name: str,
    output_name: str,
    *,
    foreground: int | None = None,
) -> None:
    """A TorchScript archive (`torch.jit.save`) as the repository's ONNX. Loading one runs
    its TorchScript code, not arbitrary Python: still, import only files you trust."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
        module = torch.jit.load(str(source), map_location="cpu")
    export_onnx(module, path, input_shape, input_name, output_name, foreground=foreground)
