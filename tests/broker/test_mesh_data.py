"""Data from the Ecliptic mesh: staged from the pod that holds it, results pushed back into the mesh.

Two real pods: the broker reads the network through ``near`` (its site), ``far`` holds the other dataset.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.broker.requests import accept, command_request
from tests.broker.waiting import wait_for_phase
from tests.conftest import LiveServer, make_settings
from tests.mesh.harness import Network, PodProcess, settled


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[tuple[PodProcess, PodProcess]]:
    (tmp_path / "mesh").mkdir()
    network = Network(tmp_path / "mesh")
    try:
        near = network.pod("near")
        far = network.pod("far")
        yield near, far
    finally:
        network.close()


def _put(pod: PodProcess, tmp_path: Path, remote: str, size: int) -> str:
    local = tmp_path / Path(remote).name
    local.write_bytes(os.urandom(size))
    with pod.client() as client:
        client.mkdir(str(Path(remote).parent), parents=True, exist_ok=True)
        client.put_file(local, remote)
    return hashlib.md5(local.read_bytes()).hexdigest()


def _request(location: str, results: str) -> dict[str, Any]:
    return command_request(
        "sh",
        "-c",
        'md5sum "$ECLIPTIC_DATA_INPUT" | cut -d" " -f1 > out/md5.txt',
        data=[{"meta": {"name": "input"}, "location": location}],
        storage=[{"meta": {"name": "out"}, "destination": results}],
        compute={"volumes": [{"path": "out", "resource": "out", "mode": "READWRITE"}]},
    )


def test_mesh_data_is_staged_from_its_pod_and_results_go_back(
    pods: tuple[PodProcess, PodProcess], tmp_path: Path
) -> None:
    near, far = pods
    here = _put(near, tmp_path, "/datasets/here.bin", 3_000_000)
    there = _put(far, tmp_path, "/datasets/there.bin", 2_000_000)
    settled([near, far])
    settings = make_settings(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'store.sqlite'}",
        mesh_embedded=False,
        mesh_pod=near.address,
        local_site="near",
    )
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        for name, digest, source, basis in (
            ("here", here, "mesh:near", "local"),
            ("there", there, "mesh:far", None),
        ):
            offerset = http.post(
                "requests", json=_request(f"mesh:///datasets/{name}.bin", f"mesh:///results/{name}/")
            ).json()
            assert offerset["result"] == "YES", offerset["meta"]["messages"]
            offer = offerset["offers"][0]
            assert offer["data"][0]["staging"]["source"] == source
            if basis is not None:
                assert offer["data"][0]["staging"]["estimate_basis"] == basis
            uuid = offer["meta"]["uuid"]
            assert http.post(f"sessions/{uuid}", json=accept()).status_code == 200
            done = wait_for_phase(http, uuid, timeout=90)
            assert done["phase"] == "COMPLETED", done["meta"]["messages"]
            assert done["data"][0]["staging"]["source"] == source
            with far.client() as client:
                pushed = client.read(client.stat(f"/results/{name}/md5.txt"))
            assert pushed.decode().strip() == digest
