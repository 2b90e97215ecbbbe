"""Starts the real wharf binary on a loopback port over a repository made for the suite."""
import collections
import contextlib
import json
import os
import pathlib
import re
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request

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
    with running_wharf_addresses(repo, *flags) as addresses:
        yield addresses["grpc"], addresses["metrics"]


def http_ready(address: str, ca: str | None = None) -> bool:
    """Whether /v2/health/ready answers 200; over HTTPS trusting `ca` where it is given."""
    scheme, context = ("https", ssl.create_default_context(cafile=ca)) if ca else ("http", None)
    try:
        with urllib.request.urlopen(f"{scheme}://{address}/v2/health/ready", timeout=5,
                                    context=context) as answer:
            return answer.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def running_wharf_addresses(repo: pathlib.Path, *flags: str, ca: str | None = None,
                            ready_timeout: float = 60):
    """As `running_wharf`: the gRPC, metrics and HTTP addresses (host:port), by name; with
    `ca`, the server is on TLS and readiness is asked over HTTPS trusting it."""
    proc = subprocess.Popen(
        [WHARF, "--log-format", "json", "serve", "--host", "127.0.0.1", "--grpc-port", "0",
         "--metrics-port", "0", "--http-port", "0", "--model-repository", str(repo), *flags],
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
            http_address = fields.get("http_addr")
            break
    assert address, "wharf did not log its address"
    # Keep reading the log so the pipe never fills; its latest lines stay for tests to read.
    log = collections.deque(maxlen=10_000)
    threading.Thread(target=lambda: [log.append(line) for line in proc.stderr], daemon=True).start()
    # Readiness over HTTP, which needs no API key.
    deadline = time.monotonic() + ready_timeout
    while not http_ready(http_address, ca):
        assert time.monotonic() < deadline, "wharf did not become ready"
        time.sleep(0.05)
    try:
        yield {"grpc": address, "metrics": metrics_address, "http": http_address, "pid": proc.pid,
               "log": log}
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


@pytest.fixture(scope="session")
def servers():
    """One wharf over the suite's repository: its addresses by front end."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        make_repository(repo)
        with running_wharf_addresses(repo) as addresses:
            yield addresses


@pytest.fixture(scope="session")
def server(servers):
    return servers["grpc"]


@pytest.fixture(scope="session")
def http_server(servers):
    return servers["http"]


@pytest.fixture
def client(server):
    c = grpcclient.InferenceServerClient(server)
    yield c
    c.close()


PIPELINE = ["ppocr", "ppocr_image", "ppocr_det", "ppocr_db", "ppocr_cls_crops", "ppocr_cls",
            "ppocr_lines", "ppocr_rec", "ppocr_ctc"]


def pipeline_repository(target: pathlib.Path, backend, group_size=None) -> None:
    """The shipped pipeline copied into `target`; its engines set to `backend` (None: the
    shipped preference) and ppocr_lines' `group_size` (None: the shipped one)."""
    for name in PIPELINE:
        shutil.copytree(ROOT / "models" / name, target / name)
    for name in ("ppocr_det", "ppocr_rec", "ppocr_cls") if backend else ():
        config = target / name / "config.yaml"
        config.write_text(re.sub(r"(?m)^backend: .*$", f"backend: {backend}", config.read_text()))
    if group_size is not None:
        config = target / "ppocr_lines" / "config.yaml"
        text = config.read_text()
        shipped = 'group_size: { string_value: "6" }'
        assert shipped in text
        config.write_text(text.replace(shipped, f'group_size: {{ string_value: "{group_size}" }}'))


@pytest.fixture(scope="session")
def ocr():
    """A client of wharf serving the pipeline with its models on onnxruntime."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        pipeline_repository(repo, "onnxruntime")
        with running_wharf_addresses(repo, "--max-request-size", "8MiB") as addresses:
            client = grpcclient.InferenceServerClient(addresses["grpc"])
            client.http_address = addresses["http"]
            yield client
            client.close()
