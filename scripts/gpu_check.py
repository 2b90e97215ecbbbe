"""GPU check: PP-OCR cls and rec on KIND_GPU through ONNX Runtime's CUDA provider.

First the whole pipeline (`ppocr`, one call per image of benches/data/cheque.png) with
det, cls and rec on the device, at concurrency 1, 4 and 8. Then two parts, each case's result printed as a JSON line as soon as it is known and the whole
written to OUT/gpu_check.json after every case (a run cut short keeps what it measured):

1. In-process engine calls (`wharf engine-calls`, no server): one session fed batch sizes
   1 and 8 in blocks (AABB) or alternating (ABAB), with cuDNN's heuristic or exhaustive
   search; then one session per batch size (1, 2, 4, 8) plain, through IoBinding, and
   replaying CUDA graphs. Per call: batch size, whether the shape changed since that
   session's last call, time in Run; per size the median and the calls over 3x it.
2. The server (`wharf bench` over 8 connections, as a fleet of clients: one HTTP/2
   connection is copied by one task on each side, which caps rec's 1 MiB answers), each model in its own, 2 instances of 1 GiB budget each, at concurrency 16
   and 64: batch 1 (no dynamic_batching) against dynamic batching (preferred 4 and 8)
   padded to 8, padded to buckets 1,2,4,8 (a session each), and each with CUDA graphs.
   Reported: rows/s and its ratio to batch 1, p50/p99, rows per engine call, engine calls
   over 3x their batch size's median (from the per-call trace log), READY time, and GPU
   memory held by the process against the budgets. Then rec on the CPU provider of the
   same library, and the refusals (a budget too small; budgets past the device).

On a GPU host (../shared/gpu/README.md carries the CUDA build of ONNX Runtime there):

    bash scripts/gpu_check.sh /tmp/ort /tmp/ort/unpack.sh /tmp/gpu --wharf target/release/wharf --models models

Rehearse every step without a GPU with `--kind KIND_CPU` (CPU provider, no nvidia-smi).
Standard library only: the GPU hosts have no package index.
"""
import argparse
import json
import os
import statistics
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

    def __init__(self, wharf, repo, timeout=60):
        self.proc = subprocess.Popen(
            [wharf, "--log-format", "json", "serve", "--host", "127.0.0.1", "--grpc-port", "0",
             "--metrics-port", "0", "--model-repository", str(repo), "--strict-readiness", "false"],
            stderr=subprocess.PIPE, text=True,
            env={**os.environ, "WHARF_LOG": "info,wharf::engine_calls=trace"})
        self.events = []
        self.lock = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        listening = self.wait_for(lambda f: "grpc_addr" in f, timeout)
        self.grpc, self.metrics = listening["grpc_addr"], listening["metrics_addr"]

    def _read(self):
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
                fields = {**event.get("fields", {}), "level": event.get("level")}
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

    def model_outcome(self, timeout=90):
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
    out = subprocess.run([wharf, "bench", "--url", server.grpc, "--model", model, "--json", "--connections", "8",
                          "--concurrency", str(concurrency), "--duration-secs", str(seconds),
                          "--warmup-secs", "1", *flags], capture_output=True, text=True, timeout=seconds + 30)
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


def engine_calls(server, name):
    """Engine calls after READY from the trace log: per batch size the median, and the
    calls over 3x it (the outliers the issue counts)."""
    with server.lock:
        calls = [(int(f["rows"]), int(f["us"]) / 1000) for f in server.events
                 if f.get("message") == "engine call" and f.get("model") == name]
    per_size = {}
    for rows in sorted({r for r, _ in calls}):
        ms = sorted(m for r, m in calls if r == rows)
        median = statistics.median(ms)
        slow = [round(m, 2) for m in ms if m > 3 * median]
        per_size[rows] = {"calls": len(ms), "median_ms": round(median, 3),
                          "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
                          "max_ms": round(ms[-1], 3), "over_3x_median": len(slow), "slowest": slow[-5:]}
    return per_size


def run_case(args, tmp, label, name, config, flags, concurrencies):
    repo = tmp / re.sub(r"[^A-Za-z0-9_]", "_", label)
    write_model(repo, args.models, name, config)
    before = device_used_mib()
    server = Server(args.wharf, repo)
    try:
        outcome = server.model_outcome()
        if outcome["message"] != "model ready":
            return [{"label": label, "model": name, "failed": outcome}]
        idle = device_used_mib()
        results = []
        for concurrency in concurrencies:
            with server.lock:
                server.events = [e for e in server.events if e.get("message") != "engine call"]
            report = bench(args.wharf, server, name, flags, concurrency, args.seconds)
            samples = server.scrape()
            results.append({
                "label": label, "model": name, "concurrency": concurrency, "ready_s": outcome["ready_ms"] / 1000,
                "ready": {k: outcome.get(k) for k in ("batch_rows", "call_rows", "cost_per_call", "peak_per_call")},
                "warnings": [f"{f.get('message')}: {f.get('reason', '')}" for f in server.events
                             if f.get("level") in ("WARN", "ERROR")][:5],
                "rps": report["throughput_rps"], "p50_ms": report["p50_ms"], "p99_ms": report["p99_ms"],
                "errors": {k: v for k, v in report.items() if k.startswith("err") or k == "failures"},
                "engine_calls": engine_calls(server, name),
                "device_before_mib": before, "device_ready_mib": idle,
                "device_peak_mib": device_used_mib(), "process_peak_mib": process_mib(server.proc.pid),
                "arena_peak_mib": metric(samples, "wharf_memory_peak_bytes", model=name) / 2**20,
                "inferences": metric(samples, "wharf_inferences_total", model=name),
                "executions": metric(samples, "wharf_executions_total", model=name),
            })
        # Counters are cumulative: rows per call for each run from the differences.
        previous = (0, 0)
        for r in results:
            inferences, executions = r["inferences"] - previous[0], r["executions"] - previous[1]
            previous = (r["inferences"], r["executions"])
            r["rows_per_call"] = inferences / max(executions, 1)
        return results
    finally:
        server.stop()


ENGINE_CASES = [
    ("one session, 1/8 in blocks (AABB), heuristic", ["--rows", "1,8", "--order", "blocks"]),
    ("one session, 1/8 alternating (ABAB), heuristic", ["--rows", "1,8", "--order", "alternate"]),
    ("one session, 1/8 in blocks (AABB), exhaustive", ["--rows", "1,8", "--order", "blocks", "--exhaustive"]),
    ("one session, 1/8 alternating (ABAB), exhaustive", ["--rows", "1,8", "--order", "alternate", "--exhaustive", "--calls", "8"]),
    ("a session per size 1,2,4,8, alternating, heuristic", ["--rows", "1,2,4,8", "--session-per-size"]),
    ("a session per size 1,2,4,8, alternating, exhaustive", ["--rows", "1,2,4,8", "--session-per-size", "--exhaustive"]),
    ("a session per size 1,2,4,8, alternating, IoBinding", ["--rows", "1,2,4,8", "--session-per-size", "--io-binding"]),
    ("a session per size 1,2,4,8, alternating, CUDA graphs", ["--rows", "1,2,4,8", "--session-per-size", "--cuda-graph"]),
]
ENGINE_INPUTS = {"ppocr_cls": "x:3,48,192", "ppocr_rec": "x:3,48,320"}


PIPELINE_STEPS = ["ppocr", "ppocr_image", "ppocr_db", "ppocr_cls_crops", "ppocr_lines", "ppocr_ctc"]


def run_pipeline_case(args, tmp, label, image, concurrencies):
    """The whole PP-OCR pipeline (`ppocr`, one call per image) with det, cls and rec on
    ONNX Runtime at `args.kind`: images/s, p50/p99, rec's rows per call, device memory."""
    repo = tmp / "pipeline"
    for name in PIPELINE_STEPS:
        shutil.copytree(args.models / name, repo / name)
    gpus = "gpus: [0], " if args.kind == "KIND_GPU" else ""
    for name in ("ppocr_det", "ppocr_cls", "ppocr_rec"):
        shutil.copytree(args.models / name, repo / name)
        config = repo / name / "config.yaml"
        text = re.sub(r"(?m)^backend: .*$", "backend: onnxruntime", config.read_text())
        text = re.sub(r"instance_group:\n(  - .*\n)+", f"instance_group: [{{ kind: {args.kind}, {gpus}count: 1 }}]\n", text)
        config.write_text(text)
    before = device_used_mib()
    server = Server(args.wharf, repo)
    try:
        outcome = server.wait_for(lambda f: f.get("message") == "ensemble ready"
                                  or f.get("message") == "model failed to load", 180)
        if outcome["message"] != "ensemble ready":
            return [{"label": label, "model": "ppocr", "failed": outcome}]
        results = []
        for concurrency in concurrencies:
            report = bench(args.wharf, server, "ppocr", ["--data-file", f"image:{image}"], concurrency, args.seconds)
            samples = server.scrape()
            results.append({
                "label": label, "model": "ppocr", "concurrency": concurrency,
                "images_per_s": report["throughput_rps"], "p50_ms": report["p50_ms"], "p99_ms": report["p99_ms"],
                "errors": {k: v for k, v in report.items() if k.startswith("err") or k == "failures"},
                "rec_rows_per_call": metric(samples, "wharf_inferences_total", model="ppocr_rec")
                / max(metric(samples, "wharf_executions_total", model="ppocr_rec"), 1),
                "device_before_mib": before, "device_peak_mib": device_used_mib(),
                "process_peak_mib": process_mib(server.proc.pid),
            })
        return results
    finally:
        server.stop()


def run_engine_case(args, label, name, flags):
    gpu = ["--gpu", "0"] if args.kind == "KIND_GPU" else []
    if "--cuda-graph" in flags and not gpu:
        return {"label": label, "model": name, "skipped": "CUDA graphs need a GPU"}
    calls = [] if "--calls" in flags else ["--calls", str(args.calls)]
    command = [args.wharf, "engine-calls", "--model", str(args.models / name / "1" / "model.onnx"),
               "--input", ENGINE_INPUTS[name], *calls, *gpu, *flags]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=args.engine_timeout)
    except subprocess.TimeoutExpired:
        return {"label": label, "model": name, "failed": f"over {args.engine_timeout} s"}
    if out.returncode != 0:
        return {"label": label, "model": name, "failed": out.stderr[-1500:]}
    report = json.loads(out.stdout)
    report.pop("calls")
    return {"label": label, "model": name, **report}


def params(**kv):
    return "parameters: { " + ", ".join(f'{k}: {{ string_value: "{v}" }}' for k, v in kv.items()) + " }\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wharf", default="target/release/wharf")
    parser.add_argument("--models", type=pathlib.Path, default=pathlib.Path("models"))
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--kind", default="KIND_GPU")
    parser.add_argument("--concurrency", default="16,64")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--calls", type=int, default=20, help="engine calls per batch size, in-process")
    parser.add_argument("--engine-timeout", type=float, default=30)
    parser.add_argument("--deadline-secs", type=float, default=330,
                        help="skip the cases left once this long has passed, so the run ends in time")
    parser.add_argument("--only", default="", help="run only the cases whose label matches this regex")
    args = parser.parse_args()
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    gpus = "gpus: [0], " if args.kind == "KIND_GPU" else ""
    group = lambda count, budget: f"instance_group: [{{ kind: {args.kind}, {gpus}count: {count}, memory_budget: {budget} }}]\n"
    gpu = nvidia_smi("--query-gpu=name,memory.total,memory.used,driver_version", "-i", "0")
    print(f"device: {gpu}", flush=True)
    results = []

    def record(result):
        result["at_s"] = round(time.monotonic() - started, 1)
        results.append(result)
        print(json.dumps(result), flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps({"device": gpu, "kind": args.kind, "results": results}, indent=1))

    def due(label):
        if args.only and not re.search(args.only, label):
            return False
        if time.monotonic() - started > args.deadline_secs:
            record({"label": label, "skipped": f"past the {args.deadline_secs:.0f} s deadline"})
            return False
        return True

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        label = f"ppocr pipeline {args.kind}, det/cls/rec on onnxruntime"
        image = pathlib.Path(__file__).resolve().parents[1] / "benches" / "data" / "cheque.png"
        if due(label) and (args.models / "ppocr_det" / "1" / "model.onnx").exists():
            for result in run_pipeline_case(args, tmp, label, image, [1, 4, 8]):
                record(result)
        for name in ("ppocr_cls", "ppocr_rec"):
            for label, flags in ENGINE_CASES:
                label = f"{name} engine calls: {label}"
                if due(label):
                    record(run_engine_case(args, label, name, flags))
        batching = BATCHING
        server_cases = [
            ("batch 1", ""),
            ("dynamic batching 4-8, wharf's GPU defaults", batching),
            ("dynamic batching 4-8, padded to 8", batching + params(batch_buckets="max", cuda_graph="false")),
            ("dynamic batching 4-8, buckets 1,2,4,8",
             batching + params(batch_buckets="1,2,4,8", cuda_graph="false")),
            ("dynamic batching 4-8, padded to 8, CUDA graphs", batching + params(batch_buckets="max", cuda_graph="true")),
            ("dynamic batching 4-8, buckets 1,2,4,8, CUDA graphs",
             batching + params(batch_buckets="1,2,4,8", cuda_graph="true")),
        ]
        for name, (config, flags) in MODELS.items():
            for label, extra in server_cases:
                case_config = config
                if "CUDA graphs" in label:
                    if args.kind != "KIND_GPU":
                        continue
                    # A graph replays one shape: rec's width is fixed for it.
                    case_config = config.replace("dims: [3, 48, -1]", "dims: [3, 48, 320]")
                label = f"{name} {args.kind} {label}"
                if due(label):
                    for result in run_case(args, tmp, label, name, case_config + group(2, "1GiB") + extra, flags,
                                           concurrencies):
                        record(result)
        if args.kind == "KIND_GPU":
            rec, flags = MODELS["ppocr_rec"]
            label = "ppocr_rec KIND_CPU dynamic batching 4-8 (same library, CPU provider)"
            if due(label):
                for result in run_case(args, tmp, label, "ppocr_rec",
                                       rec + "instance_group: [{ kind: KIND_CPU, count: 2 }]\n" + BATCHING, flags,
                                       concurrencies[:1]):
                    record(result)
        # Refusals: each must fail to load with a reason, not serve or crash.
        total_mib = float(gpu[0][1]) if gpu else 8192.0
        refusals = [
            ("budget too small (4 MiB)", group(2, "4MiB")),
            (f"budgets past the device (2 x {total_mib * 0.6 / 1024:.0f} GiB)", group(2, f"{int(total_mib * 0.6)}MiB")),
        ]
        for label, grp in refusals:
            label = f"ppocr_rec {label}"
            if due(label):
                for result in run_case(args, tmp, label, "ppocr_rec", MODELS["ppocr_rec"][0] + grp + BATCHING,
                                       MODELS["ppocr_rec"][1], concurrencies[:1]):
                    record(result)
    summarise(results)


def summarise(results):
    print("\n| engine calls, in-process | per size: median ms (calls over 3x median; median after a change of shape) | first call ms | slow share | max abs diff vs a plain session |")
    print("|---|---|---|---|---|")
    for r in (r for r in results if "engine calls" in r["label"]):
        if "sizes" in r:
            sizes = "; ".join(f"{s['rows']}: {s['median_ms']:.2f} ({s['slow']}"
                              + (f"; {s['changed_median_ms']:.2f}" if s["changed_median_ms"] else "") + ")"
                              for s in r["sizes"])
            first = ", ".join(f"{rows}: {ms:.0f}" for rows, ms in r["first_ms"])
            diff = max((d for _, d in r["max_abs_diff_vs_plain"]), default=0)
            if r.get("graph_refused"):
                first += f" (graphs off: {r['graph_refused'][:200]})"
            print(f"| {r['label']} | {sizes} | {first} | {r['slow_share']:.2f} | {diff:.2g} |")
        else:
            print(f"| {r['label']} | {str(r.get('failed') or r.get('skipped')).strip()[:300]} | | | |")
    batch1 = {(r["model"], r["concurrency"]): r["rps"] for r in results if r.get("label", "").endswith("batch 1") and "rps" in r}
    print("\n| case | conc. | rows/s | x batch 1 | p50 ms | p99 ms | rows/call | calls over 3x median (of calls) | READY s | GPU MiB: process; device at ready |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in (r for r in results if "engine calls" not in r["label"]):
        if "skipped" in r:
            print(f"| {r['label']} | | {r['skipped']} | | | | | | | |")
            continue
        if "failed" in r:
            reason = r["failed"].get("reason", r["failed"]) if isinstance(r["failed"], dict) else r["failed"]
            print(f"| {r['label']} | | refused: {str(reason).strip()[:300]} | | | | | | | |")
            continue
        if "rps" not in r:
            continue
        base = batch1.get((r["model"], r["concurrency"]))
        ratio = f"{r['rps'] / base:.2f}" if base else ""
        outliers = sum(s["over_3x_median"] for s in r["engine_calls"].values())
        calls = sum(s["calls"] for s in r["engine_calls"].values())
        print(f"| {r['label']} | {r['concurrency']} | {r['rps']:.0f} | {ratio} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['rows_per_call']:.2f} | {outliers} ({calls}) | {r['ready_s']:.1f} | "
              f"{r['process_peak_mib']:.0f}; {r['device_ready_mib'] - r['device_before_mib']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
