"""A trained net as an ONNX graph that ONNX Runtime, Netron and browsers run.

The graph is written node by node with the ``onnx`` package's helpers (an optional extra), one
ONNX operator per npcnn layer, so it reads in Netron like the layer list::

    pixels [N, 1, 28, 28] float32, in [0, 1]
      -> Sub(mean) -> Div(std)                          the normalisation, inside the graph
      -> Conv -> Relu -> MaxPool [-> BatchNormalization] -> ... -> Flatten -> Gemm -> Relu -> Gemm
         (and for the zoo: AveragePool, GlobalAveragePool, Tanh, Sigmoid, LeakyRelu; a Residual block
         is its body's nodes, its shortcut's, and an Add)
      -> logits [N, C]
      -> Softmax(axis=1) -> probabilities [N, C]

The final LogSoftmax of the npcnn net is replaced by the two outputs (the logits before it and
their softmax), as :class:`npcnn.classifier.Classifier` sees the net. Weights are initializers
named by their state-dict keys (``0.weight``, ``3.running_mean``); BatchNorm runs in inference
mode on its running statistics. The graph is float32 (ONNX Runtime's CPU convolutions are
float32), opset :data:`OPSET`, with the batch dimension left free.
"""
import numpy as np

from ..nn import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, LeakyReLU, Linear,
                  LogSoftmax, MaxPool2d, ReLU, Residual, Sequential, Sigmoid, Softmax, Tanh)
from .errors import require

OPSET = 17   # ai.onnx opset: every operator used here has had its current form since opset 15 or earlier
IR_VERSION = 8   # the ONNX IR of opset 17, readable by ONNX Runtime 1.13 and later


def build_onnx(model, normalization, *, class_names=None, name="npcnn", input_shape=(1, 28, 28)):
    """The ``onnx.ModelProto`` of ``model`` (a Sequential ending in LogSoftmax) and its normalisation.

    Raises ValueError for a layer that has no ONNX translation here.
    """
    onnx = require("onnx", "ONNX export")
    helper, TensorProto = onnx.helper, onnx.TensorProto
    layers = list(model)
    if not layers or not isinstance(layers[-1], (LogSoftmax, Softmax)):
        raise ValueError("ONNX export: the net must end in LogSoftmax (its logits are the layer before it)")
    state = {k: np.asarray(v, dtype=np.float32) for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    nodes, inits = [], [helper.make_tensor("input.mean", TensorProto.FLOAT, [], [float(normalization.mean)]),
                        helper.make_tensor("input.std", TensorProto.FLOAT, [], [float(normalization.std)])]
    nodes += [helper.make_node("Sub", ["pixels", "input.mean"], ["centered"], name="normalize.sub_mean"),
              helper.make_node("Div", ["centered", "input.std"], ["normalized"], name="normalize.div_std")]
    body, used = _sequence(helper, "", layers[:-1], "normalized", "logits")
    nodes += body
    inits += [onnx.numpy_helper.from_array(state[k], k) for k in used]
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="softmax"))
    classes = model[-2].out_features if hasattr(model[-2], "out_features") else None
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        initializer=inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="npcnn", ir_version=IR_VERSION)
    meta = {"mean": repr(float(normalization.mean)), "std": repr(float(normalization.std)),
            "input": "pixels in [0, 1], normalised inside the graph"}
    if class_names is not None:
        meta["class_names"] = ",".join(map(str, class_names))
    helper.set_model_props(onnx_model, meta)
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def _sequence(helper, prefix, layers, x, out):
    """The nodes of ``layers`` applied in turn to ``x``, the last one writing ``out``, and the state-dict
    keys they read; ``prefix`` is the layers' key prefix (``""`` for the net, ``"3.body."`` in a block)."""
    nodes, used = [], []
    for i, layer in enumerate(layers):
        name = f"{prefix}{i}"
        target = out if i == len(layers) - 1 else f"{name}.out"
        more, keys = _nodes(helper, name, layer, x, target)
        if not more:          # an identity at inference (Dropout): the next node reads x directly
            if target == out:
                nodes.append(helper.make_node("Identity", [x], [out], name=f"{name}.identity"))
                x = out
            continue
        nodes += more
        used += keys
        x = target
    if not layers:
        nodes.append(helper.make_node("Identity", [x], [out], name=f"{prefix}identity"))
    return nodes, used


def _nodes(helper, i, layer, x, out):
    """The ONNX nodes of one layer (the key prefix ``i``: ``3``, ``3.body.0``) and the state-dict keys they
    read (no nodes for an inference identity). A Residual is its two paths and an Add."""
    if isinstance(layer, Residual):
        paths = [layer.body] + ([layer.shortcut] if layer.shortcut is not None else [])
        nodes, used, ends = [], [], []
        for name, path in zip(("body", "shortcut"), paths):
            steps = list(path) if isinstance(path, Sequential) else [path]
            more, keys = _sequence(helper, f"{i}.{name}.", steps, x, f"{i}.{name}.out")
            nodes, used, ends = nodes + more, used + keys, ends + [f"{i}.{name}.out"]
        skip = ends[1] if len(ends) == 2 else x
        return nodes + [helper.make_node("Add", [ends[0], skip], [out], name=f"{i}.add")], used
    node, used = _node(helper, i, layer, x, out)
    return ([] if node is None else [node]), used


def _node(helper, i, layer, x, out):
    """The ONNX node of one layer and the state-dict keys it reads (None for an inference identity)."""
    if isinstance(layer, AvgPool2d):
        ph, pw = layer.padding
        return helper.make_node("AveragePool", [x], [out], name=f"{i}.avgpool", kernel_shape=list(layer.kernel_size),
                                strides=list(layer.stride), pads=[ph, pw, ph, pw],
                                count_include_pad=int(layer.count_include_pad)), []
    if isinstance(layer, AdaptiveAvgPool2d):
        if layer.output_size not in (1, (1, 1)):
            raise ValueError(f"ONNX export: layer {i} is {layer!r}; only output size 1 (GlobalAveragePool) has an "
                             f"ONNX translation here")
        return helper.make_node("GlobalAveragePool", [x], [out], name=f"{i}.globalavgpool"), []
    if isinstance(layer, (Tanh, Sigmoid)):
        op = type(layer).__name__
        return helper.make_node(op, [x], [out], name=f"{i}.{op.lower()}"), []
    if isinstance(layer, LeakyReLU):
        return helper.make_node("LeakyRelu", [x], [out], name=f"{i}.leakyrelu", alpha=float(layer.negative_slope)), []
    if isinstance(layer, Conv2d):
        ph, pw = layer.padding
        inputs = [x, f"{i}.weight"] + ([f"{i}.bias"] if layer.bias is not None else [])
        return helper.make_node("Conv", inputs, [out], name=f"{i}.conv", kernel_shape=list(layer.kernel_size),
                                strides=list(layer.stride), pads=[ph, pw, ph, pw]), inputs[1:]
    if isinstance(layer, MaxPool2d):
        ph, pw = layer.padding
        return helper.make_node("MaxPool", [x], [out], name=f"{i}.maxpool", kernel_shape=list(layer.kernel_size),
                                strides=list(layer.stride), pads=[ph, pw, ph, pw]), []
    if isinstance(layer, ReLU):
        return helper.make_node("Relu", [x], [out], name=f"{i}.relu"), []
    if isinstance(layer, (BatchNorm2d, BatchNorm1d)):
        if not layer.affine:
            raise ValueError(f"ONNX export: layer {i} is a BatchNorm without affine parameters (not supported)")
        used = [f"{i}.weight", f"{i}.bias", f"{i}.running_mean", f"{i}.running_var"]
        return helper.make_node("BatchNormalization", [x, *used], [out], name=f"{i}.batchnorm",
                                epsilon=float(layer.eps)), used
    if isinstance(layer, Flatten):
        if layer.start_dim != 1 or layer.end_dim != -1:
            raise ValueError(f"ONNX export: layer {i} is Flatten({layer.start_dim}, {layer.end_dim}); only "
                             f"Flatten(1, -1) has an ONNX translation here")
        return helper.make_node("Flatten", [x], [out], name=f"{i}.flatten", axis=1), []
    if isinstance(layer, Linear):
        inputs = [x, f"{i}.weight"] + ([f"{i}.bias"] if layer.bias is not None else [])
        return helper.make_node("Gemm", inputs, [out], name=f"{i}.linear", transB=1), inputs[1:]
    if isinstance(layer, Dropout):
        return None, []
    raise ValueError(f"ONNX export: layer {i} ({type(layer).__name__}) has no ONNX translation")


def save_onnx(path, onnx_model):
    """Write an ``onnx.ModelProto`` to ``path`` atomically; return the path."""
    from ..io import atomic_path

    with atomic_path(path, ".onnx") as tmp:
        with open(tmp, "wb") as f:
            f.write(onnx_model.SerializeToString())
    return path


def export_onnx(path, model, normalization, *, class_names=None, name="npcnn"):
    """:func:`build_onnx`, checked by ``onnx.checker``, then written to ``path``; return the path."""
    return save_onnx(path, build_onnx(model, normalization, class_names=class_names, name=name))


def run_onnx(graph, pixels, batch_size=2500):
    """``(logits, probabilities)`` of ONNX Runtime (CPU) on pixel images [N, 1, H, W] (or [N, H, W]), as float32.

    ``graph`` is a path to an ``.onnx`` file or an ``onnx.ModelProto``; one session runs every batch.
    """
    import os

    ort = require("onnxruntime", "running an ONNX graph")
    source = graph.SerializeToString() if hasattr(graph, "SerializeToString") else os.fspath(graph)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    pixels = np.asarray(pixels, dtype=np.float32)
    pixels = pixels[:, None] if pixels.ndim == 3 else pixels
    runs = [session.run(["logits", "probabilities"], {"pixels": pixels[i:i + batch_size]})
            for i in range(0, len(pixels), batch_size)]
    return tuple(np.concatenate([r[k] for r in runs]) for k in range(2)) if runs else (None, None)
