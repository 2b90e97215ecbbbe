"""The Helm chart and the plain manifests: lint, render with default, GPU and
everything-on values, validate every object against Kubernetes 1.30's schemas
(kubernetes-validate --strict), yamllint, and check what the deployment promises."""
import pathlib
import subprocess
import sys
import tempfile

import helm_python as helm
import pytest
import yaml

from conftest import ROOT, WHARF

CHART = ROOT / "helm" / "wharf"
K8S = ROOT / "deploy" / "k8s" / "wharf.yaml"
BIN = pathlib.Path(sys.executable).parent
KUBE_VERSION = "1.30.0"
# Kinds from CRDs have no schema in kubernetes-validate; they are checked by hand below.
CRD_KINDS = {"ServiceMonitor"}

EVERYTHING_ON = {
    "auth": {"enabled": True, "existingSecret": "wharf-api-key"},
    "tls": {"enabled": True, "secretName": "wharf-tls"},
    "serviceMonitor": {"enabled": True},
    "modelRepository": {"source": "pvc", "pvc": {"claimName": "ocr-models"}},
}


def values_file(name: str) -> dict:
    return yaml.safe_load((CHART / name).read_text())


def render_text(values: dict | None = None) -> list[str]:
    """The rendered manifests as Helm wrote them, one text per non-empty template."""
    manifests = helm.Chart.load(CHART).render(values, name="wharf", namespace="ocr")
    # Templates that open with `{{- if }}` leave a blank first line; `helm template` puts
    # its `# Source:` header there.
    return [body.strip() + "\n" for path, body in sorted(manifests.items())
            if path.endswith(".yaml") and body.strip()]


def render(values: dict | None = None) -> list[dict]:
    return [doc for body in render_text(values) for doc in yaml.safe_load_all(body) if doc]


def validate(texts: list[str]) -> None:
    """kubernetes-validate --strict and yamllint on the manifests, as written."""
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, text in enumerate(texts):
            kinds = {d["kind"] for d in yaml.safe_load_all(text) if d}
            if kinds & CRD_KINDS:
                print(f"not schema-validated (a CRD kind): {sorted(kinds)}")
                continue
            path = pathlib.Path(tmp) / f"{i:02d}.yaml"
            path.write_text(text)
            files.append(str(path))
        result = subprocess.run(
            [BIN / "kubernetes-validate", "--strict", "--quiet", "-k", KUBE_VERSION, *files],
            capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        lint = subprocess.run([BIN / "yamllint", "-c", ROOT / ".yamllint.yml", *files],
                              capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("values", [None, "values-gpu.yaml", "everything-on"])
def test_chart_lints_and_renders_valid_objects(values):
    vals = (EVERYTHING_ON if values == "everything-on"
            else values_file(values) if values else None)
    report = helm.lint(CHART, vals, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert not report["errors"], report
    assert all(m["severity"] < 2 for m in report["messages"]), report["messages"]
    validate(render_text(vals))
    kinds = sorted(d["kind"] for d in render(vals))
    print(values or "defaults", kinds)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "ConfigMap", "ServiceAccount"} <= set(kinds)


def test_deployment_is_hardened_probed_and_drains():
    objects = by_kind(render())
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["grpc"] == {"port": 8001, "service": "wharf.liveness"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in container["ports"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # The default image is the onnxruntime one, which serves the whole PP-OCR pipeline
    # (tests/python/test_container.py reads a cheque through it); "" is the tract image.
    assert container["image"] == "ghcr.io/wharf/wharf:0.1.0-onnxruntime", container["image"]
    tract = by_kind(render({"image": {"variant": ""}}))["Deployment"]
    assert tract["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/wharf/wharf:0.1.0"
    drain = int(next(a for a in container["args"] if a.startswith("--exit-timeout-secs="))
                .split("=")[1])
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > drain + pause
    # The request bytes wharf holds at once fit well inside the pod's memory limit.
    inflight = next(a for a in container["args"] if a.startswith("--max-inflight-bytes=")).split("=")[1]
    limit = container["resources"]["limits"]["memory"]
    assert inflight.endswith("MiB") and limit.endswith("Gi"), (inflight, limit)
    assert int(inflight[:-3]) <= int(limit[:-2]) * 1024 // 2
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    ports = {p["name"]: p["port"] for p in objects["Service"]["spec"]["ports"]}
    assert ports == {"grpc": 8001, "metrics": 8002, "http": 8000}
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    print(yaml.safe_dump(objects["HorizontalPodAutoscaler"], sort_keys=False))
    pods_metric = next(m for m in hpa["metrics"] if m["type"] == "Pods")["pods"]
    assert pods_metric["metric"]["name"] == "wharf_saturation_ratio"
    assert pods_metric["target"] == {"type": "AverageValue", "averageValue": "700m"}
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu"
               for m in hpa["metrics"])
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    adapter = yaml.safe_load(
        next(d for d in render() if d["metadata"]["name"] == "wharf-prometheus-adapter")
        ["data"]["config.yaml"])
    assert adapter["rules"][0]["name"]["as"] == "wharf_saturation_ratio"


def test_secrets_come_from_secrets_and_tls_switches_probes_to_http():
    objects = by_kind(render(EVERYTHING_ON))
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["api-key"]["secret"]["secretName"] == "wharf-api-key"
    assert volumes["tls"]["secret"]["secretName"] == "wharf-tls"
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "ocr-models",
                                                         "readOnly": True}
    assert "--api-key-file=/var/run/secrets/wharf/api-key/api-key" in container["args"]
    assert "--tls-cert=/var/run/secrets/wharf/tls/tls.crt" in container["args"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
    # No key anywhere in a rendered object.
    assert not any(d["kind"] == "Secret" for d in objects.values())
    monitor = objects["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_gpu_values_request_the_card_and_budget_every_instance():
    docs = render(values_file("values-gpu.yaml"))
    pod = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    models = next(d for d in docs if d["metadata"]["name"] == "wharf-models")
    config = yaml.safe_load(models["data"]["ppocr_cls.yaml"])
    assert config["backend"] == "onnxruntime"
    assert config["instance_group"] == [
        {"count": 2, "gpus": [0], "kind": "KIND_GPU", "memory_budget": "1024MiB"}]
    # Budgets that do not fit the card fail the render, with the sum.
    too_many = values_file("values-gpu.yaml")
    too_many["gpu"]["instancesPerModel"] = 5
    with pytest.raises(helm.HelmRenderError, match="5120MiB does not fit the card's 4096MiB"):
        render(too_many)


def test_poll_mode_rescans_the_repository_on_its_volume():
    values = {"modelControl": {"mode": "poll", "pollSecs": 30},
              "modelRepository": {"source": "pvc", "pvc": {"claimName": "ocr-models"}}}
    texts = render_text(values)
    validate(texts)
    pod = by_kind([d for t in texts for d in yaml.safe_load_all(t) if d])["Deployment"]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--model-control-mode=poll" in args and "--repository-poll-secs=30" in args, args
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "ocr-models", "readOnly": True}} in pod["volumes"]
    explicit = render({"modelControl": {"mode": "explicit", "loadModels": ["ppocr_cls"]}})
    args = by_kind(explicit)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--model-control-mode=explicit" in args and "--load-model=ppocr_cls" in args, args
    assert not any("model-control" in a for a in by_kind(render())["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"])
    with pytest.raises(helm.HelmRenderError, match="must be none, poll or explicit"):
        render({"modelControl": {"mode": "sometimes"}})
    with pytest.raises(helm.HelmRenderError, match="loadModels is for mode explicit"):
        render({"modelControl": {"mode": "poll", "loadModels": ["a"]}})
    # The rendered flags are ones wharf takes.
    check = subprocess.run([WHARF, "serve", "--help"], capture_output=True, text=True)
    assert "--model-control-mode" in check.stdout and "--repository-poll-secs" in check.stdout


def test_the_rendered_model_config_loads_in_wharf():
    config = next(d for d in render() if d["metadata"]["name"] == "wharf-models")
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        (repo / "ppocr_cls" / "1").mkdir(parents=True)
        (repo / "ppocr_cls" / "1" / "model.onnx").write_bytes(
            (ROOT / "models" / "ppocr_cls" / "1" / "model.onnx").read_bytes())
        (repo / "ppocr_cls" / "config.yaml").write_text(config["data"]["ppocr_cls.yaml"])
        check = subprocess.run([WHARF, "check", "--model-repository", str(repo)],
                               capture_output=True, text=True)
        assert check.returncode == 0 and "READY" in check.stdout, check.stdout + check.stderr


def test_plain_manifests_are_the_chart_defaults_and_valid():
    sys.path.insert(0, str(ROOT / "scripts"))
    render_k8s = __import__("render-k8s")
    assert K8S.read_text() == render_k8s.render(), \
        "deploy/k8s/wharf.yaml is stale: run scripts/render-k8s.py"
    validate([K8S.read_text()])
    lint = subprocess.run([BIN / "yamllint", "-c", ROOT / ".yamllint.yml", K8S,
                           ROOT / "deploy" / "prometheus", CHART / "values.yaml",
                           CHART / "values-gpu.yaml", CHART / "Chart.yaml"],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def kserve_models():
    """KServe's API types (`kserve.models`, generated from the Go types its CRDs are
    generated from), loaded without the SDK's server half: the kserve wheel is installed
    without its dependencies (scripts/test.sh)."""
    import importlib.util
    import sys
    import types

    if "kserve" not in sys.modules:
        spec = importlib.util.find_spec("kserve")
        package = types.ModuleType("kserve")
        package.__path__, package.__spec__ = list(spec.submodule_search_locations), spec
        sys.modules["kserve"] = package
    import kserve.models
    return kserve.models


def kserve_problems(value, type_name, path="", models=None):
    """What in `value` (a manifest's JSON) does not fit KServe's type `type_name`: unknown
    fields, wrong types, missing required fields. Kubernetes' own types (V1Container...)
    are left to kubernetes-validate."""
    models = models or kserve_models()
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{path}: a list expected, found {value!r}"]
        return [p for i, v in enumerate(value) for p in kserve_problems(v, type_name[5:-1], f"{path}[{i}]", models)]
    if type_name.startswith("dict("):
        if not isinstance(value, dict):
            return [f"{path}: a map expected, found {value!r}"]
        inner = type_name[5:-1].split(", ", 1)[1]
        return [p for k, v in value.items() for p in kserve_problems(v, inner, f"{path}.{k}", models)]
    scalars = {"str": str, "bool": bool, "int": int, "float": (int, float), "object": object}
    if type_name in scalars:
        ok = isinstance(value, scalars[type_name]) and not (type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{path}: {type_name} expected, found {value!r}"]
    kind = getattr(models, type_name, None)
    if kind is None:
        return []  # a Kubernetes type
    if not isinstance(value, dict):
        return [f"{path}: a {type_name} object expected, found {value!r}"]
    by_key = {json_key: attr for attr, json_key in kind.attribute_map.items()}
    problems = [f"{path}.{k}: no such field in {type_name}" for k in value if k not in by_key]
    for key, v in value.items():
        if key in by_key:
            problems += kserve_problems(v, kind.openapi_types[by_key[key]], f"{path}.{key}", models)
    try:  # the generated setters refuse a missing required field and values off an enum
        kind(**{by_key[k]: v for k, v in value.items() if k in by_key})
    except ValueError as e:
        problems.append(f"{path}: {e}")
    return problems


def test_kserve_types_catch_what_a_runtime_gets_wrong():
    """The check above can fail: a misspelt field, a wrong type, a missing container."""
    good = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime", "metadata": {"name": "x"},
            "spec": {"containers": [{"name": "c", "image": "i"}], "protocolVersions": ["v2"]}}
    assert kserve_problems(good, "V1alpha1ServingRuntime") == []
    misspelt = {**good, "spec": {**good["spec"], "protocolVersion": ["v2"]}}
    assert kserve_problems(misspelt, "V1alpha1ServingRuntime") == [
        ".spec.protocolVersion: no such field in V1alpha1ServingRuntimeSpec"]
    wrong = {**good, "spec": {**good["spec"], "multiModel": "no"}}
    assert kserve_problems(wrong, "V1alpha1ServingRuntime") == [".spec.multiModel: bool expected, found 'no'"]
    empty = {**good, "spec": {"protocolVersions": ["v2"]}}
    (problem,) = kserve_problems(empty, "V1alpha1ServingRuntime")
    assert problem.startswith(".spec: ") and "containers" in problem, problem


def test_the_kserve_serving_runtime_is_a_valid_pod_of_wharf():
    """deploy/kserve/servingruntime.yaml: fits KServe's ServingRuntime types (kserve
    0.21.0's generated models; KServe's CRD files are on no registry this machine
    reaches); its pod part validated as a Kubernetes 1.30 Pod; its flags ones `wharf
    serve` takes."""
    text = (ROOT / "deploy" / "kserve" / "servingruntime.yaml").read_text()
    runtime = yaml.safe_load(text)
    assert kserve_problems(runtime, "V1alpha1ServingRuntime") == []
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1" and runtime["kind"] == "ServingRuntime"
    spec = runtime["spec"]
    assert spec["supportedModelFormats"] == [{"name": "onnx", "version": "1", "autoSelect": True}]
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    assert "--model-repository=/mnt/models" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wharf"},
           "spec": {"containers": spec["containers"], "volumes": spec["volumes"]}}
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "pod.yaml"
        path.write_text(yaml.safe_dump(pod))
        result = subprocess.run([BIN / "kubernetes-validate", "--strict", "--quiet", "-k", KUBE_VERSION,
                                 str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    lint = subprocess.run([BIN / "yamllint", "-c", ROOT / ".yamllint.yml",
                           ROOT / "deploy" / "kserve" / "servingruntime.yaml"], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    flags = subprocess.run([WHARF, "serve", "--help"], capture_output=True, text=True).stdout
    for arg in container["args"][1:]:
        assert arg.split("=")[0] in flags, arg
