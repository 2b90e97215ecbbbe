"""A 16 MB input (and its 16 MB answer) through system shared memory against the same
sent as gRPC bytes, side by side in one run: requests/s, CPU per request (server and
client) and the server's peak RSS.

    .venv-test/bin/python benches/shared_memory.py [--seconds 10] [--concurrency 1 4]

Each way gets a fresh server (identity_fp32 on tract, --allow-client-shm), so each peak
RSS is its own. Each client thread owns its input and output regions, registered once.
"""
import argparse
import os
import pathlib
import resource
import shutil
import sys
import tempfile
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "python"))
from conftest import ROOT, running_wharf_addresses  # noqa: E402

ELEMENTS = 4 << 20  # 16 MiB of FP32
MIB = 1 << 20


def server_cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0


def worker(address, way, index, rows, stop, counts):
    client = grpcclient.InferenceServerClient(address)
    request = grpcclient.InferInput("INPUT0", [1, ELEMENTS], "FP32")
    output = grpcclient.InferRequestedOutput("OUTPUT0")
    if way == "shm":
        tag = f"bench_{os.getpid()}_{index}"
        handles = [shm.create_shared_memory_region(f"{tag}_{s}", f"/{tag}_{s}", rows.nbytes) for s in ("in", "out")]
        shm.set_shared_memory_region(handles[0], [rows])
        for side, handle in zip(("in", "out"), handles):
            client.register_system_shared_memory(f"{tag}_{side}", f"/{tag}_{side}", rows.nbytes)
        request.set_shared_memory(f"{tag}_in", rows.nbytes)
        output.set_shared_memory(f"{tag}_out", rows.nbytes)
    done = 0
    while not stop.is_set():
        if way == "grpc":
            request.set_data_from_numpy(rows)
            answer = client.infer("identity_fp32", [request], outputs=[output]).as_numpy("OUTPUT0")
        else:
            client.infer("identity_fp32", [request], outputs=[output])
            answer = shm.get_contents_as_numpy(handles[1], np.float32, [1, ELEMENTS])
        assert answer[0, -1] == rows[0, -1]
        done += 1
    counts[index] = done
    if way == "shm":
        for side in ("in", "out"):
            client.unregister_system_shared_memory(f"{tag}_{side}")
        for handle in handles:
            shm.destroy_shared_memory_region(handle)


def measure(way, concurrency, seconds):
    with tempfile.TemporaryDirectory() as repo:
        shutil.copytree(ROOT / "tests" / "models" / "identity_fp32", pathlib.Path(repo) / "identity_fp32")
        with running_wharf_addresses(pathlib.Path(repo), "--allow-client-shm", "--max-request-size", "64MiB") as s:
            rows = np.arange(ELEMENTS, dtype=np.float32).reshape(1, ELEMENTS)
            stop, counts = threading.Event(), [0] * concurrency
            # One warm request, so start-up costs stay out of the window.
            warm = threading.Event()
            warm.set()
            worker(s["grpc"], "grpc", 0, rows, warm, [0])
            cpu0, client0, t0 = server_cpu(s["pid"]), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            threads = [threading.Thread(target=worker, args=(s["grpc"], way, i, rows, stop, counts))
                       for i in range(concurrency)]
            for t in threads:
                t.start()
            time.sleep(seconds)
            stop.set()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - t0
            client1 = resource.getrusage(resource.RUSAGE_SELF)
            served = sum(counts)
            server_ms = (server_cpu(s["pid"]) - cpu0) * 1000 / served
            client_ms = ((client1.ru_utime + client1.ru_stime) - (client0.ru_utime + client0.ru_stime)) * 1000 / served
            return served / elapsed, server_ms, client_ms, peak_rss(s["pid"]) / MIB


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    print("| way | concurrency | requests/s | server CPU ms/request | client CPU ms/request | server peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for concurrency in args.concurrency:
        for way in ("grpc", "shm"):
            rate, server_ms, client_ms, rss = measure(way, concurrency, args.seconds)
            print(f"| {way} | {concurrency} | {rate:.1f} | {server_ms:.2f} | {client_ms:.2f} | {rss:.0f} |", flush=True)


if __name__ == "__main__":
    main()
