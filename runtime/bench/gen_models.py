#!/usr/bin/env python3
"""Generates the ONNX models of the runtime speed benchmark (issue 5, section 4)
and the small model-level test fixtures recorded from ONNX Runtime.

Every model is built with the `onnx.helper` API from numpy weights drawn with a
fixed seed, so two runs write byte-identical files. Each model goes into a folder
laid out like an ONNX backend test (model.onnx, test_data_set_0/input_J.pb,
test_data_set_0/output_J.pb), which `flotilla-agent conformance` can also run.

    gen_models.py bench OUT      # benchmark sizes
    gen_models.py fixtures OUT   # small sizes, for runtime/tests/fixtures
    gen_models.py layers OUT     # single layers the bench models lack (depthwise)

Outputs are recorded from ONNX Runtime (one thread, CPU provider). Needs `onnx`
and `onnxruntime` from PyPI; the Rust tests that read
the fixtures do not need Python. This script does not time anything: bench.py does.
"""

import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
FLOAT = TensorProto.FLOAT


class Graph:
    """Collects nodes and initializers; names values v0, v1, ..."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.inits = []
        self.count = 0

    def fresh(self, stem="v"):
        self.count += 1
        return f"{stem}{self.count}"

    def weight(self, shape, fan_in, stem="w"):
        name = self.fresh(stem)
        bound = 1.0 / np.sqrt(fan_in)
        value = self.rng.uniform(-bound, bound, size=shape).astype(np.float32)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def const(self, value, stem="c"):
        name = self.fresh(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type, inputs, n_out=1, **attrs):
        outs = [self.fresh() for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def linear(self, x, fan_in, fan_out):
        """A PyTorch-style Linear exported as Gemm with transB=1."""
        w = self.weight((fan_out, fan_in), fan_in)
        b = self.weight((fan_out,), fan_in, "b")
        return self.op("Gemm", [x, w, b], transB=1)

    def model(self, name, inputs, outputs):
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="flotilla-bench",
        )
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def mlp(batch, sizes, seed=1):
    g = Graph(seed)
    x = "x"
    h = x
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        h = g.linear(h, a, b)
        if i + 2 < len(sizes):
            h = g.op("Relu", [h])
    g.nodes[-1].output[0] = "y"
    m = g.model(
        "mlp",
        [helper.make_tensor_value_info("x", FLOAT, [batch, sizes[0]])],
        [helper.make_tensor_value_info("y", FLOAT, [batch, sizes[-1]])],
    )
    return m, {"x": (batch, sizes[0])}


def cnn(batch, side, channels, classes=10, seed=2):
    """Blocks of Conv 3x3 pad 1 + Relu + MaxPool 2x2, then Flatten + Gemm."""
    g = Graph(seed)
    h = "x"
    c_in = 3
    s = side
    for c_out in channels:
        w = g.weight((c_out, c_in, 3, 3), c_in * 9)
        b = g.weight((c_out,), c_in * 9, "b")
        h = g.op("Conv", [h, w, b], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        h = g.op("Relu", [h])
        h = g.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
        c_in = c_out
        s //= 2
    h = g.op("Flatten", [h], axis=1)
    g.linear(h, c_in * s * s, classes)
    g.nodes[-1].output[0] = "y"
    m = g.model(
        "cnn",
        [helper.make_tensor_value_info("x", FLOAT, [batch, 3, side, side])],
        [helper.make_tensor_value_info("y", FLOAT, [batch, classes])],
    )
    return m, {"x": (batch, 3, side, side)}


def depthwise(batch, channels, side, k=3, stride=1, seed=5):
    """One depthwise Conv (group = channels, k x k, pad k // 2, stride) + Relu,
    as in MobileNet's blocks."""
    g = Graph(seed)
    w = g.weight((channels, 1, k, k), k * k)
    b = g.weight((channels,), k * k, "b")
    h = g.op(
        "Conv",
        ["x", w, b],
        kernel_shape=[k, k],
        pads=[k // 2] * 4,
        strides=[stride, stride],
        group=channels,
    )
    g.op("Relu", [h])
    g.nodes[-1].output[0] = "y"
    shape = (batch, channels, side, side)
    out = (side + 2 * (k // 2) - k) // stride + 1
    m = g.model(
        "depthwise",
        [helper.make_tensor_value_info("x", FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", FLOAT, [batch, channels, out, out])],
    )
    return m, {"x": shape}


def lstm(seq, batch, inp, hidden, layers=2, seed=3):
    """A stacked unidirectional LSTM as PyTorch exports it: LSTM, Squeeze, LSTM."""
    g = Graph(seed)
    h = "x"
    size = inp
    for _ in range(layers):
        w = g.weight((1, 4 * hidden, size), hidden)
        r = g.weight((1, 4 * hidden, hidden), hidden)
        b = g.weight((1, 8 * hidden), hidden, "b")
        y = g.op("LSTM", [h, w, r, b], hidden_size=hidden)
        h = g.op("Squeeze", [y, g.const(np.array([1], dtype=np.int64))])
        size = hidden
    g.nodes[-1].output[0] = "y"
    m = g.model(
        "lstm",
        [helper.make_tensor_value_info("x", FLOAT, [seq, batch, inp])],
        [helper.make_tensor_value_info("y", FLOAT, [seq, batch, hidden])],
    )
    return m, {"x": (seq, batch, inp)}


def encoder(batch, seq, d, heads, ff, seed=4):
    """A post-norm transformer encoder block (PyTorch's TransformerEncoderLayer):
    multi-head self-attention, residual, LayerNorm, Relu feed-forward, residual,
    LayerNorm."""
    g = Graph(seed)
    dh = d // heads
    x = "x"

    def proj(h, fan_in, fan_out):
        w = g.weight((fan_in, fan_out), fan_in)
        b = g.weight((fan_out,), fan_in, "b")
        return g.op("Add", [g.op("MatMul", [h, w]), b])

    split_shape = g.const(np.array([batch, seq, heads, dh], dtype=np.int64))
    merge_shape = g.const(np.array([batch, seq, d], dtype=np.int64))

    def heads_of(h):
        return g.op("Transpose", [g.op("Reshape", [h, split_shape])], perm=[0, 2, 1, 3])

    q = heads_of(proj(x, d, d))
    k = heads_of(proj(x, d, d))
    v = heads_of(proj(x, d, d))
    kt = g.op("Transpose", [k], perm=[0, 1, 3, 2])
    scores = g.op("Mul", [g.op("MatMul", [q, kt]), g.const(np.float32(1.0 / np.sqrt(dh)))])
    att = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    att = g.op("Reshape", [g.op("Transpose", [att], perm=[0, 2, 1, 3]), merge_shape])
    h = g.op("Add", [x, proj(att, d, d)])

    def norm(h):
        scale = g.const(np.ones(d, dtype=np.float32) + g.rng.normal(0, 0.1, d).astype(np.float32))
        bias = g.const(g.rng.normal(0, 0.1, d).astype(np.float32))
        return g.op("LayerNormalization", [h, scale, bias], axis=-1, epsilon=1e-5)

    h = norm(h)
    f = proj(g.op("Relu", [proj(h, d, ff)]), ff, d)
    h = norm(g.op("Add", [h, f]))
    g.nodes[-1].output[0] = "y"
    m = g.model(
        "encoder",
        [helper.make_tensor_value_info("x", FLOAT, [batch, seq, d])],
        [helper.make_tensor_value_info("y", FLOAT, [batch, seq, d])],
    )
    return m, {"x": (batch, seq, d)}


# name -> (model builder, input seed); the benchmark sizes of issue 5.
BENCH = {
    "mlp_b1": lambda: mlp(1, [64, 256, 256, 10]),
    "mlp_b64": lambda: mlp(64, [64, 256, 256, 10]),
    "cnn_b1": lambda: cnn(1, 64, [16, 32, 64]),
    "cnn_b32": lambda: cnn(32, 64, [16, 32, 64]),
    "lstm_2l": lambda: lstm(32, 1, 64, 128),
    "encoder": lambda: encoder(1, 64, 128, 4, 512),
}

# Single layers that the bench models do not cover (`gen_models.py layers OUT`).
LAYERS = {
    "dw32_112": lambda: depthwise(1, 32, 112),
    "dw128_28": lambda: depthwise(1, 128, 28),
    "dw512_14": lambda: depthwise(1, 512, 14),
    "dw96_112_s2": lambda: depthwise(1, 96, 112, stride=2),
    "dw144_56_s2": lambda: depthwise(1, 144, 56, stride=2),
    "dw576_14_s2": lambda: depthwise(1, 576, 14, stride=2),
}

# The same shapes scaled down so that all fixtures together stay well under 1 MiB.
FIXTURES = {
    "mlp": lambda: mlp(4, [64, 64, 32, 10]),
    "cnn": lambda: cnn(2, 16, [4, 8, 8]),
    "lstm": lambda: lstm(5, 2, 8, 16),
    "encoder": lambda: encoder(2, 6, 16, 2, 32),
}


def write(out_dir, name, build):
    m, inputs = build()
    folder = os.path.join(out_dir, name)
    data = os.path.join(folder, "test_data_set_0")
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(folder, "model.onnx"), "wb") as f:
        f.write(m.SerializeToString())
    rng = np.random.default_rng(1000 + sum(map(ord, name)))
    feeds = {}
    for j, (input_name, shape) in enumerate(inputs.items()):
        value = rng.standard_normal(shape).astype(np.float32)
        feeds[input_name] = value
        with open(os.path.join(data, f"input_{j}.pb"), "wb") as f:
            f.write(numpy_helper.from_array(value, input_name).SerializeToString())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    for j, (o, value) in enumerate(zip(sess.get_outputs(), outs)):
        with open(os.path.join(data, f"output_{j}.pb"), "wb") as f:
            f.write(numpy_helper.from_array(value, o.name).SerializeToString())


def main():
    tables = {"bench": BENCH, "fixtures": FIXTURES, "layers": LAYERS}
    if len(sys.argv) != 3 or sys.argv[1] not in tables:
        sys.exit("usage: gen_models.py bench|fixtures|layers OUT_DIR")
    kind, out_dir = sys.argv[1], sys.argv[2]
    table = tables[kind]
    for name, build in table.items():
        write(out_dir, name, build)
        print(f"wrote {os.path.join(out_dir, name)}")


if __name__ == "__main__":
    main()
