"""Writes deploy/k8s/wharf.yaml: the Helm chart rendered with its default values, for
users without Helm. tests/python/test_deploy.py fails when the two differ.

    .venv-test/bin/python scripts/render-k8s.py
"""
import pathlib

import helm_python as helm

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "deploy" / "k8s" / "wharf.yaml"
HEADER = """\
# wharf for Kubernetes without Helm: helm/wharf rendered with its default values
# (scripts/render-k8s.py). Apply into a namespace of your choice:
#   kubectl -n ocr apply -f deploy/k8s/wharf.yaml
# The HPA needs prometheus-adapter with the rules in ConfigMap wharf-prometheus-adapter.
"""


def render() -> str:
    chart = helm.Chart.load(ROOT / "helm" / "wharf")
    manifests = chart.render(name="wharf")
    docs = [
        body.strip() for path, body in sorted(manifests.items())
        if path.endswith(".yaml") and body.strip()
    ]
    return HEADER + "".join(f"---\n{d}\n" for d in docs)


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
