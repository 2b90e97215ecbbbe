"""PP-OCR end to end: wharf's `ppocr` pipeline (one gRPC call per image) against
rapidocr-onnxruntime 1.4.4 in-process, on the same rendered cheques and the same cores.

    cargo build --release && scripts/fetch-ppocr-models.sh
    .venv-test/bin/pip install -r tests/python/requirements.txt   # rapidocr, Pillow
    .venv-test/bin/python benches/ppocr.py [--seconds 20] [--engine shipped|onnxruntime|tract] [--group-size 0]
        [--instances 2] [--concurrency 1,4,8] [--images benches/data/cheque.png]

Reports, in one run: wharf at concurrency 1, 4 and 8 (images/s, p50/p99), each step's
share of the time at concurrency 1 (from the steps' own ModelStatistics, as any client
can read them), the recogniser's rows per engine call over the run, and rapidocr in 1
and in 2 worker processes with 1, 4 or 8 callers waiting on them, as a Python server
would run it.
`--group-size 0` pads lines to width buckets (ppocr_lines' `group_size`) instead of as
rapidocr does (the shipped 6). wharf finds libonnxruntime where
scripts/fetch-ppocr-models.sh puts it, or at ORT_DYLIB_PATH.
"""
import argparse
import multiprocessing
import os
import pathlib
import re
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from conftest import running_wharf  # noqa: E402
from ocr_images import render  # noqa: E402
from test_ppocr import pipeline_repository  # noqa: E402

PAGES = 8


def pages():
    return [render(seed, width=1600)[0] for seed in range(100, 100 + PAGES)]


def percentile(values, q):
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def closed_loop(address, images, concurrency, seconds):
    """`concurrency` callers, each sending the next page as soon as it has its answer."""
    latencies, errors = [], []
    stop = time.monotonic() + seconds

    def caller(offset):
        client = grpcclient.InferenceServerClient(address)
        i = offset
        while time.monotonic() < stop:
            inp = grpcclient.InferInput("image", [1], "BYTES")
            inp.set_data_from_numpy(np.array([images[i % len(images)]], dtype=object))
            started = time.monotonic()
            try:
                client.infer("ppocr", [inp])
                latencies.append(time.monotonic() - started)
            except Exception as e:  # counted, not fatal: the report shows them
                errors.append(str(e))
            i += 1
        client.close()

    return callers(caller, concurrency) * len(latencies), latencies, errors


def callers(caller, concurrency):
    """Runs `caller(k)` on `concurrency` threads until all return: 1 / seconds taken."""
    started = time.monotonic()
    threads = [threading.Thread(target=caller, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 1 / (time.monotonic() - started)


def cpu_seconds(pid):
    """User + system CPU of every thread of the process so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wharf_pid(address):
    """The server's process: the one listening on `address`'s port (we started it)."""
    port = int(address.rsplit(":", 1)[1])
    for proc in pathlib.Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"wharf") and b"serve" in cmd:
                return int(proc.name)
    raise RuntimeError(f"no wharf process for port {port}")


STEPS = [("decode", "ppocr_image"), ("det", "ppocr_det"), ("db", "ppocr_db"), ("crop", "ppocr_cls_crops"),
         ("cls", "ppocr_cls"), ("lines", "ppocr_lines"), ("rec", "ppocr_rec"), ("ctc", "ppocr_ctc")]


def step_stats(client):
    """Each step's ModelStatistics totals (ns): queue and compute (input + infer + output)."""
    totals = {}
    for step, model in STEPS:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        infer = stats["inference_stats"]
        ns = lambda key: int(infer.get(key, {}).get("ns", 0))  # noqa: E731
        totals[step] = (int(stats.get("execution_count", 0)), ns("queue"),
                        ns("compute_input") + ns("compute_infer") + ns("compute_output"))
    return totals


def step_breakdown(before, after, images):
    """The step table: per image, each step's compute and queue time and its share."""
    rows = {s: tuple(a - b for a, b in zip(after[s], before[s])) for s, _ in STEPS}
    total = sum(compute for _, _, compute in rows.values()) or 1
    print("\n| step (model) | engine calls per image | compute ms per image | share | queue ms per image |")
    print("|---|---|---|---|---|")
    for step, model in STEPS:
        calls, queue, compute = rows[step]
        print(f"| {step} ({model}) | {calls / images:.2f} | {compute / images / 1e6:.1f} | "
              f"{100 * compute / total:.0f}% | {queue / images / 1e6:.1f} |")


def rec_calls(client):
    stats = client.get_inference_statistics("ppocr_rec", as_json=True)["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


_engine = None


def rapidocr_start():
    global _engine
    from rapidocr_onnxruntime import RapidOCR
    _engine = RapidOCR()


def rapidocr_read(image):
    _engine(image)


def rapidocr(images, processes, concurrency, seconds):
    """rapidocr as a Python server would run it: `processes` workers, each with its own
    engine, and `concurrency` callers in a closed loop waiting on them (their latency is
    the queue and the work, as wharf's callers see it, without the network)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    pool = multiprocessing.Pool(processes, initializer=rapidocr_start)
    pool.map(rapidocr_read, images[:processes], chunksize=1)  # sessions' first calls
    latencies = []
    stop = time.monotonic() + seconds

    def caller(offset):
        i = offset
        while time.monotonic() < stop:
            started = time.monotonic()
            pool.apply(rapidocr_read, (images[i % len(images)],))
            latencies.append(time.monotonic() - started)
            i += 1

    rate = callers(caller, concurrency) * len(latencies)
    pool.close()
    pool.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU includes each worker's start and first call; over 20 s runs that is a few percent.
    cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return rate, latencies, cpu / max(len(latencies), 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--engine", default="shipped", choices=["shipped", "onnxruntime", "tract"],
                        help="the det/cls/rec engine (shipped: as the configs say, onnxruntime where found)")
    parser.add_argument("--skip-rapidocr", action="store_true")
    parser.add_argument("--concurrency", default="1,4,8", help="wharf's callers, a comma-separated list")
    parser.add_argument("--images", nargs="*", type=pathlib.Path,
                        help="image files to send instead of the rendered cheques (e.g. benches/data/cheque.png)")
    parser.add_argument("--group-size", type=int, default=None,
                        help="ppocr_lines group_size (default: the shipped 6; 0: width buckets)")
    parser.add_argument("--instances", type=int, default=None,
                        help="det and rec instances (default: the shipped 1; on onnxruntime the instances split the cores' threads)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    images = [p.read_bytes() for p in args.images] if args.images else pages()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        pipeline_repository(repo, None if args.engine == "shipped" else args.engine, args.group_size)
        for name in ("ppocr_det", "ppocr_rec") if args.instances else ():
            config = repo / name / "config.yaml"
            config.write_text(re.sub(r"count: \d+", f"count: {args.instances}", config.read_text()))
        with running_wharf(repo) as address:
            client = grpcclient.InferenceServerClient(address)
            closed_loop(address, images, 2, 3)  # every page size's plans built once
            before = rec_calls(client)
            pid = wharf_pid(address)
            steps = None
            for concurrency in levels:
                cpu = cpu_seconds(pid)
                steps_before = step_stats(client) if concurrency == 1 else None
                rate, latencies, errors = closed_loop(address, images, concurrency, args.seconds)
                if steps_before:
                    steps = (steps_before, step_stats(client), len(latencies))
                per_image = (cpu_seconds(pid) - cpu) / max(len(latencies), 1)
                rows.append((f"wharf ({args.engine}{'' if args.group_size is None else f', group_size {args.group_size}'}{'' if args.instances is None else f', {args.instances} det/rec instances'}), concurrency {concurrency}", rate, latencies, len(errors),
                             per_image))
                print(f"wharf c{concurrency}: {rate:.2f} images/s, p50 {percentile(latencies, 50):.0f} ms, "
                      f"p99 {percentile(latencies, 99):.0f} ms, errors {len(errors)}", file=sys.stderr, flush=True)
            after = rec_calls(client)
            client.close()
    calls = {rows_: after.get(rows_, 0) - before.get(rows_, 0) for rows_ in sorted(after)}
    if not args.skip_rapidocr:
        for processes, concurrency in ((1, 1), (1, 4), (1, 8), (2, 4), (2, 8)):
            if concurrency not in levels:
                continue
            rate, latencies, per_image = rapidocr(images, processes, concurrency, args.seconds)
            rows.append((f"rapidocr-onnxruntime, {processes} process(es), concurrency {concurrency}", rate,
                         latencies, 0, per_image))
            print(f"rapidocr x{processes} c{concurrency}: {rate:.2f} images/s", file=sys.stderr, flush=True)
    shown = ", ".join(map(str, args.images)) if args.images else f"{PAGES} cheques of 1600 px wide, 12-16 lines each"
    print(f"{shown}; {args.seconds:.0f} s per row\n")
    print("| server | images/s | p50 ms | p99 ms | CPU s per image | errors |")
    print("|---|---|---|---|---|---|")
    for name, rate, latencies, errors, cpu in rows:
        print(f"| {name} | {rate:.2f} | {percentile(latencies, 50):.0f} | {percentile(latencies, 99):.0f} | "
              f"{cpu:.2f} | {errors} |")
    if steps:
        print("\nEach step at concurrency 1, from its ModelStatistics (compute: input + infer + output):")
        step_breakdown(*steps)
    print(f"\nppocr_rec engine calls by rows over wharf's runs: {calls}")
    total = sum(calls.values())
    if total:
        print(f"mean rows per call: {sum(r * n for r, n in calls.items()) / total:.2f}")


if __name__ == "__main__":
    main()
