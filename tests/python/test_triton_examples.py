"""Triton's own Python example clients (tests/fixtures/triton-client/examples, unchanged),
each run as a program against wharf over gRPC and HTTP, serving Triton's example model
repository (tests/python/triton_models.py). An example passes when it exits 0 and, where
it prints one, says PASS (some match Triton's error phrases and only then print it).

Not run, each for its reason:
- simple_{grpc,http}_health_metadata: require the server's name to be "triton";
- simple_{grpc,http}_cudashm_client: CUDA shared memory (wharf has no GPU tensor path);
- simple_grpc_sequence_*, simple_http_sequence_*, simple_grpc_aio_sequence_*: sequence
  batching, which wharf refuses;
- simple_grpc_custom_repeat: a decoupled model;
- ensemble_image_client: a DALI-preprocessed inception ensemble;
- memory_growth_test: Triton's custom C++ identity backend.
"""
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, running_wharf_addresses
from triton_models import example_repository

EXAMPLES = ROOT / "tests" / "fixtures" / "triton-client" / "examples"

GRPC = [
    ["simple_grpc_infer_client.py"],
    ["simple_grpc_async_infer_client.py"],
    ["simple_grpc_aio_infer_client.py"],
    ["simple_grpc_string_infer_client.py"],
    ["simple_grpc_shm_client.py"],
    ["simple_grpc_shm_string_client.py"],
    ["simple_grpc_custom_args_client.py"],
    ["simple_grpc_keepalive_client.py"],
    ["grpc_explicit_byte_content_client.py"],
    ["grpc_explicit_int8_content_client.py"],
    ["grpc_explicit_int_content_client.py"],
    ["reuse_infer_objects_client.py", "-i", "grpc"],
    ["grpc_client.py"],
    ["grpc_image_client.py", "-m", "densenet_onnx", "-c", "3", "-s", "INCEPTION", "{image}"],
    ["image_client.py", "-i", "grpc", "-m", "densenet_onnx", "-c", "3", "-s", "INCEPTION", "{image}"],
]
HTTP = [
    ["simple_http_infer_client.py"],
    ["simple_http_async_infer_client.py"],
    ["simple_http_aio_infer_client.py"],
    ["simple_http_string_infer_client.py"],
    ["simple_http_shm_client.py"],
    ["simple_http_shm_string_client.py"],
    ["reuse_infer_objects_client.py", "-i", "http"],
    ["image_client.py", "-i", "http", "-m", "densenet_onnx", "-c", "3", "-s", "INCEPTION", "{image}"],
]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "photo.jpg"
    pixels = np.random.default_rng(3).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def examples_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("examples_repo")
    example_repository(repo)
    # The sequence models and inception_onnx do not load, so readiness waits only for
    # loading to settle.
    with running_wharf_addresses(repo, "--allow-client-shm", "--strict-readiness", "false") as addresses:
        yield addresses


def run_example(args, url, image=None):
    command = [sys.executable, str(EXAMPLES / args[0]), *[a.replace("{image}", str(image)) for a in args[1:]],
               "-u", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    failed = f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, failed
    # Some examples exit 0 even when an error phrase they match is missing; those that
    # print PASS say so only when every check held.
    if 'print("PASS' in (EXAMPLES / args[0]).read_text():
        assert "PASS" in done.stdout, failed
    return done.stdout


@pytest.mark.parametrize("args", GRPC, ids=lambda a: " ".join(a[:3]))
def test_grpc_example(examples_server, image, args):
    run_example(args, examples_server["grpc"], image)


@pytest.mark.parametrize("args", HTTP, ids=lambda a: " ".join(a[:3]))
def test_http_example(examples_server, image, args):
    run_example(args, examples_server["http"], image)


def test_image_clients_print_top_classes_with_their_labels(examples_server, image):
    out = run_example(GRPC[-1], examples_server["grpc"], image)
    labels = (ROOT / "tests" / "fixtures" / "triton" / "docs" / "examples" / "model_repository" /
              "densenet_onnx" / "densenet_labels.txt").read_text().splitlines()
    lines = [line.strip() for line in out.splitlines() if ") = " in line]
    assert len(lines) == 3, out
    for line in lines:
        index = int(line.split("(")[1].split(")")[0])
        assert line.endswith("= " + labels[index]), line


@pytest.mark.parametrize("protocol,models", [("grpc", 8), ("http", 7)])
def test_model_control_example(tmp_path, protocol, models):
    """Each in its own explicit-mode server: the examples load, reload with a config and
    unload `simple`. The gRPC one counts Triton's eight example models, the HTTP one the
    seven the repository held when it was written."""
    example_repository(tmp_path)
    if models == 7:
        shutil.rmtree(tmp_path / "simple_dyna_sequence")
    with running_wharf_addresses(tmp_path, "--model-control-mode", "explicit") as addresses:
        out = run_example([f"simple_{protocol}_model_control.py"], addresses[protocol])
    assert "PASS: model control" in out
