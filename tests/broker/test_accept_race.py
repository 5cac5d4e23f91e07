"""Accept is atomic: of two clients accepting at once, exactly one wins, every time."""

from __future__ import annotations

import threading
from collections import Counter

import httpx

from tests.broker.requests import accept, command_request
from tests.conftest import LiveServer

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
