"""Triton's protocol extensions beyond inference: the logging extension (gRPC LogSettings,
HTTP /v2/logging), each changing the real server's log at run time; and system shared
memory: round trips through POSIX regions, every error, clients that truncate or unlink
their regions, and no descriptors or maps left behind."""
import json
import os
import shutil
import time
import urllib.error
import urllib.request

import grpc as grpc_module
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from conftest import ROOT, running_wharf_addresses


@pytest.fixture
def identity_server(tmp_path):
    shutil.copytree(ROOT / "tests" / "models" / "identity_fp32", tmp_path / "identity_fp32")
    with running_wharf_addresses(tmp_path) as addresses:
        yield addresses


def infer_once(client):
    request = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
    request.set_data_from_numpy(np.ones((1, 2), dtype=np.float32))
    client.infer("identity_fp32", [request], request_id="logged-request")


def wait_for_line(log, predicate, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for line in list(log):
            if predicate(line):
                return line
        time.sleep(0.02)
    raise AssertionError("no such log line")


def post(address, body):
    request = urllib.request.Request(f"http://{address}/v2/logging", data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as refused:
        return refused.code, json.load(refused)


def test_log_settings_change_the_level_and_format_at_run_time(identity_server):
    grpc = grpcclient.InferenceServerClient(identity_server["grpc"])
    http = httpclient.InferenceServerClient(identity_server["http"])
    assert "logging" in grpc.get_server_metadata(as_json=True)["extensions"]
    settings = grpc.get_log_settings(as_json=True)["settings"]
    assert settings["log_info"] == {"bool_param": True}
    assert settings["log_verbose_level"] == {"uint32_param": 0} or "uint32_param" not in settings["log_verbose_level"]
    assert http.get_log_settings() == {"log_file": "", "log_error": True, "log_warning": True,
                                       "log_info": True, "log_verbose_level": 0, "log_format": "json"}

    log = identity_server["log"]
    infer_once(grpc)
    # Verbose off: no per-request line.
    assert not any("logged-request" in line for line in log)
    # Verbose level 1 (DEBUG) over HTTP: the request's line appears, in JSON.
    answer = http.update_log_settings({"log_verbose_level": 1})
    assert answer["log_verbose_level"] == 1 and answer["log_info"] is True
    infer_once(grpc)
    line = wait_for_line(log, lambda l: "logged-request" in l)
    assert json.loads(line)["fields"]["message"] == "request answered"
    # Text format over gRPC: the next request's line is text, not JSON.
    log.clear()
    grpc.update_log_settings({"log_format": "text"})
    infer_once(grpc)
    line = wait_for_line(log, lambda l: "logged-request" in l)
    assert line.lstrip()[0] != "{" and "request answered" in line
    # Warnings off turns info and verbose off with them (levels are thresholds).
    answer = http.update_log_settings({"log_warning": False, "log_format": "json"})
    assert (answer["log_error"], answer["log_warning"], answer["log_info"], answer["log_verbose_level"]) == \
        (True, False, False, 0)
    log.clear()
    infer_once(grpc)
    grpc.get_server_metadata()
    assert http.update_log_settings({"log_info": True})["log_warning"] is True
    wait_for_line(log, lambda l: "log settings changed" in l)
    assert not any("logged-request" in line for line in log)


def test_bad_log_settings_are_refused_by_name(identity_server):
    address = identity_server["http"]
    for body, phrase in [
        ({"log_info": False, "log_verbose_level": 2}, "contradict"),
        ({"log_verbose_level": -1}, "not a count"),
        ({"log_info": "yes"}, "log_info must be a boolean"),
        ({"log_format": "xml"}, "log_format 'xml' is not one of text, json"),
        ({"log_colour": True}, "unknown log setting 'log_colour'"),
        ({"log_file": "/tmp/x"}, "log_file cannot be set"),
        ([1, 2], "a JSON object"),
    ]:
        status, answer = post(address, body)
        assert status == 400, body
        assert phrase in answer["error"], (body, answer)
    grpc = grpcclient.InferenceServerClient(identity_server["grpc"])
    with pytest.raises(InferenceServerException) as refused:
        grpc.update_log_settings({"log_info": False, "log_verbose_level": 1})
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "contradict" in refused.value.message()
    # Nothing half-applied: the settings are as they were.
    assert post(address, {})[1]["log_info"] is True


@pytest.fixture
def shm_server(tmp_path):
    shutil.copytree(ROOT / "tests" / "models" / "identity_fp32", tmp_path / "identity_fp32")
    with running_wharf_addresses(tmp_path, "--allow-client-shm", "--client-shm-limit", "1MiB") as addresses:
        yield addresses


@pytest.fixture
def regions():
    """Creates POSIX regions for a test and removes what is left of them after it."""
    made = []

    def create(name, size):
        key = f"/wharf_test_{os.getpid()}_{name}"
        handle = shm.create_shared_memory_region(name, key, size)
        made.append(handle)
        return key, handle

    yield create
    for handle in made:
        try:
            shm.destroy_shared_memory_region(handle)
        except Exception:
            pass


def identity_request(module, rows, region_in=None, region_out=None, offset=0):
    request = module.InferInput("INPUT0", list(rows.shape), "FP32")
    if region_in:
        request.set_shared_memory(region_in, rows.nbytes, offset)
    else:
        request.set_data_from_numpy(rows)
    output = module.InferRequestedOutput("OUTPUT0")
    if region_out:
        output.set_shared_memory(region_out, rows.nbytes)
    return [request], [output]


def infer(client, module, rows, region_in=None, region_out=None, offset=0):
    inputs, outputs = identity_request(module, rows, region_in, region_out, offset)
    return client.infer("identity_fp32", inputs, outputs=outputs)


def refused(call):
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def test_shared_memory_is_off_unless_allowed(identity_server, regions):
    key, _ = regions("off", 64)
    grpc = grpcclient.InferenceServerClient(identity_server["grpc"])
    status, message = refused(lambda: grpc.register_system_shared_memory("off", key, 64))
    assert status == "StatusCode.UNIMPLEMENTED"
    assert "Client shared memory is disabled. Start the server with '--allow-client-shm=true'" in message
    http = httpclient.InferenceServerClient(identity_server["http"])
    status, message = refused(lambda: http.register_system_shared_memory("off", key, 64))
    assert status == 501 or "501" in str(status), status
    assert grpc.get_system_shared_memory_status(as_json=True) == {}
    assert "system_shared_memory" not in grpc.get_server_metadata(as_json=True)["extensions"]
    assert http.get_system_shared_memory_status() == []


@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
def test_inputs_and_outputs_travel_through_shared_memory(shm_server, regions, module):
    client = module.InferenceServerClient(shm_server["grpc" if module is grpcclient else "http"])
    extensions = client.get_server_metadata()
    extensions = extensions["extensions"] if module is httpclient else extensions.extensions
    assert "system_shared_memory" in extensions
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    key_in, handle_in = regions("in", 64 + rows.nbytes)
    key_out, handle_out = regions("out", rows.nbytes)
    # The input lies 16 bytes into a region that starts 48 bytes into its object.
    shm.set_shared_memory_region(handle_in, [rows], offset=64)
    client.register_system_shared_memory("in", key_in, 16 + rows.nbytes, offset=48)
    client.register_system_shared_memory("out", key_out, rows.nbytes)
    inputs, outputs = identity_request(module, rows, "in", "out", offset=16)
    result = client.infer("identity_fp32", inputs, outputs=outputs)
    # The data is in the region, not the answer, which gives only its type and shape.
    if module is httpclient:
        assert result.get_output("OUTPUT0") == {"name": "OUTPUT0", "datatype": "FP32", "shape": [3, 4]}
    else:
        assert list(result.get_output("OUTPUT0").shape) == [3, 4]
        assert result.get_response().raw_output_contents == [b""]
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle_out, np.float32, [3, 4]), rows)

    def listed():
        if module is httpclient:
            return {r["name"]: r for r in client.get_system_shared_memory_status()}
        regions = client.get_system_shared_memory_status(as_json=True).get("regions", {})
        return {name: {k: int(v) if k in ("offset", "byte_size") else v for k, v in r.items()}
                for name, r in regions.items()}

    assert listed()["in"] == {"name": "in", "key": key_in, "offset": 48, "byte_size": 16 + rows.nbytes}
    assert sorted(listed()) == ["in", "out"]
    client.unregister_system_shared_memory("in")
    assert sorted(listed()) == ["out"]
    client.unregister_system_shared_memory()
    assert listed() == {}


def test_shared_memory_errors_are_named(shm_server, regions, tmp_path):
    grpc = grpcclient.InferenceServerClient(shm_server["grpc"])
    http = httpclient.InferenceServerClient(shm_server["http"])
    key, handle = regions("r", 64)
    rows = np.ones((2, 4), dtype=np.float32)
    grpc.register_system_shared_memory("r", key, 64)
    cases = [
        (lambda: grpc.register_system_shared_memory("r", key, 64),
         "StatusCode.ALREADY_EXISTS", "shared memory region 'r' already in manager"),
        (lambda: grpc.register_system_shared_memory("past", key, 64, offset=8),
         "StatusCode.INVALID_ARGUMENT", "offset 8 + byte_size 64 is past the end"),
        (lambda: grpc.register_system_shared_memory("none", "/wharf_no_such_region", 8),
         "StatusCode.INVALID_ARGUMENT", "Unable to open shared memory region: '/wharf_no_such_region'"),
        (lambda: grpc.register_system_shared_memory("dots", "/..", 8),
         "StatusCode.INVALID_ARGUMENT", "invalid shm key '/..'"),
        (lambda: grpc.register_system_shared_memory("slash", "/a/b", 8),
         "StatusCode.INVALID_ARGUMENT", "invalid shm key '/a/b'"),
        (lambda: grpc.register_system_shared_memory("big", key, 2 << 20),
         "StatusCode.RESOURCE_EXHAUSTED", "--client-shm-limit"),
        (lambda: grpc.get_system_shared_memory_status("nope"),
         "StatusCode.NOT_FOUND", "Unable to find shared memory region: 'nope'"),
        (lambda: infer(grpc, grpcclient, rows, "nope"),
         "StatusCode.NOT_FOUND", "Unable to find shared memory region: 'nope'"),
        (lambda: infer(grpc, grpcclient, rows, "r", offset=48),
         "StatusCode.INVALID_ARGUMENT", "offset 48 + byte_size 32 is past its 64 bytes"),
        (lambda: infer(grpc, grpcclient, rows, "r", offset=64),
         "StatusCode.INVALID_ARGUMENT", "Invalid offset for shared memory region: 'r'"),
        (lambda: grpc.infer("identity_fp32", identity_request(grpcclient, np.ones((4, 4), np.float32))[0],
                            outputs=[shm_output(grpcclient, "r", 16)]),
         "StatusCode.INVALID_ARGUMENT", "for output 'OUTPUT0' (16 bytes) should be at least 64 bytes"),
    ]
    for call, status, phrase in cases:
        got_status, message = refused(call)
        assert (got_status, phrase in message) == (status, True), (status, phrase, got_status, message)
    # HTTP gives the same errors with Triton's statuses.
    for call, status, phrase in [
        (lambda: http.register_system_shared_memory("r", key, 64), 400, "already in manager"),
        (lambda: http.get_system_shared_memory_status("nope"), 404, "Unable to find shared memory region"),
        (lambda: infer(http, httpclient, rows, "nope"), 404,
         "Unable to find shared memory region: 'nope'"),
        (lambda: http.register_system_shared_memory("big", key, 2 << 20), 503, "--client-shm-limit"),
    ]:
        got_status, message = refused(call)
        assert (str(got_status), phrase in message) == (str(status), True), (status, phrase, got_status, message)
    # Classification and shared memory on one output (tritonclient refuses it before
    # sending, so the request is written by hand).
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "outputs": [{"name": "OUTPUT0", "parameters": {
                "classification": 1, "shared_memory_region": "r", "shared_memory_byte_size": 16}}]}
    request = urllib.request.Request(f"http://{shm_server['http']}/v2/models/identity_fp32/infer",
                                     data=json.dumps(body).encode())
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request)
    assert caught.value.code == 400
    assert "can't set both 'shared_memory_region' and 'classification'" in json.load(caught.value)["error"]
    message = service_pb2.ModelInferRequest(model_name="identity_fp32")
    tensor = message.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1, 2, 3, 4])
    output = message.outputs.add(name="OUTPUT0")
    output.parameters["classification"].int64_param = 1
    output.parameters["shared_memory_region"].string_param = "r"
    output.parameters["shared_memory_byte_size"].int64_param = 16
    with grpc_channel(shm_server["grpc"]) as channel:
        with pytest.raises(grpc_module.RpcError) as caught:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message)
    assert caught.value.code() == grpc_module.StatusCode.INVALID_ARGUMENT
    assert "can't set both 'shared_memory_region' and 'classification'" in caught.value.details()
    # A link planted in /dev/shm is not followed.
    link = f"wharf_test_{os.getpid()}_link"
    os.symlink(tmp_path / "secret", f"/dev/shm/{link}")
    (tmp_path / "secret").write_bytes(b"x" * 64)
    try:
        got_status, message = refused(lambda: grpc.register_system_shared_memory("link", "/" + link, 8))
        assert got_status == "StatusCode.INVALID_ARGUMENT" and "Unable to open" in message, message
    finally:
        os.unlink(f"/dev/shm/{link}")
    # The server serves on.
    assert grpc.infer("identity_fp32", identity_request(grpcclient, rows)[0]).as_numpy("OUTPUT0").shape == (2, 4)


def grpc_channel(address):
    return grpc_module.insecure_channel(address)


def shm_output(module, region, size, class_count=0):
    output = module.InferRequestedOutput("OUTPUT0", class_count=class_count)
    output.set_shared_memory(region, size)
    return output


@pytest.mark.parametrize("side", ["input", "output"])
def test_a_region_truncated_or_unlinked_after_registering_fails_only_its_request(shm_server, regions, side):
    grpc = grpcclient.InferenceServerClient(shm_server["grpc"])
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    key, handle = regions("victim", rows.nbytes)
    shm.set_shared_memory_region(handle, [rows])
    grpc.register_system_shared_memory("victim", key, rows.nbytes)
    request = lambda: (infer(grpc, grpcclient, rows, "victim") if side == "input"
                         else infer(grpc, grpcclient, rows, None, "victim"))
    # Unlinked: the server's descriptor keeps the object; requests still work.
    os.unlink(f"/dev/shm{key}")
    request()
    if side == "output":
        np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [2, 4]), rows)
    # Truncated (through the client's own descriptor): the request fails, named; no SIGBUS.
    os.ftruncate(handle._shm_fd, 4) if hasattr(handle, "_shm_fd") else truncate_through_proc(shm_server["pid"], key)
    status, message = refused(request)
    assert status == "StatusCode.INVALID_ARGUMENT", message
    assert "now holds 4 bytes, fewer than the 32 this request uses" in message
    # The server serves on.
    assert grpc.is_server_live()
    assert grpc.infer("identity_fp32", identity_request(grpcclient, rows)[0]).as_numpy("OUTPUT0").shape == (2, 4)


def truncate_through_proc(pid, key):
    """The unlinked object, reached through the server's open descriptor of it."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith(f"/dev/shm{key}"):
            os.truncate(f"/proc/{pid}/fd/{fd}", 4)
            return
    raise AssertionError(f"the server holds no descriptor of {key}")


def test_a_thousand_register_cycles_leave_no_descriptor_or_map(shm_server, regions):
    grpc = grpcclient.InferenceServerClient(shm_server["grpc"])
    pid = shm_server["pid"]
    rows = np.ones((1, 4), dtype=np.float32)
    key, handle = regions("cycle", rows.nbytes)
    shm.set_shared_memory_region(handle, [rows])

    def held():
        return len(os.listdir(f"/proc/{pid}/fd")), sum(1 for _ in open(f"/proc/{pid}/maps"))

    def cycle():
        grpc.register_system_shared_memory("cycle", key, rows.nbytes)
        infer(grpc, grpcclient, rows, "cycle", "cycle")
        grpc.unregister_system_shared_memory("cycle")

    for _ in range(20):  # warm: connection, thread-local buffers
        cycle()
    fds, maps = held()
    for _ in range(1000):
        cycle()
    fds_after, maps_after = held()
    assert fds_after <= fds, (fds, fds_after)
    assert maps_after <= maps + 8, (maps, maps_after)
