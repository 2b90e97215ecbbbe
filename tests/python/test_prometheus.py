"""wharf scraped by a real Prometheus under load from `wharf bench`.

Checks: the saturation signal rises under load and falls after; the request counters agree
with what the load generator saw, outcome by outcome; a live scrape passes `promtool check
metrics`; the rules pass `promtool check rules` and `promtool test rules`, and evaluate on
live data; every metric the Grafana dashboard queries is exported.
"""
import json
import pathlib
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import pytest

from conftest import ROOT, WHARF

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
RULES = ROOT / "deploy" / "prometheus" / "wharf-rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "wharf-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "wharf-dashboard.json"
SLOW = ROOT / "tests" / "models" / "slow" / "1" / "model.onnx"

assert PROMETHEUS and PROMTOOL, \
    "needs Debian's prometheus package (prometheus, promtool); scripts/test.sh installs it"

# One instance, room for one waiting request: concurrency 6 fills it.
SLOW_FULL = """max_batch_size: 0
model_warmup: false
instance_group: [{count: 1}]
dynamic_batching: {default_queue_policy: {max_queue_size: 1}}
"""
# Whatever waits more than 1 ms in the queue is DEADLINE_EXCEEDED.
SLOW_DEADLINE = """max_batch_size: 0
model_warmup: false
instance_group: [{count: 1}]
dynamic_batching: {default_queue_policy: {default_timeout_microseconds: 1000, max_queue_size: 64}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


class Stack:
    """wharf on loopback, and Prometheus scraping it every second with the rules loaded."""

    def __init__(self, tmp: pathlib.Path):
        repo = tmp / "models"
        shutil.copytree(ROOT / "models" / "ppocr_cls", repo / "ppocr_cls")
        # A budget, so that the dashboard's budget-vs-peak panel has a series to show.
        config = repo / "ppocr_cls" / "config.yaml"
        text = config.read_text()
        assert "kind: KIND_CPU }" in text
        text = text.replace("kind: KIND_CPU }", "kind: KIND_CPU, memory_budget: 64MiB }")
        # On tract, as the load below is sized for it (onnxruntime, which the shipped
        # config prefers where its library is found, reads a crop in about half the time).
        assert "backend: [onnxruntime, tract]" in text
        config.write_text(text.replace("backend: [onnxruntime, tract]", "backend: tract"))
        for name, config in (("slow_full", SLOW_FULL), ("slow_deadline", SLOW_DEADLINE)):
            (repo / name / "1").mkdir(parents=True)
            shutil.copy(SLOW, repo / name / "1" / "model.onnx")
            (repo / name / "config.yaml").write_text(config)
        # A 3 ms objective: cls at concurrency 8 (2 instances, ~2 ms a row on tract) holds more
        # work than the instances finish in 3 ms.
        self.wharf = subprocess.Popen(
            [WHARF, "--log-format", "json", "serve", "--host", "127.0.0.1", "--grpc-port", "0",
             "--metrics-port", "0", "--latency-objective-ms", "3", "--model-repository", str(repo)],
            stderr=subprocess.PIPE, text=True,
        )
        for line in self.wharf.stderr:
            fields = json.loads(line).get("fields", {}) if line.startswith("{") else {}
            if "metrics_addr" in fields:
                self.grpc, self.metrics = fields["grpc_addr"], fields["metrics_addr"]
                break
        else:
            raise AssertionError("wharf did not log its addresses")
        threading.Thread(target=lambda: [None for _ in self.wharf.stderr], daemon=True).start()

        self.prom_url = f"http://127.0.0.1:{free_port()}"
        config = tmp / "prometheus.yml"
        config.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{RULES}]
scrape_configs:
  - job_name: wharf
    static_configs: [{{targets: ["{self.metrics}"]}}]
""")
        self.prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address={self.prom_url[len('http://'):]}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if "Ready" in get(f"{self.prom_url}/-/ready") and self.up():
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not start scraping wharf"
            time.sleep(0.25)
        # Every model READY before the load starts.
        while self.query('sum(wharf_model_ready)') != 3.0:
            assert time.monotonic() < deadline, "models did not become ready"
            time.sleep(0.25)

    def up(self) -> bool:
        return self.query('up{job="wharf"}') == 1.0

    def query(self, promql: str, at: float | None = None):
        """The single value of an instant query, or None when it returns nothing."""
        params = {"query": promql}
        if at is not None:
            params["time"] = str(at)
        body = json.loads(get(f"{self.prom_url}/api/v1/query?{urllib.parse.urlencode(params)}"))
        assert body["status"] == "success", body
        result = body["data"]["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def bench(self, *args: str) -> dict:
        out = subprocess.run(
            [WHARF, "bench", "--url", self.grpc, "--warmup-secs", "0", "--json", *args],
            check=True, capture_output=True, text=True, timeout=120,
        ).stdout
        return json.loads(out)

    def close(self):
        self.prometheus.terminate()
        self.wharf.terminate()
        self.prometheus.wait(timeout=30)
        assert self.wharf.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def stack():
    with tempfile.TemporaryDirectory() as tmp:
        s = Stack(pathlib.Path(tmp))
        try:
            yield s
        finally:
            s.close()


@pytest.fixture(scope="module")
def run(stack):
    """The load, once for the module: what each bench reported and when."""
    idle = stack.query("wharf_saturation_ratio")
    started = time.time()
    cls = stack.bench("--model", "ppocr_cls", "--concurrency", "8", "--duration-secs", "8")
    loaded_until = time.time()
    # Let the signal fall back while nothing is sent.
    time.sleep(9)
    rested = time.time()
    invalid = stack.bench("--model", "ppocr_cls", "--shape", "x:1,3,48,100", "--count", "40",
                          "--duration-secs", "30")
    full = stack.bench("--model", "slow_full", "--concurrency", "6", "--duration-secs", "3")
    late = stack.bench("--model", "slow_deadline", "--concurrency", "4", "--duration-secs", "3")
    time.sleep(3)  # two scrapes after the last answer
    return dict(idle=idle, started=started, loaded_until=loaded_until, rested=rested,
                cls=cls, invalid=invalid, full=full, late=late)


def test_saturation_rises_under_load_and_falls_after(stack, run):
    assert run["idle"] == 0.0
    peak = stack.query(
        f"max_over_time(wharf_saturation_ratio[{int(run['loaded_until'] - run['started'])}s])",
        at=run["loaded_until"])
    after = stack.query("wharf_saturation_ratio", at=run["rested"])
    print(f"saturation: idle {run['idle']}, peak under load {peak:.3f}, 9 s after {after:.3f}; "
          f"cls p50 {run['cls']['p50_ms']:.2f} ms p99 {run['cls']['p99_ms']:.2f} ms")
    # What the HPA reads through prometheus-adapter, second by second (README, Metrics).
    body = json.loads(get(f"{stack.prom_url}/api/v1/query_range?" + urllib.parse.urlencode({
        "query": "wharf_saturation_ratio", "start": run["started"] - 1, "end": run["rested"],
        "step": "1"})))
    print("wharf_saturation_ratio by second:",
          " ".join(f"{float(v):.2f}" for _, v in body["data"]["result"][0]["values"]))
    assert peak > 0.8, peak
    assert after < peak / 3, (peak, after)


def outcomes(stack, model: str) -> dict:
    body = json.loads(get(f"{stack.prom_url}/api/v1/query?" + urllib.parse.urlencode(
        {"query": f'sum by (outcome) (wharf_requests_total{{model="{model}"}})'})))
    return {r["metric"]["outcome"]: float(r["value"][1]) for r in body["data"]["result"]}


def test_counters_match_what_the_load_generator_saw(stack, run):
    cls, invalid, full, late = run["cls"], run["invalid"], run["full"], run["late"]
    assert not cls["errors"] and cls["requests"] > 100, cls
    assert invalid["errors"] == {"InvalidArgument": 40}, invalid
    assert full["errors"].get("ResourceExhausted", 0) > 0, full
    assert late["errors"].get("DeadlineExceeded", 0) > 0, late

    got = outcomes(stack, "ppocr_cls")
    assert got["success"] == cls["requests"]
    assert got["invalid"] == 40
    assert got["queue_full"] == got["timeout"] == got["cancelled"] == got["backend_error"] == 0

    got = outcomes(stack, "slow_full")
    assert got["queue_full"] == full["errors"]["ResourceExhausted"]
    assert got["success"] == full["requests"] - full["errors"]["ResourceExhausted"]

    got = outcomes(stack, "slow_deadline")
    assert got["timeout"] == late["errors"]["DeadlineExceeded"]
    assert got["success"] == late["requests"] - late["errors"]["DeadlineExceeded"]

    # Rows and engine calls: cls batches, so fewer calls than rows.
    rows = stack.query('sum(wharf_inferences_total{model="ppocr_cls"})')
    calls = stack.query('sum(wharf_executions_total{model="ppocr_cls"})')
    assert rows == cls["requests"] and calls <= rows, (rows, calls)
    # Recording rules evaluate on the live series.
    assert stack.query('sum(model_outcome:wharf_requests:rate1m{model="ppocr_cls"})') is not None


def test_a_live_scrape_passes_promtool_check_metrics(stack, run):
    scrape = get(f"http://{stack.metrics}/metrics")
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=scrape, capture_output=True,
                           text=True)
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), \
        check.stdout + check.stderr
    print("\n".join(line for line in scrape.splitlines()
                    if 'model="ppocr_cls"' in line and "_bucket" not in line))


def test_rules_pass_promtool():
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULES_TEST)]):
        result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_the_dashboard_queries_is_exported(stack, run):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    variables = [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = {re.sub(r"_(bucket|count|sum)$", "", m)
            for e in exprs + variables for m in re.findall(r"\bwharf_[a-z_]+", e)}
    exported = set(re.findall(r"^# TYPE (wharf_[a-z_]+) ", get(f"http://{stack.metrics}/metrics"),
                              re.M))
    assert used and used <= exported, used - exported
    # And each query is valid PromQL that Prometheus accepts.
    for e in exprs:
        e = e.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$model", ".*")
        body = json.loads(get(f"{stack.prom_url}/api/v1/query?" + urllib.parse.urlencode(
            {"query": e})))
        assert body["status"] == "success", (e, body)
    # Each panel answers something: a title, a description, at least one query.
    for p in dashboard["panels"]:
        assert p["title"] and p["description"] and p["targets"], p["title"]
