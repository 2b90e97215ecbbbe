"""Resident memory of the default repository (the PP-OCR pipeline) on each engine: after
READY, per PP-OCR model (each served alone, less an empty server), the peak while
serving the cheque at concurrency 1 and 4 (VmHWM reset after READY, so the load's own
peak is not counted), and the peak and the RSS left after --varied pages of the test
suite's varied set, each of its own size and line widths, one at a time. A fresh server
for each figure; --baseline measures another build beside this one.

    scripts/fetch-ppocr-models.sh && cargo build --release
    .venv-test/bin/python benches/memory.py [--baseline OTHER_WHARF] [--engines tract,onnxruntime] [--varied 20]

WHARF_BIN names the build measured as "this build" (default target/release/wharf).
"""
import argparse
import concurrent.futures
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

from conftest import PIPELINE, pipeline_repository  # noqa: E402
from ocr_images import render_varied  # noqa: E402
from serving import free_port, stop, wait_ready  # noqa: E402

WHARF = pathlib.Path(__import__("os").environ.get("WHARF_BIN", ROOT / "target" / "release" / "wharf"))
CHEQUE = (ROOT / "benches" / "data" / "cheque.png").read_bytes()
ROUNDS = 3


def status_mib(pid, key):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def serving(binary, repo):
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen([str(binary), "serve", "--host", "127.0.0.1", "--grpc-port", str(port),
                             "--http-port", str(free_port()), "--metrics-port", str(free_port()),
                             "--model-repository", str(repo), "--max-request-size", "8MiB"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(address, proc)
    time.sleep(1)  # let the allocator settle after warm-up
    return proc, address


def read(address, image=CHEQUE):
    client = grpcclient.InferenceServerClient(address)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
    client.infer("ppocr", [tensor], client_timeout=600)
    client.close()


def peak_serving(binary, repo, concurrency):
    proc, address = serving(binary, repo)
    try:
        ready = status_mib(proc.pid, "VmRSS")
        pathlib.Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # resets VmHWM
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            for _ in range(ROUNDS):
                list(pool.map(lambda _: read(address), range(concurrency)))
        return ready, status_mib(proc.pid, "VmHWM"), status_mib(proc.pid, "VmRSS")
    finally:
        stop(proc)


def varied_serving(binary, repo, pages):
    """Peak and RSS after the varied pages, one at a time, and seconds per page."""
    proc, address = serving(binary, repo)
    try:
        pathlib.Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
        started = time.monotonic()
        for page in pages:
            read(address, page)
        took = (time.monotonic() - started) / len(pages)
        return status_mib(proc.pid, "VmHWM"), status_mib(proc.pid, "VmRSS"), took
    finally:
        stop(proc)


def alone(binary, engine, model):
    """RSS after READY with only `model` (None: no model) in the repository."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        if model:
            shutil.copytree(ROOT / "models" / model, repo / model)
            config = repo / model / "config.yaml"
            text = config.read_text().replace("backend: [onnxruntime, tract]", f"backend: {engine}")
            config.write_text(text)
        proc, _ = serving(binary, repo)
        try:
            return status_mib(proc.pid, "VmRSS")
        finally:
            stop(proc)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="another wharf binary to measure beside this one")
    parser.add_argument("--engines", default="tract,onnxruntime")
    parser.add_argument("--varied", type=int, default=20, help="varied pages to serve (0: none)")
    args = parser.parse_args()
    pages = [render_varied(seed)[0] for seed in range(args.varied)]
    builds = [("this build", WHARF)] + ([("baseline", pathlib.Path(args.baseline))] if args.baseline else [])
    print("| build | engine | RSS after READY MiB | peak c1 MiB | after c1 MiB | peak c4 MiB | after c4 MiB |"
          " det alone | rec alone | cls alone | empty server | varied peak MiB | after varied MiB | s/varied page |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for engine in args.engines.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            repo = pathlib.Path(tmp)
            pipeline_repository(repo, engine)
            for name, binary in builds:
                ready, peak1, after1 = peak_serving(binary, repo, 1)
                _, peak4, after4 = peak_serving(binary, repo, 4)
                empty = alone(binary, engine, None)
                models = [alone(binary, engine, m) - empty for m in ("ppocr_det", "ppocr_rec", "ppocr_cls")]
                varied = ("{:.0f} | {:.0f} | {:.2f}".format(*varied_serving(binary, repo, pages))
                          if pages else "- | - | -")
                print(f"| {name} | {engine} | {ready:.0f} | {peak1:.0f} | {after1:.0f} | {peak4:.0f} | {after4:.0f} | "
                      + " | ".join(f"+{m:.0f}" for m in models) + f" | {empty:.0f} | {varied} |", flush=True)


if __name__ == "__main__":
    main()
