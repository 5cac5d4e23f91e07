"""``ecliptic serve`` on embedded defaults runs a one-pod mesh: usable from the CLI and shown in the web UI."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.mesh.harness import cli
from tests.processes import ServerProcess


def _serve(tmp_path: Path, pod: str) -> ServerProcess:
    return ServerProcess(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'store.sqlite'}",
        tmp_path / "server.log",
        ECLIPTIC_MESH_EMBEDDED="true",
        ECLIPTIC_MESH_LISTEN=pod,
    ).start()


def test_serve_runs_a_one_pod_mesh(tmp_path: Path) -> None:
    pod = f"127.0.0.1:{free_port()}"
    server = _serve(tmp_path, pod)
    try:
        (tmp_path / "hello.txt").write_text("hello mesh\n")
        cli("put", str(tmp_path / "hello.txt"), "/", "--pod", pod)
        assert cli("cat", "/hello.txt", "--pod", pod).stdout == b"hello mesh\n"
        page = httpx.get(f"{server.url}ui/pods", timeout=30)
        assert page.status_code == 200
        assert "embedded" in page.text and "hello.txt" in page.text
        assert (tmp_path / "data" / "mesh" / ".ecliptic-mesh" / "meta.sqlite").exists()
    finally:
        server.stop()
    # the pod stopped with the server, and its tree is still there at the next start
    again = _serve(tmp_path, pod)
    try:
        assert cli("cat", "/hello.txt", "--pod", pod).stdout == b"hello mesh\n"
    finally:
        again.stop()
