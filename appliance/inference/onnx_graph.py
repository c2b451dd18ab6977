"""Rewrites of exported ONNX graphs that compute the same function with less of ONNX
Runtime's time or memory. The ONNX package only, no PyTorch: the exporters apply them, and
the unit tests hold each one to the graph it replaces."""

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

# ONNX Runtime's ConvTranspose multiplies into one column buffer of (output channels x kernel
# volume x input voxels) before it scatters it into the output: for deepbet's 16 to 8 channels
# from 64^3 to 128^3 with a 3^3 kernel, 216 MiB where the output is 64 MiB.
COLUMN_LIMIT_BYTES = 64 * 2**20


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


def bound_transposed_columns(
    model: onnx.ModelProto, limit: int = COLUMN_LIMIT_BYTES
) -> onnx.ModelProto:
    """Each ConvTranspose whose column buffer (see `COLUMN_LIMIT_BYTES`) exceeds `limit` and
    is over twice its output, split along its output channels into the fewest ConvTransposes
    whose buffers fit (one channel each, where even one's does not), joined by a Concat:
    every output channel is the same sum as before. The parts and the joined output are held
    together for a moment, so where the kernels do not overlap (the buffer no larger than the
    output, as in nnU-Net's upsampling) nothing is split. deepbet at 256^3: ONNX Runtime's
    peak over one run 360 MiB -> 136 MiB."""
    graph = model.graph
    shapes = _static_shapes(model)
    constants = {tensor.name: tensor for tensor in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    replaced: set[str] = set()
    for node in graph.node:
        parts = _column_parts(node, shapes, constants, limit)
        if parts <= 1:
            nodes.append(node)
            continue
        replaced.update(node.input[1:])
        weights = numpy_helper.to_array(constants[node.input[1]])
        bias = numpy_helper.to_array(constants[node.input[2]]) if len(node.input) > 2 else None
        pieces, base = [], node.name or node.output[0]
        for part, channels in enumerate(np.array_split(np.arange(weights.shape[1]), parts)):
            name = f"{base}/part{part}"
            inputs = [node.input[0], f"{name}/w"]
            graph.initializer.append(
                numpy_helper.from_array(np.ascontiguousarray(weights[:, channels]), inputs[1])
            )
            if bias is not None:
                inputs.append(f"{name}/b")
                graph.initializer.append(numpy_helper.from_array(bias[channels], inputs[2]))
            piece = helper.make_node("ConvTranspose", inputs, [f"{name}/y"], name=name)
            piece.attribute.extend(node.attribute)
            nodes.append(piece)
            pieces.append(piece.output[0])
        nodes.append(helper.make_node("Concat", pieces, list(node.output), f"{base}/join", axis=1))
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unread(graph, replaced)
    onnx.checker.check_model(model)
    return model


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Each tensor's inferred dimensions (0 where one is not fixed, as the batch)."""
    inferred = shape_inference.infer_shapes(model).graph
    return {
        value.name: [dim.dim_value for dim in value.type.tensor_type.shape.dim]
        for value in [*inferred.value_info, *inferred.input, *inferred.output]
    }


def _column_parts(
    node: onnx.NodeProto,
    shapes: dict[str, list[int]],
    constants: dict[str, onnx.TensorProto],
    limit: int,
) -> int:
    """Into how many parts `node` is split: 1 where it is left as it is."""
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if node.op_type != "ConvTranspose" or group != 1 or node.input[1] not in constants:
        return 1
    if len(node.input) > 2 and node.input[2] not in constants:
        return 1
    spatial_in = shapes.get(node.input[0], [0, 0])[2:]
    spatial_out = shapes.get(node.output[0], [0, 0])[2:]
    if not spatial_in or not all(spatial_in) or not all(spatial_out):
        return 1  # a spatial size known only at run time
    weights = constants[node.input[1]]
    size = int(np.dtype(helper.tensor_dtype_to_np_dtype(weights.data_type)).itemsize)
    channels = int(weights.dims[1])
    column = int(channels * math.prod(weights.dims[2:]) * math.prod(spatial_in) * size)
    output = channels * math.prod(spatial_out) * size
    if column <= limit or column <= 2 * output:
        return 1
    per_part = max(1, limit // (column // channels))  # output channels whose buffer fits
    return math.ceil(channels / per_part)


def _drop_unread(graph: onnx.GraphProto, names: set[str]) -> None:
    """The initializers among `names` that no node reads any more."""
    read = {name for node in graph.node for name in node.input}
    kept = [
        tensor for tensor in graph.initializer if tensor.name in read or tensor.name not in names
    ]
    del graph.initializer[:]
    graph.initializer.extend(kept)
