"""A tiny segmentation model built with onnx.helper, so model tests need no torch."""

from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from appliance.inference.contract import ModelContract
from appliance.inference.repository import render_config

SIZE = 32


def threshold_model(extra_op: str | None = None) -> onnx.ModelProto:
    """Two 1x1 convolutions: channel 0 = 0.5 - x, channel 1 = x - 0.5 (argmax thresholds x);
    `extra_op` (shape-preserving) is applied to the logits, to test operator checks."""
    weights = numpy_helper.from_array(np.array([[[[-1.0]]], [[[1.0]]]], np.float32), "w")
    bias = numpy_helper.from_array(np.array([0.5, -0.5], np.float32), "b")
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["conv" if extra_op else "logits"])]
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["conv"], ["logits"], axis=1))
    graph = helper.make_graph(
        nodes,
        "threshold",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2, SIZE, SIZE])],
        initializer=[weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


CONTRACT = {
    "name": "tiny", "version": 1, "modality": "US", "synthetic": True,
    "input": {"name": "image", "dtype": "float32", "shape": [-1, 1, SIZE, SIZE]},
    "output": {"name": "logits", "dtype": "float32", "shape": [-1, 2, SIZE, SIZE]},
    "patch": [SIZE, SIZE],
    "intensity": {"kind": "scale", "scale": 0.00392156862745098},
    "labels": [{
        "value": 1, "name": "cyst",
        "category": {"scheme": "SCT", "value": "49755003",
                     "meaning": "Morphologically Abnormal Structure"},
        "type": {"scheme": "SCT", "value": "441457006", "meaning": "Cyst"},
    }],
}  # fmt: skip


def write_tiny_model(repository: Path, model: onnx.ModelProto | None = None) -> Path:
    """`repository/tiny/` with its version 1 (model, contract, card) and its config; the
    model directory."""
    directory = repository / "tiny"
    version = directory / "1"
    version.mkdir(parents=True, exist_ok=True)
    onnx.save(model or threshold_model(), str(version / "model.onnx"))
    (version / "contract.yaml").write_text(yaml.safe_dump(CONTRACT))
    (version / "card.md").write_text("# tiny\nA threshold, for tests.\n")
    (directory / "config.pbtxt").write_text(render_config([ModelContract.model_validate(CONTRACT)]))
    return directory
