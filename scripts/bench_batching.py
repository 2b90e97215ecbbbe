"""Side-by-side benchmarks of dynamic batching, in one run:

1. A GEMM-bound wide MLP at concurrency 16: dynamic batching vs none.
2. PP-OCR rec at concurrency 8: wharf vs the same engine in-process (examples/in_process).
3. Resident memory of PP-OCR rec with 1 vs 4 instances.

    cargo build --release --examples && scripts/fetch-ppocr-models.sh
    .venv-test/bin/pip install onnx && .venv-test/bin/python scripts/bench_batching.py [--seconds 10]

With --baseline OTHER_WHARF, parts 1 and 3 run that binary too, in the same run (for regressions).
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

import tritonclient.grpc as grpcclient

ROOT = pathlib.Path(__file__).resolve().parents[1]
WHARF = ROOT / "target" / "release" / "wharf"
IN_PROCESS = ROOT / "target" / "release" / "examples" / "in_process"


class Server:
    def __init__(self, repo, binary=WHARF):
        self.proc = subprocess.Popen(
            [str(binary), "--log-format", "json", "serve", "--host", "127.0.0.1", "--grpc-port", "0",
             "--model-repository", str(repo)],
            stderr=subprocess.PIPE, text=True,
        )
        self.log = []
        for line in self.proc.stderr:
            self.log.append(line)
            fields = json.loads(line).get("fields", {}) if line.startswith("{") else {}
            if "grpc_addr" in fields:
                self.address = fields["grpc_addr"]
                break
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
        self.client = grpcclient.InferenceServerClient(self.address)
        while not self.client.is_server_ready():
            time.sleep(0.01)

    def bench(self, model, *flags):
        out = subprocess.run([str(WHARF), "bench", "--url", self.address, "--model", model, "--json", *flags],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    def stats(self, model):
        s = self.client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in s.get("batch_stats", [])}
        return int(s.get("inference_count", 0)), int(s.get("execution_count", 0)), batches

    def rss_mib(self):
        status = pathlib.Path(f"/proc/{self.proc.pid}/status").read_text()
        get = lambda key: int(next(l for l in status.splitlines() if l.startswith(key)).split()[1]) / 1024
        return get("VmRSS:"), get("VmHWM:")

    def stop(self):
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def model_dir(repo, name, onnx, config):
    (repo / name / "1").mkdir(parents=True)
    shutil.copy(onnx, repo / name / "1" / "model.onnx")
    (repo / name / "config.yaml").write_text(config)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--baseline", help="another wharf binary whose part 1 runs beside this one's")
    args = parser.parse_args()
    secs = ["--duration-secs", str(args.seconds), "--warmup-secs", "2"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_wide_mlp.py"), str(tmp / "mlp_src")], check=True)
        mlp = tmp / "mlp_src" / "1" / "model.onnx"
        print("## 1. wide MLP (512-4096-512), concurrency 16, 1 instance\n")
        print("| config | requests/s | p50 ms | p99 ms | executions per request | batch sizes run (rows: calls) |")
        print("|---|---|---|---|---|---|")
        rates = {}
        configs = [
            ("no dynamic batching", ""),
            ("dynamic batching, preferred [8, 16], delay 2 ms", "dynamic_batching: { preferred_batch_size: [8, 16], max_queue_delay_microseconds: 2000 }\n"),
        ]
        runs = [(label, extra, WHARF) for label, extra in configs]
        if args.baseline:
            runs += [(f"baseline, {label}", extra, args.baseline) for label, extra in configs]
        for label, extra, binary in runs:
            repo = tmp / label.replace(",", "").replace(" ", "_")
            model_dir(repo, "mlp", mlp, "max_batch_size: 16\ninstance_group: [{ count: 1 }]\n" + extra)
            server = Server(repo, binary)
            report = server.bench("mlp", "--concurrency", "16", *secs)
            inferences, executions, batches = server.stats("mlp")
            server.stop()
            rates[label] = report["throughput_rps"]
            print(f"| {label} | {report['throughput_rps']:.0f} | {report['p50_ms']:.2f} | {report['p99_ms']:.2f} | "
                  f"{executions / max(inferences, 1):.3f} | {batches} |")
        values = list(rates.values())
        print(f"\nbatching / no batching: {values[1] / values[0]:.2f}x\n")

        rec_src = ROOT / "models" / "ppocr_rec" / "1" / "model.onnx"
        rec_config = (ROOT / "scripts" / "ppocr" / "ppocr_rec.yaml").read_text()
        if not rec_src.exists():
            print("PP-OCR rec not fetched: run scripts/fetch-ppocr-models.sh")
            return
        print("## 2. PP-OCR rec, 1x3x48x320, concurrency 8, 2 instances\n")
        repo = tmp / "rec2"
        model_dir(repo, "ppocr_rec", rec_src, rec_config.replace("count: 1", "count: 2")
                  + "dynamic_batching: { preferred_batch_size: [4, 8], max_queue_delay_microseconds: 2000 }\n")
        server = Server(repo)
        report = server.bench("ppocr_rec", "--concurrency", "8", "--shape", "x:1,3,48,320", *secs)
        inferences, executions, batches = server.stats("ppocr_rec")
        server.stop()
        local = json.loads(subprocess.run([str(IN_PROCESS), str(rec_src), "1,3,48,320", "2", str(args.seconds)],
                                          check=True, capture_output=True, text=True).stdout)
        print("| path | rows/s | notes |")
        print("|---|---|---|")
        print(f"| wharf via gRPC (wharf bench) | {report['throughput_rps']:.1f} | p50 {report['p50_ms']:.1f} ms, p99 {report['p99_ms']:.1f} ms; engine calls by rows: {batches} |")
        print(f"| tract in-process, 2 threads, batch 1 | {local['rows_per_s']:.1f} | examples/in_process |")
        print(f"\nwharf / in-process: {report['throughput_rps'] / local['rows_per_s']:.1%}\n")

        print("## 3. PP-OCR rec resident memory, instances 1 vs 4\n")
        print("| build | instances | RSS after READY (MiB) | RSS after load, peak (MiB) |")
        print("|---|---|---|---|")
        builds = [("this", WHARF)] + ([("baseline", args.baseline)] if args.baseline else [])
        for (label, binary), count in [(b, c) for b in builds for c in (1, 4)]:
            repo = tmp / f"rec_mem{label}{count}"
            model_dir(repo, "ppocr_rec", rec_src, rec_config.replace("count: 1", f"count: {count}"))
            server = Server(repo, binary)
            ready_rss, _ = server.rss_mib()
            server.bench("ppocr_rec", "--concurrency", "8", "--shape", "x:1,3,48,320", "--duration-secs", "3", "--warmup-secs", "0")
            rss, hwm = server.rss_mib()
            server.stop()
            print(f"| {label} | {count} | {ready_rss:.0f} | {rss:.0f}, peak {hwm:.0f} |")


if __name__ == "__main__":
    main()
