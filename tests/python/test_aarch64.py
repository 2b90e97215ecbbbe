"""The aarch64 build, run under Debian's qemu-user-static on an x86-64 host: the conformance
smoke test (health, metadata, infer) and one PP-OCR cheque on tract, whose lines must be
the x86-64 build's, text and boxes. Runs where WHARF_AARCH64 names the cross-built binary
(`bash scripts/test-aarch64.sh` builds it and sets it); skipped otherwise. Timings under
emulation mean nothing and none are taken."""
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

import conftest
from conftest import ROOT, make_repository, pipeline_repository, running_wharf_addresses

AARCH64 = os.environ.get("WHARF_AARCH64")
pytestmark = pytest.mark.skipif(
    not AARCH64, reason="WHARF_AARCH64 unset: bash scripts/test-aarch64.sh cross-builds and runs this")


def launcher(folder: pathlib.Path, binary) -> str:
    """A launcher that runs an aarch64 binary under qemu, for conftest's server helpers.
    The emulated CPU is a Cortex-A72 (a Raspberry Pi 4's core, NEON only): qemu's default
    offers SVE2 with 512-bit vectors, which tract then computes with and qemu emulates
    some 15 times slower than NEON (the classifier at 1.7 s a row instead of 0.1 s)."""
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    assert qemu, "qemu-user-static is not installed"
    path = folder / "wharf"
    path.write_text(f'#!/bin/sh\nexec {qemu} -cpu cortex-a72 {binary} "$@"\n')
    path.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    return launcher(tmp_path_factory.mktemp("aarch64"), AARCH64)


def test_the_binary_is_aarch64():
    header = pathlib.Path(AARCH64).read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64


def test_health_metadata_and_infer(emulated, monkeypatch):
    smoke(emulated, monkeypatch)


def smoke(binary, monkeypatch):
    """Health, metadata and infer on `simple`-shaped add_sub."""
    monkeypatch.setattr(conftest, "WHARF", binary)
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        make_repository(repo)
        with running_wharf_addresses(repo, ready_timeout=600) as addresses:
            grpc = grpcclient.InferenceServerClient(addresses["grpc"])
            http = httpclient.InferenceServerClient(addresses["http"])
            assert grpc.is_server_live() and grpc.is_server_ready()
            assert http.is_server_ready()
            assert grpc.get_model_metadata("add_sub", as_json=True)["inputs"][0]["name"] == "INPUT0"
            a = np.arange(4, dtype=np.float32).reshape(1, 4)
            b = np.ones((1, 4), dtype=np.float32)
            inputs = [grpcclient.InferInput("INPUT0", [1, 4], "FP32"),
                      grpcclient.InferInput("INPUT1", [1, 4], "FP32")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(b)
            result = grpc.infer("add_sub", inputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
            grpc.close()
            http.close()


def read_cheque(repo, ready_timeout):
    cheque = (ROOT / "benches" / "data" / "cheque.png").read_bytes()
    # Emulated, warming the recogniser alone takes about two minutes.
    with running_wharf_addresses(repo, "--max-request-size", "8MiB",
                                 "--model-load-timeout-secs", str(ready_timeout),
                                 ready_timeout=ready_timeout) as addresses:
        client = grpcclient.InferenceServerClient(addresses["grpc"])
        image = grpcclient.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([cheque], dtype=np.object_))
        result = client.infer("ppocr", [image], client_timeout=1200)
        client.close()
    return [t.decode() for t in result.as_numpy("text")], result.as_numpy("boxes")


def test_a_cheque_reads_as_on_x86_64(emulated, monkeypatch):
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        pipeline_repository(repo, "tract")
        native_lines, native_boxes = read_cheque(repo, 120)
        monkeypatch.setattr(conftest, "WHARF", emulated)
        lines, boxes = read_cheque(repo, 1200)
    assert len(native_lines) > 5
    assert lines == native_lines
    np.testing.assert_allclose(boxes, native_boxes, atol=1.0)


STATIC = ROOT / "target" / "static"


def buildah(*args) -> str:
    result = subprocess.run(["buildah", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


@pytest.mark.skipif(not shutil.which("buildah") or not (STATIC / "wharf-amd64").exists()
                    or not (STATIC / "wharf-arm64").exists(),
                    reason="needs buildah and both static binaries (scripts/test-aarch64.sh)")
def test_the_image_is_built_for_both_architectures(tmp_path, monkeypatch):
    """The Dockerfile's prebuilt stage for linux/amd64 and linux/arm64 in one manifest
    list, built without emulation (buildah: no Docker engine needed). Each image is at
    most 40 MB and carries its architecture's binary; the arm64 image's binary, taken out
    of the image, passes the smoke test under qemu. (Running the image itself under
    emulation needs binfmt_misc, which a container build host may not have.)"""
    name = "localhost/wharf-multiarch-test"
    subprocess.run(["buildah", "manifest", "rm", name], capture_output=True)
    buildah("build", "--platform", "linux/amd64,linux/arm64", "--build-arg", "BINARY=prebuilt",
            "--manifest", name, str(ROOT))
    manifest = json.loads(buildah("manifest", "inspect", name))
    platforms = {m["platform"]["architecture"]: m["digest"] for m in manifest["manifests"]}
    assert set(platforms) == {"amd64", "arm64"}, manifest
    for arch in ("amd64", "arm64"):
        container = buildah("from", f"{name}@{platforms[arch]}")
        try:
            root = pathlib.Path(buildah("mount", container))
            binary = (root / "wharf").read_bytes()
            assert binary == (STATIC / f"wharf-{arch}").read_bytes()
            total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
            assert total <= 40_000_000, f"{arch}: {total} bytes"
            if arch == "arm64":
                (tmp_path / "wharf-arm64").write_bytes(binary)
                (tmp_path / "wharf-arm64").chmod(0o755)
        finally:
            subprocess.run(["buildah", "rm", container], capture_output=True)
    smoke(launcher(tmp_path, tmp_path / "wharf-arm64"), monkeypatch)


DOCKER = "/usr/bin/docker"  # Debian's docker.io client, BuildKit built in (test_container.py)


@pytest.mark.skipif(not os.path.exists(DOCKER) or not (STATIC / "wharf-arm64").exists()
                    or subprocess.run([DOCKER, "info"], capture_output=True).returncode != 0,
                    reason="needs a Docker engine and the arm64 static binary")
def test_docker_builds_the_arm64_image_too():
    """The same Dockerfile through Docker's own client, one platform a build (a manifest
    list needs buildx or buildah, above)."""
    tag = "wharf:arm64-test"
    subprocess.run([DOCKER, "build", "-q", "--platform", "linux/arm64", "--build-arg", "BINARY=prebuilt",
                    "-t", tag, str(ROOT)], check=True, capture_output=True,
                   env={**os.environ, "DOCKER_BUILDKIT": "1"})
    arch, size = subprocess.run([DOCKER, "image", "inspect", "-f", "{{.Architecture}} {{.Size}}", tag],
                                check=True, capture_output=True, text=True).stdout.split()
    assert arch == "arm64"
    assert int(size) <= 40_000_000, size
