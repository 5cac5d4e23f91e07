"""Data is staged into the session's storage before compute starts: over HTTP, from allowed files, checked."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.broker.requests import accept, command_request
from tests.broker.waiting import wait_for_component, wait_for_phase
from tests.conftest import LiveServer, make_settings

PAYLOAD = b"0123456789abcdef" * 4096
SERVED = {"/survey/cube.fits"}
"""Paths the data server answers; a test may take one away after its offer was made."""


@pytest.fixture
def data_url() -> Iterator[str]:
    SERVED.clear()
    SERVED.update({"/survey/cube.fits", "/survey/later.fits"})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.answer(body=False)

        def do_GET(self) -> None:
            self.answer(body=True)

        def answer(self, *, body: bool) -> None:
            if self.path not in SERVED:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            if body:
                self.wfile.write(PAYLOAD)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/survey/cube.fits"
    server.shutdown()


@pytest.fixture
def staging_server(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "table.csv").write_text("a,b\n1,2\n")
    settings = make_settings(tmp_path / "data", database_url, file_data_roots=[shared])
    with LiveServer(settings) as live:
        yield live


def _run(http: httpx.Client, body: dict) -> dict:  # type: ignore[type-arg]
    offerset = http.post("requests", json=body).json()
    assert offerset["result"] == "YES", offerset["meta"]["messages"]
    uuid = offerset["offers"][0]["meta"]["uuid"]
    assert http.post(f"sessions/{uuid}", json=accept()).status_code == 200
    return wait_for_phase(http, uuid)


def test_http_data_is_staged_checked_and_mounted(staging_server: LiveServer, data_url: str) -> None:
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    body = command_request(
        "sh", "-c", 'sha256sum input/cube.fits > sum.txt; echo "$ECLIPTIC_DATA_CUBE" > where.txt'
    )
    body["data"] = [
        {"meta": {"name": "cube"}, "location": data_url, "checksum": {"type": "sha256", "value": digest}}
    ]
    body["compute"] = {"volumes": [{"path": "/input/cube.fits", "resource": "cube"}]}
    with httpx.Client(base_url=staging_server.url, timeout=30) as http:
        done = _run(http, body)
        assert done["phase"] == "COMPLETED", done["meta"]["messages"]
        assert done["data"][0]["phase"] == "COMPLETED"
        assert done["storage"][0]["meta"]["name"] == "cube-storage"  # a default storage was made for it
        uuid = done["meta"]["uuid"]
        assert http.get(f"sessions/{uuid}/files/sum.txt").text.split()[0] == digest
        assert http.get(f"sessions/{uuid}/files/where.txt").text.strip().endswith("cube.fits")


def test_a_checksum_mismatch_fails_the_session_before_compute(
    staging_server: LiveServer, data_url: str
) -> None:
    body = command_request("sh", "-c", "echo ran > ran.txt")
    body["data"] = [{"location": data_url, "checksum": {"type": "md5", "value": "0" * 32}}]
    with httpx.Client(base_url=staging_server.url, timeout=30) as http:
        done = _run(http, body)
        assert done["phase"] == "FAILED"
        assert done["data"][0]["phase"] == "FAILED"
        # Compute never started; it ends FAILED in the step after the session failed.
        wait_for_component(http, done["meta"]["uuid"], "compute", "FAILED")
        assert "checksum" in done["meta"]["messages"][-1]["message"].lower()
        files = http.get(f"sessions/{done['meta']['uuid']}/files").json()["files"]
        assert "ran.txt" not in {f["path"] for f in files}


def test_a_missing_remote_file_is_a_no_naming_the_http_status(
    staging_server: LiveServer, data_url: str
) -> None:
    body = command_request("true")
    body["data"] = [{"location": data_url.replace("cube", "nothing")}]
    with httpx.Client(base_url=staging_server.url, timeout=30) as http:
        offerset = http.post("requests", json=body).json()
    assert offerset["result"] == "NO"
    message = offerset["meta"]["messages"][0]
    assert message["kind"] == "urn:data-not-found"
    assert "404" in message["message"] and "nothing.fits" in message["message"]


def test_a_file_gone_after_the_offer_fails_with_the_http_status(
    staging_server: LiveServer, data_url: str
) -> None:
    body = command_request("true")
    body["data"] = [{"location": data_url.replace("cube", "later")}]
    with httpx.Client(base_url=staging_server.url, timeout=30) as http:
        offerset = http.post("requests", json=body).json()
        assert offerset["result"] == "YES", offerset["meta"]["messages"]
        SERVED.discard("/survey/later.fits")
        uuid = offerset["offers"][0]["meta"]["uuid"]
        assert http.post(f"sessions/{uuid}", json=accept()).status_code == 200
        done = wait_for_phase(http, uuid)
    assert done["phase"] == "FAILED"
    assert "404" in done["meta"]["messages"][-1]["message"]


def test_file_urls_only_from_allowed_directories(staging_server: LiveServer, tmp_path: Path) -> None:
    allowed = command_request("cat", "input/table.csv")
    allowed["data"] = [{"meta": {"name": "table"}, "location": (tmp_path / "shared" / "table.csv").as_uri()}]
    allowed["compute"] = {"volumes": [{"path": "input/table.csv", "resource": "table"}]}
    refused = command_request("true")
    refused["data"] = [{"location": "file:///etc/passwd"}]
    with httpx.Client(base_url=staging_server.url, timeout=30) as http:
        done = _run(http, allowed)
        assert done["phase"] == "COMPLETED"
        assert http.get(f"sessions/{done['meta']['uuid']}/logs").text == "a,b\n1,2\n"
        no = http.post("requests", json=refused).json()
        assert no["result"] == "NO"
        assert no["meta"]["messages"][0]["kind"] == "urn:not-allowed"
