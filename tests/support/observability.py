"""promtool and a real Prometheus (Debian's packages) for the tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.support.daemons import start_daemon

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "modq-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "modq-overview.json"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "promtool is not installed (apt-get install prometheus)"
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60)


def start_prometheus(workdir: Path, port: int, targets: dict[str, str]) -> subprocess.Popen[bytes]:
    """Prometheus scraping each job's target every second, with modq's rules loaded."""
    assert PROMETHEUS, "prometheus is not installed (apt-get install prometheus)"
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [t]}]} for job, t in targets.items()],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    argv = [
        PROMETHEUS,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    return start_daemon(argv, workdir / "prometheus.log", f"http://127.0.0.1:{port}/-/ready")


VARIABLES = {"$policy_label": ".*", "$vendor_id": ".*", "$__rate_interval": "1m"}


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, with the dashboard variables filled in."""
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert not re.search(r"\$\w", expr), f"unfilled variable in {expr}"
            out.append((panel["title"], expr))
    return out
