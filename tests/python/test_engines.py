"""The engine chosen by what is present: the shipped PP-OCR configs prefer onnxruntime and
fall back to tract (`backend: [onnxruntime, tract]`). With the library absent or corrupt
the models still serve, on tract, with one log line naming the file and what was wrong;
an explicit single `backend: onnxruntime` still fails without it."""
import os
import pathlib
import re
import shutil
import subprocess
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient

from conftest import ROOT, WHARF, running_wharf_and_metrics


def classifier_repository(target: pathlib.Path, backend=None) -> pathlib.Path:
    shutil.copytree(ROOT / "models" / "ppocr_cls", target / "ppocr_cls")
    config = target / "ppocr_cls" / "config.yaml"
    text = config.read_text()
    assert "backend: [onnxruntime, tract]" in text, "the shipped config prefers onnxruntime"
    if backend:
        config.write_text(text.replace("backend: [onnxruntime, tract]", f"backend: {backend}"))
    return target


def environment_without_library(tmp: pathlib.Path, library=None):
    """No library anywhere wharf looks (an empty data folder), or `library` given."""
    env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
    env["XDG_DATA_HOME"] = str(tmp / "empty-data")
    if library:
        env["ORT_DYLIB_PATH"] = str(library)
    return env


def check(repo, env):
    return subprocess.run([WHARF, "check", "--model-repository", str(repo)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_absent_or_corrupt_library_falls_back_to_tract_with_one_line_saying_why(tmp_path):
    corrupt = tmp_path / "libonnxruntime.so.1.31.1"
    corrupt.write_bytes(b"\x7fELF not really a library" * 100)
    cases = {
        "absent": (None, "empty-data/wharf/onnxruntime/libonnxruntime.so.1.31.1"),
        "corrupt": (corrupt, str(corrupt)),
    }
    for name, (library, named) in cases.items():
        repo = classifier_repository(tmp_path / name)
        done = check(repo, environment_without_library(tmp_path, library))
        assert done.returncode == 0, (name, done.stdout, done.stderr)
        assert re.search(r"ppocr_cls\s+1\s+READY", done.stdout), done.stdout
        fallbacks = [l for l in done.stderr.splitlines() if "served by a fallback engine" in l]
        assert len(fallbacks) == 1, (name, done.stderr)
        assert 'engine="tract"' in fallbacks[0] and named in fallbacks[0], fallbacks[0]


def test_the_fallback_serves_and_says_which_engine_in_config_metadata_and_metrics(tmp_path, monkeypatch):
    repo = classifier_repository(tmp_path / "repo")
    for key, value in environment_without_library(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ORT_DYLIB_PATH", raising=False)
    with running_wharf_and_metrics(repo) as (address, metrics):
        client = grpcclient.InferenceServerClient(address)
        assert client.get_model_metadata("ppocr_cls").platform == "tract_onnx"
        assert client.get_model_config("ppocr_cls").config.backend == "tract"
        x = grpcclient.InferInput("x", [1, 3, 48, 192], "FP32")
        x.set_data_from_numpy(np.zeros((1, 3, 48, 192), np.float32))
        assert client.infer("ppocr_cls", [x]).as_numpy("save_infer_model/scale_0.tmp_1").shape == (1, 2)
        client.close()
        scraped = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
    assert re.search(r'wharf_model_engine\{[^}]*engine="tract"[^}]*\} 1', scraped), scraped[:2000]


def test_with_the_library_the_shipped_config_runs_onnxruntime(tmp_path):
    library = os.environ.get("ORT_DYLIB_PATH")
    assert library, "scripts/test.sh gives the suite the onnxruntime wheel's library"
    done = check(classifier_repository(tmp_path / "repo"), environment_without_library(tmp_path, library))
    assert done.returncode == 0, done.stderr
    assert "served by a fallback engine" not in done.stderr
    assert 'engine="onnxruntime"' in done.stderr, done.stderr


def test_an_explicit_onnxruntime_backend_still_fails_without_the_library(tmp_path):
    repo = classifier_repository(tmp_path / "repo", backend="onnxruntime")
    done = check(repo, environment_without_library(tmp_path))
    assert done.returncode != 0
    assert "needs the ONNX Runtime 1.31 library" in done.stdout + done.stderr, done.stdout + done.stderr
