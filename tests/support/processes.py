"""Real processes for the tests: modq services as child processes, third-party daemons, polling."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """A modq service running as a real child process (so it can be killed like one)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        out = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *self.args], env=self.env, stdout=out, stderr=subprocess.STDOUT
        )
        return self

    def stop(self, kill: bool = False) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def signal_stop(self) -> None:
        """SIGTERM without waiting (``stop_all`` waits for several at once)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def stop_all(services: list[Service], timeout: float = 30.0) -> None:
    """Stop services together: every one is told first, then each is waited for (a kill after the
    shared timeout), so a test's teardown waits once for the slowest, not for each in turn."""
    for svc in services:
        svc.signal_stop()
    end = time.monotonic() + timeout
    for svc in services:
        if svc.proc is None:
            continue
        try:
            svc.proc.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            svc.proc.kill()
            svc.proc.wait(timeout=10)


async def eventually(check, timeout: float = 90.0, interval: float = 0.5):  # type: ignore[no-untyped-def]
    """Poll an async check until it returns a truthy value; returns it, or fails with the last value."""
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


class Daemons:
    """Third-party daemons started by one test, stopped after it, failed or not."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def add(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(timeout=10)
