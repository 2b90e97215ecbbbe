"""KServe v2 over HTTP/REST as the real tritonclient[http] package and plain HTTP see it:
the twin of test_conformance.py (binary and JSON tensors, compressed and not, BYTES,
outputs chosen, errors and their codes, statistics), Triton's status codes and error
bodies, and hostile bodies, each answered with its code while the server serves on."""
import gzip
import http.client
import json
import pathlib
import socket
import ssl
import subprocess
import time
import urllib.request
import zlib

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import make_repository, running_wharf_addresses


@pytest.fixture
def client(http_server):
    c = httpclient.InferenceServerClient(http_server)
    yield c
    c.close()


def raw(http_server, method, path, body=b"", headers=None):
    """One plain HTTP exchange: status, headers, body."""
    host, port = http_server.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    answer = conn.getresponse()
    data = answer.read()
    conn.close()
    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, data


def test_server_status_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "wharf" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("add_sub") and not client.is_model_ready("add_sub", "9")
    model = client.get_model_metadata("ppocr_cls")
    assert model["name"] == "ppocr_cls" and model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 48, 192]}]
    assert client.get_model_metadata("ppocr_cls", "1")["name"] == "ppocr_cls"


def test_model_config_is_tritons_json(client):
    config = client.get_model_config("add_sub")
    assert config["name"] == "add_sub" and config["max_batch_size"] == 8
    assert [(i["name"], i["dims"], i["data_type"]) for i in config["input"]] == [
        ("INPUT0", [4], "TYPE_FP32"), ("INPUT1", [4], "TYPE_FP32")]
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"


def test_repository_index(client):
    states = {(m["name"], m["version"]): m["state"] for m in client.get_model_repository_index()}
    assert states[("ppocr_cls", "1")] == "READY" and states[("add_sub", "1")] == "READY"


CASES = [
    ("FP32", np.array([[1.5, -2.0, 3.25]], dtype=np.float32)),
    ("INT64", np.array([[-(2**62), 0, 7]], dtype=np.int64)),
    ("BOOL", np.array([[True, False, True]], dtype=bool)),
    ("INT8", np.array([[-128, 0, 127]], dtype=np.int8)),
    ("UINT16", np.array([[0, 1, 65535]], dtype=np.uint16)),
    ("FP64", np.array([[1e300, -0.5, 0.0]], dtype=np.float64)),
    ("BYTES", np.array([["汉字".encode(), b"", b"cheque"]], dtype=np.object_)),
]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype,data", CASES, ids=[c[0] for c in CASES])
def test_infer(client, datatype, data, binary):
    inp = httpclient.InferInput("INPUT0", list(data.shape), datatype)
    inp.set_data_from_numpy(data, binary_data=binary)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
    result = client.infer(f"identity_{datatype.lower()}", [inp], outputs=[out], request_id="r-" + datatype)
    assert result.get_response()["id"] == "r-" + datatype
    got = result.as_numpy("OUTPUT0")
    assert got.shape == data.shape
    if datatype == "BYTES" and not binary:
        # JSON carries BYTES as strings, and tritonclient hands them back as str.
        got = np.array([[x.encode() for x in row] for row in got], dtype=object)
    assert (got == data).all(), (got, data)


def test_fp16_travels_binary_even_where_json_was_asked(client):
    data = np.array([[1.0, -0.5, 65504.0]], dtype=np.float16)
    inp = httpclient.InferInput("INPUT0", [1, 3], "FP16")
    inp.set_data_from_numpy(data)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)
    assert (client.infer("identity_fp16", [inp], outputs=[out]).as_numpy("OUTPUT0") == data).all()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_answers(client, algorithm):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    inputs = [httpclient.InferInput("INPUT0", [2, 4], "FP32"), httpclient.InferInput("INPUT1", [2, 4], "FP32")]
    for inp in inputs:
        inp.set_data_from_numpy(a)
    result = client.infer("add_sub", inputs, request_compression_algorithm=algorithm,
                          response_compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)


def test_requested_outputs(client):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), dtype=np.float32)
    inputs = [httpclient.InferInput("INPUT0", [2, 4], "FP32"), httpclient.InferInput("INPUT1", [2, 4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b, binary_data=False)
    result = client.infer("add_sub", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)])
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_output("OUTPUT1")["data"] == (a - b).flatten().tolist()


def expect_error(call, status, text):
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == str(status), info.value
    assert text in info.value.message(), info.value.message()


def test_errors_carry_tritons_codes(client):
    x = np.zeros((1, 3, 48, 192), dtype=np.float32)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    expect_error(lambda: client.infer("nope", [inp]), 404, "unknown model: 'nope'")
    expect_error(lambda: client.infer("ppocr_cls", [inp], model_version="7"), 404, "no version 7")
    wrong = httpclient.InferInput("image", list(x.shape), "FP32")
    wrong.set_data_from_numpy(x)
    expect_error(lambda: client.infer("ppocr_cls", [wrong]), 400, "no input named 'image'")
    expect_error(lambda: client.get_model_metadata("nope"), 404, "unknown model: 'nope'")
    expect_error(lambda: client.unload_model("ppocr_cls"), 400, "--model-control-mode none")
    assert client.infer("ppocr_cls", [inp]).as_numpy("save_infer_model/scale_0.tmp_1").shape == (1, 2)


def test_statistics_have_every_key_perf_analyzer_reads(client):
    a = np.ones((2, 4), dtype=np.float32)
    inputs = [httpclient.InferInput("INPUT0", [2, 4], "FP32"), httpclient.InferInput("INPUT1", [2, 4], "FP32")]
    for inp in inputs:
        inp.set_data_from_numpy(a)
    before = client.get_inference_statistics("add_sub")["model_stats"][0]
    for _ in range(5):
        client.infer("add_sub", inputs)
    stats = client.get_inference_statistics("add_sub")["model_stats"][0]
    assert stats["name"] == "add_sub" and stats["version"] == "1"
    assert stats["inference_count"] - before["inference_count"] == 10
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss"):
        assert isinstance(stats["inference_stats"][key]["count"], int), key
        assert isinstance(stats["inference_stats"][key]["ns"], int), key
    assert stats["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 5
    names = {s["name"] for s in client.get_inference_statistics()["model_stats"]}
    assert names >= {"add_sub", "ppocr_cls"}


def scrape(metrics_address):
    """The server's Prometheus series, by their full text (name and labels)."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as answer:
        lines = answer.read().decode().splitlines()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines if line and line[0] != "#")}


def test_per_request_metrics_carry_the_front_end(servers):
    series = 'wharf_requests_total{{model="identity_fp32",version="1",protocol="{}",outcome="{}"}}'
    timed = 'wharf_request_duration_seconds_count{{model="identity_fp32",version="1",protocol="{}"}}'
    refused = 'wharf_requests_refused_total{{protocol="{}",reason="unknown_model"}}'
    before = scrape(servers["metrics"])
    data = np.ones((1, 3), np.float32)
    http_in = httpclient.InferInput("INPUT0", [1, 3], "FP32")
    http_in.set_data_from_numpy(data)
    grpc_in = grpcclient.InferInput("INPUT0", [1, 3], "FP32")
    grpc_in.set_data_from_numpy(data)
    with httpclient.InferenceServerClient(servers["http"]) as h, \
            grpcclient.InferenceServerClient(servers["grpc"]) as g:
        h.infer("identity_fp32", [http_in])
        wrong = httpclient.InferInput("INPUT0", [1, 3], "INT32")
        wrong.set_data_from_numpy(np.ones((1, 3), np.int32))
        with pytest.raises(InferenceServerException):
            h.infer("identity_fp32", [wrong])
        with pytest.raises(InferenceServerException):
            h.infer("no_such_model", [http_in])
        for _ in range(2):
            g.infer("identity_fp32", [grpc_in])
    after = scrape(servers["metrics"])
    change = {k: after[k] - before.get(k, 0.0) for k in after}
    assert change[series.format("http", "success")] == 1, change
    assert change[series.format("http", "invalid")] == 1, change
    assert change[series.format("grpc", "success")] == 2, change
    assert change[series.format("grpc", "invalid")] == 0, change
    assert change[timed.format("http")] == 1 and change[timed.format("grpc")] == 2, change
    assert change[refused.format("http")] == 1 and change[refused.format("grpc")] == 0, change


def infer_body(header, binary=b""):
    text = json.dumps(header).encode()
    return text + binary, {"Inference-Header-Content-Length": str(len(text))}


IDENTITY = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}


def input_with(**changes):
    """IDENTITY's body with its one input changed."""
    return json.dumps({"inputs": [{**IDENTITY["inputs"][0], **changes}]}).encode()


def test_hostile_bodies_get_their_codes_and_the_server_serves_on(http_server):
    infer = "/v2/models/identity_fp32/infer"
    one = np.array([1, 2], dtype=np.float32).tobytes()
    binary_input = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32",
                                "parameters": {"binary_data_size": 8}}]}
    deep = 1
    for _ in range(101):
        deep = [deep]
    cases = [
        ("GET", "/v2/nothing", b"", {}, 404, "Not Found"),
        ("GET", "/v2/models/identity_fp32/versions/x", b"", {}, 404, "Not Found"),
        ("POST", "/v2/health/live", b"", {}, 405, "Method Not Allowed"),
        ("GET", infer, b"", {}, 405, "Method Not Allowed"),
        ("POST", infer, b"{not json", {}, 400, "the request's JSON"),
        ("POST", infer, json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32",
                                                "data": deep}]}).encode(), {}, 400, "nests deeper than 100"),
        ("POST", infer, *infer_body(IDENTITY)[:1], {"Inference-Header-Content-Length": "9999"}, 400,
         "must lie within the body"),
        ("POST", infer, *infer_body(binary_input, one + b"x"), 400, "unexpected additional input data"),
        ("POST", infer, *infer_body(binary_input, one[:4]), 400, "binary_data_size is 8 but only 4 bytes follow"),
        ("POST", infer, json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "FP32",
                                                "data": [1, 2]}]}).encode(), {}, 400, "needs 3"),
        ("POST", infer, json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP16",
                                                "data": [1]}]}).encode(), {}, 400, "FP16 data via JSON is not supported"),
        ("POST", "/v2/models/identity_bytes/infer", *infer_body(
            {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "BYTES",
                         "parameters": {"binary_data_size": 6}}]}, b"\x09\0\0\0ab"), 400, "INPUT0"),
        ("POST", "/v2/models/nope/infer", json.dumps(IDENTITY).encode(), {}, 404, "unknown model: 'nope'"),
        ("POST", infer, gzip.compress(b"{" * 10), {"Content-Encoding": "gzip"}, 400, "the request's JSON"),
        ("POST", infer, b"garbage", {"Content-Encoding": "gzip"}, 400, "does not decompress"),
        ("POST", infer, b"{}", {"Content-Encoding": "br"}, 501, "unsupported Content-Encoding"),
        ("POST", infer, json.dumps({**IDENTITY, "parameters": {"triton_enable": True}}).encode(), {}, 400, "reserved"),
        ("POST", infer, json.dumps({**IDENTITY, "parameters": {"priority": "high"}}).encode(), {}, 400,
         "parameter 'priority' must be a non-negative integer"),
        ("POST", "/v2/cudasharedmemory/region/r/register", b"{}", {}, 501, "CUDA shared memory is not implemented"),
        ("POST", "/v2/systemsharedmemory/region/r/register", b"{}", {}, 400, "needs \"key\""),
        ("POST", "/v2/systemsharedmemory/region/r/register", b"{\"key\": \"/k\"}", {}, 400, "needs \"byte_size\""),
        ("POST", "/v2/logging", b"[]", {}, 400, "a JSON object"),
        # A declared size over the limit is refused before the body is read.
        ("POST", infer, b"x" * 10, {"Content-Length": str(4 << 30)}, 400, "exceeds the maximum allowed"),
        ("POST", infer, b"", {}, 400, "the request's JSON"),
        ("POST", infer, b"[1]", {}, 400, "the request's JSON"),
        ("POST", infer, json.dumps({"inputs": {"name": "INPUT0"}}).encode(), {}, 400, "the request's JSON"),
        ("POST", infer, json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "data": [1, 2]}]}).encode(),
         {}, 400, "missing field `shape`"),
        ("POST", "/v2/models/identity_fp32/versions/9/infer", json.dumps(IDENTITY).encode(), {}, 404,
         "has no version 9"),
        ("POST", infer, input_with(name="NOPE"), {}, 400, "no input named 'NOPE'"),
        ("POST", infer, input_with(datatype="INT32"), {}, 400, "has datatype INT32 but model 'identity_fp32' expects FP32"),
        ("POST", infer, input_with(datatype="FP128"), {}, 400, "unknown datatype 'FP128'"),
        ("POST", infer, input_with(shape=[1, -2]), {}, 400, "negative dimension"),
        ("POST", infer, input_with(shape=[9, 2], data=[1] * 18), {}, 400, "batch size 9"),
        ("POST", infer, input_with(parameters={"binary_data_size": -8}), {}, 400,
         "binary_data_size must be a non-negative integer"),
        ("POST", infer, input_with(parameters={"binary_data_size": 8}), {}, 400, "send its data one way"),
        ("POST", infer, json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32"}]}).encode(),
         {}, 400, "neither `data` nor binary_data_size"),
        ("POST", infer, input_with(parameters={"content_type": "base64"}), {}, 400, "content_type"),
        ("POST", infer, input_with(parameters={"shared_memory_region": "r"}), {}, 400,
         "names shared memory region 'r' but no shared_memory_byte_size"),
        ("POST", infer, json.dumps({"inputs": IDENTITY["inputs"] * 2}).encode(), {}, 400, "given more than once"),
        ("POST", infer, json.dumps({"inputs": []}).encode(), {}, 400, "missing input 'INPUT0'"),
        ("POST", "/v2/models/identity_bool/infer", json.dumps(
            {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "BOOL", "data": [2]}]}).encode(), {}, 400,
         "expected true or false"),
        ("POST", "/v2/models/identity_int8/infer", json.dumps(
            {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "INT8", "data": [300]}]}).encode(), {}, 400,
         "out of range for INT8"),
        ("POST", infer, json.dumps({**IDENTITY, "outputs": [{"name": "NOPE"}]}).encode(), {}, 400,
         "no output named 'NOPE'"),
        ("POST", infer, json.dumps({**IDENTITY, "outputs": [{"name": "OUTPUT0", "parameters": {"classification": "two"}}]})
         .encode(), {}, 400, "'classification' must be an integer class count"),
        ("POST", infer, json.dumps({**IDENTITY, "parameters": {"timeout": "soon"}}).encode(), {}, 400,
         "parameter 'timeout' must be a non-negative integer"),
        ("POST", infer, json.dumps({**IDENTITY, "parameters": {"binary_data_output": "yes"}}).encode(), {}, 400,
         "'binary_data_output' must be true or false"),
        ("POST", infer, b"{}", {"Content-Encoding": "gzip, br"}, 501, "unsupported Content-Encoding"),
        ("POST", "/v2/repository/models/identity_fp32/load", b"{bad", {}, 400, "the request's JSON"),
    ]
    for method, path, body, headers, status, says in cases:
        got, answer_headers, data = raw(http_server, method, path, body, headers)
        assert got == status, (path, body[:80], got, data)
        assert says in json.loads(data)["error"], (path, data)
        assert answer_headers["content-type"] == "application/json"
        if status == 501 and "Content-Encoding" in headers:
            assert answer_headers["accept-encoding"] == "gzip, deflate"
    # A zip bomb: 64 MiB of zeros in 64 KiB, past the body limit once inflated.
    bomb = zlib.compress(b"\0" * (200 << 20), 9)
    got, _, data = raw(http_server, "POST", infer, bomb, {"Content-Encoding": "deflate"})
    assert got == 400 and "decompresses to more than" in json.loads(data)["error"], data
    # Still serving, JSON in and out.
    got, headers, data = raw(http_server, "POST", infer, json.dumps(IDENTITY).encode())
    assert got == 200 and headers["content-type"] == "application/json", data
    assert json.loads(data)["outputs"][0]["data"] == [1.0, 2.0]


def test_the_raw_form_is_the_models_one_input(http_server):
    data = np.arange(6, dtype=np.float32)
    got, headers, body = raw(http_server, "POST", "/v2/models/identity_fp32/infer", data.tobytes(),
                             {"Inference-Header-Content-Length": "0"})
    assert got == 200, body
    length = int(headers["inference-header-content-length"])
    header = json.loads(body[:length])
    assert header["outputs"][0]["shape"] == [1, 6]
    assert np.frombuffer(body[length:], dtype=np.float32).tolist() == data.tolist()
    got, _, body = raw(http_server, "POST", "/v2/models/add_sub/infer", data.tobytes(),
                       {"Inference-Header-Content-Length": "0"})
    assert got == 400 and "one input" in json.loads(body)["error"]


def test_health_failures_have_empty_bodies_and_model_ready_says_why(http_server):
    got, _, body = raw(http_server, "GET", "/v2/health/ready")
    assert (got, body) == (200, b"")
    got, _, body = raw(http_server, "GET", "/v2/models/nope/ready")
    assert got == 400 and "unknown model: 'nope'" in json.loads(body)["error"]


def test_repository_load_unload_and_the_api_key(tmp_path):
    make_repository(tmp_path)
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    flags = ("--model-control-mode", "explicit", "--load-model", "identity_fp32",
             "--api-key-file", str(key))
    with running_wharf_addresses(tmp_path, *flags) as addresses:
        address = addresses["http"]
        got, _, body = raw(address, "GET", "/v2/models/identity_fp32")
        assert got == 401 and "authorization" in json.loads(body)["error"]
        got, _, body = raw(address, "GET", "/v2/models/identity_fp32", headers={"Authorization": "Bearer nope"})
        assert got == 401 and "not valid" in json.loads(body)["error"]
        # Probes need no key.
        assert raw(address, "GET", "/v2/health/ready")[0] == 200
        client = httpclient.InferenceServerClient(address)
        auth = {"Authorization": "Bearer s3cret"}
        assert not client.is_model_ready("add_sub", headers=auth)
        client.load_model("add_sub", headers=auth, config=json.dumps({"max_batch_size": 4}))
        assert client.is_model_ready("add_sub", headers=auth)
        assert client.get_model_config("add_sub", headers=auth)["max_batch_size"] == 4
        expect_error(lambda: client.load_model("nothing", headers=auth), 404, "'nothing'")
        expect_error(lambda: client.load_model("add_sub", headers=auth, config='{"max_batch_size": "four"}'),
                     400, "max_batch_size")
        client.unload_model("add_sub", headers=auth)
        # UNLOADING until its workers are joined (on a thread of their own), then gone.
        deadline = time.monotonic() + 30
        while True:
            index = {(m["name"], m["version"]): m for m in client.get_model_repository_index(headers=auth)}
            if index[("add_sub", "1")]["state"] == "UNAVAILABLE":
                break
            assert index[("add_sub", "1")]["state"] == "UNLOADING", index
            assert time.monotonic() < deadline, "add_sub never unloaded"
            time.sleep(0.02)
        assert index[("add_sub", "1")]["reason"] == "unloaded"
        client.close()


def rss_kib(pid):
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def test_a_thousand_slow_connections_hold_little_and_the_server_serves_on(servers):
    """Each sends its request line and part of its headers, then stalls (slowloris); the
    header deadline will close them. Meanwhile requests are answered and memory stays
    bounded."""
    host, port = servers["http"].rsplit(":", 1)
    before = rss_kib(servers["pid"])
    slow = []
    try:
        for _ in range(1000):
            s = socket.create_connection((host, int(port)))
            s.sendall(b"POST /v2/models/identity_fp32/infer HTTP/1.1\r\nHost: x\r\nContent-Le")
            slow.append(s)
        got, _, data = raw(servers["http"], "POST", "/v2/models/identity_fp32/infer", json.dumps(IDENTITY).encode())
        assert got == 200, data
        during = rss_kib(servers["pid"])
        print(f"RSS before 1,000 slow connections {before} KiB, with them {during} KiB")
        assert during < before + 64 * 1024, (before, during)
    finally:
        for s in slow:
            s.close()
    assert raw(servers["http"], "GET", "/v2/health/ready")[0] == 200


def test_with_tls_on_http_is_https_with_the_same_certificate(tmp_path):
    make_repository(tmp_path / "repo")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    flags = ("--tls-cert", str(cert), "--tls-key", str(key))
    with running_wharf_addresses(tmp_path / "repo", *flags, ca=str(cert)) as addresses:
        host, port = addresses["http"].rsplit(":", 1)
        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
        conn.request("POST", "/v2/models/identity_fp32/infer", body=json.dumps(IDENTITY))
        answer = conn.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["outputs"][0]["data"] == [1.0, 2.0]
        conn.close()
        # Plain HTTP on the TLS port gets no answer.
        with pytest.raises((http.client.HTTPException, OSError)):
            raw(addresses["http"], "GET", "/v2/health/ready")
