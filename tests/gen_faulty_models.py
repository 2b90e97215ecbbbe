"""Writes the ONNX models the reliability tests use to make engines misbehave (tests/faulty/).

Each is a small valid ONNX graph that makes tract panic, at run time on a value the caller
chooses or while the model loads, or that answers with the wrong shape. They live outside
tests/models so that the default test repository stays healthy.

Run with the `onnx` package installed: python tests/gen_faulty_models.py
The outputs are committed; this script documents and reproduces them.
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "faulty")


def save(name, nodes, inputs, outputs, initializers=(), opset=13):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="wharf-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    os.makedirs(ROOT, exist_ok=True)
    onnx.save(model, os.path.join(ROOT, f"{name}.onnx"))


def main():
    # Run-time fault: the caller's index picks a row of a 4x3 table; an index past 3 makes
    # tract's Gather panic (ONNX Runtime returns an error for it).
    table = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "table")
    save(
        "gather_index",
        [helper.make_node("Gather", ["table", "index"], ["row"], axis=0)],
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("row", TensorProto.FLOAT, ["batch", 1, 3])],
        [table],
    )

    # Wrong shape: declares a batch dimension but sums every row into one scalar.
    save(
        "scalar_out",
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
    )

    # Wrong shape, for some widths only: declares a batch dimension, but folds each row
    # into rows of 4. A row of 4 stays one row; a row of 8 becomes two.
    save(
        "fold_rows",
        [helper.make_node("Reshape", ["x", "fours"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array([-1, 4], dtype=np.int64), "fours")],
    )

    # Not faulty: a model that takes a while (~50 ms on tract) whatever its input's size, to
    # hold requests in flight or in the queue. Its input (any length) is summed, spread
    # over a 384x384 matrix and multiplied by itself 12 times.
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=1),
        helper.make_node("Expand", ["s", "square"], ["m0"]),
    ]
    for i in range(12):
        nodes.append(helper.make_node("MatMul", [f"m{i}", f"m{i}"], [f"p{i}"]))
        nodes.append(helper.make_node("Tanh", [f"p{i}"], [f"m{i + 1}"]))
    nodes.append(helper.make_node("ReduceSum", ["m12"], ["y"], keepdims=1))
    save(
        "busy",
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(np.array([384, 384], dtype=np.int64), "square")],
    )

    # Load-time faults: constants that make tract's analysis or optimisation panic.
    data = numpy_helper.from_array(np.zeros((4, 3), dtype=np.float32), "data")
    save(
        "load_gather",
        [
            helper.make_node("Constant", [], ["bad"], value=numpy_helper.from_array(np.array([7], dtype=np.int64))),
            helper.make_node("Gather", ["data", "bad"], ["g"], axis=0),
            helper.make_node("Add", ["g", "x"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [data],
    )
    scalar = lambda name, v: numpy_helper.from_array(np.array(v, dtype=np.int64), name)
    save(
        "load_range",
        [
            helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
            helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["rf"], ["s"], keepdims=1),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [scalar("start", 0), scalar("limit", 10), scalar("delta", 0)],
    )
    save(
        "load_slice",
        [helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
        [scalar("starts", [0]), scalar("ends", [8]), scalar("axes", [1]), scalar("steps", [0])],
    )
    save(
        "load_tile",
        [helper.make_node("Tile", ["x", "repeats"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
        [scalar("repeats", [1, -2])],
    )


if __name__ == "__main__":
    main()
