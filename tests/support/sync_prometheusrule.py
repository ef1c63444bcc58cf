"""Regenerate deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/modq-rules.yml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "modq-rules.yml"
TARGET = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
HEADER = (
    "# Generated from deploy/prometheus/modq-rules.yml (tests/deploy/test_k8s.py checks they agree):\n"
    "#   python -m tests.support.sync_prometheusrule\n"
)


def prometheus_rule() -> dict[str, Any]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "modq", "labels": {"role": "alert-rules"}},
        "spec": {"groups": groups},
    }


if __name__ == "__main__":
    TARGET.write_text(HEADER + yaml.safe_dump(prometheus_rule(), sort_keys=False, width=120))
