"""Pods as real processes on loopback: create, join, read everywhere, leave, restart."""

from __future__ import annotations

import os
from pathlib import Path

from tests.mesh.harness import Network, settled, wait_for


def test_write_on_one_pod_read_on_the_others(network: Network, tmp_path: Path) -> None:
    a = network.pod("a", join=False)
    b = network.pod("b")
    c = network.pod("c")
    data = os.urandom(9 * 1024 * 1024 + 123)
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    a.cli("mkdir", "/in")
    a.cli("put", str(source), "/in")
    for pod in (b, c):
        out = wait_for(lambda pod=pod: pod.cli("cat", "/in/data.bin", check=False).stdout == data and True, what=f"/in/data.bin on {pod.name}")
        assert out
    listing = c.cli("ls", "-l", "/in").stdout.decode()
    assert "data.bin" in listing and str(len(data)) in listing
    pods = b.cli("pods").stdout.decode()
    assert pods.count("active") == 3
