"""wharf's onnxruntime backend against the Python servers people use for the same job, and
tract against onnxruntime inside wharf, in one run on one machine:

1. PP-OCR rec at concurrency 16: wharf (onnxruntime) vs MLServer 1.7.1 (custom onnxruntime
   runtime, benches/servers/mlserver_onnx_runtime.py) vs a plain grpcio + onnxruntime server
   (benches/servers/grpc_onnxruntime_server.py). Same onnxruntime 1.31.1, same load
   generator (`wharf bench`).
2. tract vs onnxruntime inside wharf on the three PP-OCR models.
3. Resident memory of rec on onnxruntime, 1 vs 4 instances (shared weights).

    cargo build --release && scripts/fetch-ppocr-models.sh
    python3 -m venv /tmp/mls && /tmp/mls/bin/pip install mlserver==1.7.1 onnxruntime==1.31.1 'uvloop<0.22' tritonclient[grpc]==2.73.0
    /tmp/mls/bin/python benches/compare_servers.py --seconds 10
"""
import argparse
import glob
import json
import re
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import onnxruntime

from serving import free_port, stop, wait_ready

ROOT = pathlib.Path(__file__).resolve().parents[1]
WHARF = ROOT / "target" / "release" / "wharf"
LIB = glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.*"))[0]
REC = ROOT / "models" / "ppocr_rec"
SHAPES = {"ppocr_cls": "x:1,3,48,192", "ppocr_det": "x:1,3,640,640", "ppocr_rec": "x:1,3,48,320"}


def bench(address, model, concurrency, seconds):
    out = subprocess.run(
        [str(WHARF), "bench", "--url", address, "--model", model, "--shape", SHAPES[model.removesuffix("_tract").removesuffix("_ort")],
         "--concurrency", str(concurrency), "--duration-secs", str(seconds), "--warmup-secs", "2", "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def start_wharf(repo):
    port = free_port()
    env = dict(os.environ, ORT_DYLIB_PATH=LIB)
    proc = subprocess.Popen([str(WHARF), "serve", "--host", "127.0.0.1", "--grpc-port", str(port), "--model-repository", str(repo)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    wait_ready(address, proc)
    return proc, address


def rss_mib(pid):
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1]) / 1024


def model(repo, name, source, backend, extra=""):
    (repo / name / "1").mkdir(parents=True)
    shutil.copy(source / "1" / "model.onnx", repo / name / "1" / "model.onnx")
    config = re.sub(r"(?m)^backend: .*$", f"backend: {backend}", (source / "config.yaml").read_text())
    (repo / name / "config.yaml").write_text(config + extra)


def engine_ceiling(seconds):
    """Rows/s of the engine alone, in this process, no server: one session of 1 thread per
    core, each looping on batch-1 calls, or one session using every core; the better."""
    import numpy as np
    x = np.random.default_rng(0).random((1, 3, 48, 320), dtype=np.float32)
    cores = os.cpu_count() or 1
    best = 0.0
    for sessions, threads in ((cores, 1), (1, cores)):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        made = [onnxruntime.InferenceSession(str(REC / "1" / "model.onnx"), options,
                                             providers=["CPUExecutionProvider"]) for _ in range(sessions)]
        for session in made:
            session.run(None, {"x": x})
        counts = [0] * sessions
        until = time.monotonic() + seconds

        def loop(i):
            while time.monotonic() < until:
                made[i].run(None, {"x": x})
                counts[i] += 1

        workers = [threading.Thread(target=loop, args=(i,)) for i in range(sessions)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, sum(counts) / seconds)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        # 1. wharf, onnxruntime: 2 instances of 1 thread each on 2 cores, dynamic batching.
        repo = tmp / "wharf"
        model(repo, "ppocr_rec", REC, "onnxruntime",
              "dynamic_batching: { preferred_batch_size: [2, 4], max_queue_delay_microseconds: 1000 }\n")
        (repo / "ppocr_rec" / "config.yaml").write_text((repo / "ppocr_rec" / "config.yaml").read_text().replace("count: 1", "count: 2"))
        proc, address = start_wharf(repo)
        rows.append(("wharf 0.1 (onnxruntime backend, 2 instances, dynamic batching)", bench(address, "ppocr_rec", 16, args.seconds)))
        stop(proc)

        port = free_port()
        proc = subprocess.Popen([sys.executable, str(ROOT / "benches" / "servers" / "grpc_onnxruntime_server.py"),
                                 str(REC / "1" / "model.onnx"), "ppocr_rec", str(port), "16"], stdout=subprocess.DEVNULL)
        wait_ready(f"127.0.0.1:{port}", proc)
        rows.append(("plain Python grpcio + onnxruntime (16 threads)", bench(f"127.0.0.1:{port}", "ppocr_rec", 16, args.seconds)))
        stop(proc)

        mls = tmp / "mlserver"
        (mls / "ppocr_rec").mkdir(parents=True)
        grpc_port = free_port()
        (mls / "settings.json").write_text(json.dumps({
            "parallel_workers": 0, "grpc_port": grpc_port, "http_port": free_port(), "metrics_port": free_port(),
            "grpc_max_message_length": 1 << 28,
        }))
        (mls / "ppocr_rec" / "model-settings.json").write_text(json.dumps({
            "name": "ppocr_rec", "implementation": "mlserver_onnx_runtime.OnnxModel",
            "parameters": {"uri": str(REC / "1" / "model.onnx")},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 48, -1]}],
        }))
        env = dict(os.environ, PYTHONPATH=str(ROOT / "benches" / "servers"))
        mlserver = shutil.which("mlserver", path=os.path.dirname(sys.executable))
        proc = subprocess.Popen([mlserver, "start", str(mls)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(f"127.0.0.1:{grpc_port}", proc)
        rows.append(("MLServer 1.7.1 (custom onnxruntime runtime)", bench(f"127.0.0.1:{grpc_port}", "ppocr_rec", 16, args.seconds)))
        stop(proc)

        print(f"## PP-OCR rec 1x3x48x320, concurrency 16, {args.seconds:.0f} s, onnxruntime {onnxruntime.__version__}\n")
        print("| server | requests/s | p50 ms | p99 ms | errors |")
        print("|---|---|---|---|---|")
        for name, r in rows:
            print(f"| {name} | {r['throughput_rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors'] or 'none'} |")
        best = max(r["throughput_rps"] for _, r in rows[1:])
        print(f"\nwharf / best Python server: {rows[0][1]['throughput_rps'] / best:.2f}x\n")
        ceiling = engine_ceiling(args.seconds / 2)
        print(f"The engine alone in-process (no server, batch 1, {os.cpu_count()} cores): {ceiling:.1f} rows/s; "
              f"wharf reaches {rows[0][1]['throughput_rps'] / ceiling:.0%} of it, the best Python server "
              f"{best / ceiling:.0%}, so no server can be more than {ceiling / best:.2f}x the best here.\n")

        # 2. tract vs onnxruntime inside wharf.
        repo = tmp / "engines"
        for name in ("ppocr_cls", "ppocr_det", "ppocr_rec"):
            for backend, suffix in (("tract", "tract"), ("onnxruntime", "ort")):
                model(repo, f"{name}_{suffix}", ROOT / "models" / name, backend)
        proc, address = start_wharf(repo)
        print("## tract vs onnxruntime inside wharf, concurrency 2, batch 1 requests\n")
        print("| model | tract requests/s | onnxruntime requests/s | tract p50 ms | onnxruntime p50 ms | onnxruntime / tract |")
        print("|---|---|---|---|---|---|")
        for name in ("ppocr_cls", "ppocr_det", "ppocr_rec"):
            t = bench(address, f"{name}_tract", 2, args.seconds / 2)
            o = bench(address, f"{name}_ort", 2, args.seconds / 2)
            print(f"| {name} ({SHAPES[name][2:]}) | {t['throughput_rps']:.1f} | {o['throughput_rps']:.1f} | {t['p50_ms']:.1f} | {o['p50_ms']:.1f} | {o['throughput_rps'] / t['throughput_rps']:.2f}x |")
        stop(proc)

        # 3. Shared weights on onnxruntime.
        print("\n## PP-OCR rec on onnxruntime, resident memory by instances\n")
        print("| instances | RSS after READY (MiB) | RSS after load (MiB) |")
        print("|---|---|---|")
        for count in (1, 4):
            repo = tmp / f"mem{count}"
            model(repo, "ppocr_rec", REC, "onnxruntime")
            (repo / "ppocr_rec" / "config.yaml").write_text((repo / "ppocr_rec" / "config.yaml").read_text().replace("count: 1", f"count: {count}"))
            proc, address = start_wharf(repo)
            ready = rss_mib(proc.pid)
            bench(address, "ppocr_rec", 8, 3)
            print(f"| {count} | {ready:.0f} | {rss_mib(proc.pid):.0f} |")
            stop(proc)


if __name__ == "__main__":
    main()
