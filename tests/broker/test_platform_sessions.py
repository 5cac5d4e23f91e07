"""Each execution platform through the broker: offer → accept → prepare → run → release, failure and cancel.

The platforms are real where they can run here (a Slurm cluster, a Docker daemon) and faithful fakes where
they cannot (the Kubernetes API, CANFAR Skaha), always driven by the real platform code behind the broker's
HTTP API; only the local platform is switched off, so every offer is on the platform under test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecliptic.broker import kinds
from tests.broker.requests import accept, command_request
from tests.broker.waiting import wait_for_phase
from tests.conftest import LiveServer, make_settings
from tests.fakes.kubernetes import FakeKubernetes
from tests.fakes.preparedata import FakeSrcnet
from tests.fakes.skaha import FakeSkaha, Outcome
from tests.platforms.dockerd import Daemon, docker_daemon, podman_daemon  # noqa: F401 - fixtures
from tests.platforms.slurm_cluster import SlurmCluster, running_cluster


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    yield from running_cluster()


def _server(tmp_path: Path, platforms: dict[str, dict[str, Any]], **overrides: Any) -> LiveServer:
    settings = make_settings(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'store.sqlite'}",
        local_platform=False,
        mesh_embedded=False,
        platforms=platforms,
        **overrides,
    )
    return LiveServer(settings)


def _offer(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    offerset = http.post("requests", json=body).json()
    assert offerset["result"] == "YES", offerset["meta"]["messages"]
    return offerset["offers"][0]


def _run(http: httpx.Client, body: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
    offer = _offer(http, body)
    uuid = offer["meta"]["uuid"]
    assert http.post(f"sessions/{uuid}", json=accept()).status_code == 200
    return wait_for_phase(http, uuid, timeout=timeout)


def _cancel_when_running(http: httpx.Client, body: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
    offer = _offer(http, body)
    uuid = offer["meta"]["uuid"]
    assert http.post(f"sessions/{uuid}", json=accept()).status_code == 200
    wait_for_phase(http, uuid, {"AVAILABLE"}, timeout=timeout)
    assert http.post(f"sessions/{uuid}", json=accept("CANCELLED")).status_code == 200
    wait_for_phase(http, uuid, {"CANCELLED", "FAILED", "COMPLETED"}, timeout=timeout)
    # The client's change is the session's at once; the platform's run is stopped by the next reconcile step.
    return _released(http, uuid, timeout=timeout)


def _released(http: httpx.Client, uuid: str, timeout: float = 30) -> dict[str, Any]:
    """The session once every component has ended (the platform's run is gone)."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = http.get(f"sessions/{uuid}").json()
        if body["compute"]["phase"] in ("COMPLETED", "FAILED", "CANCELLED"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"compute of {uuid} stayed {body.get('compute', {}).get('phase')}")


# -- Slurm (a real single-node cluster) ----------------------------------------------------------------------
def _slurm_platforms(cluster: SlurmCluster) -> dict[str, dict[str, Any]]:
    return {
        "hpc": {
            "type": "slurm",
            "submit": "cli",
            "slurm_conf": str(cluster.conf),
            "cores": 2,
            "memory_gib": 4,
            "site": "hpc",
        }
    }


def test_slurm_session_runs_fails_and_cancels(slurm: SlurmCluster, tmp_path: Path) -> None:
    with (
        _server(tmp_path, _slurm_platforms(slurm)) as live,
        httpx.Client(base_url=live.url, timeout=30) as http,
    ):
        done = _run(http, command_request("sh", "-c", "echo via-slurm; echo to-err >&2"))
        assert done["phase"] == "COMPLETED", done["meta"]["messages"]
        uuid = done["meta"]["uuid"]
        assert http.get(f"sessions/{uuid}/files/logs/stdout.txt").text.strip() == "via-slurm"

        failed = _run(http, command_request("sh", "-c", "exit 3"))
        assert failed["phase"] == "FAILED"
        assert "3" in failed["meta"]["messages"][-1]["message"]

        cancelled = _cancel_when_running(http, command_request("sleep", "120"))
        assert cancelled["phase"] == "CANCELLED"
        job_name = f"ecliptic-{cancelled['meta']['uuid'].split('-')[0]}"
        deadline = time.monotonic() + 30
        while job_name in slurm.run("squeue", "-h", "-o", "%j") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job_name not in slurm.run("squeue", "-h", "-o", "%j")


# -- Kubernetes (a fake API server; the real client) ---------------------------------------------------------
def _container_request(*argv: str, image: str = "registry.example/tools:1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "executable": {"kind": kinds.DOCKER, "image": {"locations": [image]}, "command": list(argv)},
        "schedule": {"requested": {"duration": "PT5M"}},
    }
    body.update(extra)
    return body


def test_kubernetes_session_runs_fails_and_cancels(tmp_path: Path) -> None:
    with FakeKubernetes(namespaces=("sessions",)) as fake:
        platforms = {
            "cluster": {
                "type": "kubernetes",
                "api_url": fake.url,
                "token": fake.token,
                "namespace": "sessions",
                "cores": 4,
                "memory_gib": 8,
            }
        }
        with _server(tmp_path, platforms) as live, httpx.Client(base_url=live.url, timeout=30) as http:
            done = _run(http, _container_request("sh", "-c", "echo via-kubernetes"))
            assert done["phase"] == "COMPLETED", done["meta"]["messages"]
            uuid = done["meta"]["uuid"]
            assert "via-kubernetes" in http.get(f"sessions/{uuid}/files/logs/stdout.txt").text
            assert _released(http, uuid)["compute"]["phase"] == "COMPLETED"

            failed = _run(http, _container_request("sh", "-c", "exit 3"))
            assert failed["phase"] == "FAILED"
            assert "3" in failed["meta"]["messages"][-1]["message"]

            cancelled = _cancel_when_running(http, _container_request("sleep", "120"))
            assert cancelled["phase"] == "CANCELLED"
            jobs = httpx.get(
                f"{fake.url}/apis/batch/v1/namespaces/sessions/jobs",
                headers={"Authorization": f"Bearer {fake.token}"},
            ).json()["items"]
            names = {job["metadata"]["name"] for job in jobs}
            assert f"ecliptic-{cancelled['meta']['uuid'].split('-')[0]}" not in names


# -- Docker and Podman (real private daemons, no bridge) -----------------------------------------------------
@pytest.fixture(params=["docker", "podman"])
def daemon(request: pytest.FixtureRequest) -> Daemon:
    found: Daemon = request.getfixturevalue(f"{request.param}_daemon")
    return found


def test_container_session_stages_data_into_the_container_and_pushes_results(
    daemon: Daemon, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "table.csv").write_text("a,b\n1,2\n")
    results = tmp_path / "results"
    results.mkdir()
    platforms = {
        "containers": {
            "type": daemon.kind,
            "host": daemon.host,
            "cores": 2,
            "memory_gib": 2,
            "default_image": daemon.image,
            "stop_grace": 0,
        }
    }
    body = _container_request(
        "sh",
        "-c",
        'wc -l < /input/table.csv > /output/lines.txt; cat "$ECLIPTIC_DATA_TABLE" > /output/copy.csv',
        image=daemon.image,
        data=[{"meta": {"name": "table"}, "location": (shared / "table.csv").as_uri(), "storage": "out"}],
        storage=[{"meta": {"name": "out"}, "destination": (results / "run").as_uri()}],
        compute={
            "volumes": [
                {"path": "/input/table.csv", "resource": "table"},
                {"path": "/output", "resource": "out", "mode": "READWRITE"},
            ]
        },
    )
    with (
        _server(tmp_path, platforms, file_data_roots=[shared], result_roots=[results]) as live,
        httpx.Client(base_url=live.url, timeout=30) as http,
    ):
        done = _run(http, body)
        assert done["phase"] == "COMPLETED", done["meta"]["messages"]
        assert (results / "run" / "lines.txt").read_text().strip() == "2"
        assert (results / "run" / "copy.csv").read_text() == "a,b\n1,2\n"
        assert done["data"][0]["staging"]["size"] == 8
        containers = daemon.api.containers(all=True, filters={"label": "ecliptic.session"})
        assert _released(http, done["meta"]["uuid"])["compute"]["phase"] == "COMPLETED"

        failed = _run(http, _container_request("sh", "-c", "exit 3", image=daemon.image))
        assert failed["phase"] == "FAILED"
        assert "3" in failed["meta"]["messages"][-1]["message"]

        refused = _run(http, _container_request("true", image="127.0.0.1:1/not/there:1"))
        assert refused["phase"] == "FAILED"
        assert "not/there" in refused["meta"]["messages"][-1]["message"]

        cancelled = _cancel_when_running(http, _container_request("sleep", "120", image=daemon.image))
        assert cancelled["phase"] == "CANCELLED"
        containers = daemon.api.containers(all=True, filters={"label": "ecliptic.session"})
        assert [c for c in containers if cancelled["meta"]["uuid"] in str(c.get("Labels"))] == []


# -- CANFAR Skaha (a faithful fake; the real platform code) --------------------------------------------------
def test_skaha_notebook_headless_cancel_and_session_limit(tmp_path: Path) -> None:
    fake = FakeSkaha(max_interactive=1, public_url="https://canfar.example.org")
    with fake.serve():
        platforms = {
            "canfar": {
                "type": "skaha",
                "url": fake.url,
                "token": "test-token",
                "cores": 16,
                "memory_gib": 64,
                "site": "canfar",
            }
        }
        with _server(tmp_path, platforms) as live, httpx.Client(base_url=live.url, timeout=30) as http:
            headless = _run(
                http, _container_request("echo", "hello", image="images.canfar.net/skaha/terminal:1.1.1")
            )
            assert headless["phase"] == "COMPLETED", headless["meta"]["messages"]

            broken = "images.canfar.net/skaha/broken:1"
            fake.script_image(
                broken, Outcome(status="Failed", logs="segfault\n", events=(("Warning", "OOMKilled", "oom"),))
            )
            failed = _run(http, _container_request("run", image=broken))
            assert failed["phase"] == "FAILED"
            assert "OOMKilled" in failed["meta"]["messages"][-1]["message"]

            notebook = _offer(http, {"executable": {"kind": kinds.JUPYTER}})
            uuid = notebook["meta"]["uuid"]
            assert http.post(f"sessions/{uuid}", json=accept()).status_code == 200
            running = wait_for_phase(http, uuid, {"AVAILABLE"}, timeout=60)
            deadline = time.monotonic() + 30
            while not running["connectors"] and time.monotonic() < deadline:
                time.sleep(0.1)
                running = http.get(f"sessions/{uuid}").json()
            locations = [c["location"] for c in running["connectors"]]
            assert any("canfar.example.org/session/notebook/" in loc for loc in locations), running[
                "connectors"
            ]
            assert {c["status"] for c in running["connectors"]} == {"AVAILABLE"}

            full = http.post("requests", json={"executable": {"kind": kinds.JUPYTER}}).json()
            assert full["result"] == "NO"
            assert any(m["kind"] == "urn:session-limit" for m in full["meta"]["messages"]), full

            assert http.post(f"sessions/{uuid}", json=accept("CANCELLED")).status_code == 200
            released = _released(http, uuid)
            assert released["phase"] == "CANCELLED"
            assert {c["status"] for c in released["connectors"]} == {"FINISHED"}
            deadline = time.monotonic() + 30
            while (
                http.post("requests", json={"executable": {"kind": kinds.JUPYTER}}).json()["result"] != "YES"
            ):
                assert time.monotonic() < deadline, "the cancelled notebook still counts against the limit"
                time.sleep(0.2)


def test_skaha_session_gets_skao_data_through_prepare_data_first(tmp_path: Path) -> None:
    """Seed iteration 3: prepareData stages the data product into the user's home, then the session starts."""
    payload = b"visibilities " * 5000
    with FakeSrcnet(tmp_path / "srcnet") as srcnet, FakeSkaha().serve() as skaha:
        stored = srcnet.add_file("daac", "obs-1.fits", payload, elsewhere=["FAR-SRC-RSE"])
        platforms = {
            "canfar": {
                "type": "skaha",
                "url": skaha.url,
                "token": "test-token",
                "cores": 16,
                "memory_gib": 64,
            }
        }
        preparedata = {
            "gatekeeper_url": srcnet.url,
            "token": "alice-token",
            "home": str(srcnet.home()),
            "local_home": str(srcnet.home()),
            "dm_url": srcnet.dm_url,
            "dm_token": "dm-token",
            "poll_interval": 0.05,
            "max_poll_interval": 0.2,
            "timeout": 30,
        }
        body = _container_request(
            "md5sum",
            "obs-1.fits",
            image="images.canfar.net/skaha/terminal:1.1.1",
            data=[
                {
                    "kind": kinds.DATA_SKAO,
                    "meta": {"name": "obs"},
                    "skao": {"namespace": "daac", "objectname": "obs-1.fits"},
                }
            ],
        )
        with (
            _server(tmp_path, platforms, preparedata=preparedata) as live,
            httpx.Client(base_url=live.url, timeout=30) as http,
        ):
            done = _run(http, body)
            assert done["phase"] == "COMPLETED", done["meta"]["messages"]
            staging = done["data"][0]["staging"]
            assert staging["source"] == f"rse:{srcnet.SITE}"
            copies = list(srcnet.home().rglob("obs-1.fits"))
            assert len(copies) == 1 and copies[0].read_bytes() == payload
            assert staging["size"] == len(payload) and stored.did == "daac:obs-1.fits"
            history = http.get(f"sessions/{done['meta']['uuid']}/history").json()["history"]
            data_ready = next(
                i for i, h in enumerate(history) if h["component"] == "data" and h["to"] == "AVAILABLE"
            )
            compute_started = next(
                i for i, h in enumerate(history) if h["component"] == "compute" and h["to"] == "PREPARING"
            )
            assert data_ready < compute_started
