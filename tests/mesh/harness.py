"""Real pod processes on loopback for the mesh tests, driven through the CLI and the client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ecliptic.mesh.client import MeshClient
from tests.conftest import free_port
from tests.processes import wait_until_gone

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # the state being waited for may not exist yet
            last = exc
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last})" if last else "")
    )


def cli(
    *args: str, input: bytes | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        [sys.executable, "-m", "ecliptic", "mesh", *args],
        input=input,
        capture_output=True,
        env=ENV,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"ecliptic mesh {' '.join(args)} exited {result.returncode}:\n{result.stderr.decode()}{result.stdout.decode()}"
        )
    return result


class PodProcess:
    def __init__(
        self,
        root: Path,
        *,
        name: str | None = None,
        join: PodProcess | None = None,
        conflict: str = "network",
        sync_interval: float = 0.2,
        extra: tuple[str, ...] = (),
        join_token: str | None = None,
    ) -> None:
        self.join_token = join_token
        self.root = root
        self.name = name or root.name
        self.join = join
        self.conflict = conflict
        self.sync_interval = sync_interval
        self.extra = extra
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = root.parent / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.node_id = ""

    def command(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "ecliptic",
            "mesh",
            "start",
            "--root",
            str(self.root),
            "--listen",
            self.address,
            "--name",
            self.name,
            "--sync-interval",
            str(self.sync_interval),
            "--conflict",
            self.conflict,
            *self.extra,
        ]
        if self.join is not None:
            args += ["--join", self.join.address, "--token", self.join_token or self.join.token()]
        return args

    def start(self, *, wait: bool = True) -> PodProcess:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(self.command(), stdout=handle, stderr=subprocess.STDOUT, env=ENV)
        if wait:

            def listening() -> bool:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"pod {self.name} exited {self.process.returncode}:\n{self.log.read_text()[offset:]}"
                    )
                text = self.log.read_text()[offset:]
                for line in text.splitlines():
                    if " listening on " in line:
                        self.node_id = line.split()[1]
                        return True
                return False

            try:
                wait_for(listening, timeout=60, what=f"pod {self.name} to listen")
            except AssertionError as exc:
                if "exited" in str(exc):
                    raise AssertionError(str(exc).split("(last error: ", 1)[-1]) from None
                raise
        return self

    def token(self) -> str:
        return cli("token", "--pod", self.address).stdout.decode().strip()

    def client(self) -> MeshClient:
        return MeshClient(self.address)

    def cli(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return cli(*args, "--pod", self.address, **kwargs)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)
            wait_until_gone(self.process.pid, f"pod {self.name}")

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout)


class Network:
    """Pods of one network under one temporary directory; all stopped at the end of the test."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.pods: list[PodProcess] = []

    def pod(
        self, name: str, *, join: PodProcess | bool | None = True, start: bool = True, **kwargs: Any
    ) -> PodProcess:
        sponsor = (
            self.pods[0] if join is True and self.pods else (join if isinstance(join, PodProcess) else None)
        )
        pod = PodProcess(self.base / name, name=name, join=sponsor, **kwargs)
        self.pods.append(pod)
        return pod.start() if start else pod

    def close(self) -> None:
        for pod in self.pods:
            pod.stop()


def settled(pods: list[PodProcess], *, timeout: float = 30.0) -> None:
    """Wait until every pod has the same version vector (all changes seen everywhere)."""

    def same() -> bool:
        vectors = []
        for pod in pods:
            with pod.client() as client:
                vectors.append(client.pod_info()["vector"])
        return all(vector == vectors[0] for vector in vectors)

    wait_for(same, timeout=timeout, what="the pods to agree on their version vectors")
