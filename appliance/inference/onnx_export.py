"""Export a PyTorch network as the repository's ONNX: opset 17, a dynamic batch dimension,
static spatial shapes, the contract's tensor names; operators TensorRT's parser takes. Used
by reference-model training and by importers, which alone have PyTorch installed."""

import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from onnx import helper
from torch import nn

OPSET = 17


def export_onnx(
    model: nn.Module, path: Path, input_shape: Sequence[int], input_name: str, output_name: str
) -> None:
    """Write `model` to `path`; `input_shape` is one item's, without the batch."""
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
    onnx.save(unfold_channel_softmax(onnx.load(str(path))), str(path))


def export_torchscript(
    source: Path, path: Path, input_shape: Sequence[int], input_name: str, output_name: str
) -> None:
    """A TorchScript archive (`torch.jit.save`) as the repository's ONNX. Loading one runs
    its TorchScript code, not arbitrary Python: still, import only files you trust."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
        module = torch.jit.load(str(source), map_location="cpu")
    export_onnx(module, path, input_shape, input_name, output_name)


def unfold_channel_softmax(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each Softmax over an axis other than the last, written out as exp(x - max) / sum: the
    same function, but ONNX Runtime's Softmax transposes such an axis to the end and back
    (1.4 of deepbet's 2.3 s at 256^3), while these operators broadcast in place. TensorRT's
    parser takes all of them."""
    nodes = []
    for node in model.graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        if node.op_type != "Softmax" or axis == -1:
            nodes.append(node)
            continue
        x, (y,) = node.input[0], node.output
        axes = f"{node.name}/axes"
        model.graph.initializer.append(
            helper.make_tensor(axes, onnx.TensorProto.INT64, [1], [axis])
        )
        names = [f"{node.name}/{part}" for part in ("max", "shifted", "exp", "sum")]
        nodes += [
            helper.make_node("ReduceMax", [x], [names[0]], axes=[axis], keepdims=1),
            helper.make_node("Sub", [x, names[0]], [names[1]]),
            helper.make_node("Exp", [names[1]], [names[2]]),
            helper.make_node("ReduceSum", [names[2], axes], [names[3]], keepdims=1),
            helper.make_node("Div", [names[2], names[3]], [y]),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model
