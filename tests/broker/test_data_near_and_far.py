"""Data at different distances from the platforms: a real Rucio server with a near and a far storage element.

The local platform sits at the NEAR storage element, a (fake-API) Kubernetes cluster elsewhere; a dataset
that has a copy at NEAR gets an earlier offer on the local platform, staged from NEAR, and a dataset only at
FAR is staged from there, its transfer recorded for the estimates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecliptic.broker import kinds
from tests.broker.requests import accept, command_request
from tests.broker.waiting import wait_for_phase
from tests.conftest import LiveServer, make_settings
from tests.fakes.kubernetes import FakeKubernetes
from tests.staging.rucio_server import RucioServer, rucio_server_fixture  # noqa: F401 - a fixture


@pytest.fixture
def broker(rucio_server: RucioServer, tmp_path: Path) -> Iterator[httpx.Client]:
    with FakeKubernetes(namespaces=("sessions",)) as fake:
        settings = make_settings(
            tmp_path / "data",
            f"sqlite:///{tmp_path / 'store.sqlite'}",
            mesh_embedded=False,
            local_site="NEAR",
            platforms={
                "elsewhere": {
                    "type": "kubernetes",
                    "api_url": fake.url,
                    "token": fake.token,
                    "namespace": "sessions",
                    "cores": 8,
                    "memory_gib": 16,
                    "site": "ELSEWHERE",
                }
            },
            rucio={
                "url": rucio_server.url,
                "account": rucio_server.account,
                "username": rucio_server.username,
                "password": rucio_server.password,
            },
            transfer_rates={"rse:FAR": {"rate": "5 MB/s", "latency": 20}},
        )
        with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=30) as http:
            yield http


def _request(scope: str, name: str) -> dict[str, Any]:
    return command_request(
        "sh",
        "-c",
        'md5sum "$ECLIPTIC_DATA_INPUT" | cut -d" " -f1 > md5.txt',
        data=[
            {"kind": kinds.DATA_RUCIO, "meta": {"name": "input"}, "rucio": {"scope": scope, "object": name}}
        ],
    )


def _start(offer: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(
        offer["schedule"]["available"]["start"].split("/")[0].replace("Z", "+00:00")
    )


def test_a_dataset_near_a_platform_gets_the_earlier_offer_and_stages_from_there(
    broker: httpx.Client, rucio_server: RucioServer
) -> None:
    offerset = broker.post("requests", json=_request(rucio_server.scope, "alpha.bin")).json()
    assert offerset["result"] == "YES", offerset["meta"]["messages"]
    first = offerset["offers"][0]
    starts = {offer["data"][0]["staging"]["source"]: _start(offer) for offer in offerset["offers"]}
    assert first["data"][0]["staging"]["estimate_basis"] == "local"
    assert first["data"][0]["staging"]["source"] == "rse:NEAR"
    elsewhere = [o for o in offerset["offers"] if o["data"][0]["staging"]["estimate_basis"] != "local"]
    assert elsewhere, starts  # the far platform offered too, later: it has to move the data first
    assert all(_start(first) < _start(offer) for offer in elsewhere)

    uuid = first["meta"]["uuid"]
    assert broker.post(f"sessions/{uuid}", json=accept()).status_code == 200
    done = wait_for_phase(broker, uuid, timeout=90)
    assert done["phase"] == "COMPLETED", done["meta"]["messages"]
    assert broker.get(f"sessions/{uuid}/files/md5.txt").text.strip() == rucio_server.files["alpha.bin"]["md5"]
    staging = done["data"][0]["staging"]
    assert staging["source"] == "rse:NEAR"
    assert staging["size"] == rucio_server.files["alpha.bin"]["bytes"]


def test_a_dataset_only_far_away_is_staged_from_far(broker: httpx.Client, rucio_server: RucioServer) -> None:
    offerset = broker.post("requests", json=_request(rucio_server.scope, "epsilon.dat")).json()
    assert offerset["result"] == "YES", offerset["meta"]["messages"]
    offer = offerset["offers"][0]
    assert offer["data"][0]["staging"]["source"] == "rse:FAR"
    assert offer["data"][0]["staging"]["estimate_basis"] == "static"
    uuid = offer["meta"]["uuid"]
    assert broker.post(f"sessions/{uuid}", json=accept()).status_code == 200
    done = wait_for_phase(broker, uuid, timeout=90)
    assert done["phase"] == "COMPLETED", done["meta"]["messages"]
    content = bytes.fromhex(rucio_server.files["epsilon.dat"]["content"])
    assert broker.get(f"sessions/{uuid}/files/md5.txt").text.strip() == hashlib.md5(content).hexdigest()
    assert done["data"][0]["staging"]["staging_seconds"] > 0


def test_an_unknown_did_is_a_no_naming_it(broker: httpx.Client, rucio_server: RucioServer) -> None:
    offerset = broker.post("requests", json=_request(rucio_server.scope, "no-such-file")).json()
    assert offerset["result"] == "NO"
    assert "no-such-file" in offerset["meta"]["messages"][0]["message"]
