"""Writes the small ONNX models the integration tests serve (tests/models/).

Run with the `onnx` package installed: python tests/gen_test_models.py
The outputs are committed; this script documents and reproduces them.
"""
import os

import onnx
from onnx import TensorProto, helper

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")

# KServe datatype -> ONNX element type, for one identity model each.
IDENTITY = {
    "bool": TensorProto.BOOL,
    "uint8": TensorProto.UINT8,
    "uint16": TensorProto.UINT16,
    "uint32": TensorProto.UINT32,
    "uint64": TensorProto.UINT64,
    "int8": TensorProto.INT8,
    "int16": TensorProto.INT16,
    "int32": TensorProto.INT32,
    "int64": TensorProto.INT64,
    "fp16": TensorProto.FLOAT16,
    "fp32": TensorProto.FLOAT,
    "fp64": TensorProto.DOUBLE,
    "bytes": TensorProto.STRING,
}


def save(name, graph, config=None):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="wharf-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder = os.path.join(ROOT, name, "1")
    os.makedirs(folder, exist_ok=True)
    onnx.save(model, os.path.join(folder, "model.onnx"))
    if config is not None:
        with open(os.path.join(ROOT, name, "config.yaml"), "w") as f:
            f.write(config)


def main():
    for suffix, elem in IDENTITY.items():
        graph = helper.make_graph(
            [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
            f"identity_{suffix}",
            [helper.make_tensor_value_info("INPUT0", elem, ["batch", "n"])],
            [helper.make_tensor_value_info("OUTPUT0", elem, ["batch", "n"])],
        )
        save(f"identity_{suffix}", graph)

    # Two inputs, two outputs: input naming, ordering and requested-output filtering.
    add_sub = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [
            helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("INPUT1", TensorProto.FLOAT, ["batch", 4]),
        ],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("OUTPUT1", TensorProto.FLOAT, ["batch", 4]),
        ],
    )
    save("add_sub", add_sub, "max_batch_size: 8\n")

    # A model without a batch dimension that takes a while: a chain of square matmuls on its
    # input, to hold a request in flight during shutdown tests.
    nodes, prev = [], "x"
    for i in range(16):
        nodes.append(helper.make_node("MatMul", [prev, "x"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"]))
        prev = f"t{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    slow = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024, 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024, 1024])],
    )
    save("slow", slow, "max_batch_size: 0\nmodel_warmup: false\ninstance_group: [{ count: 1, kind: KIND_CPU }]\n")


if __name__ == "__main__":
    main()
