"""Rewrites of exported ONNX graphs that compute the same function with less of ONNX
Runtime's time or memory. The ONNX package only, no PyTorch: the exporters apply them, and
the unit tests hold each one to the graph it replaces."""

import numpy as np
import onnx
from onnx import helper, numpy_helper


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


class NotRewritable(ValueError):
    """The graph does not end the way the rewrite needs; says how it ends."""


def foreground_probability(model: onnx.ModelProto, output: str, channel: int) -> onnx.ModelProto:
    """A graph whose `output` is a softmax over two channels (axis 1), of which only
    `channel` is read, rewritten to output that channel's probability alone: the sigmoid of
    the two channels' logit difference, which is the same number. Where the logits come from
    a convolution (or a transposed one) with constant weights that nothing else reads, the
    difference is folded into its weights, so the last layer computes one channel, not two.
    deepbet at 256^3: a 64 MiB output instead of 128, and none of the softmax's 128 MiB
    intermediates."""
    graph = model.graph
    softmax = next((node for node in graph.node if output in node.output), None)
    axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1) if softmax else None
    if softmax is None or softmax.op_type != "Softmax" or axis != 1:
        raise NotRewritable(f"{output} is not a softmax over the channel axis")
    (declared,) = [value for value in graph.output if value.name == output]
    if declared.type.tensor_type.shape.dim[1].dim_value != 2 or channel not in (0, 1):
        raise NotRewritable(f"{output} does not have two channels to choose from")
    logits = softmax.input[0]
    difference = f"{softmax.name}/difference"
    nodes = [node for node in graph.node if node is not softmax]
    folded = _fold_difference(graph, logits, channel, difference)
    if not folded:
        nodes += _difference_nodes(graph, logits, channel, difference)
    nodes.append(helper.make_node("Sigmoid", [difference], [output], name=f"{softmax.name}/p"))
    del graph.node[:]
    graph.node.extend(nodes)
    declared.type.tensor_type.shape.dim[1].dim_value = 1
    onnx.checker.check_model(model)
    return model


def _fold_difference(graph: onnx.GraphProto, logits: str, channel: int, difference: str) -> bool:
    """Where a Conv or ConvTranspose of one group with constant weights and bias produces
    `logits` for nothing but the softmax: its weights and bias made those of `channel` minus
    the other's, its output renamed `difference`. Whether it could."""
    producer = next((node for node in graph.node if logits in node.output), None)
    readers = [node for node in graph.node if logits in node.input]
    constants = {tensor.name: tensor for tensor in graph.initializer}
    group = next((a.i for a in producer.attribute if a.name == "group"), 1) if producer else 0
    if (
        producer is None or producer.op_type not in ("Conv", "ConvTranspose") or group != 1
        or len(readers) != 1 or any(value.name == logits for value in graph.output)
        or len(producer.input) != 3
        or not all(
            name in constants and sum(name in node.input for node in graph.node) == 1
            for name in producer.input[1:]
        )
    ):  # fmt: skip
        return False
    weights = numpy_helper.to_array(constants[producer.input[1]])
    bias = numpy_helper.to_array(constants[producer.input[2]])
    out_axis = 0 if producer.op_type == "Conv" else 1  # ConvTranspose: (in, out, ...)
    chosen, other = weights.take(channel, out_axis), weights.take(1 - channel, out_axis)
    for name, value in (
        (producer.input[1], np.expand_dims(chosen - other, out_axis)),
        (producer.input[2], np.array([bias[channel] - bias[1 - channel]], dtype=bias.dtype)),
    ):
        constants[name].CopyFrom(numpy_helper.from_array(value.astype(weights.dtype), name))
    producer.output[0] = difference
    return True


def _difference_nodes(
    graph: onnx.GraphProto, logits: str, channel: int, difference: str
) -> list[onnx.NodeProto]:
    """`difference` as channel `channel` of `logits` minus the other one."""
    names = [f"{difference}/{part}" for part in ("index", "other", "chosen", "rest")]
    graph.initializer.extend([
        helper.make_tensor(names[0], onnx.TensorProto.INT64, [1], [channel]),
        helper.make_tensor(names[1], onnx.TensorProto.INT64, [1], [1 - channel]),
    ])  # fmt: skip
    return [
        helper.make_node("Gather", [logits, names[0]], [names[2]], axis=1),
        helper.make_node("Gather", [logits, names[1]], [names[3]], axis=1),
        helper.make_node("Sub", [names[2], names[3]], [difference]),
    ]
