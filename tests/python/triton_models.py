"""ONNX models behind Triton's example model repository (tests/fixtures/triton), built
here: `simple`, `simple_string`, `simple_int8`, `simple_identity` and a densenet-shaped
classifier, with Triton's own config.pbtxt files beside them."""
import pathlib
import shutil

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "tests" / "fixtures" / "triton" / "docs" / "examples" / "model_repository"


def save(folder: pathlib.Path, graph, opset=13):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "1" / "model.onnx")


def simple_graph(elem, name):
    """Triton's `simple` and `simple_string`: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1
    (strings holding integers are cast, added and cast back, as Triton's model does)."""
    nodes, a, b = [], "INPUT0", "INPUT1"
    if elem == TensorProto.STRING:
        nodes += [helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
                  helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32)]
        a, b = "a", "b"
    sums = ("OUTPUT0", "OUTPUT1") if elem != TensorProto.STRING else ("s", "d")
    nodes += [helper.make_node("Add", [a, b], [sums[0]]), helper.make_node("Sub", [a, b], [sums[1]])]
    if elem == TensorProto.STRING:
        nodes += [helper.make_node("Cast", ["s"], ["OUTPUT0"], to=TensorProto.STRING),
                  helper.make_node("Cast", ["d"], ["OUTPUT1"], to=TensorProto.STRING)]
    tensor = lambda n: helper.make_tensor_value_info(n, elem, ["batch", 16])
    return helper.make_graph(nodes, name, [tensor("INPUT0"), tensor("INPUT1")],
                             [tensor("OUTPUT0"), tensor("OUTPUT1")])


def densenet_weights():
    return (np.arange(1000 * 3, dtype=np.float32).reshape(1000, 3, 1, 1) % 7) - 3


def densenet_graph():
    """densenet_onnx's interface, not its weights: [1, 3, 224, 224] -> the channel means ->
    a 1x1 convolution to [1, 1000, 1, 1]."""
    weights = numpy_helper.from_array(densenet_weights(), "w")
    nodes = [helper.make_node("ReduceMean", ["data_0"], ["mean"], axes=[2, 3], keepdims=1),
             helper.make_node("Conv", ["mean", "w"], ["fc6_1"])]
    return helper.make_graph(
        nodes, "densenet_like",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [1, 1000, 1, 1])],
        initializer=[weights])


def identity_graph():
    """simple_identity: strings of any length in, the same out."""
    tensor = lambda n: helper.make_tensor_value_info(n, TensorProto.STRING, ["batch", "n"])
    return helper.make_graph([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "simple_identity",
                             [tensor("INPUT0")], [tensor("OUTPUT0")])


# Triton's simple_identity is a Python-backend model; its interface as an ONNX model, on
# tract, whose strings carry the NUL bytes Triton's string example sends (ONNX Runtime's
# end at the first).
SIMPLE_IDENTITY_CONFIG = """\
name: "simple_identity"
backend: "tract"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
"""


def example_repository(repo: pathlib.Path):
    """Triton's docs/examples/model_repository: its eight folders with Triton's configs,
    and ONNX models for the five that wharf serves. The two sequence models and
    inception_onnx have no model file here and fail to load, as the index shows."""
    for folder in EXAMPLES.iterdir():
        shutil.copytree(folder, repo / folder.name)
    save(repo / "simple", simple_graph(TensorProto.INT32, "simple"))
    save(repo / "simple_int8", simple_graph(TensorProto.INT8, "simple_int8"), opset=14)
    save(repo / "simple_string", simple_graph(TensorProto.STRING, "simple_string"))
    save(repo / "densenet_onnx", densenet_graph())
    (repo / "simple_identity" / "config.pbtxt").write_text(SIMPLE_IDENTITY_CONFIG)
    save(repo / "simple_identity", identity_graph())
