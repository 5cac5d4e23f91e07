"""The broker's HTTP API end to end, over a real loopback server, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from ecliptic.broker import kinds
from ecliptic.isotime import format_instant, parse_instant
from tests.broker.requests import accept, command_request
from tests.broker.waiting import wait_for_component, wait_for_phase
from tests.conftest import LiveServer
from tests.processes import wait_until_gone


def offers(http: httpx.Client, body: dict, **kwargs: object) -> httpx.Response:
    return http.post("requests", json=body, **kwargs)  # type: ignore[arg-type]


def test_request_answers_303_with_location_and_the_offer_set(http: httpx.Client) -> None:
    response = offers(http, command_request("true"))
    assert response.status_code == 303
    body = response.json()
    assert response.headers["location"] == f"{http.base_url}offersets/{body['meta']['uuid']}"
    assert body["kind"] == kinds.OFFERSET
    assert body["result"] == "YES"
    assert 1 <= len(body["offers"]) <= 4
    first = body["offers"][0]
    assert first["phase"] == "OFFERED"
    assert first["kind"] == kinds.SESSION
    assert first["meta"]["options"] == [
        {"kind": "uri:enum-value-option", "path": "phase", "values": ["ACCEPTED", "REJECTED"]}
    ]
    assert parse_instant(first["expires"]) > datetime.now(UTC) + timedelta(minutes=4)
    start = parse_instant(first["schedule"]["available"]["start"].split("/")[0])
    assert start >= datetime.now(UTC) - timedelta(seconds=5)
    assert first["compute"]["kind"] == kinds.COMPUTE  # not the reference's "computer" typo
    assert first["compute"]["memory"] == {"min": 1, "max": 1}
    again = http.get(f"offersets/{body['meta']['uuid']}")
    assert again.status_code == 200 and again.json()["meta"]["uuid"] == body["meta"]["uuid"]
    assert http.post("offersets", json=command_request("true")).status_code == 303  # the Mar-2026 alias


def test_yaml_in_and_out(http: httpx.Client) -> None:
    text = yaml.safe_dump(command_request("true"))
    response = http.post(
        "requests", content=text, headers={"Content-Type": "application/yaml", "Accept": "application/yaml"}
    )
    assert response.status_code == 303
    assert response.headers["content-type"].startswith("application/yaml")
    body = yaml.safe_load(response.text)
    assert body["result"] == "YES"
    session = http.get(f"sessions/{body['offers'][0]['meta']['uuid']}", headers={"Accept": "text/yaml"})
    assert yaml.safe_load(session.text)["phase"] == "OFFERED"


def test_unsupported_media_types(http: httpx.Client) -> None:
    xml = http.post("requests", content="<request/>", headers={"Content-Type": "application/xml"})
    assert xml.status_code == 415 and "application/yaml" in xml.json()["message"]
    refused = http.post("requests", json=command_request("true"), headers={"Accept": "application/xml"})
    assert refused.status_code == 406


@pytest.mark.parametrize(
    ("body", "headers", "where", "words"),
    [
        ('{"executable": ', {"Content-Type": "application/json"}, None, "not valid JSON"),
        ("executable: [unclosed", {"Content-Type": "application/yaml"}, None, "not valid YAML"),
        ("[1, 2]", {"Content-Type": "application/json"}, None, "must be an execution request object"),
        ("", {"Content-Type": "application/json"}, None, "no body"),
    ],
)
def test_unparsable_bodies_are_400(
    http: httpx.Client, body: str, headers: dict, where: object, words: str
) -> None:
    response = http.post("requests", content=body, headers=headers)
    assert response.status_code == 400
    assert words in response.json()["message"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"executable": {"kind": kinds.COMMAND, "command": []}}, ["executable", "command"]),
        ({"executable": {"kind": kinds.COMMAND, "command": "echo hi"}}, ["executable", "command"]),
        ({"executable": {"kind": kinds.COMMAND}}, ["executable", "command"]),
        (command_request("true", compute={"cores": {"min": "many"}}), ["compute", "cores", "min"]),
        (command_request("true", compute={"cores": {"min": 4, "max": 2}}), ["compute", "cores", "min"]),
        (command_request("true", duration="PT1X"), ["schedule", "requested", "duration"]),
        (
            {**command_request("true"), "schedule": {"requested": {"start": "tomorrow"}}},
            ["schedule", "requested", "start"],
        ),
        (command_request("true", data=[{"location": 42}]), ["data", 0, "location"]),
        (command_request("true", storage="lots"), ["storage"]),
        ({"executable": {"kind": kinds.DOCKER, "command": ["true"]}}, ["executable", "image"]),
        (
            {"executable": {"kind": kinds.DOCKER, "image": {"locations": ["a b"]}}},
            ["executable", "image", "locations", 0],
        ),
        (
            {"executable": {"kind": kinds.DOCKER, "image": {"locations": ["x"], "digest": "sha256:nothex"}}},
            ["executable", "image", "digest"],
        ),
        (
            command_request("true", data=[{"kind": kinds.DATA_RUCIO, "rucio": {"object": "o"}}]),
            ["data", 0, "rucio", "scope"],
        ),
        (
            command_request("true", data=[{"kind": kinds.DATA_S3, "endpoint": "http://s3"}]),
            ["data", 0, "bucket"],
        ),
        (command_request("true", storage=[{"destination": "ftp://x/y"}]), ["storage", 0, "destination"]),
    ],
)
def test_malformed_requests_name_the_field(http: httpx.Client, body: dict, loc: list) -> None:
    response = offers(http, body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["status"] == 400
    assert any(detail["loc"][: len(loc)] == loc for detail in error["details"]), error


def test_a_digest_yaml_read_as_a_number_says_to_quote_it(http: httpx.Client) -> None:
    # `value: 0123…` unquoted in a YAML request arrives as a number, without its leading zero.
    data = [{"location": "http://127.0.0.1:9/cube.fits", "checksum": {"type": "md5", "value": 1234567890}}]
    response = offers(http, command_request("true", data=data))
    assert response.status_code == 400, response.text
    assert "put it in quotes" in response.json()["message"]
    assert response.json()["details"][0]["loc"] == ["data", 0, "checksum", "value"]


@pytest.mark.parametrize(
    ("body", "kind", "words"),
    [
        ({"schedule": {"requested": {"duration": "PT1H"}}}, "urn:executable-required", "no executable"),
        (
            command_request("true", compute={"cores": {"min": 1000}}),
            "urn:resource-limit",
            "more than platform",
        ),
        (command_request("true", duration="P30D"), "urn:resource-limit", "maximum P1D"),
        (
            {"executable": {"kind": kinds.DOCKER, "image": {"locations": ["alpine"]}}},
            "urn:not-supported",
            "docker",
        ),
        ({"executable": {"kind": "urn:made-up"}}, "uri:unknown-type", "urn:made-up"),
        (
            command_request(
                "true", data=[{"kind": kinds.DATA_RUCIO, "rucio": {"scope": "s", "object": "o"}}]
            ),
            "urn:not-supported",
            "rucio",
        ),
        (command_request("true", data=[{"location": "ftp://example.org/x"}]), "uri:unknown-url", "ftp"),
        (
            command_request("true", data=[{"location": "http://127.0.0.1/x", "storage": "nope"}]),
            "urn:resource-not-found",
            "nope",
        ),
        (
            {**command_request("true"), "schedule": {"requested": {"start": "2020-01-01/PT1H"}}},
            "urn:start-in-past",
            "2020-01-01",
        ),
    ],
)
def test_unsatisfiable_requests_are_no_with_rendered_messages(
    http: httpx.Client, body: dict, kind: str, words: str
) -> None:
    response = offers(http, body)
    assert response.status_code == 303
    offerset = response.json()
    assert offerset["result"] == "NO"
    assert offerset["offers"] == []
    found = [m for m in offerset["meta"]["messages"] if m["kind"] == kind]
    assert found, offerset["meta"]["messages"]
    assert words.lower() in found[0]["message"].lower()
    assert found[0]["template"] and found[0]["values"] and found[0]["level"] in ("ERROR", "WARN")


def test_older_kind_families_are_accepted(http: httpx.Client) -> None:
    body = command_request(
        "true",
        compute={
            "kind": "https://www.purl.org/ivoa.net/EB/schema/v1.0/types/compute/simple-compute-resource-1.0",
            "cores": {"min": 2},
        },
    )
    offerset = offers(http, body).json()
    assert offerset["result"] == "YES"
    assert offerset["offers"][0]["compute"]["kind"] == kinds.COMPUTE
    assert offerset["offers"][0]["compute"]["cores"] == {"min": 2, "max": 2}


def test_unknown_fields_are_reported_not_dropped(http: httpx.Client) -> None:
    body = command_request("true")
    body["executable"]["comand"] = ["oops"]
    offerset = offers(http, body).json()
    assert any("executable.comand" in m["message"] for m in offerset["meta"]["messages"])


def test_offers_honour_the_requested_window_sizes_and_maximum(http: httpx.Client) -> None:
    start = datetime.now(UTC) + timedelta(hours=2)
    body = command_request(
        "true", duration="PT30M", compute={"cores": {"min": 2, "max": 4}, "memory": {"min": 1, "max": 2}}
    )
    body["schedule"]["requested"]["start"] = f"{format_instant(start)}/PT1H"
    offerset = offers(http, body).json()
    assert offerset["result"] == "YES"
    for offer in offerset["offers"]:
        begins = parse_instant(offer["schedule"]["available"]["start"].split("/")[0])
        assert start - timedelta(seconds=1) <= begins <= start + timedelta(hours=1)
        assert 2 <= offer["compute"]["cores"]["min"] <= 4
        assert offer["compute"]["memory"]["max"] <= 2
        assert offer["schedule"]["available"]["duration"] == "PT30M"
    starts = [o["schedule"]["available"]["start"] for o in offerset["offers"]]
    assert len(set(starts)) == len(starts)  # one slot per offer


def test_capacity_is_held_by_offers_and_freed_by_reject(http: httpx.Client) -> None:
    whole = command_request("true", duration="PT1H", compute={"cores": {"min": 8}})
    whole["schedule"]["requested"]["start"] = f"{format_instant(datetime.now(UTC))}/PT10M"
    first = offers(http, whole).json()
    assert first["result"] == "YES"
    second = offers(http, whole).json()
    assert second["result"] == "NO"  # the first set's offers hold the whole platform in that window
    assert any(m["kind"] == "urn:no-capacity" for m in second["meta"]["messages"])
    for offer in first["offers"]:
        assert http.post(f"sessions/{offer['meta']['uuid']}", json=accept("REJECTED")).status_code == 200
    assert offers(http, whole).json()["result"] == "YES"


def test_accept_runs_the_session_to_completion(http: httpx.Client) -> None:
    offerset = offers(
        http, command_request("sh", "-c", "echo out; echo err >&2; echo data > result.txt")
    ).json()
    chosen, *others = offerset["offers"]
    response = http.post(f"sessions/{chosen['meta']['uuid']}", json=accept())
    assert response.status_code == 200
    assert response.json()["phase"] in (
        "ACCEPTED",
        "WAITING",
        "PREPARING",
        "AVAILABLE",
        "RELEASING",
        "COMPLETED",
    )
    assert response.json()["meta"]["options"][0]["values"] == ["CANCELLED"]
    for other in others:
        assert http.get(f"sessions/{other['meta']['uuid']}").json()["phase"] == "REJECTED"
    done = wait_for_phase(http, chosen["meta"]["uuid"])
    assert done["phase"] == "COMPLETED", done
    assert done["executable"]["phase"] == "COMPLETED" and done["compute"]["phase"] == "COMPLETED"
    assert "options" not in done["meta"] or done["meta"]["options"] == []
    uuid = chosen["meta"]["uuid"]
    assert http.get(f"sessions/{uuid}/logs").text == "out\n"
    following = http.get(f"sessions/{uuid}/logs", params={"offset": 2})
    assert following.text == "t\n" and following.headers["x-log-size"] == "4"
    assert http.get(f"sessions/{uuid}/logs", params={"stream": "stderr"}).text == "err\n"
    files = {f["path"] for f in http.get(f"sessions/{uuid}/files").json()["files"]}
    assert {"result.txt", "logs/stdout.txt"} <= files
    assert http.get(f"sessions/{uuid}/files/result.txt").text == "data\n"
    assert http.get(f"sessions/{uuid}/files/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert http.get(f"sessions/{uuid}/files/.ecliptic/launch.json").status_code == 404
    assert http.get(f"executions/{uuid}").json()["phase"] == "COMPLETED"  # alias
    assert http.get(f"compute/{done['compute']['meta']['uuid']}").json()["phase"] == "COMPLETED"


def test_non_zero_exit_fails_with_the_code(http: httpx.Client) -> None:
    offerset = offers(http, command_request("sh", "-c", "exit 3")).json()
    uuid = offerset["offers"][0]["meta"]["uuid"]
    http.post(f"sessions/{uuid}", json=accept())
    done = wait_for_phase(http, uuid)
    assert done["phase"] == "FAILED"
    failed = [m for m in done["meta"]["messages"] if m["kind"] == "urn:ecliptic:session-failed"]
    assert failed and failed[0]["values"]["code"] == "3"


def test_a_missing_program_fails_before_compute(http: httpx.Client) -> None:
    offerset = offers(http, command_request("no-such-program-here")).json()
    uuid = offerset["offers"][0]["meta"]["uuid"]
    http.post(f"sessions/{uuid}", json=accept())
    done = wait_for_phase(http, uuid)
    assert done["phase"] == "FAILED"
    assert done["executable"]["phase"] == "FAILED"
    assert "no-such-program-here" in done["meta"]["messages"][-1]["message"]


def test_illegal_transitions_are_409_with_the_session(http: httpx.Client) -> None:
    uuid = offers(http, command_request("true")).json()["offers"][0]["meta"]["uuid"]
    assert http.post(f"sessions/{uuid}", json=accept("REJECTED")).status_code == 200
    response = http.post(f"sessions/{uuid}", json=accept())
    assert response.status_code == 409
    error = response.json()
    assert "REJECTED" in error["message"] and error["session"]["phase"] == "REJECTED"


def test_bad_updates_are_400_and_unknown_sessions_404(http: httpx.Client) -> None:
    uuid = offers(http, command_request("true")).json()["offers"][0]["meta"]["uuid"]
    for body, field in (
        ({"kind": "uri:enum-value-update", "path": "phase", "value": "DANCING"}, "value"),
        ({"kind": "uri:enum-value-update", "path": "cores", "value": "ACCEPTED"}, "path"),
        ({"kind": "uri:integer-delta-update", "path": "phase", "value": "ACCEPTED"}, "kind"),
        ({"path": "phase"}, "value"),
    ):
        response = http.post(f"sessions/{uuid}", json=body)
        assert response.status_code == 400, body
        assert response.json()["details"][0]["loc"][-1] == field
    assert http.get("sessions/not-a-uuid").status_code == 400
    missing = "00000000-0000-4000-8000-000000000000"
    for path in (
        f"sessions/{missing}",
        f"offersets/{missing}",
        f"sessions/{missing}/logs",
        f"data/{missing}",
    ):
        response = http.get(path)
        assert response.status_code == 404 and response.json()["message"]
    assert http.post(f"sessions/{missing}", json=accept()).status_code == 404
    assert http.get("sessions", params={"phase": "SOMETIMES"}).status_code == 400


def test_cancel_really_stops_the_work(http: httpx.Client, server: LiveServer, tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    offerset = offers(http, command_request("sh", "-c", f"echo $$ > {marker}; exec sleep 300")).json()
    uuid = offerset["offers"][0]["meta"]["uuid"]
    http.post(f"sessions/{uuid}", json=accept())
    wait_for_phase(http, uuid, {"AVAILABLE"})
    for _ in range(300):
        if marker.exists() and marker.read_text().strip():
            break
        time.sleep(0.1)
    pid = int(marker.read_text())
    cancelled = http.post(f"sessions/{uuid}", json=accept("CANCELLED"))
    assert cancelled.status_code == 200 and cancelled.json()["phase"] == "CANCELLED"
    wait_until_gone(pid, "the cancelled session's process")
    final = wait_for_component(http, uuid, "compute", "CANCELLED")
    cancelled_note = [m for m in final["meta"]["messages"] if m["kind"] == "urn:ecliptic:session-cancelled"]
    assert cancelled_note and "cancelled by the client" in cancelled_note[0]["message"]
    assert all(booking.session_uuid != uuid for booking in server.broker.capacity_in_use())


def test_direct_execution(http: httpx.Client) -> None:
    response = http.post("direct", json=command_request("echo", "direct"))
    assert response.status_code == 303
    session = response.json()
    # Read back after the commit, so the workers may already have moved it on.
    assert session["phase"] in ("ACCEPTED", "WAITING", "PREPARING", "AVAILABLE", "RELEASING", "COMPLETED")
    assert response.headers["location"].endswith(f"sessions/{session['meta']['uuid']}")
    assert wait_for_phase(http, session["meta"]["uuid"])["phase"] == "COMPLETED"
    assert http.get(f"sessions/{session['meta']['uuid']}/logs").text == "direct\n"
    refused = http.post("sessions", json=command_request("true", compute={"cores": {"min": 999}}))
    assert refused.status_code == 400
    failed = refused.json()
    assert failed["phase"] == "FAILED" and failed["meta"]["uuid"]
    assert failed["meta"]["messages"][0]["kind"] == "urn:resource-limit"


def test_openapi_is_published(http: httpx.Client) -> None:
    spec = http.get("openapi.json").json()
    assert {"/requests", "/offersets", "/offersets/{uuid}", "/sessions/{uuid}", "/direct"} <= set(
        spec["paths"]
    )
    assert "ExecutionRequest" in spec["components"]["schemas"]


def test_waiting_then_cancelled_before_it_starts(http: httpx.Client) -> None:
    start = datetime.now(UTC) + timedelta(hours=1)
    body = command_request("true")
    body["schedule"]["requested"]["start"] = f"{format_instant(start)}/PT1H"
    uuid = offers(http, body).json()["offers"][0]["meta"]["uuid"]
    http.post(f"sessions/{uuid}", json=accept())
    waiting = wait_for_phase(http, uuid, {"WAITING"})
    assert waiting["compute"]["phase"] == "WAITING"
    assert http.post(f"sessions/{uuid}", json=accept("CANCELLED")).json()["phase"] == "CANCELLED"
    final = wait_for_phase(http, uuid, {"CANCELLED"})
    history = http.get(f"sessions/{uuid}/history").json()["history"]
    sessions_changes = [(h["from"], h["to"]) for h in history if h["component"] is None]
    assert sessions_changes[:3] == [
        ("OFFERED", "ACCEPTED"),
        ("ACCEPTED", "WAITING"),
        ("WAITING", "CANCELLED"),
    ]
    assert all(h["reason"] for h in history if h["to"] == "CANCELLED")
    assert final["phase"] == "CANCELLED"
    # The components end in the step after the session's phase changed: wait for that step.
    wait_for_component(http, uuid, "executable", "CANCELLED")


def test_a_client_may_fail_a_running_session_with_a_reason(http: httpx.Client) -> None:
    uuid = offers(http, command_request("sleep", "300")).json()["offers"][0]["meta"]["uuid"]
    http.post(f"sessions/{uuid}", json=accept())
    wait_for_phase(http, uuid, {"AVAILABLE"})
    update = {**accept("FAILED"), "reason": "the input was wrong"}
    assert http.post(f"sessions/{uuid}", json=update).json()["phase"] == "FAILED"
    final = wait_for_component(http, uuid, "compute", "FAILED")
    assert any("the input was wrong" in m["message"] for m in final["meta"]["messages"])
    assert http.get("sessions/00000000-0000-4000-8000-000000000000/history").status_code == 404


def test_a_past_window_among_open_ones_is_passed_over_with_a_warning(http: httpx.Client) -> None:
    later = format_instant(datetime.now(UTC) + timedelta(hours=2))
    body = command_request("true")
    body["schedule"]["requested"]["start"] = ["2020-01-01/PT1H", f"{later}/PT1H"]
    offerset = offers(http, body).json()
    assert offerset["result"] == "YES"
    warning = [m for m in offerset["meta"]["messages"] if m["kind"] == "urn:start-in-past"]
    assert warning and warning[0]["level"] == "WARN" and "2020-01-01" in warning[0]["message"]
    assert warning[0]["values"]["path"] == "schedule.requested.start.0"
