"""Writes a wide, GEMM-bound MLP (512 -> 4096 -> 512, random weights) as a wharf model:
the kind of model where batching pays on a CPU, for benchmarks only.

    python scripts/gen_wide_mlp.py DIR     (writes DIR/1/model.onnx, about 16 MB)
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def main(folder):
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((512, 4096)) / np.sqrt(512)).astype(np.float32)
    w2 = (rng.standard_normal((4096, 512)) / np.sqrt(4096)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "wide_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 512])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    os.makedirs(os.path.join(folder, "1"), exist_ok=True)
    onnx.save(model, os.path.join(folder, "1", "model.onnx"))


if __name__ == "__main__":
    main(sys.argv[1])
