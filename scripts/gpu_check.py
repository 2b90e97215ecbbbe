"""GPU check: PP-OCR cls and rec on KIND_GPU through ONNX Runtime's CUDA provider.

Measures, each model in its own server with 2 instances of 1 GiB budget each:
throughput and p50/p99 at batch 1 (no dynamic_batching) vs dynamic batching (preferred
4 and 8; padded to 8 rows, wharf's GPU default, and unpadded) at concurrency 16, the rows
per engine call, where requests over 100 ms waited (queue or compute), and the GPU memory
the server holds (nvidia-smi, process and device) against the budgets. Then the refusals:
a budget too small for the model, and budgets that add up past the device's memory. Rec on
the CPU provider of the same library gives a reference on the same host.

On a GPU host (../shared/gpu/README.md carries the CUDA build of ONNX Runtime there):

    bash scripts/gpu_check.sh /tmp/ort /tmp/ort/unpack.sh /tmp/gpu --wharf target/release/wharf --models models

Rehearse the steps without a GPU with `--kind KIND_CPU` (CPU provider, no nvidia-smi).
Standard library only: the GPU hosts have no package index.
"""
import argparse
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

CLS = """backend: onnxruntime
max_batch_size: 8
input: [{ name: x, data_type: TYPE_FP32, dims: [3, 48, 192] }]
output: [{ name: save_infer_model/scale_0.tmp_1, data_type: TYPE_FP32, dims: [2] }]
model_warmup: true
"""
REC = """backend: onnxruntime
max_batch_size: 8
input: [{ name: x, data_type: TYPE_FP32, dims: [3, 48, -1] }]
output: [{ name: softmax_11.tmp_0, data_type: TYPE_FP32, dims: [-1, 6625] }]
model_warmup:
  - name: line_320
    batch_size: 1
    inputs: { x: { data_type: TYPE_FP32, dims: [3, 48, 320], zero_data: true } }
"""
MODELS = {"ppocr_cls": (CLS, []), "ppocr_rec": (REC, ["--shape", "x:1,3,48,320"])}
BATCHING = "dynamic_batching: { preferred_batch_size: [4, 8], max_queue_delay_microseconds: 1000 }\n"
UNPADDED = "parameters: { pad_batches: { string_value: \"false\" } }\n"


def nvidia_smi(*query):
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30).stdout
    return [[field.strip() for field in line.split(",")] for line in out.strip().splitlines() if line.strip()]


def device_used_mib():
    rows = nvidia_smi("--query-gpu=memory.used", "-i", "0")
    return float(rows[0][0]) if rows else 0.0


def process_mib(pid):
    rows = nvidia_smi("--query-compute-apps=pid,used_memory") or []
    return sum(float(r[1]) for r in rows if len(r) == 2 and r[0] == str(pid) and r[1].replace(".", "").isdigit())


class Server:
    """wharf serve on loopback ports picked by the kernel, its JSON log kept."""

    def __init__(self, wharf, repo, timeout=180):
        self.proc = subprocess.Popen(
            [wharf, "--log-format", "json", "serve", "--host", "127.0.0.1", "--grpc-port", "0",
             "--metrics-port", "0", "--model-repository", str(repo), "--strict-readiness", "false"],
            stderr=subprocess.PIPE, text=True)
        self.events = []
        self.lock = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        listening = self.wait_for(lambda f: "grpc_addr" in f, timeout)
        self.grpc, self.metrics = listening["grpc_addr"], listening["metrics_addr"]

    def _read(self):
        for line in self.proc.stderr:
            try:
                fields = json.loads(line).get("fields", {})
            except ValueError:
                fields = {"message": line.strip()}
            with self.lock:
                self.events.append(fields)
                self.lock.notify_all()
        with self.lock:
            self.events.append({"message": "exited"})
            self.lock.notify_all()

    def wait_for(self, match, timeout):
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                for fields in self.events:
                    if match(fields):
                        return fields
                    if fields.get("message") == "exited":
                        raise RuntimeError(f"wharf exited: {self.events[-5:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"timed out; last log lines: {self.events[-5:]}")
                self.lock.wait(left)

    def model_outcome(self, timeout=300):
        return self.wait_for(lambda f: f.get("message") in ("model ready", "model failed to load"), timeout)

    def scrape(self):
        text = urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10).read().decode()
        samples = {}
        for line in text.splitlines():
            m = re.match(r"^(\w+)(\{[^}]*\})?\s+(\S+)$", line)
            if m:
                samples[(m.group(1), m.group(2) or "")] = float(m.group(3))
        return samples

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def metric(samples, name, **labels):
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for (n, l), v in samples.items() if n == name and all(w in l for w in want))


def bench(wharf, server, model, flags, concurrency, seconds):
    out = subprocess.run([wharf, "bench", "--url", server.grpc, "--model", model, "--json",
                          "--concurrency", str(concurrency), "--duration-secs", str(seconds),
                          "--warmup-secs", "1", *flags], capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"wharf bench failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def write_model(repo, models, name, config):
    (repo / name / "1").mkdir(parents=True)
    shutil.copy(models / name / "1" / "model.onnx", repo / name / "1" / "model.onnx")
    (repo / name / "config.yaml").write_text(config)


def slow(samples, histogram, name, over="0.1"):
    """Samples of a duration histogram above `over` seconds: where a stall sat."""
    total = metric(samples, f"{histogram}_count", model=name)
    return total - metric(samples, f"{histogram}_bucket", model=name, le=over)


def run_case(args, tmp, label, name, config, flags):
    repo = tmp / label.replace(" ", "_").replace(",", "")
    write_model(repo, args.models, name, config)
    before = device_used_mib()
    server = Server(args.wharf, repo)
    try:
        outcome = server.model_outcome()
        if outcome["message"] != "model ready":
            return {"label": label, "model": name, "failed": outcome}
        idle = device_used_mib()
        # The arenas keep what they grew to, so one reading after the load is the peak held
        # (polling nvidia-smi during the load changed nothing on an H200).
        report = bench(args.wharf, server, name, flags, args.concurrency, args.seconds)
        after_device, after_process = device_used_mib(), process_mib(server.proc.pid)
        samples = server.scrape()
    finally:
        server.stop()
    inferences = metric(samples, "wharf_inferences_total", model=name)
    executions = metric(samples, "wharf_executions_total", model=name)
    return {
        "label": label, "model": name, "ready": outcome,
        "rps": report["throughput_rps"], "p50_ms": report["p50_ms"], "p99_ms": report["p99_ms"],
        "errors": {k: v for k, v in report.items() if k.startswith("err") or k == "failures"},
        "rows_per_call": inferences / max(executions, 1),
        "arena_peak_mib": metric(samples, "wharf_memory_peak_bytes", model=name) / 2**20,
        "device_before_mib": before, "device_ready_mib": idle,
        "device_peak_mib": after_device, "process_peak_mib": after_process,
        "over_100ms": {h: slow(samples, f"wharf_{h}_duration_seconds", name) for h in ("request", "queue", "compute")},
        "compute_mean_ms": 1000 * metric(samples, "wharf_compute_duration_seconds_sum", model=name)
        / max(metric(samples, "wharf_compute_duration_seconds_count", model=name), 1),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wharf", default="target/release/wharf")
    parser.add_argument("--models", type=pathlib.Path, default=pathlib.Path("models"))
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--kind", default="KIND_GPU")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--tuning", action="store_true",
                        help="only dynamic batching on KIND_GPU, under each arena/workspace setting")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gpus = "gpus: [0], " if args.kind == "KIND_GPU" else ""
    group = lambda count, budget: f"instance_group: [{{ kind: {args.kind}, {gpus}count: {count}, memory_budget: {budget} }}]\n"
    gpu = nvidia_smi("--query-gpu=name,memory.total,memory.used,driver_version", "-i", "0")
    print(f"device: {gpu}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        if args.tuning:
            param = lambda k, v: f"{k}: {{ string_value: {v} }}"
            variants = [
                ("arena kNextPowerOfTwo", param("arena_extend_strategy", "kNextPowerOfTwo")),
                ("cuDNN workspace capped", param("cudnn_conv_use_max_workspace", "false")),
                ("both", param("arena_extend_strategy", "kNextPowerOfTwo") + ", "
                 + param("cudnn_conv_use_max_workspace", "false")),
            ]
            for name in ("ppocr_rec", "ppocr_cls"):
                config, flags = MODELS[name]
                extra = [("1 intra-op thread", param("intra_op_thread_count", "1"))] if name == "ppocr_rec" else []
                for label, params in variants + extra:
                    result = run_case(args, tmp, f"{name} dynamic batching 4-8, {label}", name,
                                      config + group(2, "1GiB") + BATCHING + f"parameters: {{ {params} }}\n", flags)
                    results.append(result)
                    print(json.dumps(result), flush=True)
        for name, (config, flags) in ({} if args.tuning else MODELS).items():
            for label, extra in [("batch 1", ""), ("dynamic batching 4-8, padded to 8", BATCHING),
                                 ("dynamic batching 4-8, unpadded", BATCHING + UNPADDED)]:
                result = run_case(args, tmp, f"{name} {args.kind} {label}", name,
                                  config + group(2, "1GiB") + extra, flags)
                results.append(result)
                print(json.dumps(result), flush=True)
        if args.kind == "KIND_GPU" and not args.tuning:
            rec, flags = MODELS["ppocr_rec"]
            result = run_case(args, tmp, "ppocr_rec KIND_CPU dynamic batching 4-8 (same library, CPU provider)",
                              "ppocr_rec", rec + "instance_group: [{ kind: KIND_CPU, count: 2 }]\n" + BATCHING, flags)
            results.append(result)
            print(json.dumps(result), flush=True)
        # Refusals: each must fail to load with a reason, not serve or crash.
        total_mib = float(gpu[0][1]) if gpu else 8192.0
        refusals = [
            ("budget too small (4 MiB)", group(2, "4MiB")),
            (f"budgets past the device (2 x {total_mib * 0.6 / 1024:.0f} GiB)", group(2, f"{int(total_mib * 0.6)}MiB")),
        ]
        for label, grp in [] if args.tuning else refusals:
            result = run_case(args, tmp, f"ppocr_rec {label}", "ppocr_rec", MODELS["ppocr_rec"][0] + grp + BATCHING,
                              MODELS["ppocr_rec"][1])
            results.append(result)
            print(json.dumps(result), flush=True)
    (args.out / "gpu_check.json").write_text(json.dumps({"device": gpu, "results": results}, indent=1))
    print("\n| case | req/s | p50 ms | p99 ms | rows/call | GPU MiB held by wharf (process; device at ready, after load) | arena peak MiB | ready s | over 100 ms: request/queue/compute |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "failed" in r:
            reason = str(r["failed"].get("reason", r["failed"])).strip()
            print(f"| {r['label']} | refused: {reason} | | | | | | | |")
            continue
        print(f"| {r['label']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['rows_per_call']:.2f} | "
              f"{r['process_peak_mib']:.0f}; {r['device_ready_mib'] - r['device_before_mib']:.0f}, "
              f"{r['device_peak_mib'] - r['device_before_mib']:.0f} | {r['arena_peak_mib']:.1f} | "
              f"{r['ready']['ready_ms'] / 1000:.1f} | "
              f"{'/'.join(str(int(v)) for v in r['over_100ms'].values())} |")


if __name__ == "__main__":
    sys.exit(main())
