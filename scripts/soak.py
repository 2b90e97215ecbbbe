#!/usr/bin/env python3
"""Soak: wharf under steady load for a while, with faults mixed in, and its memory drift.

Serves ppocr_cls (the default repository's model) beside tests/faulty/gather_index, then
for --minutes runs `wharf bench` on ppocr_cls while a side client sends gather requests,
a share of them with an out-of-range index (each makes tract panic inside the engine:
caught, answered INTERNAL, instance rebuilt). RSS is sampled every 5 s; the drift is the
last sample against the first one after the first minute (allocator and caches settled).

    .venv-test/bin/python scripts/soak.py --minutes 10

Needs a release build (cargo build --release) and the test venv (grpcio, tritonclient).
Not part of CI: it runs for minutes by design.
"""
import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from test_reliability import WHARF, Wharf  # noqa: E402  (starts wharf, waits for READY)
GATHER = """\
max_batch_size: 8
instance_group: [{ count: 1, kind: KIND_CPU }]
dynamic_batching: { max_queue_delay_microseconds: 2000 }
"""


def rss(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def gather(index):
    request = service_pb2.ModelInferRequest(model_name="gather")
    request.inputs.add(name="index", datatype="INT64", shape=[1, 1])
    request.raw_input_contents.append(np.array([index], dtype=np.int64).tobytes())
    return request.SerializeToString()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        shutil.copytree(ROOT / "models" / "ppocr_cls", repo / "ppocr_cls")
        (repo / "gather" / "1").mkdir(parents=True)
        shutil.copy(ROOT / "tests" / "faulty" / "gather_index.onnx", repo / "gather" / "1" / "model.onnx")
        (repo / "gather" / "config.yaml").write_text(GATHER)
        wharf = Wharf(repo)
        proc, address, infer = wharf.proc, wharf.address, wharf.infer_raw
        seconds = args.minutes * 60
        stop = threading.Event()
        faults = {"OK": 0, "INTERNAL": 0, "other": 0}

        def side():
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    infer(gather(99 if n % 4 == 0 else n % 4), timeout=5)
                    faults["OK"] += 1
                except grpc.RpcError as e:
                    faults["INTERNAL" if e.code() == grpc.StatusCode.INTERNAL else "other"] += 1
                time.sleep(0.01)

        threading.Thread(target=side, daemon=True).start()
        bench = subprocess.Popen(
            [WHARF, "bench", "--url", address, "--model", "ppocr_cls", "--concurrency",
             str(args.concurrency), "--duration-secs", str(seconds), "--warmup-secs", "0", "--json"],
            stdout=subprocess.PIPE, text=True)
        samples, started = [], time.monotonic()
        while bench.poll() is None:
            samples.append((time.monotonic() - started, rss(proc.pid)))
            time.sleep(5)
        stop.set()
        report = json.loads(bench.stdout.read())
        code = wharf.stop()
        settled = [r for t, r in samples if t >= min(60, seconds / 2)]
        first, last, peak = settled[0], samples[-1][1], max(r for _, r in samples)
        mib = 1 << 20
        print(f"soak {args.minutes:g} min: bench {json.dumps(report)}")
        print(f"side client (1 in 4 an engine panic): {faults}")
        print(f"RSS after settling {first / mib:.1f} MiB, end {last / mib:.1f} MiB, peak {peak / mib:.1f} MiB, "
              f"drift {(last - first) / mib:+.1f} MiB; exit code {code}")
        return 0 if code == 0 and faults["other"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
