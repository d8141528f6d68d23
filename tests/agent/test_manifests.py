"""deploy/kubernetes: every manifest validates offline against the Kubernetes schemas
(kubernetes-validate), and the kustomization renders (a small renderer of the subset it uses:
resources, namespace, labels)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

kv = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
VERSION = "1.30.0"
CLUSTER_SCOPED = {"Namespace", "ClusterStorageContainer", "ClusterRole", "ClusterRoleBinding"}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(directory: Path) -> list[dict]:
    """``kustomize build`` for what deploy/kubernetes uses; anything else fails loudly."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - {"apiVersion", "kind", "namespace", "labels", "resources"}
    assert not unknown, f"the test renderer does not know {unknown}"
    out = []
    for res in k["resources"]:
        for doc in _docs(directory / res):
            meta = doc.setdefault("metadata", {})
            if k.get("namespace") and doc["kind"] not in CLUSTER_SCOPED:
                meta["namespace"] = k["namespace"]
            for group in k.get("labels", []):
                meta.setdefault("labels", {}).update(group["pairs"])
                if group.get("includeSelectors"):
                    raise AssertionError("includeSelectors is not rendered here")
            out.append(doc)
    return out


def _validate(doc: dict) -> None:
    if doc["kind"] == "ClusterStorageContainer":  # KServe's CRD: its container is a core Container
        container = doc["spec"]["container"]
        assert doc["spec"]["supportedUriFormats"] and doc["spec"]["workloadType"] in (
            "initContainer", "localModelDownloadJob")
        doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "csc"}, "spec": {"containers": [container]}}
    elif doc["apiVersion"].startswith(("llmaz.io/", "inference.llmaz.io/")):  # llmaz's CRDs: env entries
        for env in doc.get("spec", {}).get("backendRuntimeConfig", {}).get("envs", []):
            kv.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "e"},
                         "spec": {"containers": [{"name": "c", "image": "i", "env": [env]}]}}, VERSION, strict=True)
        return
    kv.validate(doc, VERSION, strict=True)


def test_kustomization_renders_the_agent():
    docs = render(ROOT)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert kinds == {("Namespace", "warmstart"), ("ConfigMap", "warmstart-agent"), ("DaemonSet", "warmstart-agent"),
                     ("Service", "warmstart-agent")}
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    assert ds["metadata"]["namespace"] == "warmstart"
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["resources"]["requests"]
    assert {v["name"]: v for v in pod["volumes"]}["home"]["hostPath"]["path"] == "/var/lib/warmstart"
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    from warmstart.agent.config import parse_config

    assert parse_config(yaml.safe_load(cm["data"]["agent.yaml"])).models  # the shipped config is valid
    for d in docs:
        _validate(d)


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.yaml")
                                        if p.name != "kustomization.yaml"))
def test_manifest_validates(path):
    for doc in _docs(ROOT / path):
        _validate(doc)


def test_a_broken_manifest_is_caught():
    bad = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"},
           "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "a", "imagee": "x"}]}}}}
    with pytest.raises(kv.ValidationError):
        _validate(bad)
