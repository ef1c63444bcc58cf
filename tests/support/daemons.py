"""Starting a third-party daemon (Alertmanager, Prometheus) for a test and waiting until it is ready."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx


def start_daemon(argv: list[str], log: Path, ready_url: str, timeout: float = 30.0) -> subprocess.Popen[bytes]:
    """Run argv with its output in log; return once ready_url answers 200, or fail with the log's tail."""
    proc = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115 - owned by the child
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{Path(argv[0]).name} did not start: " + log.read_text(errors="replace")[-2000:])
