"""Real ``ecliptic`` server processes for crash and scale-out tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port


def gone(pid: int) -> bool:
    """No such process, or only its zombie (``kill(pid, 0)`` would still call a zombie alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_until_gone(pid: int, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (pid {pid}) is still running")
        time.sleep(0.1)


class ServerProcess:
    def __init__(self, data_dir: Path, database_url: str, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        self.env = {
            **os.environ,
            "ECLIPTIC_DATA_DIR": str(data_dir),
            "ECLIPTIC_DATABASE_URL": database_url,
            "ECLIPTIC_IDLE_POLL": "PT0.05S",
            "ECLIPTIC_RELEASE_MARGIN": "PT1S",
            "ECLIPTIC_LEASE": "PT5S",
            "ECLIPTIC_MESH_EMBEDDED": "false",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> ServerProcess:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ecliptic", "serve", "--port", str(self.port), *extra],
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not come up")

    def start_worker(self) -> subprocess.Popen[bytes]:
        """An ``ecliptic worker`` process on the same store: engine handlers only, no API."""
        handle = self.log.open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "ecliptic", "worker"],
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        """SIGKILL: no clean-up, no flush, as a crash would."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
