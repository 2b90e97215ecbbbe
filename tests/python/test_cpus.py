"""Threads follow the CPUs the process may use, not the host's cores: under `taskset` and
under a cgroup CPU quota, wharf logs the CPUs it sees and sizes its runtime, its loaders
and onnxruntime's intra-op pool from them."""
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest

from conftest import ROOT, WHARF

CGROUP_V1 = pathlib.Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = pathlib.Path("/sys/fs/cgroup")


def repository(target: pathlib.Path) -> None:
    """ppocr_cls on onnxruntime (tract where the library is absent), one instance, so that
    its intra-op pool is every CPU the process may use."""
    shutil.copytree(ROOT / "models" / "ppocr_cls", target / "ppocr_cls")
    config = target / "ppocr_cls" / "config.yaml"
    text = config.read_text().replace("count: 2", "count: 1")
    config.write_text(text)


def started(prefix=(), preexec_fn=None):
    """The fields of wharf's `listening` and `model ready` lines, started under `prefix`."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        repository(repo)
        proc = subprocess.Popen(
            [*prefix, WHARF, "--log-format", "json", "serve", "--host", "127.0.0.1",
             "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
             "--model-repository", str(repo)],
            stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
        found = {}
        try:
            for line in proc.stderr:
                try:
                    fields = json.loads(line).get("fields", {})
                except json.JSONDecodeError:
                    continue
                if fields.get("message") in ("listening", "model ready"):
                    found[fields["message"]] = fields
                if len(found) == 2:
                    break
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        assert len(found) == 2, found
        return found["listening"], found["model ready"]


def onnxruntime_serves(ready):
    return ready["engine"] == "onnxruntime"


def check_one_cpu(listening, ready):
    assert listening["cpus"] == 1
    assert listening["runtime_threads"] == 1
    assert listening["load_parallelism"] == 2
    assert ready["threads_per_call"] == 1


@pytest.fixture(scope="module")
def unrestricted():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: a limit of one cannot be told apart")
    return started()


def test_without_a_limit_threads_follow_every_cpu(unrestricted):
    listening, ready = unrestricted
    assert listening["cpus"] == len(os.sched_getaffinity(0))
    assert listening["load_parallelism"] == 2 * listening["cpus"]
    if onnxruntime_serves(ready):
        assert ready["threads_per_call"] == listening["cpus"]


def test_taskset_to_one_cpu_gives_one_of_each(unrestricted):
    check_one_cpu(*started(prefix=("taskset", "-c", "0")))


def cgroup_with_one_cpu():
    """A child cgroup with a quota of one CPU (v1 `cpu` controller or v2 `cpu.max`), or
    None where this machine does not let the tests make one."""
    name = f"wharf-test-{os.getpid()}"
    try:
        if (CGROUP_V1 / "cpu.cfs_quota_us").exists():
            group = CGROUP_V1 / name
            group.mkdir()
            (group / "cpu.cfs_quota_us").write_text("100000")
            (group / "cpu.cfs_period_us").write_text("100000")
            return group
        if "cpu" in (CGROUP_V2 / "cgroup.subtree_control").read_text().split():
            group = CGROUP_V2 / name
            group.mkdir()
            (group / "cpu.max").write_text("100000 100000")
            return group
    except OSError:
        return None
    return None


def test_a_cgroup_quota_of_one_cpu_gives_one_of_each(unrestricted):
    group = cgroup_with_one_cpu()
    if group is None:
        pytest.skip("no writable cgroup CPU controller here (needs root and cgroup v1 cpu or v2 cpu)")
    procs = group / "cgroup.procs"
    try:
        check_one_cpu(*started(preexec_fn=lambda: procs.write_text(str(os.getpid()))))
    finally:
        group.rmdir()
