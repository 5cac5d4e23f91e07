"""Accept is atomic: of two clients accepting at once, exactly one wins, every time."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.broker.requests import accept, command_request
from tests.broker.waiting import wait_for_component
from tests.conftest import LiveServer
from tests.processes import wait_until_gone

ROUNDS = 100


def _race(url: str, targets: list[str]) -> list[int]:
    barrier = threading.Barrier(len(targets))
    codes: list[int] = [0] * len(targets)

    def go(index: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            barrier.wait()
            codes[index] = client.post(f"sessions/{targets[index]}", json=accept()).status_code

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def test_two_clients_accepting_the_same_offer(server: LiveServer) -> None:
    outcomes = Counter[tuple[int, ...]]()
    with httpx.Client(base_url=server.url, timeout=60) as http:
        # Far in the future and short, so that 100 rounds do not fill the calendar or run anything now.
        body = command_request("true", duration="PT1M")
        body["schedule"]["requested"]["start"] = "2099-01-01T00:00:00Z/P30D"
        for _ in range(ROUNDS):
            uuid = http.post("requests", json=body).json()["offers"][0]["meta"]["uuid"]
            outcomes[tuple(sorted(_race(server.url, [uuid, uuid])))] += 1
    assert outcomes == Counter({(200, 409): ROUNDS})


def test_two_clients_accepting_sibling_offers(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        body = command_request("true", duration="PT1M")
        body["schedule"]["requested"]["start"] = "2099-01-01T00:00:00Z/P30D"
        for _ in range(20):
            offers = http.post("requests", json=body).json()["offers"]
            assert len(offers) >= 2
            first, second = offers[0]["meta"]["uuid"], offers[1]["meta"]["uuid"]
            assert sorted(_race(server.url, [first, second])) == [200, 409]
            phases = sorted(http.get(f"sessions/{u}").json()["phase"] for u in (first, second))
            assert phases == ["ACCEPTED", "REJECTED"] or phases == ["REJECTED", "WAITING"]


def test_cancel_racing_the_reconcile_loop_always_wins(server: LiveServer, tmp_path: Path) -> None:
    """Cancel right after accept, while workers are preparing and launching: every session ends CANCELLED,
    nothing keeps running and no capacity stays held (a lost update would leave one PREPARING or AVAILABLE)."""
    pids = tmp_path / "pids"
    pids.mkdir()
    uuids = []
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for _ in range(30):
            body = command_request(
                "sh", "-c", f"echo $$ > {pids}/$ECLIPTIC_SESSION; exec sleep 300", duration="PT10M"
            )
            uuid = http.post("requests", json=body).json()["offers"][0]["meta"]["uuid"]
            assert http.post(f"sessions/{uuid}", json=accept()).status_code == 200
            assert http.post(f"sessions/{uuid}", json=accept("CANCELLED")).status_code == 200
            uuids.append(uuid)
        for uuid in uuids:
            wait_for_component(http, uuid, "compute", "CANCELLED")
            assert http.get(f"sessions/{uuid}").json()["phase"] == "CANCELLED"
    assert server.broker.capacity_in_use() == []
    for pid_file in pids.iterdir():
        # The shell creates the file before it writes its pid: an empty file means it was killed in between
        # (or is about to write), so look again before concluding nothing of it is left.
        for _ in range(20):
            text = pid_file.read_text().strip()
            if text:
                wait_until_gone(int(text), f"the command of session {pid_file.name}")
                break
            time.sleep(0.1)
