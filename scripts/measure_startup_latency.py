"""Cold start to READY and tritonclient latency for wharf, with onnxruntime in-process as
the engine floor, in one run.

    .venv-test/bin/python scripts/measure_startup_latency.py [--runs 5] [--requests 2000] [--baseline OTHER_WHARF]

With --baseline, each start-up is measured for both binaries in turn, in one run.

Needs a release build (cargo build --release) and, for the OCR repository, the det and rec
models (scripts/fetch-ppocr-models.sh).
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import tempfile
import threading
import time

import grpc
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[1]
WHARF = pathlib.Path(os.environ.get("WHARF_BIN", ROOT / "target" / "release" / "wharf"))
CLS_OUTPUT = "save_infer_model/scale_0.tmp_1"


def start(repo, binary=None):
    """Starts wharf; returns (process, address, seconds from spawn to ServerReady)."""
    began = time.perf_counter()
    proc = subprocess.Popen(
        [str(binary or WHARF), "--log-format", "json", "serve", "--host", "127.0.0.1", "--grpc-port", "0",
         "--model-repository", str(repo)],
        stderr=subprocess.PIPE, text=True,
    )
    address = None
    for line in proc.stderr:
        fields = json.loads(line).get("fields", {}) if line.startswith("{") else {}
        if "grpc_addr" in fields:
            address = fields["grpc_addr"]
            break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while True:
            try:
                if stub.ServerReady(service_pb2.ServerReadyRequest()).ready:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.002)
    return proc, address, time.perf_counter() - began


def stop(proc):
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def repository(tmp, name, models):
    repo = pathlib.Path(tmp) / name
    for model in models:
        shutil.copytree(ROOT / "models" / model, repo / model)
    return repo


def percentiles(samples_ms):
    s = sorted(samples_ms)
    return statistics.median(s), s[int(len(s) * 0.99) - 1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--baseline", help="another wharf binary, measured in turn with this one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repos = {"default (ppocr_cls)": repository(tmp, "default", ["ppocr_cls"])}
        if (ROOT / "models" / "ppocr_rec").exists():
            repos["PP-OCR cls + det + rec"] = repository(tmp, "ocr", ["ppocr_cls", "ppocr_det", "ppocr_rec"])
        binaries = {"this": WHARF}
        if args.baseline:
            binaries["baseline"] = pathlib.Path(args.baseline)
        print("| repository | wharf | cold start to READY, median of %d (ms) | all runs (ms) |" % args.runs)
        print("|---|---|---|---|")
        for name, repo in repos.items():
            runs = {label: [] for label in binaries}
            for _ in range(args.runs):
                for label, binary in binaries.items():
                    proc, _, seconds = start(repo, binary)
                    runs[label].append(seconds * 1000)
                    stop(proc)
            for label, times in runs.items():
                print(f"| {name} | {label} | {statistics.median(times):.0f} | {', '.join(f'{r:.0f}' for r in times)} |")

        x = np.random.default_rng(1).standard_normal((1, 3, 48, 192)).astype(np.float32)
        proc, address, _ = start(repos["default (ppocr_cls)"])
        client = grpcclient.InferenceServerClient(address)
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        served = []
        for i in range(args.requests + 200):
            began = time.perf_counter()
            client.infer("ppocr_cls", [inp])
            if i >= 200:
                served.append((time.perf_counter() - began) * 1000)
        client.close()
        stop(proc)

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(ROOT / "models/ppocr_cls/1/model.onnx"), options, providers=["CPUExecutionProvider"])
        local = []
        for i in range(args.requests + 200):
            began = time.perf_counter()
            session.run([CLS_OUTPUT], {"x": x})
            if i >= 200:
                local.append((time.perf_counter() - began) * 1000)

        print()
        print(f"| ppocr_cls, batch 1, concurrency 1, {args.requests} requests | p50 (ms) | p99 (ms) |")
        print("|---|---|---|")
        p50, p99 = percentiles(served)
        print(f"| wharf (tract, 2 instances) via tritonclient gRPC | {p50:.2f} | {p99:.2f} |")
        p50, p99 = percentiles(local)
        print(f"| onnxruntime 1.31 in-process, 1 thread (engine floor, no network) | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
