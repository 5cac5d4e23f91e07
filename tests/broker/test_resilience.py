"""Crashes and scale-out: kill -9 mid-flight, two servers on one PostgreSQL, 1000 sessions at once."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.broker.requests import accept, command_request
from tests.broker.waiting import TERMINAL
from tests.conftest import LiveServer, make_settings
from tests.processes import ServerProcess

pytestmark = pytest.mark.slow


def _submit_and_accept(http: httpx.Client, body: dict) -> str:  # type: ignore[type-arg]
    offerset = http.post("requests", json=body)
    assert offerset.status_code == 303, offerset.text
    uuid = str(offerset.json()["offers"][0]["meta"]["uuid"])
    accepted = http.post(f"sessions/{uuid}", json=accept())
    assert accepted.status_code == 200, accepted.text
    return uuid


def _wait_all_terminal(url: str, uuids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    phases: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.monotonic() < deadline:
            for uuid in uuids:
                if phases.get(uuid) not in TERMINAL:
                    phases[uuid] = http.get(f"sessions/{uuid}").json()["phase"]
            if all(phase in TERMINAL for phase in phases.values()) and len(phases) == len(uuids):
                return phases
            time.sleep(0.2)
    return phases


def _reasons(url: str, uuids: list[str]) -> dict[str, list[str]]:
    """What the broker says went wrong with these sessions: for the assertion message."""
    with httpx.Client(base_url=url, timeout=30) as http:
        return {
            u: [m["message"] for m in http.get(f"sessions/{u}").json()["meta"]["messages"]] for u in uuids[:5]
        }


def _runs(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    return Counter(line.strip() for line in path.read_text().splitlines() if line.strip())


def _recording(runs: Path, seconds: float) -> dict:  # type: ignore[type-arg]
    script = f'echo "$ECLIPTIC_SESSION" >> {runs}; sleep {seconds}'
    body = command_request("sh", "-c", script, duration="PT2M")
    return body


def test_kill_9_mid_flight_loses_nothing_and_runs_nothing_twice(tmp_path: Path, database_url: str) -> None:
    runs = tmp_path / "runs.log"
    data = tmp_path / "data"
    env = {"ECLIPTIC_LOCAL_CORES": "64", "ECLIPTIC_LOCAL_MEMORY_GIB": "64", "ECLIPTIC_WORKERS": "4"}
    first = ServerProcess(data, database_url, tmp_path / "server.log", **env).start()
    uuids: list[str] = []
    try:
        with httpx.Client(base_url=first.url, timeout=30) as http:
            for index in range(50):
                uuids.append(_submit_and_accept(http, _recording(runs, 1.5 + (index % 3))))
            # Crash while some sessions wait, some prepare and some run.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(_runs(runs)) < 10:
                time.sleep(0.05)
        first.kill()
    finally:
        first.stop()
    second = ServerProcess(data, database_url, tmp_path / "server.log", **env).start()
    try:
        phases = _wait_all_terminal(second.url, uuids, timeout=240)
    finally:
        second.stop()
    assert Counter(phases.values()) == Counter({"COMPLETED": 50}), phases
    counts = _runs(runs)
    assert set(counts) == set(uuids)
    assert set(counts.values()) == {1}


def test_two_servers_on_one_postgresql_never_run_a_session_twice(tmp_path: Path, postgres_url: str) -> None:
    runs = tmp_path / "runs.log"
    data = tmp_path / "data"
    env = {"ECLIPTIC_LOCAL_CORES": "64", "ECLIPTIC_LOCAL_MEMORY_GIB": "64", "ECLIPTIC_WORKERS": "4"}
    servers = [
        ServerProcess(data, postgres_url, tmp_path / f"server{i}.log", **env).start() for i in range(2)
    ]
    try:
        uuids: list[str] = []
        clients = [httpx.Client(base_url=s.url, timeout=30) for s in servers]
        for index in range(60):
            uuids.append(_submit_and_accept(clients[index % 2], _recording(runs, 0.2)))
        # Read each session through the server that did not create it.
        phases = _wait_all_terminal(servers[1].url, uuids, timeout=240)
        for client in clients:
            client.close()
    finally:
        for server in servers:
            server.stop()
    assert Counter(phases.values()) == Counter({"COMPLETED": 60}), phases
    counts = _runs(runs)
    assert set(counts) == set(uuids) and set(counts.values()) == {1}
    logs = "".join((tmp_path / f"server{i}.log").read_text() for i in range(2))
    assert "Traceback" not in logs, logs[-3000:]


def test_an_api_without_workers_and_a_separate_worker(tmp_path: Path, postgres_url: str) -> None:
    runs = tmp_path / "runs.log"
    api = ServerProcess(tmp_path / "data", postgres_url, tmp_path / "server.log").start("--no-workers")
    worker = None
    try:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            uuid = _submit_and_accept(http, _recording(runs, 0.1))
            time.sleep(1)
            assert http.get(f"sessions/{uuid}").json()["phase"] == "ACCEPTED"  # nobody drives it yet
            worker = api.start_worker()
            phases = _wait_all_terminal(api.url, [uuid], timeout=120)
        assert phases == {uuid: "COMPLETED"}
        assert _runs(runs) == Counter({uuid: 1})
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        api.stop()


def test_a_thousand_sessions_at_once(tmp_path: Path, database_url: str) -> None:
    """1000 on PostgreSQL (the database of many instances); on SQLite 250 unless ECLIPTIC_TEST_FULL is set.

    Each session starts a supervised process, so 1000 cost minutes; the SQLite run keeps the same concurrency
    (50 clients at once) over fewer sessions to hold the whole suite within CI's budget.
    """
    full = database_url.startswith("postgresql") or bool(os.environ.get("ECLIPTIC_TEST_FULL"))
    settings = make_settings(
        tmp_path / "data",
        database_url,
        local_cores=2000,
        local_memory_gib=2000,
        workers=8,
    )
    total = 1000 if full else 250
    statuses = Counter[int]()
    lock = threading.Lock()
    uuids: list[str] = []
    with LiveServer(settings) as live:

        def one(index: int) -> None:
            with httpx.Client(base_url=live.url, timeout=120) as http:
                offered = http.post("requests", json=command_request("true", duration="PT10M"))
                codes = [offered.status_code]
                if offered.status_code == 303 and offered.json()["result"] == "YES":
                    uuid = offered.json()["offers"][0]["meta"]["uuid"]
                    codes.append(http.post(f"sessions/{uuid}", json=accept()).status_code)
                    with lock:
                        uuids.append(uuid)
            with lock:
                statuses.update(codes)

        with ThreadPoolExecutor(max_workers=50) as pool:
            list(pool.map(one, range(total)))
        assert statuses == Counter({303: total, 200: total}), statuses
        phases = _wait_all_terminal(live.url, uuids, timeout=600)
        unhappy = _reasons(live.url, [u for u, p in phases.items() if p != "COMPLETED"])
    assert Counter(phases.values()) == Counter({"COMPLETED": total}), unhappy
