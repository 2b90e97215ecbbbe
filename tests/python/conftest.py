"""Starts the real wharf binary on a loopback port over a repository made for the suite."""
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
import time

import pytest
import tritonclient.grpc as grpcclient

ROOT = pathlib.Path(__file__).resolve().parents[2]
WHARF = os.environ.get("WHARF_BIN", str(ROOT / "target" / "release" / "wharf"))

# A test model with every Triton config section that get_model_config must parse.
ADD_SUB_CONFIG = """\
name: add_sub
backend: tract
max_batch_size: 8
input:
  - { name: INPUT0, data_type: TYPE_FP32, dims: [4] }
  - { name: INPUT1, data_type: TYPE_FP32, dims: [4] }
output:
  - { name: OUTPUT0, data_type: TYPE_FP32, dims: [4] }
  - { name: OUTPUT1, data_type: TYPE_FP32, dims: [4] }
dynamic_batching:
  preferred_batch_size: [4, 8]
  max_queue_delay_microseconds: 2000
  default_queue_policy: { max_queue_size: 64 }
instance_group:
  - { count: 2, kind: KIND_CPU }
"""


def make_repository(target: pathlib.Path) -> None:
    for model in (ROOT / "tests" / "models").iterdir():
        shutil.copytree(model, target / model.name)
    (target / "add_sub" / "config.yaml").write_text(ADD_SUB_CONFIG)
    shutil.copytree(ROOT / "models" / "ppocr_cls", target / "ppocr_cls")
    # The suite's classifier runs on tract, whatever engines the shipped config prefers.
    config = target / "ppocr_cls" / "config.yaml"
    config.write_text(config.read_text().replace("backend: [onnxruntime, tract]", "backend: tract"))


@contextlib.contextmanager
def running_wharf(repo: pathlib.Path, *flags: str):
    """The wharf binary serving `repo` on a free loopback port, until ready: its address."""
    with running_wharf_and_metrics(repo, *flags) as (address, _):
        yield address


@contextlib.contextmanager
def running_wharf_and_metrics(repo: pathlib.Path, *flags: str):
    """As `running_wharf`: the gRPC address and the metrics address (host:port)."""
    proc = subprocess.Popen(
        [WHARF, "--log-format", "json", "serve", "--host", "127.0.0.1", "--grpc-port", "0",
         "--metrics-port", "0", "--model-repository", str(repo), *flags],
        stderr=subprocess.PIPE, text=True,
    )
    address = None
    for line in proc.stderr:
        try:
            fields = json.loads(line).get("fields", {})
        except json.JSONDecodeError:
            continue
        if "grpc_addr" in fields:
            address = fields["grpc_addr"]
            metrics_address = fields.get("metrics_addr")
            break
    assert address, "wharf did not log its address"
    # Keep reading the log so the pipe never fills.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    client = grpcclient.InferenceServerClient(address)
    deadline = time.monotonic() + 60
    while not client.is_server_ready():
        assert time.monotonic() < deadline, "wharf did not become ready"
        time.sleep(0.05)
    try:
        yield address, metrics_address
    finally:
        client.close()
        proc.terminate()
        assert proc.wait(timeout=30) == 0


@pytest.fixture(scope="session")
def server():
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        make_repository(repo)
        with running_wharf(repo) as address:
            yield address


@pytest.fixture
def client(server):
    c = grpcclient.InferenceServerClient(server)
    yield c
    c.close()
