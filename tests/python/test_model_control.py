"""Runtime model management through tritonclient: explicit load / unload and the
repository index, poll mode, three swaps and a broken version under 16 clients with zero
failed requests, concurrent loads and unloads, requests in flight through an unload, a
version folder copied in slowly, a 90/10 traffic split, and the loads refused (a bad split,
model files sent with the load)."""
import concurrent.futures
import os
import pathlib
import shutil
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT, running_wharf, running_wharf_and_metrics

IDENTITY = ROOT / "tests/models/identity_fp32/1/model.onnx"
SLOW = ROOT / "tests/models/slow/1/model.onnx"
EXPLICIT = ("--model-control-mode", "explicit")


def add_version(repo: pathlib.Path, name: str, version: int, source=IDENTITY) -> None:
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, folder / "model.onnx")


def index(client):
    """(name, version) -> (state, reason), as tritonclient reads RepositoryIndex."""
    models = client.get_model_repository_index(as_json=True).get("models", [])
    return {(m["name"], m.get("version", "")): (m.get("state", ""), m.get("reason", "")) for m in models}


def until(condition, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def infer(client, name, version=""):
    """The version that answered."""
    x = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    return client.infer(name, [x], model_version=version).get_response().model_version


def refused(call):
    with pytest.raises(InferenceServerException) as failure:
        call()
    return failure.value.status(), failure.value.message()


def metric(address, series):
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(series + " ") or line.startswith(series + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_explicit_mode_loads_unloads_and_lists_the_repository(tmp_path):
    add_version(tmp_path, "a", 1)
    add_version(tmp_path, "b", 1)
    with running_wharf(tmp_path, *EXPLICIT, "--load-model", "a") as address:
        client = grpcclient.InferenceServerClient(address)
        rows = index(client)
        assert rows[("a", "1")][0] == "READY", rows
        assert rows[("b", "")] == ("", ""), "b is listed, not loaded"
        status, message = refused(lambda: infer(client, "b"))
        assert status == "StatusCode.UNAVAILABLE" and "not loaded" in message, message

        client.load_model("b")
        assert client.is_model_ready("b") and infer(client, "b") == "1"
        client.unload_model("b")
        until(lambda: index(client)[("b", "1")] == ("UNAVAILABLE", "unloaded"), "b unloaded")
        assert not client.is_model_ready("b")
        status, message = refused(lambda: infer(client, "b"))
        assert status == "StatusCode.UNAVAILABLE" and "unloaded" in message, message
        assert client.is_server_ready(), "an unloaded model does not make the server unready"

        # A config given with the load replaces config.yaml; a bad one is refused and
        # what serves stays.
        client.load_model("b", config='{"max_batch_size": 4}')
        assert client.get_model_config("b").config.max_batch_size == 4
        status, message = refused(lambda: client.load_model("b", config='{"max_batch_size": "four"}'))
        assert status == "StatusCode.INVALID_ARGUMENT" and "max_batch_size" in message, message
        assert infer(client, "b") == "1"

        status, message = refused(lambda: client.load_model("nothing"))
        assert status == "StatusCode.NOT_FOUND" and "'nothing'" in message, message
        client.close()


def test_load_and_unload_are_refused_outside_explicit_mode(tmp_path):
    add_version(tmp_path, "a", 1)
    with running_wharf(tmp_path) as address:
        client = grpcclient.InferenceServerClient(address)
        status, message = refused(lambda: client.load_model("a"))
        assert status == "StatusCode.FAILED_PRECONDITION" and "--model-control-mode none" in message
        status, _ = refused(lambda: client.unload_model("a"))
        assert status == "StatusCode.FAILED_PRECONDITION"
        assert infer(client, "a") == "1"
        client.close()


def test_loads_with_a_bad_traffic_split_or_model_files_are_refused_and_the_model_serves_on(tmp_path):
    add_version(tmp_path, "m", 1)
    add_version(tmp_path, "m", 2)
    with running_wharf(tmp_path, *EXPLICIT, "--load-model", "m") as address:
        client = grpcclient.InferenceServerClient(address)
        assert infer(client, "m") == "2"
        both = '"version_policy": {"specific": {"versions": [1, 2]}}'
        # Every share zero: no version could take a request.
        status, message = refused(lambda: client.load_model(
            "m", config='{%s, "version_traffic": {"1": 0, "2": 0}}' % both))
        assert status == "StatusCode.INVALID_ARGUMENT", message
        assert "version_traffic" in message and "above 0" in message, message
        # A share for a version the policy does not serve.
        status, message = refused(lambda: client.load_model(
            "m", config='{%s, "version_traffic": {"1": 50, "3": 50}}' % both))
        assert status == "StatusCode.INVALID_ARGUMENT", message
        assert "version 3 is not served" in message and "[1, 2]" in message, message
        # Model files sent with the load (Triton's `file:` parameters) are not taken.
        status, message = refused(lambda: client.load_model(
            "m", config='{}', files={"file:1/model.onnx": IDENTITY.read_bytes()}))
        assert status == "StatusCode.UNIMPLEMENTED", message
        assert "(file:1/model.onnx) are not supported" in message and "failed to load 'm'" in message, message
        # A path Triton could not write fails as Triton's does (its example matches it).
        status, message = refused(lambda: client.load_model(
            "m", config='{}', files={"file:" + "é" * 200: b"a"}))
        assert status == "StatusCode.INTERNAL", message
        assert "failed to poll from model repository" in message and "NAME_MAX" in message, message
        # Each refusal left what served as it was.
        assert infer(client, "m") == "2" and client.is_model_ready("m")
        assert index(client)[("m", "2")][0] == "READY"
        client.close()


class Polls:
    """Waits on the server's own count of repository scans, not on the clock."""

    def __init__(self, metrics_address):
        self.address = metrics_address

    def count(self):
        return metric(self.address, "wharf_repository_polls_total")

    def wait(self, n):
        """Until `n` more scans have finished."""
        target = self.count() + n
        until(lambda: self.count() >= target, f"{n} repository polls", timeout=30)


def test_poll_mode_applies_new_removed_and_changed_folders_and_recovers_from_a_bad_one(tmp_path):
    add_version(tmp_path, "m", 1)
    (tmp_path / "m" / "config.yaml").write_text("version_policy: { all: {} }\n")
    flags = ("--model-control-mode", "poll", "--repository-poll-secs", "1")
    with running_wharf_and_metrics(tmp_path, *flags) as (address, metrics_address):
        client = grpcclient.InferenceServerClient(address)
        polls = Polls(metrics_address)
        # Within two poll periods: a scan in flight when the change is made may miss it;
        # the next sees it, the one after finds it unchanged and applies it.
        settle = 3

        add_version(tmp_path, "m", 2)
        polls.wait(settle)
        assert index(client)[("m", "2")][0] == "READY"
        assert infer(client, "m") == "2"

        shutil.rmtree(tmp_path / "m" / "2")
        polls.wait(settle)
        assert index(client)[("m", "2")] == ("UNAVAILABLE", "unloaded")
        assert infer(client, "m") == "1"

        (tmp_path / "m" / "config.yaml").write_text("version_policy: { all: {} }\nmax_batch_size: 4\n")
        polls.wait(settle)
        assert client.get_model_config("m").config.max_batch_size == 4

        add_version(tmp_path, "n", 1)
        polls.wait(settle)
        assert infer(client, "n") == "1"
        shutil.rmtree(tmp_path / "n")
        polls.wait(settle)
        assert index(client)[("n", "1")] == ("UNAVAILABLE", "unloaded")

        # A version that cannot load is shown with its reason; m serves on, and the next
        # change is still applied.
        (tmp_path / "m" / "3").mkdir()
        (tmp_path / "m" / "3" / "model.onnx").write_bytes(b"not a model")
        polls.wait(settle)
        state, reason = index(client)[("m", "3")]
        assert state == "UNAVAILABLE" and reason, (state, reason)
        assert infer(client, "m") == "1"
        shutil.copy(IDENTITY, tmp_path / "m" / "3" / "model.onnx")
        polls.wait(settle)
        assert index(client)[("m", "3")][0] == "READY"
        assert infer(client, "m") == "3"
        client.close()


def test_a_linked_model_folder_serves_and_a_flipped_link_is_applied_in_poll_mode(tmp_path):
    """Model and version folders may be links, as where a volume or a sync tool swaps a
    link to publish a new release."""
    store, repo = tmp_path / "store", tmp_path / "repo"
    add_version(store, "release_a", 1)
    add_version(store, "release_b", 2)
    repo.mkdir()
    (repo / "m").symlink_to(store / "release_a")
    flags = ("--model-control-mode", "poll", "--repository-poll-secs", "1")
    with running_wharf_and_metrics(repo, *flags) as (address, metrics_address):
        client = grpcclient.InferenceServerClient(address)
        polls = Polls(metrics_address)
        assert infer(client, "m") == "1"

        # Swapped in one rename, as such tools publish.
        (repo / ".m.next").symlink_to(store / "release_b")
        os.replace(repo / ".m.next", repo / "m")
        polls.wait(3)
        assert index(client)[("m", "1")] == ("UNAVAILABLE", "unloaded")
        assert infer(client, "m") == "2"
        client.close()


def test_a_version_copied_in_slowly_is_loaded_only_once_complete(tmp_path):
    add_version(tmp_path, "m", 1)
    flags = ("--model-control-mode", "poll", "--repository-poll-secs", "1")
    with running_wharf_and_metrics(tmp_path, *flags) as (address, metrics_address):
        client = grpcclient.InferenceServerClient(address)
        polls = Polls(metrics_address)
        data = IDENTITY.read_bytes()
        chunks = [data[i:i + len(data) // 4 + 1] for i in range(0, len(data), len(data) // 4 + 1)]
        assert len(chunks) >= 4
        target = tmp_path / "m" / "2" / "model.onnx"
        target.parent.mkdir()
        # One piece after each scan: no two scans see the folder the same, as a slow copy.
        for chunk in chunks:
            polls.wait(1)
            with open(target, "ab") as f:
                f.write(chunk)
            assert ("m", "2") not in index(client), "a folder still being copied is left alone"
        polls.wait(3)
        assert index(client)[("m", "2")][0] == "READY"
        assert infer(client, "m") == "2"
        client.close()


CLS = ROOT / "models/ppocr_cls/1/model.onnx"
PIPELINE = """platform: ensemble
max_batch_size: 8
input: [{ name: x, data_type: TYPE_FP32, dims: [3, 48, 192] }]
output: [{ name: y, data_type: TYPE_FP32, dims: [2] }]
ensemble_scheduling:
  step: [{ model_name: m, model_version: -1, input_map: { x: x }, output_map: { "save_infer_model/scale_0.tmp_1": y } }]
"""


def classify(client, name):
    """The version that answered, for the PP-OCR classifier (a load of ~0.3 s)."""
    x = grpcclient.InferInput("x", [1, 3, 48, 192], "FP32")
    x.set_data_from_numpy(np.zeros((1, 3, 48, 192), np.float32))
    return client.infer(name, [x]).get_response().model_version


def test_three_swaps_and_a_broken_version_under_16_clients_fail_no_request(tmp_path):
    """Half the clients call m (the PP-OCR classifier), half an ensemble over it (loaded
    with it, as its step)."""
    add_version(tmp_path, "m", 1, CLS)
    (tmp_path / "m" / "config.yaml").write_text("version_policy: { latest: { num_versions: 1 } }\n")
    (tmp_path / "pipeline" / "1").mkdir(parents=True)
    (tmp_path / "pipeline" / "config.yaml").write_text(PIPELINE)
    with running_wharf(tmp_path, *EXPLICIT, "--load-model", "pipeline") as address:
        control = grpcclient.InferenceServerClient(address)
        started = time.monotonic()
        stop = threading.Event()
        ok, failed, seen = [0] * 16, [], set()

        def caller(k):
            client = grpcclient.InferenceServerClient(address)
            while not stop.is_set():
                try:
                    if k % 2:
                        classify(client, "pipeline")
                    else:
                        seen.add(classify(client, "m"))
                    ok[k] += 1
                except InferenceServerException as e:
                    failed.append(str(e))
            client.close()

        # Strict readiness (the default) holds through the swaps: a version LOADING beside
        # a READY one leaves the server ready, so no pod leaves its Service for a swap.
        not_ready, probes = [], [0]

        def prober():
            client = grpcclient.InferenceServerClient(address)
            while not stop.is_set():
                if not client.is_server_ready():
                    not_ready.append(time.monotonic() - started)
                probes[0] += 1
            client.close()

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(16)]
        threads.append(threading.Thread(target=prober))
        for t in threads:
            t.start()
        until(lambda: sum(ok) > 100, "the clients are running")
        # 1: a new version.
        add_version(tmp_path, "m", 2, CLS)
        control.load_model("m")
        assert classify(control, "m") == "2"
        # 2: a changed config of the same version.
        (tmp_path / "m" / "config.yaml").write_text(
            "version_policy: { latest: { num_versions: 1 } }\nmax_batch_size: 4\n")
        control.load_model("m")
        assert control.get_model_config("m").config.max_batch_size == 4
        # 3: rollback.
        shutil.rmtree(tmp_path / "m" / "2")
        control.load_model("m")
        assert classify(control, "m") == "1"
        # A broken version: refused, version 1 serves on.
        (tmp_path / "m" / "3").mkdir()
        (tmp_path / "m" / "3" / "model.onnx").write_bytes(b"not a model")
        status, message = refused(lambda: control.load_model("m"))
        assert status == "StatusCode.INVALID_ARGUMENT" and "version 3" in message, message
        assert classify(control, "m") == "1"
        assert index(control)[("m", "3")][0] == "UNAVAILABLE"
        assert control.is_server_ready(), "the serving version keeps the server ready"
        before = sum(ok)
        until(lambda: sum(ok) > before + 100, "the clients still get answers")
        stop.set()
        for t in threads:
            t.join()
        print(f"\nswaps under load, {time.monotonic() - started:.1f} s: {sum(ok)} requests answered ({sum(ok[1::2])} through the ensemble), "
              f"{len(failed)} failed, versions of m seen {sorted(seen)}")
        assert not failed, failed[:3]
        assert seen == {"1", "2"}
        assert probes[0] > 0 and not not_ready, f"not ready at {not_ready[:3]} s of {probes[0]} probes"
        control.close()


def test_concurrent_loads_and_an_unload_during_a_load_end_consistent(tmp_path):
    add_version(tmp_path, "m", 1)
    with running_wharf(tmp_path, *EXPLICIT, "--load-model", "m") as address:
        clients = [grpcclient.InferenceServerClient(address) for _ in range(2)]
        add_version(tmp_path, "m", 2)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda c: c.load_model("m"), clients))
        rows = index(clients[0])
        assert rows[("m", "2")][0] == "READY", rows
        until(lambda: index(clients[0])[("m", "1")] == ("UNAVAILABLE", "unloaded"), "version 1 retired")
        assert infer(clients[0], "m") == "2"

        add_version(tmp_path, "m", 3)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            load = pool.submit(clients[0].load_model, "m")
            unload = pool.submit(clients[1].unload_model, "m")
            load.result(), unload.result()
        # Whichever ran last decided; the index, readiness and requests agree with it.
        until(lambda: all(s != "UNLOADING" for s, _ in index(clients[0]).values()), "settled")
        serving = [v for (n, v), (s, _) in index(clients[0]).items() if n == "m" and s == "READY"]
        assert clients[0].is_model_ready("m") == bool(serving)
        if serving:
            assert serving == ["3"] and infer(clients[0], "m") == "3"
        else:
            status, _ = refused(lambda: infer(clients[0], "m"))
            assert status == "StatusCode.UNAVAILABLE"
        for c in clients:
            c.close()


def test_requests_in_flight_finish_through_an_unload(tmp_path):
    add_version(tmp_path, "slow", 1, SLOW)
    shutil.copy(ROOT / "tests/models/slow/config.yaml", tmp_path / "slow" / "config.yaml")
    with running_wharf_and_metrics(tmp_path, *EXPLICIT, "--load-model", "slow") as (address, metrics_address):
        client = grpcclient.InferenceServerClient(address)
        output = client.get_model_metadata("slow").outputs[0].name

        def call():
            c = grpcclient.InferenceServerClient(address)
            x = grpcclient.InferInput("x", [1024, 1024], "FP32")
            x.set_data_from_numpy(np.full((1024, 1024), 0.01, np.float32))
            try:
                return c.infer("slow", [x]).as_numpy(output).shape
            finally:
                c.close()

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            calls = [pool.submit(call) for _ in range(3)]
            busy = 'wharf_instances_busy{model="slow",version="1"}'
            pending = 'wharf_pending_requests{model="slow",version="1"}'
            until(lambda: metric(metrics_address, busy) == 1 and metric(metrics_address, pending) == 2,
                  "one request computing, two queued behind it")
            client.unload_model("slow")
            assert not client.is_model_ready("slow"), "no new requests once unloading"
            shapes = [c.result(timeout=60) for c in calls]
        assert all(s == (1024, 1024) for s in shapes), shapes
        until(lambda: index(client)[("slow", "1")] == ("UNAVAILABLE", "unloaded"), "unloaded after the last")
        client.close()


def test_a_90_10_split_sends_10_percent_of_unversioned_requests_to_the_new_version(tmp_path):
    add_version(tmp_path, "m", 1)
    add_version(tmp_path, "m", 2)
    (tmp_path / "m" / "config.yaml").write_text(
        "version_policy: { specific: { versions: [1, 2] } }\nversion_traffic: { 1: 90, 2: 10 }\n")
    with running_wharf(tmp_path, *EXPLICIT, "--load-model", "m") as address:
        client = grpcclient.InferenceServerClient(address)
        answered = []
        for i in range(2000):
            answered.append(infer(client, "m"))
            # Readiness and metadata look the version up too, without moving the split on.
            if i % 7 == 0:
                assert client.is_model_ready("m") and client.get_model_metadata("m").name == "m"
        share = answered.count("2") / len(answered)
        print(f"\n90/10 split: {answered.count('1')} to version 1, {answered.count('2')} to version 2")
        assert 0.08 <= share <= 0.12, share
        assert answered.count("2") == 200, "every run of 100 requests sends exactly 10 to version 2"
        assert infer(client, "m", "1") == "1" and infer(client, "m", "2") == "2"
        client.close()
