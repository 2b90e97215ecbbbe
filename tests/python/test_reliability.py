"""Reliability of the real wharf binary as a separate process, where its memory and CPU can
be read from /proc: the in-flight byte budget bounds peak RSS under concurrent large
requests, accepting backs off when file descriptors run out, overload is answered with
OK / RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED and nothing else, and SIGTERM under load loses
no admitted request."""
import json
import os
import pathlib
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

ROOT = pathlib.Path(__file__).resolve().parents[2]
WHARF = os.environ.get("WHARF_BIN", str(ROOT / "target" / "release" / "wharf"))
INFER = "/inference.GRPCInferenceService/ModelInfer"
READY = "/inference.GRPCInferenceService/ServerReady"
MIB = 1 << 20

# ~50 ms a call on tract whatever the input's length: its input is summed, spread over a
# 384x384 matrix and multiplied by itself 12 times (tests/gen_faulty_models.py).
BUSY = """\
max_batch_size: 0
model_warmup: false
instance_group: [{ count: 1, kind: KIND_CPU }]
dynamic_batching: { default_queue_policy: { max_queue_size: 8 } }
"""


class Wharf:
    """wharf serving `repo` on a loopback port, its log kept in memory."""

    def __init__(self, repo, *flags, nofile=None):
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
        self.proc = subprocess.Popen(
            [WHARF, "--log-format", "json", "serve", "--host", "127.0.0.1", "--grpc-port", "0",
             "--metrics-port", "0", "--model-repository", str(repo), *flags],
            stderr=subprocess.PIPE, text=True, preexec_fn=limit,
        )
        self.log = []
        self.address = None
        for line in self.proc.stderr:
            self.log.append(line)
            fields = json.loads(line).get("fields", {}) if line.startswith("{") else {}
            if "grpc_addr" in fields:
                self.address = fields["grpc_addr"]
                break
        assert self.address, "".join(self.log)
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
        self.channel = grpc.insecure_channel(
            self.address,
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
        )
        ready = self.channel.unary_unary(READY, request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=service_pb2.ServerReadyResponse.FromString)
        deadline = time.monotonic() + 60
        while True:
            try:
                if ready(service_pb2.ServerReadyRequest(), timeout=5).ready:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "wharf did not become ready"
            time.sleep(0.05)
        # Sends pre-serialised requests, so that a 60 MB request is encoded once.
        self.infer_raw = self.channel.unary_unary(INFER, request_serializer=lambda b: b,
                                                  response_deserializer=service_pb2.ModelInferResponse.FromString)

    def status(self, key):
        """A /proc/PID/status field in bytes (VmRSS, VmHWM)."""
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def cpu_seconds(self):
        fields = pathlib.Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def busy_request(values, request_id=""):
    request = service_pb2.ModelInferRequest(model_name="busy", id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=[values])
    request.raw_input_contents.append(np.full(values, 0.001, dtype=np.float32).tobytes())
    return request.SerializeToString()


@pytest.fixture
def busy_repo():
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp) / "busy"
        (folder / "1").mkdir(parents=True)
        shutil.copy(ROOT / "tests" / "faulty" / "busy.onnx", folder / "1" / "model.onnx")
        (folder / "config.yaml").write_text(BUSY)
        yield pathlib.Path(tmp)


def codes(futures):
    out = []
    for f in futures:
        try:
            f.result()
            out.append(("OK", ""))
        except grpc.RpcError as e:
            out.append((e.code().name, e.details()))
    return out


def test_the_inflight_byte_budget_bounds_peak_memory(busy_repo):
    """32 concurrent 60 MB requests against a 256 MiB budget: some are refused at once,
    the rest answered, and the server's peak RSS stays within baseline + budget + the
    engine's own working copy of the requests it is computing."""
    budget = 256 * MIB
    wharf = Wharf(busy_repo, "--max-inflight-bytes", "256MiB")
    try:
        request = busy_request(60 * MIB // 4)
        baseline = wharf.status("VmRSS")
        with ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(wharf.infer_raw, request, timeout=120) for _ in range(32)]
            results = codes(futures)
        peak = wharf.status("VmHWM")
        ok = sum(1 for c, _ in results if c == "OK")
        refused = [d for c, d in results if c == "RESOURCE_EXHAUSTED"]
        assert ok + len(refused) == 32, results
        assert ok >= 1 and refused, results
        assert all("--max-inflight-bytes" in d for d in refused), refused
        grown = peak - baseline
        print(f"\ninflight budget {budget // MIB} MiB: {ok} answered, {len(refused)} refused; "
              f"RSS baseline {baseline / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB (+{grown / MIB:.0f} MiB)")
        # Beyond the budget: the engine's copy of the tensor it computes (tract owns its
        # inputs), one at a time, and buffers' slack while bodies arrive. Unbounded, the
        # same burst grows RSS by ~1 GiB (benches/README.md).
        assert grown < budget + 3 * 64 * MIB, f"peak grew {grown / MIB:.0f} MiB"
        # Answered afterwards as usual.
        assert wharf.infer_raw(busy_request(4), timeout=30).model_name == "busy"
    finally:
        assert wharf.stop() == 0


def test_accepting_backs_off_when_file_descriptors_run_out(busy_repo):
    wharf = Wharf(busy_repo, "--handshake-timeout-secs", "30", nofile=64)
    sockets = []
    try:
        host, port = wharf.address.rsplit(":", 1)
        for _ in range(80):
            sockets.append(socket.create_connection((host, int(port))))
        # The server holds what it could accept (they sent no preface yet) and the rest wait
        # in the listen backlog: accept fails with EMFILE.
        deadline = time.monotonic() + 10
        while not any("cannot accept connections" in line for line in wharf.log):
            assert time.monotonic() < deadline, "".join(wharf.log[-5:])
            time.sleep(0.01)
        before = wharf.cpu_seconds()
        time.sleep(1.0)
        spent = wharf.cpu_seconds() - before
        print(f"\nCPU while descriptors are exhausted: {spent:.3f} s in 1 s")
        assert spent < 0.2, f"the accept loop spins: {spent:.2f} s of CPU in 1 s"
        assert sum("cannot accept connections" in line for line in wharf.log) == 1, "logged once"
        for s in sockets:
            s.close()
        sockets.clear()
        # Descriptors come back as the held connections close; then it serves again.
        deadline = time.monotonic() + 30
        while True:
            try:
                wharf.infer_raw(busy_request(4), timeout=5)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "wharf did not accept again"
                time.sleep(0.05)
    finally:
        for s in sockets:
            s.close()
        assert wharf.stop() == 0


def test_overload_at_five_times_capacity_is_answered_and_memory_stays_flat(busy_repo):
    wharf = Wharf(busy_repo)
    try:
        # Capacity first: one instance, one request at a time.
        started = time.monotonic()
        for _ in range(10):
            wharf.infer_raw(busy_request(4), timeout=30)
        capacity = 10 / (time.monotonic() - started)
        rate, seconds = 5 * capacity, 4.0
        baseline = wharf.status("VmRSS")
        futures = []
        with ThreadPoolExecutor(64) as pool:
            sent, t0 = 0, time.monotonic()
            while time.monotonic() - t0 < seconds:
                due = t0 + sent / rate
                time.sleep(max(0.0, due - time.monotonic()))
                futures.append(pool.submit(wharf.infer_raw, busy_request(4), timeout=2.0))
                sent += 1
            results = codes(futures)
        after = wharf.status("VmRSS")
        tally = {}
        for c, _ in results:
            tally[c] = tally.get(c, 0) + 1
        print(f"\noverload: capacity {capacity:.0f}/s, offered {sent} at {rate:.0f}/s for {seconds:.0f} s: "
              f"{tally}; RSS {baseline / MIB:.0f} -> {after / MIB:.0f} MiB (peak {wharf.status('VmHWM') / MIB:.0f})")
        assert set(tally) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}, results
        assert tally.get("OK", 0) > 0 and tally.get("RESOURCE_EXHAUSTED", 0) > 0, tally
        assert after - baseline < 64 * MIB
    finally:
        assert wharf.stop() == 0


def test_sigterm_under_load_answers_every_admitted_request(busy_repo):
    # A queue that holds every client's request, so that the drain has admitted work.
    config = busy_repo / "busy" / "config.yaml"
    config.write_text(config.read_text().replace("max_queue_size: 8", "max_queue_size: 64"))
    wharf = Wharf(busy_repo, "--exit-timeout-secs", "30")
    stop = threading.Event()
    outcomes = []
    lock = threading.Lock()

    def client():
        channel = grpc.insecure_channel(wharf.address)
        infer = channel.unary_unary(INFER, request_serializer=lambda b: b,
                                    response_deserializer=service_pb2.ModelInferResponse.FromString)
        while not stop.is_set():
            try:
                infer(busy_request(4), timeout=30)
                outcome = ("OK", "")
            except grpc.RpcError as e:
                outcome = (e.code().name, e.details() or "")
            with lock:
                outcomes.append(outcome)
            if outcome[0] == "UNAVAILABLE":
                break
        channel.close()

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while sum(1 for c, _ in outcomes if c == "OK") < 20:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    wharf.channel.close()
    wharf.proc.send_signal(signal.SIGTERM)
    code = wharf.proc.wait(timeout=60)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    tally = {}
    for c, _ in outcomes:
        tally[c] = tally.get(c, 0) + 1
    print(f"\nSIGTERM under 16 clients: {tally}")
    assert code == 0
    # Every request the server took was answered; refusals say why; after the exit,
    # clients cannot connect (never admitted). Nothing was cut off mid-answer.
    for c, detail in outcomes:
        assert c in ("OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"), (c, detail)
        if c == "UNAVAILABLE":
            assert ("shutting down" in detail or "connect" in detail.lower()
                    or "connection refused" in detail.lower()), detail


def test_runtime_threads_sets_the_async_workers_and_one_serves(busy_repo):
    """`--runtime-threads N` gives the async runtime N worker threads, beside the
    instances' own; one worker alone serves concurrent requests while the instance
    computes."""
    for threads in (3, 1):
        wharf = Wharf(busy_repo, "--runtime-threads", str(threads))
        try:
            listening = next(json.loads(line)["fields"] for line in wharf.log if '"listening"' in line)
            assert listening["runtime_threads"] == threads, listening
            # Runtime workers and blocking-pool threads share tokio's thread name.
            names = [p.read_text().strip() for p in pathlib.Path(f"/proc/{wharf.proc.pid}/task").glob("*/comm")]
            assert names.count("tokio-rt-worker") >= threads, names
            assert any(n.startswith("wharf-busy-") for n in names), names
            with ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(wharf.infer_raw, busy_request(16), timeout=30) for _ in range(4)]
                assert codes(futures) == [("OK", "")] * 4
        finally:
            assert wharf.stop() == 0
