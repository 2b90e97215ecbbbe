"""OpenTelemetry tracing, checked by a real OTLP receiver (tests/python/otlp_receiver.py,
gRPC and HTTP/protobuf): the span tree of a plain, a batched and a PP-OCR request, parentage
under a caller's traceparent, the sampling policy, trace settings changed at run time over
gRPC and HTTP, logs that name their trace, and a collector that is absent, killed or slow."""
import concurrent.futures
import contextlib
import json
import pathlib
import re
import secrets
import socket
import tempfile
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from conftest import ROOT, make_repository, pipeline_repository, running_wharf_addresses
from otlp_receiver import GrpcReceiver, HttpReceiver

SERVER, INTERNAL = 2, 1  # OTLP span kinds
STATUS_ERROR = 2


def traceparent(sampled=True):
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


@contextlib.contextmanager
def traced_wharf(receiver, *flags, transport="http/protobuf", build=make_repository):
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        build(repo)
        with running_wharf_addresses(
                repo, "--trace-config", f"opentelemetry,url={receiver.endpoint}",
                "--trace-config", f"opentelemetry,protocol={transport}",
                "--trace-config", "opentelemetry,bsp_schedule_delay=50", *flags) as addresses:
            yield addresses


def infer_http(address, headers=None, model="add_sub", shape=(1, 4), inputs=("INPUT0", "INPUT1")):
    """A JSON infer (add_sub's by default) over HTTP: (status, response headers)."""
    values = [1.0] * int(np.prod(shape))
    body = json.dumps({"inputs": [
        {"name": name, "datatype": "FP32", "shape": list(shape), "data": values}
        for name in inputs]}).encode()
    request = urllib.request.Request(f"http://{address}/v2/models/{model}/infer", data=body,
                                     headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
            return answer.status, answer.headers
    except urllib.error.HTTPError as error:
        return error.code, error.headers


def infer_grpc(address, metadata=()):
    """A raw add_sub infer over gRPC: its initial metadata, as a dict."""
    request = service_pb2.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        _, call = stub.ModelInfer.with_call(request, metadata=list(metadata), timeout=30)
        return dict(call.initial_metadata())


def in_trace(spans, trace_id):
    return [s for s in spans if s["trace_id"] == trace_id]


def children(spans, parent):
    return sorted((s for s in spans if s["parent"] == parent["span_id"]), key=lambda s: s["start"])


def within(child, parent):
    assert parent["start"] <= child["start"] <= child["end"] <= parent["end"], (child, parent)


def check_request_tree(trace, server_name):
    """A plain request's tree: server span, the model's span, its queue and compute spans."""
    (server,) = [s for s in trace if s["kind"] == SERVER]
    assert server["name"] == server_name
    (model,) = children(trace, server)
    assert model["name"] == "add_sub" and model["kind"] == INTERNAL
    assert model["attributes"]["wharf.model"] == "add_sub"
    assert model["attributes"]["wharf.rows"] == 1
    queue, compute = children(trace, model)
    assert (queue["name"], compute["name"]) == ("queue", "compute")
    assert queue["end"] <= compute["start"]
    for span in (queue, compute):
        within(span, model)
    within(model, server)
    for key in ("wharf.batch.id", "wharf.batch.requests", "wharf.batch.rows",
                "wharf.batch.padding", "wharf.instance"):
        assert key in compute["attributes"], compute
    assert server["resource"]["service.name"] == "wharf"
    return server


@pytest.mark.parametrize("receiver_type,transport", [(HttpReceiver, "http/protobuf"),
                                                     (GrpcReceiver, "grpc")])
def test_a_request_is_one_trace_under_the_callers_span_over_both_front_ends(receiver_type,
                                                                           transport):
    receiver = receiver_type()
    try:
        with traced_wharf(receiver, "--trace-config", "rate=0", transport=transport) as wharf:
            http_trace, http_parent, header = traceparent()
            status, headers = infer_http(wharf["http"], {"traceparent": header})
            assert status == 200
            assert headers["traceparent"].split("-")[1] == http_trace
            grpc_trace, grpc_parent, header = traceparent()
            metadata = infer_grpc(wharf["grpc"], [("traceparent", header)])
            assert metadata["traceparent"].split("-")[1] == grpc_trace
            # A refused request is traced too, and its server span says why.
            bad_trace, _, header = traceparent()
            status, _ = infer_http(wharf["http"], {"traceparent": header}, shape=(1, 3))
            assert status == 400
            spans = receiver.wait_for(lambda s: all(
                any(x["trace_id"] == t and x["kind"] == SERVER for x in s)
                for t in (http_trace, grpc_trace, bad_trace)))
    finally:
        receiver.stop()
    server = check_request_tree(in_trace(spans, http_trace), "POST /v2/models/{model_name}/infer")
    assert server["parent"] == http_parent
    assert server["attributes"]["http.response.status_code"] == 200
    assert server["attributes"]["http.route"] == "/v2/models/{model_name}/infer"
    assert server["attributes"]["wharf.protocol"] == "http"
    server = check_request_tree(in_trace(spans, grpc_trace),
                                "inference.GRPCInferenceService/ModelInfer")
    assert server["parent"] == grpc_parent
    assert server["attributes"]["rpc.system"] == "grpc"
    assert server["attributes"]["rpc.grpc.status_code"] == 0
    (bad,) = [s for s in in_trace(spans, bad_trace) if s["kind"] == SERVER]
    assert bad["attributes"]["http.response.status_code"] == 400
    assert bad["status"] == STATUS_ERROR and "INPUT0" in bad["status_message"], bad


def one_batch_of_eight(repo):
    make_repository(repo)
    config = repo / "add_sub" / "config.yaml"
    text = config.read_text()
    text = text.replace("preferred_batch_size: [4, 8]", "preferred_batch_size: [8]")
    text = text.replace("max_queue_delay_microseconds: 2000", "max_queue_delay_microseconds: 5000000")
    text = text.replace("count: 2", "count: 1")
    config.write_text(text)


def test_eight_requests_sharing_one_engine_call_each_carry_the_call_in_their_own_trace():
    receiver = HttpReceiver()
    try:
        with traced_wharf(receiver, "--trace-config", "rate=0", build=one_batch_of_eight) as wharf:
            parents = [traceparent() for _ in range(8)]
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(
                    lambda p: infer_http(wharf["http"], {"traceparent": p[2]}), parents))
            assert [status for status, _ in answers] == [200] * 8
            traces = {t for t, _, _ in parents}
            spans = receiver.wait_for(lambda s: len(
                {x["trace_id"] for x in s if x["name"] == "compute"} & traces) == 8)
    finally:
        receiver.stop()
    computes = [s for s in spans if s["name"] == "compute" and s["trace_id"] in traces]
    assert len(computes) == 8
    assert len({c["attributes"]["wharf.batch.id"] for c in computes}) == 1, computes
    for compute in computes:
        assert compute["attributes"]["wharf.batch.requests"] == 8
        assert compute["attributes"]["wharf.batch.rows"] == 8
        assert compute["attributes"]["wharf.request.rows"] == 1
        (model,) = [s for s in spans if s["span_id"] == compute["parent"]]
        assert model["name"] == "add_sub" and model["trace_id"] == compute["trace_id"]
    # One call: every member's compute span covers the same interval.
    assert len({(c["start"], c["end"]) for c in computes}) <= 2  # clock rounding aside


def test_a_ppocr_request_shows_every_step_and_the_calls_under_it():
    receiver = HttpReceiver()
    cheque = (ROOT / "benches" / "data" / "cheque.png").read_bytes()
    try:
        with traced_wharf(receiver, "--trace-config", "rate=1", "--max-request-size", "8MiB",
                          build=lambda repo: pipeline_repository(repo, None)) as wharf:
            client = grpcclient.InferenceServerClient(wharf["grpc"])
            image = grpcclient.InferInput("image", [1], "BYTES")
            image.set_data_from_numpy(np.array([cheque], dtype=np.object_))
            lines = client.infer("ppocr", [image]).as_numpy("text")
            client.close()
            spans = receiver.wait_for(lambda s: any(
                x["kind"] == SERVER and x["attributes"].get("wharf.model") == "ppocr" for x in s))
            (server,) = [s for s in spans if s["kind"] == SERVER
                         and s["attributes"].get("wharf.model") == "ppocr"]
            trace = receiver.wait_for(lambda s: any(
                x["name"] == "ppocr" and x["trace_id"] == server["trace_id"] for x in s))
    finally:
        receiver.stop()
    trace = in_trace(trace, server["trace_id"])
    (ensemble,) = children(trace, server)
    assert ensemble["name"] == "ppocr"
    steps = children(trace, ensemble)
    models = [s["attributes"]["wharf.step.model"] for s in steps]
    assert set(models) == {"ppocr_image", "ppocr_det", "ppocr_db", "ppocr_cls_crops", "ppocr_cls",
                           "ppocr_lines", "ppocr_rec", "ppocr_ctc"}, models
    rec_rows = 0
    for step in steps:
        within(step, ensemble)
        calls = children(trace, step)
        assert len(calls) == step["attributes"]["wharf.step.fan_out"], (step, calls)
        for call in calls:
            assert call["name"] == step["attributes"]["wharf.step.model"]
            assert [c["name"] for c in children(trace, call)] == ["queue", "compute"]
        if step["attributes"]["wharf.step.model"] == "ppocr_rec":
            rec_rows += sum(c["attributes"]["wharf.rows"] for c in calls)
    assert len(lines) > 5 and rec_rows == len(lines)
    # In order: decode, detect, boxes, crops, direction, lines, recognise, text.
    first = {m: min(s["start"] for s in steps if s["attributes"]["wharf.step.model"] == m)
             for m in set(models)}
    order = ["ppocr_image", "ppocr_det", "ppocr_db", "ppocr_cls_crops", "ppocr_cls",
             "ppocr_lines", "ppocr_rec", "ppocr_ctc"]
    assert sorted(order, key=first.get) == order


def server_spans(receiver):
    return {s["trace_id"] for s in receiver.spans() if s["kind"] == SERVER}


def marker(wharf, receiver, model="add_sub", inputs=("INPUT0", "INPUT1")):
    """A sampled request whose trace, once received, shows every earlier span was sent."""
    trace_id, _, header = traceparent()
    assert infer_http(wharf["http"], {"traceparent": header}, model=model, inputs=inputs)[0] == 200
    receiver.wait_for(lambda s: any(x["trace_id"] == trace_id and x["kind"] == SERVER for x in s))
    return trace_id


def test_sampling_honours_the_callers_flag_then_the_rate_and_the_count():
    receiver = HttpReceiver()
    try:
        with traced_wharf(receiver, "--trace-config", "rate=3") as wharf:
            unsampled, _, header = traceparent(sampled=False)
            assert infer_http(wharf["http"], {"traceparent": header})[0] == 200
            before = server_spans(receiver) | {marker(wharf, receiver)}
            assert unsampled not in server_spans(receiver)
            # Without context, one request in three.
            for _ in range(6):
                assert infer_http(wharf["http"])[0] == 200
            seen = marker(wharf, receiver)
            assert len(server_spans(receiver) - before - {seen}) == 2
            # A count of 1 takes one trace more, then none, context or not.
            client = httpclient.InferenceServerClient(wharf["http"])
            client.update_trace_settings(settings={"trace_count": "1", "trace_rate": "1"})
            before = server_spans(receiver)
            for _ in range(3):
                assert infer_http(wharf["http"])[0] == 200
            sampled, _, header = traceparent()
            assert infer_http(wharf["http"], {"traceparent": header})[0] == 200
            client.update_trace_settings(settings={"trace_count": None})
            seen = marker(wharf, receiver)
            assert len(server_spans(receiver) - before - {seen}) == 1
            assert sampled not in server_spans(receiver)
            # rate 0: only callers with a sampled context.
            client.update_trace_settings(settings={"trace_rate": "0"})
            before = server_spans(receiver)
            for _ in range(4):
                assert infer_http(wharf["http"])[0] == 200
            seen = marker(wharf, receiver)
            assert server_spans(receiver) - before == {seen}
            client.close()
    finally:
        receiver.stop()


def test_trace_settings_are_read_and_changed_over_grpc_and_http_globally_and_per_model():
    receiver = HttpReceiver()
    try:
        with traced_wharf(receiver) as wharf:
            g = grpcclient.InferenceServerClient(wharf["grpc"])
            h = httpclient.InferenceServerClient(wharf["http"])
            assert h.get_trace_settings() == {"trace_level": ["TIMESTAMPS"], "trace_rate": "1000",
                                              "trace_count": "-1", "trace_mode": "opentelemetry"}
            g.update_trace_settings(settings={"trace_rate": "1"})
            assert h.get_trace_settings()["trace_rate"] == "1"
            # A model's own settings: add_sub off, the others still traced.
            h.update_trace_settings(model_name="add_sub", settings={"trace_level": ["OFF"]})
            answer = g.get_trace_settings(model_name="add_sub", as_json=True)
            assert answer["settings"]["trace_level"]["value"] == ["OFF"]
            assert answer["settings"]["trace_rate"]["value"] == ["1"]
            assert g.get_trace_settings(as_json=True)["settings"]["trace_level"]["value"] == [
                "TIMESTAMPS"]
            before = server_spans(receiver)
            assert infer_http(wharf["http"])[0] == 200
            seen = marker(wharf, receiver, "identity_fp32", ("INPUT0",))
            assert server_spans(receiver) - before == {seen}
            # Cleared, add_sub follows the server again.
            g.update_trace_settings(model_name="add_sub", settings={"trace_level": None})
            assert h.get_trace_settings(model_name="add_sub")["trace_level"] == ["TIMESTAMPS"]
            for settings, needle in [({"trace_rate": "often"}, "trace_rate"),
                                     ({"trace_level": ["TENSORS"]}, "TENSORS"),
                                     ({"trace_file": "/tmp/x"}, "trace_file"),
                                     ({"colour": "red"}, "colour")]:
                with pytest.raises(InferenceServerException, match=needle) as grpc_error:
                    g.update_trace_settings(settings=settings)
                assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT"
                with pytest.raises(InferenceServerException, match=needle) as http_error:
                    h.update_trace_settings(settings=settings)
                assert http_error.value.status() == "400"
            with pytest.raises(InferenceServerException, match="no_such_model") as error:
                g.get_trace_settings(model_name="no_such_model")
            assert error.value.status() == "StatusCode.NOT_FOUND"
            assert h.get_trace_settings()["trace_rate"] == "1", "a refused change changes nothing"
            meta = h.get_server_metadata()
            assert "trace" in meta["extensions"]
            g.close()
            h.close()
    finally:
        receiver.stop()


def test_without_an_exporter_nothing_is_traced_and_the_settings_still_answer(http_server):
    client = httpclient.InferenceServerClient(http_server)
    assert client.get_trace_settings()["trace_level"] == ["OFF"]
    status, headers = infer_http(http_server, {"traceparent": traceparent()[2]})
    assert status == 200 and "traceparent" not in headers
    client.close()


def test_log_lines_written_inside_a_traced_request_name_its_trace(monkeypatch):
    monkeypatch.setenv("WHARF_LOG", "info,wharf::inference=debug")
    receiver = HttpReceiver()
    try:
        with traced_wharf(receiver, "--trace-config", "rate=0") as wharf:
            trace_id, _, header = traceparent()
            status, headers = infer_http(wharf["http"], {"traceparent": header})
            assert status == 200
            server_span = headers["traceparent"].split("-")[2]
            deadline = time.monotonic() + 10
            while True:
                lines = [json.loads(line) for line in list(wharf["log"]) if "request answered" in line]
                traced = [line for line in lines if line.get("span", {}).get("trace_id") == trace_id]
                if traced:
                    break
                assert time.monotonic() < deadline, lines
                time.sleep(0.05)
            assert traced[0]["span"]["span_id"] == server_span
    finally:
        receiver.stop()


def dropped(metrics_address):
    text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10).read().decode()
    found = re.search(r'^wharf_trace_spans_total\{outcome="dropped"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_collector_absent_at_start_or_killed_mid_run_costs_spans_never_requests():
    class Absent:
        endpoint = f"http://127.0.0.1:{free_port()}/v1/traces"

    with traced_wharf(Absent, "--trace-config", "rate=1") as wharf:
        for _ in range(20):
            assert infer_http(wharf["http"])[0] == 200
        wait_until(lambda: dropped(wharf["metrics"]) >= 20 * 4)
        failures = [line for line in list(wharf["log"]) if "trace export failed" in line]
        assert len(failures) == 1, "logged once, not per span or batch"

    receiver = GrpcReceiver()
    with traced_wharf(receiver, "--trace-config", "rate=1", transport="grpc") as wharf:
        for _ in range(5):
            assert infer_grpc(wharf["grpc"])
        receiver.wait_for(lambda s: len([x for x in s if x["kind"] == SERVER]) == 5)
        receiver.stop()
        for _ in range(20):
            assert infer_grpc(wharf["grpc"])
        wait_until(lambda: dropped(wharf["metrics"]) >= 20 * 4)


def rss_kib(pid):
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))


def p99(latencies):
    return sorted(latencies)[int(len(latencies) * 0.99) - 1]


def test_a_slow_collector_leaves_p99_alone_and_memory_bounded():
    receiver = HttpReceiver(delay=5.0)
    try:
        with traced_wharf(receiver, "--trace-config", "rate=1",
                          "--trace-config", "opentelemetry,bsp_max_queue_size=64",
                          "--trace-config", "opentelemetry,bsp_max_export_batch_size=16") as wharf:
            client = httpclient.InferenceServerClient(wharf["http"])

            def timed(n):
                took = []
                for _ in range(n):
                    start = time.perf_counter()
                    assert infer_http(wharf["http"])[0] == 200
                    took.append(time.perf_counter() - start)
                return took

            client.update_trace_settings(settings={"trace_level": ["OFF"]})
            timed(50)
            untraced = timed(300)
            client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
            timed(50)
            rss_before = rss_kib(wharf["pid"])
            traced = timed(300)
            rss_after = rss_kib(wharf["pid"])
            # The exporter is stuck for 5 s per batch: the queue fills and the rest drop.
            assert dropped(wharf["metrics"]) > 300
            assert p99(traced) < max(3 * p99(untraced), p99(untraced) + 0.02), (
                p99(traced), p99(untraced))
            assert rss_after - rss_before < 32 * 1024, (rss_before, rss_after)
            client.close()
    finally:
        receiver.stop()


def test_each_message_of_a_stream_is_traced_under_the_streams_traceparent():
    receiver = GrpcReceiver()
    try:
        with traced_wharf(receiver, "--trace-config", "rate=0", transport="grpc") as wharf:
            trace_id, parent, header = traceparent()
            answers = []
            client = grpcclient.InferenceServerClient(wharf["grpc"])
            client.start_stream(callback=lambda result, error: answers.append((result, error)),
                                headers={"traceparent": header})
            for _ in range(3):
                inputs = [grpcclient.InferInput(n, [1, 4], "FP32") for n in ("INPUT0", "INPUT1")]
                for tensor in inputs:
                    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
                client.async_stream_infer("add_sub", inputs)
            client.stop_stream()
            client.close()
            assert len(answers) == 3 and all(error is None for _, error in answers), answers
            spans = receiver.wait_for(lambda s: len([
                x for x in s if x["trace_id"] == trace_id and x["kind"] == SERVER]) == 3)
    finally:
        receiver.stop()
    servers = [s for s in in_trace(spans, trace_id) if s["kind"] == SERVER]
    for server in servers:
        assert server["name"] == "inference.GRPCInferenceService/ModelStreamInfer"
        assert server["parent"] == parent
        assert server["attributes"]["rpc.method"] == "ModelStreamInfer"
        (model,) = children(spans, server)
        assert [c["name"] for c in children(spans, model)] == ["queue", "compute"]
