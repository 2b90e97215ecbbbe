"""KServe v2 conformance as seen by the real tritonclient[grpc] package."""
import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, triton_to_np_dtype


def test_server_status_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "wharf"
    assert client.is_model_ready("add_sub")
    assert not client.is_model_ready("add_sub", "9")
    model = client.get_model_metadata("ppocr_cls")
    assert model.name == "ppocr_cls"
    assert list(model.versions) == ["1"]
    assert [(i.name, i.datatype, list(i.shape)) for i in model.inputs] == [("x", "FP32", [-1, 3, 48, 192])]
    assert [(o.name, list(o.shape)) for o in model.outputs] == [("save_infer_model/scale_0.tmp_1", [-1, 2])]


def test_model_config_parses(client):
    config = client.get_model_config("add_sub").config
    assert config.name == "add_sub"
    assert config.backend == "tract"
    assert config.platform == "tract_onnx"
    assert config.max_batch_size == 8
    assert [(i.name, list(i.dims)) for i in config.input] == [("INPUT0", [4]), ("INPUT1", [4])]
    assert config.input[0].data_type == 11  # TYPE_FP32
    assert [o.name for o in config.output] == ["OUTPUT0", "OUTPUT1"]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 64
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == 2  # KIND_CPU
    as_json = client.get_model_config("ppocr_cls", as_json=True)
    assert as_json["config"]["max_batch_size"] == 8


def test_repository_index(client):
    index = client.get_model_repository_index()
    states = {(m.name, m.version): m.state for m in index.models}
    assert states[("ppocr_cls", "1")] == "READY"
    assert states[("add_sub", "1")] == "READY"


CASES = [
    ("FP32", np.array([[1.5, -2.0, 3.25]], dtype=np.float32)),
    ("INT64", np.array([[-(2**62), 0, 7]], dtype=np.int64)),
    ("BOOL", np.array([[True, False, True]], dtype=bool)),
    ("FP16", np.array([[1.0, -0.5, 65504.0]], dtype=np.float16)),
    ("BYTES", np.array([["汉字".encode(), b"", b"cheque"]], dtype=np.object_)),
]


@pytest.mark.parametrize("datatype,data", CASES, ids=[c[0] for c in CASES])
def test_infer_raw(client, datatype, data):
    inp = grpcclient.InferInput("INPUT0", list(data.shape), datatype)
    inp.set_data_from_numpy(data)
    result = client.infer(f"identity_{datatype.lower()}", [inp], request_id="r-" + datatype)
    assert result.get_response().id == "r-" + datatype
    out = result.as_numpy("OUTPUT0")
    assert out.shape == data.shape
    assert out.dtype == data.dtype or datatype == "BYTES"
    assert (out == data).all()


TYPED = {
    "FP32": ("fp32_contents", [1.5, -2.0, 3.25]),
    "INT64": ("int64_contents", [-(2**62), 0, 7]),
    "BOOL": ("bool_contents", [True, False, True]),
    "BYTES": ("bytes_contents", ["汉字".encode(), b"", b"cheque"]),
}


@pytest.mark.parametrize("datatype", list(TYPED))
def test_infer_typed_contents(server, datatype):
    """tritonclient always sends raw; typed contents go through its own protobuf stubs. The
    answer is raw whatever the request's form, as Triton's is (its
    grpc_explicit_*_content_client examples read only raw_output_contents)."""
    field, values = TYPED[datatype]
    request = service_pb2.ModelInferRequest(model_name=f"identity_{datatype.lower()}", id="typed")
    tensor = request.inputs.add(name="INPUT0", datatype=datatype, shape=[1, len(values)])
    getattr(tensor.contents, field).extend(values)
    with grpc.insecure_channel(server) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert response.id == "typed"
    assert len(response.raw_output_contents) == 1
    assert not response.outputs[0].HasField("contents")
    raw = response.raw_output_contents[0]
    if datatype == "BYTES":
        got = list(deserialize_bytes_tensor(raw))
    else:
        got = np.frombuffer(raw, dtype=triton_to_np_dtype(datatype)).tolist()
    assert got == values


def test_requested_outputs(client):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), dtype=np.float32)
    inputs = [grpcclient.InferInput("INPUT0", [2, 4], "FP32"), grpcclient.InferInput("INPUT1", [2, 4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("add_sub", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_streaming(client):
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(10):
            data = np.full((1, 4), i, dtype=np.float32)
            name = "INPUT9" if i == 4 else "INPUT0"
            inputs = [grpcclient.InferInput(name, [1, 4], "FP32"), grpcclient.InferInput("INPUT1", [1, 4], "FP32")]
            inputs[0].set_data_from_numpy(data)
            inputs[1].set_data_from_numpy(data)
            client.async_stream_infer("add_sub", inputs, request_id=str(i))
        got = [answers.get(timeout=30) for _ in range(10)]
    finally:
        client.stop_stream()
    errors = [e for _, e in got if e is not None]
    assert len(errors) == 1 and "no input named 'INPUT9'" in str(errors[0])
    ids = [r.get_response().id for r, e in got if e is None]
    assert ids == [str(i) for i in range(10) if i != 4]
    for r, e in got:
        if e is None:
            i = float(r.get_response().id)
            np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), np.full((1, 4), 2 * i, dtype=np.float32))


def expect_error(call, code, text):
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == f"StatusCode.{code}", info.value
    assert text in info.value.message(), info.value.message()


def test_errors(client):
    x = np.zeros((1, 3, 48, 192), dtype=np.float32)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    expect_error(lambda: client.infer("nope", [inp]), "NOT_FOUND", "unknown model: 'nope'")
    expect_error(lambda: client.infer("ppocr_cls", [inp], model_version="7"), "NOT_FOUND", "no version 7")
    wrong = grpcclient.InferInput("image", list(x.shape), "FP32")
    wrong.set_data_from_numpy(x)
    expect_error(lambda: client.infer("ppocr_cls", [wrong]), "INVALID_ARGUMENT", "no input named 'image'")
    small = np.zeros((1, 3, 48, 100), dtype=np.float32)
    bad_shape = grpcclient.InferInput("x", list(small.shape), "FP32")
    bad_shape.set_data_from_numpy(small)
    expect_error(lambda: client.infer("ppocr_cls", [bad_shape]), "INVALID_ARGUMENT", "expects [-1, 3, 48, 192]")
    as_int = grpcclient.InferInput("x", list(x.shape), "INT64")
    as_int.set_data_from_numpy(x.astype(np.int64))
    expect_error(lambda: client.infer("ppocr_cls", [as_int]), "INVALID_ARGUMENT", "datatype INT64 but model 'ppocr_cls' expects FP32")
    expect_error(lambda: client.get_model_metadata("nope"), "NOT_FOUND", "unknown model: 'nope'")
    expect_error(lambda: client.unload_model("ppocr_cls"), "FAILED_PRECONDITION", "--model-control-mode none")
    # Still serving after all of that.
    assert client.infer("ppocr_cls", [inp]).as_numpy("save_infer_model/scale_0.tmp_1").shape == (1, 2)


def test_statistics(client):
    a = np.ones((2, 4), dtype=np.float32)
    inputs = [grpcclient.InferInput("INPUT0", [2, 4], "FP32"), grpcclient.InferInput("INPUT1", [2, 4], "FP32")]
    for inp in inputs:
        inp.set_data_from_numpy(a)
    before = client.get_inference_statistics("add_sub").model_stats[0]
    for _ in range(5):
        client.infer("add_sub", inputs)
    stats = client.get_inference_statistics("add_sub").model_stats[0]
    assert stats.name == "add_sub" and stats.version == "1"
    assert stats.inference_count - before.inference_count == 10  # 5 requests of 2 rows
    assert stats.inference_stats.success.count - before.inference_stats.success.count == 5
    assert stats.execution_count > before.execution_count
    assert stats.inference_stats.queue.count >= 5
    assert {b.batch_size for b in stats.batch_stats} >= {2}
    everything = client.get_inference_statistics()
    assert {s.name for s in everything.model_stats} >= {"add_sub", "ppocr_cls"}
