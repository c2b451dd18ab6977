"""The exported graphs' rewrites compute what the graphs they replace compute: held to ONNX
Runtime's answers on both, on random inputs and weights."""

import numpy as np
import onnx
import onnxruntime
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from appliance.inference.onnx_graph import (
    NotRewritable,
    bound_transposed_columns,
    foreground_probability,
    unfold_channel_softmax,
)

RNG = np.random.default_rng(7)


def softmax_net(layer: str, extra_output: bool = False) -> onnx.ModelProto:
    """Three input channels to two channels of logits by `layer` (a Conv, 3x3x3, or a
    ConvTranspose, 2x2x2 stride 2), then a softmax over the channels; with `extra_output`,
    the logits are an output of their own too."""
    if layer == "Conv":
        weights = RNG.normal(size=(2, 3, 3, 3, 3)).astype(np.float32)
        node = helper.make_node("Conv", ["x", "w", "b"], ["logits"], pads=[1] * 6)
        size = 6
    else:
        weights = RNG.normal(size=(3, 2, 2, 2, 2)).astype(np.float32)
        node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["logits"], strides=[2] * 3)
        size = 12
    outputs = [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 2, *[size] * 3])]
    if extra_output:
        logits = helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["batch", 2, *[size] * 3]
        )
        outputs.append(logits)
    graph = helper.make_graph(
        [node, helper.make_node("Softmax", ["logits"], ["p"], axis=1, name="/Softmax")],
        "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 6, 6, 6])],
        outputs,
        initializer=[
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(RNG.normal(size=2).astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def run(model: onnx.ModelProto, x: NDArray[np.float32]) -> NDArray[np.float32]:
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return np.asarray(session.run(["p"], {"x": x})[0])


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    duplicate = onnx.ModelProto()
    duplicate.CopyFrom(model)
    return duplicate


@pytest.mark.parametrize("layer", ["Conv", "ConvTranspose"])
@pytest.mark.parametrize("channel", [0, 1])
def test_the_foreground_alone_is_the_softmaxs_channel_folded_into_the_last_layer(
    layer: str, channel: int
) -> None:
    model = softmax_net(layer)
    x = RNG.normal(size=(2, 3, 6, 6, 6)).astype(np.float32)
    rewritten = foreground_probability(copy(model), "p", channel)

    found = run(rewritten, x)
    assert found.shape[1] == 1
    np.testing.assert_allclose(found[:, 0], run(model, x)[:, channel], atol=2e-6)
    ops = [node.op_type for node in rewritten.graph.node]
    assert ops == [layer, "Sigmoid"], ops  # the difference is in the layer's weights
    weights = {t.name: numpy_helper.to_array(t) for t in rewritten.graph.initializer}
    assert weights["w"].shape[0 if layer == "Conv" else 1] == 1
    assert rewritten.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 1


def test_logits_something_else_reads_are_left_as_they_are_and_subtracted() -> None:
    model = softmax_net("Conv", extra_output=True)
    x = RNG.normal(size=(1, 3, 6, 6, 6)).astype(np.float32)
    rewritten = foreground_probability(copy(model), "p", 1)

    np.testing.assert_allclose(run(rewritten, x)[:, 0], run(model, x)[:, 1], atol=2e-6)
    assert [node.op_type for node in rewritten.graph.node] == [
        "Conv", "Gather", "Gather", "Sub", "Sigmoid",
    ]  # fmt: skip


def test_a_graph_that_does_not_end_in_a_two_channel_softmax_is_refused() -> None:
    model = softmax_net("Conv")
    with pytest.raises(NotRewritable, match="not a softmax"):
        foreground_probability(copy(model), "logits", 1)
    unfolded = unfold_channel_softmax(copy(model))
    with pytest.raises(NotRewritable, match="not a softmax"):
        foreground_probability(unfolded, "p", 1)


def test_the_unfolded_softmax_is_the_softmax() -> None:
    model = softmax_net("ConvTranspose")
    x = RNG.normal(size=(2, 3, 6, 6, 6)).astype(np.float32)
    unfolded = unfold_channel_softmax(copy(model))

    assert "Softmax" not in [node.op_type for node in unfolded.graph.node]
    np.testing.assert_allclose(run(unfolded, x), run(model, x), atol=1e-6)


def transposed_net(kernel: int, stride: int, bias: bool = True) -> onnx.ModelProto:
    """Six channels at 8^3 to five by one ConvTranspose (padding 1 where the kernel is 3),
    then a ReLU, as a decoder's upsampling."""
    weights = RNG.normal(size=(6, 5, *[kernel] * 3)).astype(np.float32)
    initializers = [numpy_helper.from_array(weights, "w")]
    if bias:
        initializers.append(numpy_helper.from_array(RNG.normal(size=5).astype(np.float32), "b"))
    pads = [1] * 6 if kernel == 3 else [0] * 6
    extra = {"output_padding": [1] * 3} if kernel == 3 and stride == 2 else {}
    layer = helper.make_node(
        "ConvTranspose", ["x", "w", "b"][: 2 + bias], ["y"], name="/up",
        strides=[stride] * 3, pads=pads, **extra,
    )  # fmt: skip
    size = 8 * stride
    graph = helper.make_graph(
        [layer, helper.make_node("Relu", ["y"], ["p"])],
        "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6, 8, 8, 8])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 5, *[size] * 3])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def column_bytes(node: onnx.NodeProto, model: onnx.ModelProto, voxels: int) -> int:
    (weights,) = [t for t in model.graph.initializer if t.name == node.input[1]]
    return int(np.prod(weights.dims[1:])) * voxels * 4


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
def test_a_transposed_convolution_split_by_its_column_buffer_computes_the_same(
    bias: bool, stride: int
) -> None:
    model = transposed_net(kernel=3, stride=stride, bias=bias)
    x = RNG.normal(size=(2, 6, 8, 8, 8)).astype(np.float32)
    limit = 2 * 27 * 8**3 * 4  # two output channels' buffers
    rewritten = bound_transposed_columns(copy(model), limit)

    parts = [node for node in rewritten.graph.node if node.op_type == "ConvTranspose"]
    assert len(parts) == 3  # five channels, at most two a part
    assert all(column_bytes(part, rewritten, 8**3) <= limit for part in parts)
    assert [node.op_type for node in rewritten.graph.node][-2:] == ["Concat", "Relu"]
    assert {t.name for t in rewritten.graph.initializer}.isdisjoint({"w", "b"})
    np.testing.assert_array_equal(run(rewritten, x), run(model, x))


@pytest.mark.parametrize(("channels", "parts"), [(2.5, 3), (1.5, 5), (0.5, 5)])
def test_every_part_fits_the_limit_where_one_channel_does(channels: float, parts: int) -> None:
    model = transposed_net(kernel=3, stride=2)
    one_channel = 27 * 8**3 * 4
    rewritten = bound_transposed_columns(copy(model), int(channels * one_channel))

    split = [node for node in rewritten.graph.node if node.op_type == "ConvTranspose"]
    assert len(split) == parts
    assert all(
        column_bytes(part, rewritten, 8**3) <= max(channels, 1) * one_channel for part in split
    )


def test_transposed_convolutions_within_the_limit_or_without_overlap_are_left_alone() -> None:
    small = transposed_net(kernel=3, stride=2)
    assert bound_transposed_columns(copy(small)) == small  # 5 x 27 x 8^3 floats: far under
    # Kernel 2, stride 2: the buffer is the output's own size, splitting saves nothing.
    tiling = transposed_net(kernel=2, stride=2)
    assert bound_transposed_columns(copy(tiling), limit=1024) == tiling
