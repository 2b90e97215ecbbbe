"""What wharf's request path costs over the transport alone, in one run on one machine:
a bare tonic echo of the KServe service (examples/echo_server.rs, the floor) against wharf
serving Triton's `simple` (INT32 [-1, 16] add and subtract, tract, one instance) without
and with dynamic batching. Same client (`wharf bench`, closed loop), each server alone on
the machine, and the server's CPU time per request read from /proc.

    cargo build --release --bin wharf --example echo_server
    .venv-test/bin/python benches/overhead.py --seconds 5 [--baseline OTHER_WHARF]
    .venv-test/bin/python benches/overhead.py --ppocr --seconds 8 --baseline OTHER_WHARF  # needs scripts/fetch-ppocr-models.sh
    .venv-test/bin/python benches/overhead.py --ensemble --seconds 5 --rounds 3  # one-step ensemble vs its model
    cargo build --release --bin wharf --example http_echo   # and apt-get install wrk
    .venv-test/bin/python benches/overhead.py --http --seconds 5 --rounds 3 [--baseline OTHER_WHARF] [--wrk-only]  # HTTP vs a bare hyper handler

Prints a markdown table, and the raw figures as JSON with --json.
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import onnx
from onnx import TensorProto, helper

from serving import free_port, stop, wait_ready

ROOT = pathlib.Path(__file__).resolve().parents[1]
WHARF = ROOT / "target" / "release" / "wharf"
ECHO = ROOT / "target" / "release" / "examples" / "echo_server"
HTTP_ECHO = ROOT / "target" / "release" / "examples" / "http_echo"
PERF_ANALYZER = pathlib.Path(os.environ.get("PA_DIR", "/tmp/wharf-perf-analyzer")) / "bin" / "perf_analyzer"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU of every thread of the process so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def simple_repo(root):
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
        "simple",
        [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16]) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16]) for n in ("OUTPUT0", "OUTPUT1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    # `simple` lists its tensors, as Triton's does: auto-complete would otherwise give a
    # batching model without a scheduler dynamic batching, as Triton's does.
    tensors = lambda names: "".join(f"  - {{ name: {n}, data_type: TYPE_INT32, dims: [16] }}\n" for n in names)
    io = "input:\n" + tensors(["INPUT0", "INPUT1"]) + "output:\n" + tensors(["OUTPUT0", "OUTPUT1"])
    configs = {
        "simple": "max_batch_size: 8\n" + io,
        "simple_batched": "max_batch_size: 8\ndynamic_batching: {}\n",
    }
    for name, config in configs.items():
        (root / name / "1").mkdir(parents=True)
        onnx.save(model, str(root / name / "1" / "model.onnx"))
        (root / name / "config.yaml").write_text(config)
    # The same model behind a one-step ensemble, for what a pipeline costs.
    tensors = lambda key, names: "".join(
        f"  - {{ name: {n}, data_type: TYPE_INT32, dims: [16] }}\n" for n in names)
    (root / "simple_pipeline" / "1").mkdir(parents=True)
    (root / "simple_pipeline" / "config.yaml").write_text(
        "platform: ensemble\nmax_batch_size: 8\ninput:\n" + tensors("input", ["INPUT0", "INPUT1"])
        + "output:\n" + tensors("output", ["OUTPUT0", "OUTPUT1"])
        + "ensemble_scheduling:\n  step:\n    - { model_name: simple, input_map: { INPUT0: INPUT0, INPUT1: INPUT1 },"
        + " output_map: { OUTPUT0: OUTPUT0, OUTPUT1: OUTPUT1 } }\n")


def bench(address, model, concurrency, seconds, pid, shapes=("INPUT0:1,16", "INPUT1:1,16")):
    def run(secs, warmup):
        out = subprocess.run(
            [str(WHARF), "bench", "--url", address, "--model", model,
             *[arg for shape in shapes for arg in ("--shape", shape)], "--concurrency", str(concurrency),
             "--duration-secs", str(secs), "--warmup-secs", str(warmup), "--json"],
            check=True, capture_output=True, text=True,
        ).stdout
        return json.loads(out)

    run(1, 0)  # warm connections and caches, unmeasured
    before = cpu_seconds(pid)
    report = run(seconds, 0)
    used = cpu_seconds(pid) - before
    report["server_cpu_us_per_request"] = used / max(report["requests"], 1) * 1e6
    return report


def serve(cmd, address):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(address, proc)
    return proc


def in_turn(servers, start):
    """Each (name, command, model) of `servers` as (name, process, model), one server on
    the machine at a time: an entry with a command stops the last process and starts its
    own; one without (None) measures another model on the process before it."""
    proc = None
    try:
        for name, cmd, model in servers:
            if cmd is not None:
                if proc is not None:
                    stop(proc)
                proc = start(cmd)
            yield name, proc, model
    finally:
        if proc is not None:
            stop(proc)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every server this many times in turn; the table shows each figure's median")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--baseline", help="another wharf binary (e.g. main's) to measure beside this one")
    parser.add_argument("--ensemble", action="store_true",
                        help="instead: `simple` called directly and through a one-step ensemble, in turn")
    parser.add_argument("--http", action="store_true",
                        help="instead: wharf's HTTP front end against a bare hyper handler (examples/http_echo.rs), "
                             "JSON bodies from wrk and, where benches/perf_analyzer.sh fetched it, perf_analyzer's binary form")
    parser.add_argument("--wrk-only", action="store_true", help="with --http: leave perf_analyzer out")
    parser.add_argument("--ppocr", action="store_true",
                        help="instead: PP-OCR cls (c16) and rec (c8) from models/, this wharf and --baseline in turn, two rounds")
    args = parser.parse_args()
    if args.ppocr:
        return ppocr(args)
    if args.ensemble:
        return ensemble(args)
    if args.http:
        return http(args)
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        simple_repo(repo)
        port = free_port()
        address = f"127.0.0.1:{port}"
        servers = [
            ("bare tonic echo", [str(ECHO), address], "simple"),
            ("wharf, no batching", [str(WHARF), "serve", "--host", "127.0.0.1", "--grpc-port", str(port),
                                    "--metrics-port", str(free_port()), "--model-repository", str(repo)], "simple"),
            ("wharf, dynamic batching", None, "simple_batched"),
        ]
        if args.baseline:
            servers += [
                ("baseline, no batching", [args.baseline, "serve", "--host", "127.0.0.1", "--grpc-port", str(port),
                                           "--metrics-port", str(free_port()), "--model-repository", str(repo)], "simple"),
                ("baseline, dynamic batching", None, "simple_batched"),
            ]
        for rnd in range(1, args.rounds + 1):
            for name, proc, model in in_turn(servers, lambda cmd: serve(cmd, address)):
                for c in levels:
                    r = bench(address, model, c, args.seconds, proc.pid)
                    r.update(server=name, concurrency=c, round=rnd)
                    rows.append(r)
                    print(f"round {rnd} {name:<24} c{c:<3} {r['throughput_rps']:>9.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
                          f"p99 {r['p99_ms']:.2f} ms  {r['server_cpu_us_per_request']:.0f} us CPU/request  "
                          f"errors {r['errors']}", file=sys.stderr, flush=True)
    if args.rounds > 1:
        print_ratios(rows, args.rounds)
        rows = medians(rows)
    floor = {r["concurrency"]: r for r in rows if r["server"] == "bare tonic echo"}
    print("| server | concurrency | req/s | p50 / p99 ms | server CPU µs/request | req/s vs echo | CPU vs echo |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        f = floor[r["concurrency"]]
        print(f"| {r['server']} | {r['concurrency']} | {r['throughput_rps']:,.0f} | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} | "
              f"{r['server_cpu_us_per_request']:.0f} | {r['throughput_rps'] / f['throughput_rps']:.2f} | "
              f"{r['server_cpu_us_per_request'] / f['server_cpu_us_per_request']:.2f} |")
    if args.json:
        print(json.dumps(rows, indent=1))


def medians(rows):
    """One row per server and concurrency, each figure the median over the rounds."""
    keys = ("throughput_rps", "p50_ms", "p99_ms", "server_cpu_us_per_request")
    out = []
    for r in rows:
        if r["round"] != 1:
            continue
        same = [x for x in rows if x["server"] == r["server"] and x["concurrency"] == r["concurrency"]]
        out.append({**r, **{k: statistics.median(x[k] for x in same) for k in keys}})
    return out


def print_ratios(rows, rounds):
    """Per round, the ratios the issue's bar is about, so their spread shows."""
    print("| round | c64 no batching / echo req/s | c64 CPU / echo | c1 p50 / echo | c64 dynamic / no batching req/s |")
    print("|---|---|---|---|---|")
    for rnd in range(1, rounds + 1):
        at = {(r["server"], r["concurrency"]): r for r in rows if r["round"] == rnd}
        echo1, echo64 = at.get(("bare tonic echo", 1)), at.get(("bare tonic echo", 64))
        none1, none64 = at.get(("wharf, no batching", 1)), at.get(("wharf, no batching", 64))
        dyn64 = at.get(("wharf, dynamic batching", 64))
        if not all((echo1, echo64, none1, none64, dyn64)):
            return
        print(f"| {rnd} | {none64['throughput_rps'] / echo64['throughput_rps']:.2f} | "
              f"{none64['server_cpu_us_per_request'] / echo64['server_cpu_us_per_request']:.2f} | "
              f"{none1['p50_ms'] / echo1['p50_ms']:.2f} | {dyn64['throughput_rps'] / none64['throughput_rps']:.2f} |")
    print()


CLS_PIPELINE = """platform: ensemble
max_batch_size: 8
input: [{ name: x, data_type: TYPE_FP32, dims: [3, 48, 192] }]
output: [{ name: y, data_type: TYPE_FP32, dims: [2] }]
ensemble_scheduling:
  step:
    - { model_name: ppocr_cls, input_map: { x: x }, output_map: { "save_infer_model/scale_0.tmp_1": y } }
"""


def ensemble(args):
    """A model directly and through a one-step ensemble around it, alternating on one
    server: `simple` (the request path's cost shows most), and PP-OCR cls on tract."""
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        simple_repo(repo)
        shutil.copytree(ROOT / "models" / "ppocr_cls", repo / "ppocr_cls")
        (repo / "cls_pipeline" / "1").mkdir(parents=True)
        (repo / "cls_pipeline" / "config.yaml").write_text(CLS_PIPELINE)
        port = free_port()
        address = f"127.0.0.1:{port}"
        proc = serve([str(WHARF), "serve", "--host", "127.0.0.1", "--grpc-port", str(port),
                      "--metrics-port", str(free_port()), "--model-repository", str(repo)], address)
        pairs = [("simple", "simple_pipeline", ["INPUT0:1,16", "INPUT1:1,16"]),
                 ("ppocr_cls", "cls_pipeline", ["x:1,3,48,192"])]
        for rnd in range(1, args.rounds + 1):
            for c in levels:
                for model, shapes in [(m, sh) for d, e, sh in pairs for m in (d, e)]:
                    r = bench(address, model, c, args.seconds, proc.pid, shapes)
                    r.update(model=model, concurrency=c, round=rnd)
                    rows.append(r)
                    print(f"round {rnd} {model:<16} c{c:<3} {r['throughput_rps']:>9.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
                          f"p99 {r['p99_ms']:.2f} ms  {r['server_cpu_us_per_request']:.0f} us CPU/request  "
                          f"errors {r['errors']}", file=sys.stderr, flush=True)
        stop(proc)
    print("| model | round | concurrency | direct req/s | ensemble req/s | ratio | direct p99 ms | ensemble p99 ms | ratio | CPU µs/request direct / ensemble |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (direct, wrapped, _), rnd, c in [(p, r, c) for p in pairs for r in range(1, args.rounds + 1) for c in levels]:
        at = {r["model"]: r for r in rows if r["round"] == rnd and r["concurrency"] == c}
        d, e = at[direct], at[wrapped]
        print(f"| {direct} | {rnd} | {c} | {d['throughput_rps']:,.0f} | {e['throughput_rps']:,.0f} | "
              f"{e['throughput_rps'] / d['throughput_rps']:.2f} | {d['p99_ms']:.2f} | {e['p99_ms']:.2f} | "
              f"{e['p99_ms'] / d['p99_ms']:.2f} | {d['server_cpu_us_per_request']:.0f} / "
              f"{e['server_cpu_us_per_request']:.0f} |")


# Triton's `simple` as JSON: two INT32 [1, 16] inputs.
WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [%s]}, \
{"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [%s]}]}'
""" % (",".join(str(i) for i in range(16)), ",".join("1" for _ in range(16)))


def wrk(address, model, concurrency, seconds, pid, script):
    """req/s, latency and the server's CPU per request for JSON infer bodies."""
    url = f"http://{address}/v2/models/{model}/infer"
    run = lambda secs: subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(secs))}s", "--latency", "-s", str(script), url],
        check=True, capture_output=True, text=True).stdout
    run(1)  # warm connections and caches, unmeasured
    before = cpu_seconds(pid)
    out = run(seconds)
    used = cpu_seconds(pid) - before
    lines = out.splitlines()
    field = lambda prefix: next(l.split()[-1] for l in lines if l.strip().startswith(prefix))
    ms = lambda text: float(text[:-2]) if text.endswith("ms") else (
        float(text[:-2]) / 1000 if text.endswith("us") else float(text[:-1]) * 1000)
    requests = int(next(l.split()[0] for l in lines if "requests in" in l))
    bad = sum(int(l.split()[-1]) for l in lines if l.strip().startswith("Non-2xx"))
    return {"throughput_rps": float(field("Requests/sec:")), "p50_ms": ms(field("50%")),
            "p99_ms": ms(field("99%")), "errors": bad, "requests": requests,
            "server_cpu_us_per_request": used / max(requests, 1) * 1e6}


def perf_analyzer(address, model, concurrency, seconds, pid):
    """perf_analyzer -i http (binary tensors) at one concurrency: infer/s and latency."""
    cuda = next(pathlib.Path(PERF_ANALYZER.parent.parent / "venv").rglob("libcudart.so.12"))
    env = {**os.environ, "LD_LIBRARY_PATH": str(cuda.parent)}
    before = cpu_seconds(pid)
    out = subprocess.run(
        [str(PERF_ANALYZER), "-m", model, "-i", "http", "-u", address, "--concurrency-range", str(concurrency),
         "--measurement-interval", str(int(seconds * 1000)), "--stability-percentage", "25"],
        check=True, capture_output=True, text=True, env=env).stdout
    used = cpu_seconds(pid) - before
    # Stabilised on the mean (on p99, two shared cores rarely settle within 10 windows);
    # the percentiles are read from the same report.
    line = next(l for l in out.splitlines() if l.startswith(f"Concurrency: {concurrency},"))
    rps = float(line.split("throughput:")[1].split()[0])
    usec = lambda name: float(next(l for l in out.splitlines() if f"{name} latency:" in l).split()[2]) / 1000
    counted = int(next(l for l in out.splitlines() if "Request count:" in l).split()[-1])
    return {"throughput_rps": rps, "p50_ms": usec("p50"), "p99_ms": usec("p99"), "errors": 0,
            "requests": counted, "server_cpu_us_per_request": used / max(counted, 1) * 1e6}


def wait_http_ready(address, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server at {address} exited"
        try:
            with urllib.request.urlopen(f"http://{address}/v2/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(address)


def http(args):
    """wharf's HTTP infer on `simple` (tract, no batching and with it) against a bare hyper
    handler that parses the same JSON and echoes the inputs, each server alone in turn."""
    levels = [int(c) for c in args.concurrency.split(",")]
    loaders = [("wrk JSON", wrk)] + ([("perf_analyzer binary", None)]
                                     if PERF_ANALYZER.exists() and not args.wrk_only else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        simple_repo(repo)
        script = repo / "simple.lua"
        script.write_text(WRK_SCRIPT)
        port = free_port()
        address = f"127.0.0.1:{port}"
        wharf = [str(WHARF), "serve", "--host", "127.0.0.1", "--http-port", str(port), "--grpc-port",
                 str(free_port()), "--metrics-port", str(free_port()), "--model-repository", str(repo)]
        servers = [("bare hyper echo", [str(HTTP_ECHO), address], "simple"),
                   ("wharf, no batching", wharf, "simple"),
                   ("wharf, dynamic batching", None, "simple_batched")]
        if args.baseline:
            servers.append(("baseline wharf, no batching", [args.baseline] + wharf[1:], "simple"))
        def start(cmd):
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_http_ready(address, proc)
            return proc

        for rnd in range(1, args.rounds + 1):
            for name, proc, model in in_turn(servers, start):
                for loader, _ in loaders:
                    for c in levels:
                        if loader == "wrk JSON":
                            r = wrk(address, model, c, args.seconds, proc.pid, script)
                        else:
                            r = perf_analyzer(address, model, c, args.seconds, proc.pid)
                        r.update(server=name, loader=loader, concurrency=c, round=rnd)
                        rows.append(r)
                        print(f"round {rnd} {name:<24} {loader:<20} c{c:<3} {r['throughput_rps']:>9.0f} req/s  "
                              f"p99 {r['p99_ms']:.2f} ms  {r['server_cpu_us_per_request']:.0f} us CPU/request  "
                              f"errors {r['errors']}", file=sys.stderr, flush=True)
    print("| loader | server | concurrency | req/s (median) | req/s vs echo, each round | p99 ms | server CPU µs/request |")
    print("|---|---|---|---|---|---|---|")
    for loader, _ in loaders:
        for name, _, _ in servers:
            for c in levels:
                mine = [r for r in rows if r["server"] == name and r["loader"] == loader and r["concurrency"] == c]
                echo = {r["round"]: r for r in rows if r["server"] == "bare hyper echo"
                        and r["loader"] == loader and r["concurrency"] == c}
                ratios = ", ".join(f"{r['throughput_rps'] / echo[r['round']]['throughput_rps']:.2f}" for r in mine)
                med = lambda k: statistics.median(r[k] for r in mine)
                print(f"| {loader} | {name} | {c} | {med('throughput_rps'):,.0f} | {ratios} | "
                      f"{med('p99_ms'):.2f} | {med('server_cpu_us_per_request'):.0f} |")
    if args.json:
        print(json.dumps(rows, indent=1))


def ppocr(args):
    """The PP-OCR models of the default repository (no dynamic batching), for regressions."""
    bins = [("this", str(WHARF))] + ([("baseline", args.baseline)] if args.baseline else [])
    for rnd in (1, 2):
        for label, binary in bins:
            port = free_port()
            address = f"127.0.0.1:{port}"
            proc = serve([binary, "serve", "--host", "127.0.0.1", "--grpc-port", str(port), "--metrics-port",
                          str(free_port()), "--model-repository", str(ROOT / "models")], address)
            for model, shape, c in (("ppocr_cls", "x:1,3,48,192", 16), ("ppocr_rec", "x:1,3,48,320", 8)):
                out = subprocess.run(
                    [str(WHARF), "bench", "--url", address, "--model", model, "--shape", shape, "--concurrency", str(c),
                     "--duration-secs", str(args.seconds), "--warmup-secs", "1", "--json"],
                    check=True, capture_output=True, text=True).stdout
                r = json.loads(out)
                print(f"round {rnd} {label:<9} {model} c{c}: {r['throughput_rps']:.1f} req/s p50 {r['p50_ms']:.2f} "
                      f"p99 {r['p99_ms']:.2f} errors {r['errors']}", flush=True)
            stop(proc)


if __name__ == "__main__":
    main()
