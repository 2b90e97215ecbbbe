"""Triton's protocol extensions beyond inference: the logging extension (gRPC LogSettings,
HTTP /v2/logging), each changing the real server's log at run time."""
import json
import shutil
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
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
