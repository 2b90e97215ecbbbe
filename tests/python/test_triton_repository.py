"""A Triton model repository served as it is: Triton's own config.pbtxt files, byte for
byte (tests/fixtures/triton), over ONNX models generated here; and config.pbtxt mistakes,
each refused at load with the file, line and field named while the rest serve."""
import pathlib
import shutil
import urllib.request
import json
import urllib.error

import numpy as np

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper

from conftest import ROOT, running_wharf_addresses
from triton_models import EXAMPLES, densenet_graph, densenet_weights, save, simple_graph
from tritonclient.utils import InferenceServerException

ENSEMBLE = """\
# Two calls of `simple`: (a, b) -> (a + b, a - b) -> (2a, 2b).
name: "simple_twice"
platform: "ensemble"
max_batch_size: 8
input [ { name: "A" data_type: TYPE_INT32 dims: [ 16 ] },
        { name: "B" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "TWICE_A" data_type: TYPE_INT32 dims: [ 16 ] },
         { name: "TWICE_B" data_type: TYPE_INT32 dims: [ 16 ] } ]
ensemble_scheduling {
  step [
    { model_name: "simple" model_version: -1
      input_map { key: "INPUT0" value: "A" } input_map { key: "INPUT1", value: "B" }
      output_map { key: "OUTPUT0" value: "sum" } output_map { key: "OUTPUT1" value: "diff" } },
    { model_name: "simple" model_version: -1
      input_map [ { key: "INPUT0" value: "sum" }, { key: "INPUT1" value: "diff" } ]
      output_map { key: "OUTPUT0" value: "TWICE_A" } output_map { key: "OUTPUT1" value: "TWICE_B" } }
  ]
}
"""


def add_sub_graph(name, inputs, outputs):
    """Triton's qa `onnx_<in>_<out0>_<out1>` models: OUTPUT0 = INPUT0 + INPUT1 and OUTPUT1 =
    INPUT0 - INPUT1, strings ("object") holding integers cast on the way in and out."""
    nodes, a, b, kind = [], "INPUT0", "INPUT1", inputs
    if inputs == TensorProto.STRING:
        nodes += [helper.make_node("Cast", [n], [n + "_i"], to=TensorProto.INT32) for n in (a, b)]
        a, b, kind = "INPUT0_i", "INPUT1_i", TensorProto.INT32
    nodes += [helper.make_node("Add", [a, b], ["sum"]), helper.make_node("Sub", [a, b], ["diff"])]
    for result, output in (("sum", "OUTPUT0"), ("diff", "OUTPUT1")):
        nodes.append(helper.make_node("Cast", [result], [output], to=outputs) if outputs != kind
                     else helper.make_node("Identity", [result], [output]))
    tensor = lambda n, t: helper.make_tensor_value_info(n, t, ["batch", 16])
    return helper.make_graph(nodes, name, [tensor("INPUT0", inputs), tensor("INPUT1", inputs)],
                             [tensor("OUTPUT0", outputs), tensor("OUTPUT1", outputs)])


QA_TYPES = {"int32": TensorProto.INT32, "float32": TensorProto.FLOAT, "object": TensorProto.STRING}
QA_ENSEMBLE = ROOT / "tests" / "fixtures" / "triton" / "qa" / "ensemble_models" / "mix_type_int32_float32_float32"


def qa_step_models(repo):
    """The step models Triton's mix_type ensemble names, with configs as Triton's qa writes
    them (max_batch_size 8, dims [16], version 1)."""
    for name in ("int32_int32_int32", "int32_object_object", "object_int32_int32",
                 "int32_float32_float32", "float32_float32_float32"):
        kind_in, kind_out, _ = name.split("_")
        folder = repo / f"onnx_{name}"
        save(folder, add_sub_graph(f"onnx_{name}", QA_TYPES[kind_in], QA_TYPES[kind_out]))
        dtype = lambda k: {"int32": "TYPE_INT32", "float32": "TYPE_FP32", "object": "TYPE_STRING"}[k]
        tensors = lambda side, names, k: " ".join(
            f'{side} {{ name: "{n}" data_type: {dtype(k)} dims: [ 16 ] }}' for n in names)
        (folder / "config.pbtxt").write_text(
            f'name: "onnx_{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
            f'{tensors("input", ("INPUT0", "INPUT1"), kind_in)}\n'
            f'{tensors("output", ("OUTPUT0", "OUTPUT1"), kind_out)}\n')


@pytest.fixture(scope="module")
def triton_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton_repo")
    for name in ("simple", "simple_string", "densenet_onnx"):
        shutil.copytree(EXAMPLES / name, repo / name)
    save(repo / "simple", simple_graph(TensorProto.INT32, "simple"))
    save(repo / "simple_string", simple_graph(TensorProto.STRING, "simple_string"))
    save(repo / "densenet_onnx", densenet_graph())
    qa_step_models(repo)
    shutil.copytree(QA_ENSEMBLE, repo / QA_ENSEMBLE.name)
    (repo / QA_ENSEMBLE.name / "1").mkdir()
    (repo / "simple_twice").mkdir()
    (repo / "simple_twice" / "config.pbtxt").write_text(ENSEMBLE)
    (repo / "simple_twice" / "1").mkdir()
    with running_wharf_addresses(repo) as addresses:
        yield addresses


def test_the_config_files_are_triton_s_byte_for_byte(triton_repo):
    for name in ("simple", "simple_string", "densenet_onnx"):
        text = (EXAMPLES / name / "config.pbtxt").read_bytes()
        assert b"input [" in text, name  # the colon-less list Triton writes everywhere


def test_simple_and_simple_string_answer_over_grpc_and_http(triton_repo):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    grpc = grpcclient.InferenceServerClient(triton_repo["grpc"])
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = grpc.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)

    http = httpclient.InferenceServerClient(triton_repo["http"])
    words = [httpclient.InferInput("INPUT0", [1, 16], "BYTES"), httpclient.InferInput("INPUT1", [1, 16], "BYTES")]
    words[0].set_data_from_numpy(np.array([[str(x).encode() for x in a[0]]], dtype=np.object_))
    words[1].set_data_from_numpy(np.array([[b"1"] * 16], dtype=np.object_))
    result = http.infer("simple_string", words)
    assert [int(x) for x in result.as_numpy("OUTPUT0")[0]] == list(a[0] + 1)
    assert [int(x) for x in result.as_numpy("OUTPUT1")[0]] == list(a[0] - 1)


def test_densenet_takes_the_wire_shape_and_the_model_its_reshape(triton_repo):
    image = np.random.default_rng(7).random((3, 224, 224), dtype=np.float32)
    client = grpcclient.InferenceServerClient(triton_repo["grpc"])
    metadata = client.get_model_metadata("densenet_onnx", as_json=True)
    assert metadata["inputs"][0]["shape"] == ["3", "224", "224"]
    assert metadata["outputs"][0]["shape"] == ["1000"]
    request = grpcclient.InferInput("data_0", [3, 224, 224], "FP32")
    request.set_data_from_numpy(image)
    scores = client.infer("densenet_onnx", [request]).as_numpy("fc6_1")
    assert scores.shape == (1000,)
    expected = densenet_weights()[:, :, 0, 0] @ image.mean(axis=(1, 2))
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    # The config answered as Triton renders it: enum names, int64 as numbers, the reshape
    # and the label file.
    with urllib.request.urlopen(f"http://{triton_repo['http']}/v2/models/densenet_onnx/config") as answer:
        config = json.load(answer)
    assert config["max_batch_size"] == 0
    assert config["input"][0]["format"] == "FORMAT_NCHW"
    assert config["input"][0]["reshape"] == {"shape": [1, 3, 224, 224]}
    assert config["output"][0]["reshape"] == {"shape": [1, 1000, 1, 1]}
    assert config["output"][0]["label_filename"] == "densenet_labels.txt"


def test_triton_s_mix_type_ensemble_serves_as_written(triton_repo):
    """qa/ensemble_models/mix_type_int32_float32_float32, byte for byte: seven steps through
    INT32, strings and FP32 that come back to (a + b, a - b) as FP32."""
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    client = grpcclient.InferenceServerClient(triton_repo["grpc"])
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer(QA_ENSEMBLE.name, inputs)
    assert result.as_numpy("OUTPUT0").dtype == np.float32
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (a + b).astype(np.float32))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), (a - b).astype(np.float32))


def test_an_ensemble_written_in_text_format_serves(triton_repo):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 5, dtype=np.int32)
    client = httpclient.InferenceServerClient(triton_repo["http"])
    inputs = [httpclient.InferInput("A", [1, 16], "INT32"), httpclient.InferInput("B", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("simple_twice", inputs)
    np.testing.assert_array_equal(result.as_numpy("TWICE_A"), 2 * a)
    np.testing.assert_array_equal(result.as_numpy("TWICE_B"), 2 * b)


SIMPLE_HEAD = 'name: "{name}"\nmax_batch_size: 8\n'
GOOD_IO = ('input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },'
           ' { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]\n')

# Each broken config, and what its load error must say (file, line and field where the
# parse knows them).
BROKEN = {
    "truncated": ("input [ { name: \"INPUT0\" data_type: TYPE_INT32", ["config.pbtxt", "line 3", "end of input"]),
    "open_string": ("platform: \"onnxruntime_onnx\n", ["config.pbtxt", "line 3", "string is not closed"]),
    "unknown_enum": (GOOD_IO.replace("TYPE_INT32", "TYPE_FLOAT", 1), ["config.pbtxt", "line 3, column 37", "TYPE_FLOAT"]),
    "wrong_type": ("default_model_filename: 7\n", ["config.pbtxt", "line 3, column 25", "string"]),
    "duplicate_scalar": ("max_batch_size: 4\n", ["config.pbtxt", "line 3", "'max_batch_size' is already set"]),
    "two_schedulers": ("dynamic_batching { }\nsequence_batching { }\n", ["config.pbtxt", "line 4", "oneof"]),
    "negative_dims": (GOOD_IO.replace("[ 16 ]", "[ -4 ]", 1), ["config.pbtxt", "input[0].dims", "found -4"]),
    "dims_disagree": (GOOD_IO.replace("[ 16 ]", "[ 15 ]", 1), ["input 'INPUT0'", "[15]", "disagree with the graph"]),
    "unknown_field": ("colour: \"red\"\n", ["config.pbtxt", "line 3, column 1", "'colour'"]),
    "sequence": ("sequence_batching { }\n", ["config.pbtxt", "`sequence_batching` cannot be served"]),
    "huge": ("# " + "x" * (11 << 20) + "\n", ["config.pbtxt", "over the limit"]),
    "deep": ("optimization " + "{ " * 10_000 + "}" * 10_000 + "\n", ["config.pbtxt", "line 3", "deeper than 100"]),
}


def test_config_pbtxt_mistakes_are_named_and_the_rest_serve(tmp_path):
    save(tmp_path / "good", simple_graph(TensorProto.INT32, "good"))
    (tmp_path / "good" / "config.pbtxt").write_text(SIMPLE_HEAD.format(name="good") + GOOD_IO)
    for name, (body, _) in BROKEN.items():
        save(tmp_path / name, simple_graph(TensorProto.INT32, name))
        (tmp_path / name / "config.pbtxt").write_text(SIMPLE_HEAD.format(name=name) + body)
    # Both kinds of file in one folder is refused too.
    save(tmp_path / "both", simple_graph(TensorProto.INT32, "both"))
    (tmp_path / "both" / "config.pbtxt").write_text("")
    (tmp_path / "both" / "config.yaml").write_text("")
    with running_wharf_addresses(tmp_path, "--strict-readiness", "false") as addresses:
        client = grpcclient.InferenceServerClient(addresses["grpc"])
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index["good"]["state"] == "READY"
        for name, (_, words) in BROKEN.items():
            assert index[name]["state"] == "UNAVAILABLE", (name, index[name])
            for word in words:
                assert word in index[name]["reason"], (name, word, index[name]["reason"])
        assert "holds both config.yaml and config.pbtxt" in index["both"]["reason"]
        a = np.ones((1, 16), dtype=np.int32)
        inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for i in inputs:
            i.set_data_from_numpy(a)
        np.testing.assert_array_equal(client.infer("good", inputs).as_numpy("OUTPUT0"), 2 * a)


AUTOFILL = ROOT / "tests" / "fixtures" / "triton" / "qa" / "L0_model_config" / "autofill_noplatform_success" / "onnx"

# Where wharf's completed config differs from Triton's `expected`, and why:
# - instance_group: Triton's expected files were made on a GPU host (KIND_GPU, gpus [0]),
#   and Triton gives CPU models of onnxruntime 2 instances. wharf runs what the config
#   asks on the CPU, one instance unless told: on a branch PC's 2-4 cores one instance's
#   intra-op threads already use them, and a second doubles the memory (docs/triton.md).
# - optimization: Triton adds pinned host memory for GPU copies; wharf has none to pin.
# - backend and platform: wharf names the engine that serves (tract_onnx on tract).
# - parameters: wharf reports each model's measured batch costs there.
# - instance_group names: Triton names groups `<model>` or `<model>_<i>`; wharf `<model>_<i>`.
DIFFERENCES = {"instance_group", "optimization", "backend", "platform", "parameters", "runtime"}


def expected_config(folder):
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2
    message = text_format.Parse((folder / "expected").read_text(), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


@pytest.mark.parametrize("model", ["no_config", "no_config_no_batch", "empty_config"])
def test_auto_complete_matches_triton_s_expected_configs(model, tmp_path):
    shutil.copytree(AUTOFILL / model, tmp_path / model,
                    ignore=shutil.ignore_patterns("expected*"))
    with running_wharf_addresses(tmp_path) as addresses:
        client = grpcclient.InferenceServerClient(addresses["grpc"])
        served = client.get_model_config(model, as_json=True)["config"]
    expected = expected_config(AUTOFILL / model)
    for key in set(expected) | set(served):
        if key in DIFFERENCES:
            continue
        assert served.get(key) == expected.get(key), (model, key, served.get(key), expected.get(key))
    # The listed differences are what they are said to be.
    assert served["instance_group"][0]["kind"] == "KIND_CPU"
    assert served["instance_group"][0]["count"] == 1
    assert "optimization" not in served


def test_auto_complete_off_serves_only_declared_configs(tmp_path):
    shutil.copytree(AUTOFILL / "no_config", tmp_path / "no_config", ignore=shutil.ignore_patterns("expected*"))
    shutil.copytree(EXAMPLES / "simple", tmp_path / "simple")
    save(tmp_path / "simple", simple_graph(TensorProto.INT32, "simple"))
    with running_wharf_addresses(tmp_path, "--disable-auto-complete-config", "--strict-readiness", "false") as addresses:
        client = grpcclient.InferenceServerClient(addresses["grpc"])
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index["simple"]["state"] == "READY"
        assert index["no_config"]["state"] == "UNAVAILABLE"
        assert "auto-complete is off" in index["no_config"]["reason"], index["no_config"]
        config = client.get_model_config("simple", as_json=True)["config"]
        assert config["max_batch_size"] == 8 and "dynamic_batching" not in config


def test_wharf_config_converts_and_lists_every_problem(tmp_path):
    from conftest import WHARF
    import subprocess
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "simple", repo / "simple")
    save(repo / "simple", simple_graph(TensorProto.INT32, "simple"))
    for name, (body, _) in list(BROKEN.items())[:2]:
        save(repo / name, simple_graph(TensorProto.INT32, name))
        (repo / name / "config.pbtxt").write_text(SIMPLE_HEAD.format(name=name) + body)
    run = lambda *args: subprocess.run([WHARF, "config", "--model-repository", *args],
                                       capture_output=True, text=True)
    checked = run(str(repo))
    assert checked.returncode == 1
    for name in list(BROKEN)[:2]:
        assert f"{name}: " in checked.stderr and "config.pbtxt: line" in checked.stderr, checked.stderr
    assert '# simple\nname: "simple"' in checked.stdout
    assert "input [\n  {\n    name: \"INPUT0\"" in checked.stdout

    # Triton's file to wharf's YAML and back: the same effective config each way.
    yaml_dir = tmp_path / "yaml"
    converted = run(str(repo), "--format", "yaml", "--write-to", str(yaml_dir), "simple")
    assert converted.returncode == 0, converted.stderr
    shutil.copytree(repo / "simple" / "1", yaml_dir / "simple" / "1")
    assert not (yaml_dir / "simple" / "config.pbtxt").exists()
    as_json = lambda root: json.loads(run(str(root), "--format", "json", "simple").stdout)
    assert as_json(yaml_dir) == as_json(repo)
    assert as_json(repo)["max_batch_size"] == 8 and as_json(repo)["input"][0]["dims"] == [16]


def simple_inputs():
    a = np.ones((1, 16), dtype=np.int32)
    inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for i in inputs:
        i.set_data_from_numpy(a)
    return inputs


def test_a_broken_config_pbtxt_in_poll_mode_leaves_the_old_version_serving(tmp_path):
    from test_model_control import Polls
    shutil.copytree(EXAMPLES / "simple", tmp_path / "simple")
    save(tmp_path / "simple", simple_graph(TensorProto.INT32, "simple"))
    flags = ("--model-control-mode", "poll", "--repository-poll-secs", "1")
    with running_wharf_addresses(tmp_path, *flags) as addresses:
        client = grpcclient.InferenceServerClient(addresses["grpc"])
        polls = Polls(addresses["metrics"])
        config = tmp_path / "simple" / "config.pbtxt"
        good = config.read_text()
        config.write_text(good[: good.index("output")] + "output [ { name: \"OUTPUT0\"")
        polls.wait(3)
        model = client.get_model_repository_index(as_json=True)["models"][0]
        assert "config.pbtxt: line" in model.get("reason", ""), model
        assert client.is_model_ready("simple")
        assert client.infer("simple", simple_inputs()).as_numpy("OUTPUT0")[0, 0] == 2
        config.write_text(good.replace("max_batch_size: 8", "max_batch_size: 4"))
        polls.wait(3)
        assert client.get_model_config("simple").config.max_batch_size == 4


def test_model_config_name_and_a_triton_load_override(tmp_path):
    shutil.copytree(EXAMPLES / "simple", tmp_path / "simple")
    save(tmp_path / "simple", simple_graph(TensorProto.INT32, "simple"))
    (tmp_path / "simple" / "configs").mkdir()
    (tmp_path / "simple" / "configs" / "small.pbtxt").write_text(
        (EXAMPLES / "simple" / "config.pbtxt").read_text().replace("max_batch_size: 8", "max_batch_size: 2"))
    flags = ("--model-config-name", "small", "--model-control-mode", "explicit", "--load-model", "*")
    with running_wharf_addresses(tmp_path, *flags) as addresses:
        client = grpcclient.InferenceServerClient(addresses["grpc"])
        assert client.get_model_config("simple").config.max_batch_size == 2
        # Triton's model-control example: a quoted number is valid protobuf JSON.
        client.load_model("simple", config='{"max_batch_size": "16", "backend": "onnxruntime"}')
        assert client.get_model_config("simple").config.max_batch_size == 16
        assert client.infer("simple", simple_inputs()).as_numpy("OUTPUT1")[0, 0] == 0
        # Triton's simple_grpc_model_control.py matches "failed to load" for a config that
        # is not JSON and for a model that does not exist.
        from tritonclient.utils import InferenceServerException
        for call in (lambda: client.load_model("simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}'),
                     lambda: client.load_model("wrong_model_name")):
            with pytest.raises(InferenceServerException) as refused:
                call()
            assert "failed to load" in refused.value.message(), refused.value.message()
        assert client.is_model_ready("simple")


def test_classification_answers_the_top_classes_with_their_labels(triton_repo):
    """Triton's classification extension: `class_count` (gRPC) and `classification` (HTTP)
    turn an output into BYTES "score:index:label", the top N per row, highest first."""
    image = np.random.default_rng(11).random((3, 224, 224), dtype=np.float32)
    scores = densenet_weights()[:, :, 0, 0] @ image.mean(axis=(1, 2))
    top = np.argsort(-scores, kind="stable")[:3]
    labels = (EXAMPLES / "densenet_onnx" / "densenet_labels.txt").read_text().splitlines()

    grpc = grpcclient.InferenceServerClient(triton_repo["grpc"])
    request = grpcclient.InferInput("data_0", [3, 224, 224], "FP32")
    request.set_data_from_numpy(image)
    answer = grpc.infer("densenet_onnx", [request],
                        outputs=[grpcclient.InferRequestedOutput("fc6_1", class_count=3)])
    classes = [c.decode().split(":", 2) for c in answer.as_numpy("fc6_1")]
    assert [int(i) for _, i, _ in classes] == list(top)
    assert [label for _, _, label in classes] == [labels[i] for i in top]
    np.testing.assert_allclose([float(s) for s, _, _ in classes], scores[top], rtol=1e-4)

    http = httpclient.InferenceServerClient(triton_repo["http"])
    request = httpclient.InferInput("data_0", [3, 224, 224], "FP32")
    request.set_data_from_numpy(image)
    for binary in (True, False):
        answer = http.infer("densenet_onnx", [request], outputs=[
            httpclient.InferRequestedOutput("fc6_1", binary_data=binary, class_count=3)])
        assert [c.decode() if isinstance(c, bytes) else c for c in answer.as_numpy("fc6_1")] == \
            [":".join(c) for c in classes]

    # A batched model ranks each row on its own: shape [rows, N].
    a = np.array([[5, 1, 9] + [0] * 13, [2, 8, 3] + [0] * 13], dtype=np.int32)
    inputs = [grpcclient.InferInput("INPUT0", [2, 16], "INT32"), grpcclient.InferInput("INPUT1", [2, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(np.zeros_like(a))
    answer = grpc.infer("simple", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT0", class_count=2),
                                                  grpcclient.InferRequestedOutput("OUTPUT1")])
    assert answer.as_numpy("OUTPUT0").tolist() == [[b"9:2", b"5:0"], [b"8:1", b"3:2"]]
    np.testing.assert_array_equal(answer.as_numpy("OUTPUT1"), a)


def test_classification_errors_are_named(triton_repo):
    grpc = grpcclient.InferenceServerClient(triton_repo["grpc"])
    words = [grpcclient.InferInput(n, [1, 16], "BYTES") for n in ("INPUT0", "INPUT1")]
    for w in words:
        w.set_data_from_numpy(np.array([[b"1"] * 16], dtype=np.object_))
    with pytest.raises(InferenceServerException) as refused:
        grpc.infer("simple_string", words, outputs=[grpcclient.InferRequestedOutput("OUTPUT0", class_count=1)])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "unsupported type 'BYTES'" in refused.value.message()
    with pytest.raises(InferenceServerException) as refused:
        grpc.infer("simple_string", words, outputs=[grpcclient.InferRequestedOutput("OUTPUT0", class_count=-2)])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "invalid value -2 for 'classification'" in refused.value.message()

    body = json.dumps({"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}
                                  for n in ("INPUT0", "INPUT1")],
                       "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 0}}]}).encode()
    request = urllib.request.Request(f"http://{triton_repo['http']}/v2/models/simple/infer", data=body)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 400
    assert "invalid value 0 for 'classification'" in json.load(refused.value)["error"]
