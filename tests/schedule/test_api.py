"""The scheduler's HTTP API end to end, over a real loopback server, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import yaml

from ecliptic.isotime import format_instant, parse_instant
from tests.conftest import LiveServer

VIENNA = ZoneInfo("Europe/Vienna")
FINAL = {"succeeded", "failed", "timed_out", "missed", "skipped", "cancelled", "interrupted"}


def spec(name: str = "greet", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "trigger": {"cron": "0 9 * * 1-5"},
        "timezone": "Europe/Vienna",
        "run": {"python": "print('hi')"},
    }
    body.update(extra)
    return body


def create(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post("schedules", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def next_local(hour: int, minute: int, weekdays: set[int], after: datetime) -> datetime:
    """The next local wall time ``hour:minute`` on one of ``weekdays`` (Monday 0) in Vienna, as UTC."""
    day = after.astimezone(VIENNA).date()
    for offset in range(8):
        candidate = datetime.combine(day + timedelta(days=offset), datetime.min.time(), VIENNA).replace(
            hour=hour, minute=minute
        )
        if candidate.weekday() in weekdays and candidate > after:
            return candidate.astimezone(UTC)
    raise AssertionError("no time within a week")


def wait_for_run(
    http: httpx.Client, run_id: int, states: set[str] = FINAL, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(f"runs/{run_id}")
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        if run["state"] in states:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} is still {run['state']} after {timeout} s")
        time.sleep(0.05)


def assert_error(
    response: httpx.Response, status: int, loc: list[Any] | None = None, words: str = ""
) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status
    assert set(body) >= {"status", "error", "message", "details"}
    assert words.lower() in body["message"].lower(), body
    if loc is not None:
        assert any(d["loc"][: len(loc)] == loc for d in body["details"]), body


# -- schedules ----------------------------------------------------------------------------------------------


def test_create_get_by_id_and_by_name_and_list(http: httpx.Client) -> None:
    before = datetime.now(UTC)
    response = http.post("schedules", json=spec(description="Good morning"))
    assert response.status_code == 201, response.text
    view = response.json()
    assert response.headers["location"] == f"{http.base_url}schedules/{view['id']}"
    assert view["namespace"] == "default" and view["name"] == "greet"
    assert view["paused"] is False and view["fires"] == 0
    assert "09:00" in view["description"]
    assert parse_instant(view["next_fire_at"]) == next_local(9, 0, {0, 1, 2, 3, 4}, before)
    assert view["spec"]["run"] == {"python": "print('hi')"}

    by_id = http.get(f"schedules/{view['id']}")
    by_name = http.get("schedules/default/greet")
    assert by_id.status_code == by_name.status_code == 200
    assert by_id.json()["id"] == by_name.json()["id"] == view["id"]
    assert http.get("schedules/greet").json()["id"] == view["id"]  # a name unique across namespaces

    other = create(http, spec("tidy", namespace="chores", trigger={"every": "1h"}))
    assert other["namespace"] == "chores"
    listed = http.get("schedules").json()
    assert [(s["namespace"], s["name"]) for s in listed] == [("chores", "tidy"), ("default", "greet")]
    assert [s["name"] for s in http.get("schedules", params={"namespace": "chores"}).json()] == ["tidy"]
    namespaces = {n["name"]: n for n in http.get("namespaces").json()}
    assert namespaces["chores"]["schedules"] == 1 and namespaces["default"]["schedules"] == 1


def test_yaml_in_and_out(http: httpx.Client) -> None:
    text = yaml.safe_dump(spec("yamlish", namespace="ops"))
    response = http.post(
        "schedules", content=text, headers={"Content-Type": "application/yaml", "Accept": "application/yaml"}
    )
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/yaml")
    view = yaml.safe_load(response.text)
    assert view["namespace"] == "ops" and view["spec"]["trigger"] == {"cron": "0 9 * * 1-5"}
    listed = yaml.safe_load(http.get("schedules", headers={"Accept": "text/yaml"}).text)
    assert [s["name"] for s in listed] == ["yamlish"]
    written = """\
name: shorthand
trigger: {every: 10m}
run: {cmd: [echo, hello]}
"""
    response = http.post("schedules", content=written, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["trigger"]["every"] == "PT10M"


def test_put_replaces_the_spec_and_moves_the_next_fire_at_once(http: httpx.Client) -> None:
    view = create(http, spec())
    before = datetime.now(UTC)
    response = http.put(f"schedules/{view['id']}", json=spec(trigger={"cron": "30 10 * * *"}))
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["spec"]["trigger"] == {"cron": "30 10 * * *"}
    assert parse_instant(updated["next_fire_at"]) == next_local(10, 30, set(range(7)), before)
    assert http.get("schedules/default/greet").json()["next_fire_at"] == updated["next_fire_at"]
    by_name = http.put("schedules/default/greet", json=spec(description="by name"))
    assert by_name.status_code == 200 and by_name.json()["spec"]["description"] == "by name"
    moved = http.put(f"schedules/{view['id']}", json=spec(namespace="elsewhere"))
    assert_error(moved, 400, ["namespace"], "another namespace")


def test_patch_is_a_merge_patch(http: httpx.Client) -> None:
    view = create(http, spec(labels={"team": "astro", "tier": "2"}))
    response = http.patch(
        f"schedules/{view['id']}",
        content=json.dumps({"labels": {"tier": None, "site": "vienna"}, "timeout": "5m"}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200, response.text
    patched = response.json()["spec"]
    assert patched["labels"] == {"team": "astro", "site": "vienna"}
    assert patched["timeout"] == "PT5M"
    assert patched["trigger"] == {"cron": "0 9 * * 1-5"} and patched["run"] == {"python": "print('hi')"}
    # A trigger of another kind replaces the old one instead of merging into it.
    response = http.patch("schedules/default/greet", json={"trigger": {"every": "30s"}})
    assert response.status_code == 200, response.text
    assert response.json()["spec"]["trigger"] == {"every": "PT30S", "mode": "rate"}
    bad = http.patch(f"schedules/{view['id']}", json={"timezone": "Mars/Olympus"})
    assert_error(bad, 400, ["timezone"], "IANA")
    assert http.get(f"schedules/{view['id']}").json()["spec"]["timezone"] == "Europe/Vienna"


def test_pause_and_resume(http: httpx.Client) -> None:
    view = create(http, spec())
    paused = http.post(f"schedules/{view['id']}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused"] is True and "next_fire_at" not in paused.json()
    assert http.get("schedules/default/greet").json()["paused"] is True
    resumed = http.post("schedules/default/greet/resume")
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    assert resumed.json()["next_fire_at"] == view["next_fire_at"]
    audit = http.get("audit", params={"namespace": "default"}).json()
    assert [a["action"] for a in audit][:3] == ["resume", "pause", "create"]
    assert audit[0]["actor"] == "http:127.0.0.1"


def test_trigger_runs_now_and_succeeds(http: httpx.Client) -> None:
    view = create(http, spec(paused=True))
    response = http.post(f"schedules/{view['id']}/trigger", headers={"X-Ecliptic-Actor": "alice"})
    assert response.status_code == 202, response.text
    run = response.json()
    assert run["cause"] == "manual" and run["schedule"] == "greet" and run["attempt"] == 1
    assert response.headers["location"] == f"{http.base_url}runs/{run['id']}"
    done = wait_for_run(http, run["id"])
    assert done["state"] == "succeeded", done
    assert done["exit_code"] == 0 and "hi" in done["stdout_tail"]
    assert done["duration_s"] >= 0
    runs = http.get("schedules/default/greet/runs").json()
    assert [r["id"] for r in runs] == [run["id"]]
    assert [r["id"] for r in http.get("runs", params={"state": "succeeded"}).json()] == [run["id"]]
    assert http.get("runs", params={"namespace": "nowhere"}).json() == []
    assert http.get("schedules/greet").json()["last_run"]["state"] == "succeeded"
    assert http.get("audit").json()[0]["actor"] == "alice"
    ended = http.post(f"runs/{run['id']}/cancel")
    assert_error(ended, 409, None, "ended already")


def backfill_two_sleepers(http: httpx.Client) -> list[dict[str, Any]]:
    """Two past fire times of a 30 s job: the first runs, the second waits for it."""
    view = create(http, spec(trigger={"cron": "0 * * * *"}, run={"cmd": ["sleep", "30"]}))
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    span = {
        "start": format_instant(hour - timedelta(hours=2)),
        "end": format_instant(hour - timedelta(hours=1)),
    }
    runs = http.post(f"schedules/{view['id']}/backfill", json=span).json()
    runs.sort(key=lambda r: r["scheduled_at"])
    wait_for_run(http, runs[0]["id"], {"running"})
    return runs


def test_cancel_a_waiting_run_and_a_running_one(http: httpx.Client) -> None:
    first, second = backfill_two_sleepers(http)
    # A scheduler owns the schedule, so it decides (it may be starting the run this instant): 202, then cancelled.
    waiting = http.post(f"runs/{second['id']}/cancel")
    assert waiting.status_code == 202, waiting.text
    assert waiting.json()["state"] == "cancelling"
    done = wait_for_run(http, second["id"])
    assert done["state"] == "cancelled" and "before it started" in done["error"], done
    running = http.post(f"runs/{first['id']}/cancel")
    assert running.status_code == 202, running.text
    assert running.json()["state"] == "cancelling"
    assert wait_for_run(http, first["id"])["state"] == "cancelled"
    assert_error(http.post(f"runs/{first['id']}/cancel"), 409, None, "ended already")


def test_a_cancelled_waiting_run_never_starts(http: httpx.Client) -> None:
    first, second = backfill_two_sleepers(http)
    assert http.post(f"runs/{second['id']}/cancel").status_code == 202
    assert http.post(f"runs/{first['id']}/cancel").status_code == 202
    wait_for_run(http, first["id"])
    time.sleep(1)
    assert http.get(f"runs/{second['id']}").json()["state"] == "cancelled"


def test_backfill_runs_the_past_fire_times(http: httpx.Client) -> None:
    view = create(http, spec(trigger={"cron": "0 * * * *"}))
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start, end = hour - timedelta(hours=3), hour - timedelta(hours=1)
    response = http.post(
        "schedules/default/greet/backfill", json={"start": format_instant(start), "end": format_instant(end)}
    )
    assert response.status_code == 202, response.text
    runs = response.json()
    assert sorted(parse_instant(r["scheduled_at"]) for r in runs) == [
        start + timedelta(hours=h) for h in range(3)
    ]
    assert {r["cause"] for r in runs} == {"backfill"}
    again = http.post(
        f"schedules/{view['id']}/backfill", json={"start": format_instant(start), "end": format_instant(end)}
    )
    assert again.status_code == 202 and again.json() == []  # each fire time runs once
    for run in runs:
        assert wait_for_run(http, run["id"])["state"] in FINAL


def test_preview_of_a_schedule(http: httpx.Client) -> None:
    view = create(http, spec())
    response = http.get(f"schedules/{view['id']}/preview", params={"count": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["times"]) == len(body["local"]) == 5
    assert body["timezone"] == "Europe/Vienna" and "09:00" in body["description"]
    first = parse_instant(body["times"][0])
    assert first == parse_instant(view["next_fire_at"])
    assert body["times"][0].endswith("Z")
    assert datetime.fromisoformat(body["local"][0]).strftime("%H:%M") == "09:00"
    assert all(datetime.fromisoformat(t).weekday() < 5 for t in body["local"])
    assert http.get("schedules/default/greet/preview").json()["times"][0] == body["times"][0]


def test_preview_without_a_schedule(http: httpx.Client) -> None:
    response = http.post("preview", json={"when": "0 9 * * 1-5", "timezone": "Europe/Vienna", "count": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["times"]) == 3 and "09:00" in body["description"]
    for utc, local in zip(body["times"], body["local"], strict=True):
        assert utc.endswith("Z")
        assert local.endswith(("+01:00", "+02:00"))
        assert parse_instant(utc) == datetime.fromisoformat(local)
    seconds = http.post("preview", json={"when": "* * * * *", "second": "*/15", "count": 4}).json()
    steps = [parse_instant(t) for t in seconds["times"]]
    assert {b - a for a, b in itertools.pairwise(steps)} == {timedelta(seconds=15)}
    trigger = http.post(
        "preview",
        content="trigger: {rrule: 'FREQ=WEEKLY;BYDAY=MO;BYHOUR=8;BYMINUTE=0;BYSECOND=0'}\ntimezone: America/New_York\n",
        headers={"Content-Type": "application/yaml"},
    )
    assert trigger.status_code == 200, trigger.text
    for local in trigger.json()["local"]:
        moment = datetime.fromisoformat(local)
        assert moment.weekday() == 0 and moment.hour == 8
    assert http.get("schedules").json() == []  # nothing was created


def test_delete(http: httpx.Client) -> None:
    view = create(http, spec())
    run = http.post(f"schedules/{view['id']}/trigger").json()
    wait_for_run(http, run["id"])
    response = http.delete(f"schedules/{view['id']}")
    assert response.status_code == 204 and response.content == b""
    assert_error(http.get(f"schedules/{view['id']}"), 404, None, "no schedule")
    assert_error(http.get("schedules/default/greet"), 404, None, "no schedule")
    assert_error(http.delete("schedules/default/greet"), 404)
    assert http.get("audit").json()[0]["action"] == "delete"
    create(http, spec())  # the name is free again
    assert http.delete("schedules/default/greet").status_code == 204


def test_a_schedule_named_like_a_sub_resource_is_reachable(http: httpx.Client) -> None:
    runs = create(http, spec("runs", namespace="reports"))
    assert http.get("schedules/reports/runs").json()["id"] == runs["id"]
    assert http.get(f"schedules/{runs['id']}/runs").json() == []
    assert http.get("schedules/reports/runs/runs").json() == []


# -- bad input ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadSpec:
    body: dict[str, Any]
    loc: list[str | int]
    words: str
    id: str


BAD_SPECS = [
    BadSpec({**spec(), "colour": "blue"}, ["colour"], "unknown field", id="unknown-field"),
    BadSpec(spec(trigger={"cron": "61 * * * *"}), ["trigger", "cron"], "out of range", id="bad-cron"),
    BadSpec(spec(trigger={"cron": "0 9 * *"}), ["trigger", "cron"], "5", id="short-cron"),
    BadSpec(spec(trigger={"cron": "* * * * *", "second": "99"}), ["trigger", "second"], "", id="bad-second"),
    BadSpec(spec(trigger={"rrule": "FREQ=SOMETIMES"}), ["trigger", "rrule"], "FREQ", id="bad-rrule"),
    BadSpec(spec(exclude=[{"cron": "99 * * * *"}]), ["exclude", 0, "cron"], "", id="bad-exclusion"),
    BadSpec(spec(start="2026-01-02", end="2026-01-01"), ["end"], "before start", id="bad-window"),
    BadSpec(
        spec(trigger={"cron": "0 9 * * *", "when": "x"}), ["trigger", "when"], "unknown", id="trigger-field"
    ),
    BadSpec(spec(trigger={"every": "soon"}), ["trigger", "every"], "duration", id="bad-interval"),
    BadSpec(spec(trigger={"at": "noon"}), ["trigger"], "once, every, cron, rrule", id="no-trigger-kind"),
    BadSpec(spec(timezone="Mars/Olympus"), ["timezone"], "IANA", id="bad-zone"),
    BadSpec(spec(name="no spaces"), ["name"], "not a schedule name", id="bad-name"),
    BadSpec(spec(run={"cmd": []}), ["run", "cmd"], "empty", id="empty-command"),
    BadSpec(spec(retry={"max": -1}), ["retry", "max"], "", id="bad-retry"),
    BadSpec(spec(jitter=-5), ["jitter"], "negative", id="negative-duration"),
    BadSpec({"name": "x", "run": {"python": "1"}}, ["trigger"], "required", id="no-trigger"),
]


def test_invalid_schedules_name_the_field(http: httpx.Client) -> None:
    for case in BAD_SPECS:
        response = http.post("schedules", json=case.body)
        assert response.status_code == 400, (case.id, response.text)
        assert_error(response, 400, case.loc)
        body = response.json()
        assert any(
            case.words.lower() in d["msg"].lower()
            for d in body["details"]
            if d["loc"][: len(case.loc)] == case.loc
        ), (case.id, body)
    for case in BAD_SPECS:  # a schedule that is refused is refused whole in a preview too
        if case.loc[0] in ("trigger", "timezone", "exclude", "end"):
            assert_error(http.post("preview", json=case.body), 400, case.loc)
    assert http.get("schedules").json() == []


def test_bad_cron_message_names_the_field(http: httpx.Client) -> None:
    response = http.post("schedules", json=spec(trigger={"cron": "61 * * * *"}))
    assert_error(response, 400, ["trigger", "cron"], "trigger.cron")
    assert "minute 61" in response.json()["message"]
    preview = http.post("preview", json={"when": "0 25 * * *"})
    assert_error(preview, 400, ["when"], "hour 25")


def test_unreadable_bodies_are_400(http: httpx.Client) -> None:
    for content, content_type, words in [
        ('{"name": ', "application/json", "not valid JSON"),
        ("name: [unclosed", "application/yaml", "not valid YAML"),
        ("[1, 2]", "application/json", "must be a schedule"),
        ("just words", "application/yaml", "must be a schedule"),
        ("", "application/json", "no body"),
    ]:
        response = http.post("schedules", content=content, headers={"Content-Type": content_type})
        assert_error(response, 400, None, words)
        preview = http.post("preview", content=content, headers={"Content-Type": content_type})
        assert_error(preview, 400)


def test_refusals_are_4xx_in_the_error_shape(http: httpx.Client) -> None:
    view = create(http, spec())
    assert_error(http.post("schedules", json=spec()), 409, ["name"], "exists already")
    assert_error(http.get("schedules/nope"), 404, None, "no schedule")
    assert_error(http.get("schedules/default/nope"), 404, None, "no schedule")
    assert_error(http.post("schedules/default/nope/trigger"), 404)
    assert_error(http.put("schedules/nope", json=spec()), 404)
    assert_error(http.get("runs/424242"), 404, None, "no run")
    assert_error(http.post("runs/424242/cancel"), 404, None, "no run")
    assert_error(http.get("runs/abc"), 400, ["path", "run_id"])
    assert_error(http.get("runs", params={"state": "happy"}), 400, ["query", "state"], "not a run state")
    assert_error(http.get("runs", params={"limit": 0}), 400, ["query", "limit"])
    assert_error(http.get(f"schedules/{view['id']}/preview", params={"count": 0}), 400, ["query", "count"])
    backfill = f"schedules/{view['id']}/backfill"
    assert_error(
        http.post(backfill, json={"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}),
        400,
        ["end"],
        "ends before it starts",
    )
    assert_error(
        http.post(backfill, json={"start": "yesterday", "end": "2026-01-01T00:00:00Z"}), 400, ["start"]
    )
    assert_error(http.post(backfill, json={"start": "2026-01-01T00:00:00Z"}), 400, ["end"], "required")
    assert_error(
        http.post(backfill, json={"start": "2000-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}),
        400,
        ["end"],
        "shorter range",
    )
    assert_error(http.post("preview", json={"count": 3}), 400, ["trigger"], "give when")
    assert_error(http.post("preview", json={"when": "sometime"}), 400, ["when"])
    assert_error(http.post("preview", json={"when": "every 0s"}), 400, ["when"], "longer than zero")
    assert_error(http.post("preview", json={"when": "@daily", "timezone": "Nowhere/Land"}), 400, ["timezone"])
    assert_error(http.post("preview", json={"when": "@daily", "count": 5000}), 400, ["count"])
    assert_error(http.post("preview", json={"when": "every 10s", "second": "0"}), 400, ["second"])
    assert_error(http.post("preview", json={"when": "* * * * *", "second": "99"}), 400, ["second"], "99")
    xml = http.post("schedules", content="<schedule/>", headers={"Content-Type": "application/xml"})
    assert_error(xml, 415, None, "application/yaml")
    assert_error(http.get("schedules", headers={"Accept": "application/xml"}), 406)
    assert_error(http.post(f"schedules/{view['id']}/pause", headers={"Accept": "image/png"}), 406)
    assert http.get(f"schedules/{view['id']}").json()["paused"] is False  # a refused request changed nothing
    assert_error(http.post(f"schedules/{view['id']}"), 405)


def test_ambiguous_names_ask_for_the_namespace(http: httpx.Client) -> None:
    create(http, spec("twin", namespace="a"))
    create(http, spec("twin", namespace="b"))
    assert_error(http.get("schedules/twin"), 409, None, "namespace/name")
    assert http.get("schedules/b/twin").json()["namespace"] == "b"


def test_openapi_documents_the_schedule_models(http: httpx.Client) -> None:
    schema = http.get("openapi.json").json()
    components = schema["components"]["schemas"]
    assert {"ScheduleSpec", "BackfillRequest", "PreviewRequest", "ExecutionRequest"} <= set(components)
    assert "/schedules/{namespace}/{name}" in schema["paths"] and "/events" in schema["paths"]
    body = schema["paths"]["/schedules"]["post"]["requestBody"]["content"]
    assert body["application/yaml"]["schema"]["$ref"] == "#/components/schemas/ScheduleSpec"


# -- the event stream ---------------------------------------------------------------------------------------


def read_events(response: httpx.Response) -> Iterator[dict[str, str]]:
    """Server-sent events as dicts of their fields (comments are left out)."""
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")


def run_events_until(
    response: httpx.Response, run_id: int, state: str = "succeeded", timeout: float = 30
) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    seen = []
    for event in read_events(response):
        if event.get("event") == "run":
            seen.append(event)
            data = json.loads(event["data"])
            if data["id"] == run_id and data["state"] == state:
                return seen
        assert time.monotonic() < deadline, f"no {state} event for run {run_id} in {timeout} s: {seen}"
    raise AssertionError(f"the stream ended before run {run_id} was {state}: {seen}")


def test_events_stream_the_runs_and_resume(server: LiveServer, http: httpx.Client) -> None:
    watched = create(http, spec("watched"))
    other = create(http, spec("other"))
    timeout = httpx.Timeout(10, read=20)
    with httpx.Client(base_url=server.url, timeout=timeout) as streamer:
        with streamer.stream("GET", "events", params={"schedule": "watched"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            noise = http.post(f"schedules/{other['id']}/trigger").json()
            run = http.post(f"schedules/{watched['id']}/trigger").json()
            events = run_events_until(response, run["id"])
        runs = [json.loads(e["data"]) for e in events]
        assert {r["schedule"] for r in runs} == {"watched"}, (
            "the filter lets only the watched schedule through"
        )
        assert runs[-1]["state"] == "succeeded" and runs[-1]["stdout_tail"].strip() == "hi"
        assert all(e["id"] for e in events)
        wait_for_run(http, noise["id"])

        # Resuming from the first event's id gives the changes after it again, at once.
        with streamer.stream(
            "GET", "events", params={"namespace": "default"}, headers={"Last-Event-ID": events[0]["id"]}
        ) as response:
            again = run_events_until(response, run["id"], timeout=10)
        assert json.loads(again[-1]["data"])["state"] == "succeeded"

        bad = streamer.get("events", headers={"Last-Event-ID": "not a cursor"})
        assert_error(bad, 400, ["header", "last-event-id"])

    # The streams ended with their clients: nothing is left running on the server.
    deadline = time.monotonic() + 10
    while server.server.server_state.tasks and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.server.server_state.tasks


def test_events_show_a_run_start_and_end(server: LiveServer, http: httpx.Client) -> None:
    """An unfiltered stream sees a run running and then its outcome (this process's instance wakes the
    stream at each change, so even a short run shows both)."""
    view = create(http, spec(run={"python": "import time; time.sleep(0.3)"}))
    received: list[tuple[float, dict[str, Any]]] = []
    done = threading.Event()

    def listen() -> None:
        with (
            httpx.Client(base_url=server.url, timeout=httpx.Timeout(10, read=20)) as streamer,
            streamer.stream("GET", "events") as response,
        ):
            for event in read_events(response):
                if event.get("event") == "run":
                    received.append((time.monotonic(), json.loads(event["data"])))
                    if received[-1][1]["state"] in FINAL:
                        done.set()
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(0.5)
    run = http.post(f"schedules/{view['id']}/trigger").json()
    assert done.wait(30), received
    listener.join(10)
    states = [data["state"] for _, data in received if data["id"] == run["id"]]
    assert states[-1] == "succeeded" and "running" in states, states
