"""`modq dev` checks its ports before it starts anything, and says which setting moves a taken one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_taken_port_is_named_with_the_setting_that_moves_it(tmp_path: Path) -> None:
    with socket.socket() as api, socket.socket() as scorer:
        for s in (api, scorer):
            s.bind(("127.0.0.1", 0))
            s.listen()
        api_port, scorer_port = api.getsockname()[1], scorer.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODQ_")}
        env.update(
            MODQ_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",  # an external broker: none is started
            MODQ_SCORER_WEB_PORT=str(scorer_port),
            PYTHONPATH=str(ROOT),
        )
        done = subprocess.run(
            [sys.executable, "-m", "services.cli", "dev", "--api-port", str(api_port)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done
    assert f"port {api_port} is taken (the API; --api-port)" in done.stderr
    assert f"port {scorer_port} is taken (the scorer's web port; MODQ_SCORER_WEB_PORT)" in done.stderr
    assert not (tmp_path / ".modq-dev" / "logs" / "scorer.log").exists()  # nothing was started
