"""What OpenTelemetry tracing costs, in one run on one machine: wharf serving Triton's
`simple` (tract, no batching) at c=64 over gRPC (`wharf bench`, closed loop), as a build
without tracing (--baseline), and this build with tracing off, sampling 1 request in 1000,
and sampling every request, the spans going to a real OTLP/HTTP receiver
(tests/python/otlp_receiver.py) in this process. Each server alone on the machine, the
configurations in turn for each round, the server's CPU per request read from /proc.

    cargo build --release --bin wharf
    .venv-test/bin/python benches/tracing.py --baseline /tmp/wharf-base --seconds 5 --rounds 3

Prints a markdown table of the median requests/s and each round's ratio to the baseline.
"""
import argparse
import pathlib
import re
import statistics
import sys
import tempfile
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

from otlp_receiver import HttpReceiver  # noqa: E402
from overhead import WHARF, bench, serve, simple_repo  # noqa: E402
from serving import free_port, stop  # noqa: E402


def spans_total(metrics_address):
    text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10).read().decode()
    return {outcome: float(n) for outcome, n in
            re.findall(r'^wharf_trace_spans_total\{outcome="(\w+)"\} (\S+)$', text, re.M)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="a wharf binary built without tracing")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    receiver = HttpReceiver()
    trace = ["--trace-config", f"opentelemetry,url={receiver.endpoint}"]
    configs = [
        ("baseline: built without tracing", args.baseline, []),
        ("tracing compiled in, off", str(WHARF), []),
        ("sampling 1 in 1000", str(WHARF), [*trace, "--trace-config", "rate=1000"]),
        ("sampling every request", str(WHARF), [*trace, "--trace-config", "rate=1"]),
    ]
    results = {name: [] for name, _, _ in configs}
    spans = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        simple_repo(repo)
        for _ in range(args.rounds):
            for name, binary, flags in configs:
                port, metrics = free_port(), free_port()
                address = f"127.0.0.1:{port}"
                proc = serve([binary, "serve", "--host", "127.0.0.1", "--grpc-port", str(port),
                              "--http-port", str(free_port()), "--metrics-port", str(metrics),
                              "--model-repository", str(repo), *flags], address)
                try:
                    report = bench(address, "simple", args.concurrency, args.seconds, proc.pid)
                    if flags:
                        spans[name] = spans_total(f"127.0.0.1:{metrics}")
                finally:
                    stop(proc)
                results[name].append(report)
    receiver.stop()
    base = results[configs[0][0]]
    print(f"| server | c | req/s (median) | vs baseline, each round | p99 ms | server CPU µs/request |")
    print("|---|---|---|---|---|---|")
    for name, _, _ in configs:
        rows = results[name]
        ratios = ", ".join(f"{r['throughput_rps'] / b['throughput_rps']:.3f}" for r, b in zip(rows, base))
        print(f"| {name} | {args.concurrency} | {statistics.median(r['throughput_rps'] for r in rows):,.0f} "
              f"| {ratios} | {statistics.median(r['p99_ms'] for r in rows):.2f} "
              f"| {statistics.median(r['server_cpu_us_per_request'] for r in rows):.1f} |")
    for name, counts in spans.items():
        print(f"\n{name}, last round: spans {counts}")


if __name__ == "__main__":
    main()
