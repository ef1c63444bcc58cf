"""Kubernetes manifests: both overlays render, built-in kinds validate offline, custom resources
validate against the schemas kept in deploy/k8s/schemas, and the pieces agree with the code."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.common.config import NotifierSettings, ScorerSettings
from tests.support.sync_prometheusrule import prometheus_rule

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32.0"
CUSTOM = {
    "KafkaTopic": "kafkatopic",
    "ServiceMonitor": "servicemonitor",
    "PrometheusRule": "prometheusrule",
    "ScaledObject": "scaledobject",
    "TriggerAuthentication": "triggerauthentication",
}
SERVICES = ("ingest", "scorer", "api", "notifier")


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render the kustomize overlays"
    out = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=["dev", "prod"])
def docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_every_resource_validates(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] in CUSTOM:
            schema = json.loads((K8S / "schemas" / f"{CUSTOM[doc['kind']]}.json").read_text())
            jsonschema.validate(doc, schema)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_deployments_have_resources_probes_and_run_as_non_root(docs: list[dict[str, Any]]) -> None:
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {f"modq-{s}" for s in SERVICES}
    for name, d in deployments.items():
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        (c,) = pod["containers"]
        assert {"requests", "limits"} <= set(c["resources"]), name
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert "startupProbe" in c, name
        refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})]
        assert any(r.startswith("modq-secrets") for r in refs), name
        assert c["envFrom"][0]["configMapRef"]["name"].startswith("modq-config"), name
    assert set(by_kind(docs, "PodDisruptionBudget")) == set(deployments)
    assert set(by_kind(docs, "Service")) == set(deployments)


def test_services_listen_beyond_loopback(docs: list[dict[str, Any]]) -> None:
    (config,) = by_kind(docs, "ConfigMap").values()
    for var in ("MODQ_INGEST_HOST", "MODQ_SCORER_WEB_HOST", "MODQ_API_HOST", "MODQ_NOTIFIER_HOST"):
        assert config["data"][var] == "0.0.0.0"


def test_every_topic_modq_uses_has_a_kafka_topic(docs: list[dict[str, Any]]) -> None:
    s = ScorerSettings()
    n = NotifierSettings()
    expected = {
        s.topic_decisions,
        s.topic_verdicts,
        s.topic_appeals,
        s.topic_deadletter,
        s.topic_events,
        s.topic_outcomes,
        s.topic_alerts,
        n.topic_alert_actions,
        s.topic_remediations,
        *(f"{s.scorer_app_id}-{table}-changelog" for table in ("decisions", "monitors")),
        f"{s.scorer_app_id}-__assignor-__leader",
    }
    topics = {t["spec"]["topicName"]: t for t in by_kind(docs, "KafkaTopic").values()}
    assert set(topics) == expected
    (config,) = by_kind(docs, "ConfigMap").values()
    partitions = int(config["data"]["MODQ_PARTITIONS"])
    for name in (
        s.topic_events,
        s.topic_outcomes,
        s.topic_alerts,
        s.topic_remediations,  # findings of events partition p go to its partition p
        f"{s.scorer_app_id}-decisions-changelog",
    ):
        assert topics[name]["spec"]["partitions"] == partitions, name  # Faust insists on co-partitioning
    assert topics[f"{s.scorer_app_id}-decisions-changelog"]["spec"]["config"]["cleanup.policy"] == "compact"


def test_prometheus_rule_is_the_promtool_tested_rules_file(docs: list[dict[str, Any]]) -> None:
    (rule,) = by_kind(docs, "PrometheusRule").values()
    assert rule["spec"] == prometheus_rule()["spec"]


def test_autoscaling_on_lag_cools_down_slowly(docs: list[dict[str, Any]]) -> None:
    scaled = by_kind(docs, "ScaledObject")
    assert set(scaled) == {"modq-ingest", "modq-scorer"}
    for so in scaled.values():
        assert so["spec"]["cooldownPeriod"] >= 600
        assert so["spec"]["triggers"][0]["type"] == "kafka"
    # The scorer scales on the lag of its events stage's own group (not the app id's).
    from services.common.config import ScorerSettings

    watched = scaled["modq-scorer"]["spec"]["triggers"][0]["metadata"]
    assert (watched["consumerGroup"], watched["topic"]) == (f"{ScorerSettings().scorer_app_id}-events", "modq.events")


def test_dockerfile_is_multi_stage_pinned_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2
    base = next(line for line in text.splitlines() if line.startswith("ARG PYTHON_IMAGE="))
    assert ":latest" not in base and base.count(".") >= 2  # a full version tag
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and all(not u.startswith(("0", "root")) for u in users)
