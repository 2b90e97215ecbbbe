"""Resident memory of an idle server after loads made through model control (explicit
mode: RepositoryModelLoad / Unload), for PP-OCR rec on tract: this wharf and, with
--baseline, another build, in turn.

    scripts/fetch-ppocr-models.sh && cargo build --release
    .venv-test/bin/python benches/control_memory.py [--baseline OTHER_WHARF] [--rounds 2]

An idle server allocates nothing, so memory a load freed stays resident until something
hands it back; the figures are read 3 s after each load, with no requests in between.
"""
import argparse
import pathlib
import shutil
import subprocess
import tempfile
import time

import tritonclient.grpc as grpcclient

from serving import free_port, stop, wait_ready

ROOT = pathlib.Path(__file__).resolve().parents[1]
WHARF = ROOT / "target" / "release" / "wharf"
SETTLE_SECS = 3


def rss_mib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise KeyError("VmRSS")


def measure(binary, repo):
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen([str(binary), "serve", "--host", "127.0.0.1", "--grpc-port", str(port),
                             "--metrics-port", str(free_port()), "--model-repository", str(repo),
                             "--model-control-mode", "explicit"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(address, proc)
        client = grpcclient.InferenceServerClient(address)
        figures = {"started": rss_mib(proc.pid)}
        client.load_model("ppocr_rec")  # returns once the model is READY
        time.sleep(SETTLE_SECS)
        figures["loaded"] = rss_mib(proc.pid)
        client.unload_model("ppocr_rec")
        client.load_model("ppocr_rec")
        time.sleep(SETTLE_SECS)
        figures["unloaded and loaded again"] = rss_mib(proc.pid)
        client.close()
        return figures
    finally:
        stop(proc)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="another wharf binary to measure in turn")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    builds = [("this", WHARF)] + ([("baseline", args.baseline)] if args.baseline else [])
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        shutil.copytree(ROOT / "models" / "ppocr_rec", repo / "ppocr_rec")
        print(f"| build | round | RSS started (MiB) | {SETTLE_SECS} s after a load | "
              f"{SETTLE_SECS} s after unload and load |")
        print("|---|---|---|---|---|")
        for rnd in range(1, args.rounds + 1):
            for name, binary in builds:
                f = measure(binary, repo)
                print(f"| {name} | {rnd} | {f['started']} | {f['loaded']} | {f['unloaded and loaded again']} |",
                      flush=True)


if __name__ == "__main__":
    main()
