"""The container images: hadolint on both Dockerfiles always; where a Docker engine runs,
build both images (from binaries built on this host: no registry is reachable here), run
each read-only, with every capability dropped, no-new-privileges and a non-root user,
and infer through it with tritonclient. The onnxruntime image (the Helm chart's default)
reads the README's cheque through the whole PP-OCR pipeline, det, cls and rec on
onnxruntime."""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from conftest import ROOT

BIN = pathlib.Path(sys.executable).parent
# Debian's docker.io client has BuildKit built in (the stages an image does not need are
# skipped, so nothing is pulled); a newer client without the buildx plugin cannot.
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")
STATIC = ROOT / "target" / "static" / "wharf-amd64"
RELEASE = ROOT / "target" / "release" / "wharf"
ORT_PAYLOAD = ROOT / "target" / "docker-onnxruntime"
HARDENED = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--user", "65532:65532", "--network", "host"]


def test_dockerfiles_pass_hadolint():
    result = subprocess.run([BIN / "hadolint", ROOT / "Dockerfile",
                             ROOT / "Dockerfile.onnxruntime"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def docker_unavailable() -> str | None:
    if not DOCKER:
        return "no docker client (apt-get install docker.io)"
    info = subprocess.run([DOCKER, "info"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"no Docker engine answers: {info.stderr.strip()[:200]}"
    if not STATIC.exists():
        return f"{STATIC} not built (scripts/test.sh builds it where Docker runs)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ort_library() -> pathlib.Path:
    """The library of the onnxruntime==1.31.1 wheel in this venv."""
    import onnxruntime
    return next((pathlib.Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.*"))


def lay_out_onnxruntime_payload() -> None:
    """What Dockerfile.onnxruntime's build stage makes, from this (Debian 12) host."""
    shutil.rmtree(ORT_PAYLOAD, ignore_errors=True)
    libs = ORT_PAYLOAD / "lib" / "x86_64-linux-gnu"
    libs.mkdir(parents=True)
    (ORT_PAYLOAD / "lib64").mkdir()
    (ORT_PAYLOAD / "usr" / "lib" / "wharf").mkdir(parents=True)
    shutil.copy(RELEASE, ORT_PAYLOAD / "wharf")
    shutil.copy("/lib64/ld-linux-x86-64.so.2", ORT_PAYLOAD / "lib64")
    for lib in ("libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0",
                "libgcc_s.so.1", "libstdc++.so.6"):
        shutil.copy(pathlib.Path("/lib/x86_64-linux-gnu") / lib, libs)
    shutil.copy(ort_library(), ORT_PAYLOAD / "usr" / "lib" / "wharf" / "libonnxruntime.so.1.31.1")
    for name in ("ppocr_det", "ppocr_rec"):
        (ORT_PAYLOAD / "models" / name / "1").mkdir(parents=True)
        shutil.copy(ROOT / "models" / name / "1" / "model.onnx", ORT_PAYLOAD / "models" / name / "1")


def build(tag: str, dockerfile: str, arg: str) -> int:
    subprocess.run([DOCKER, "build", "-q", "-f", ROOT / dockerfile, "--build-arg", arg,
                    "-t", tag, ROOT], check=True, env={**os.environ, "DOCKER_BUILDKIT": "1"},
                   capture_output=True, timeout=600)
    return int(subprocess.run([DOCKER, "image", "inspect", "-f", "{{.Size}}", tag],
                              check=True, capture_output=True, text=True).stdout)


def read_cheque(client) -> dict:
    """The README's cheque through `ppocr` five times: its lines, the p50, and the engine
    that serves each model the pipeline runs on."""
    image = (ROOT / "benches" / "data" / "cheque.png").read_bytes()
    took = []
    for _ in range(5):
        inp = grpcclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([image], dtype=object))
        started = time.monotonic()
        result = client.infer("ppocr", [inp])
        took.append(time.monotonic() - started)
    engines = {name: client.get_model_config(name).config.backend
               for name in ("ppocr_det", "ppocr_cls", "ppocr_rec")}
    return {"lines": [t.decode() for t in result.as_numpy("text")],
            "p50_ms": sorted(took)[2] * 1000, "engines": engines}


def run_and_infer(tag: str, extra: list[str], ocr: bool = False) -> dict:
    """Starts the image, times it to READY, infers (with `ocr`, reads the cheque too),
    stops it (SIGTERM): its exit code."""
    grpc_port, metrics_port = free_port(), free_port()
    started = time.monotonic()
    cid = subprocess.run(
        [DOCKER, "run", "-d", *HARDENED, *extra, tag, "serve", "--model-repository", "/models",
         "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
         "--host", "127.0.0.1"],
        check=True, capture_output=True, text=True).stdout.strip()
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        while True:
            try:
                if client.is_server_ready():
                    break
            except Exception:
                pass
            if time.monotonic() - started > 60:
                logs = subprocess.run([DOCKER, "logs", cid], capture_output=True, text=True)
                raise AssertionError(f"{tag} not ready in 60 s:\n{logs.stderr[-3000:]}")
            time.sleep(0.02)
        ready_s = time.monotonic() - started
        crop = np.random.default_rng(0).random((2, 3, 48, 192), dtype=np.float32)
        x = grpcclient.InferInput("x", list(crop.shape), "FP32")
        x.set_data_from_numpy(crop)
        out = client.infer("ppocr_cls", [x]).as_numpy("save_infer_model/scale_0.tmp_1")
        assert out.shape == (2, 2) and np.allclose(out.sum(axis=1), 1.0, atol=1e-4), out
        cheque = read_cheque(client) if ocr else None
        client.close()
    finally:
        subprocess.run([DOCKER, "stop", "-t", "30", cid], capture_output=True)
        state = json.loads(subprocess.run([DOCKER, "inspect", cid], capture_output=True,
                                          text=True).stdout)[0]["State"]
        subprocess.run([DOCKER, "rm", cid], capture_output=True)
    return {"ready_s": ready_s, "exit_code": state["ExitCode"], "cheque": cheque}


def test_images_build_small_and_serve_hardened():
    reason = docker_unavailable()
    if reason:
        print(f"SKIPPED container build and run: {reason}")
        pytest.skip(reason)
    lay_out_onnxruntime_payload()
    tract_size = build("wharf:test", "Dockerfile", "BINARY=prebuilt")
    ort_size = build("wharf:test-onnxruntime", "Dockerfile.onnxruntime", "PAYLOAD=prebuilt")
    tract = run_and_infer("wharf:test", [])
    ort = run_and_infer("wharf:test-onnxruntime", ["--tmpfs", "/tmp:rw,size=64m"], ocr=True)
    print(f"image wharf (tract): {tract_size / 1e6:.1f} MB, start to READY {tract['ready_s']:.2f} s")
    cheque = ort["cheque"]
    print(f"image wharf (onnxruntime): {ort_size / 1e6:.1f} MB, start to READY "
          f"{ort['ready_s']:.2f} s, the cheque p50 {cheque['p50_ms']:.0f} ms")
    assert tract_size < 40e6, tract_size
    # The cheque's 13 lines, as the README shows them; every model on onnxruntime.
    assert len(cheque["lines"]) == 13 and any("153,745.58" in line for line in cheque["lines"]), cheque
    assert set(cheque["engines"].values()) == {"onnxruntime"}, cheque
    assert tract["exit_code"] == 0 and ort["exit_code"] == 0, (tract, ort)
    # Nothing but the binary and the models: no shell to exec into.
    shell = subprocess.run([DOCKER, "run", "--rm", "--entrypoint", "/bin/sh", "wharf:test"],
                           capture_output=True, text=True)
    assert shell.returncode != 0
