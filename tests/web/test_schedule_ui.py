"""The scheduler's pages in a real headless Chromium: create from YAML, trigger, watch the run, see the picture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import LiveServer
from tests.schedule.test_api import wait_for_run

SCHEDULE = """\
name: greet
namespace: astro
description: Say hello on weekday mornings
trigger:
  cron: "0 9 * * 1-5"
timezone: Europe/Vienna
run:
  python: print("hello from the browser")
"""


def test_create_trigger_and_watch_a_schedule(ui_server: LiveServer, page: Any, tmp_path: Path) -> None:
    page.goto(f"{ui_server.url}ui/schedules")
    assert page.locator("header nav a", has_text="Schedules").count() == 1
    page.fill("#schedule-text", SCHEDULE)
    page.click("#create-schedule")
    page.wait_for_function("document.querySelector('#schedule-form-status').textContent.includes('created')")
    row = page.locator("tr[data-name='greet']")
    row.wait_for()
    assert page.locator("section[data-namespace='astro'] h2").inner_text() == "Namespace astro"
    description = row.locator("td.description").inner_text()
    assert "09:00" in description and "(Europe/Vienna)" in description, description
    assert "in " in row.inner_text()  # the next fire, relative

    row.locator("button[data-action='trigger']").click()
    page.wait_for_function("document.querySelector('#schedule-action-status').textContent.includes('run ')")
    page.wait_for_selector("tr[data-name='greet'] .outcome-succeeded")
    page.screenshot(path=str(tmp_path / "schedules.png"), full_page=True)

    row.locator("a", has_text="greet").click()
    page.wait_for_url("**/ui/schedules/*")
    page.wait_for_selector("table.runs .outcome-succeeded")
    assert page.locator("svg.timeline rect.bar.run-succeeded").count() == 1
    assert page.locator("ol.fire-times li").count() == 10
    assert "cron: 0 9 * * 1-5" in page.inner_text("#schedule-spec")
    page.locator("table.runs details summary").first.click()
    assert "hello from the browser" in page.locator("table.runs pre.stdout").first.inner_text()
    page.wait_for_timeout(1500)  # a refresh of the page keeps the output open
    assert page.locator("table.runs details[open]").count() == 1
    page.screenshot(path=str(tmp_path / "schedule.png"), full_page=True)

    page.click("button[data-action='pause']")
    page.wait_for_function("document.querySelector('#schedule-state').textContent.trim() === 'paused'")
    page.click("button[data-action='resume']")
    page.wait_for_function("document.querySelector('#schedule-state').textContent.trim() === 'active'")


def test_the_timeline_shows_outcomes_and_missed_runs(
    ui_server: LiveServer, page: Any, tmp_path: Path
) -> None:
    with httpx.Client(base_url=ui_server.url, timeout=30) as http:
        view = http.post(
            "schedules",
            json={
                "name": "flaky",
                "trigger": {"cron": "*/10 * * * *"},
                "run": {"python": "import sys; sys.exit(0)"},
            },
        ).json()
        ok = http.post(f"schedules/{view['id']}/trigger").json()
        wait_for_run(http, ok["id"])  # else the next trigger overlaps it, and overlap: skip skips it
        http.patch(f"schedules/{view['id']}", json={"run": {"python": "import sys; sys.exit(3)"}})
        bad = http.post(f"schedules/{view['id']}/trigger").json()
    page.goto(f"{ui_server.url}ui/schedules/{view['id']}")
    page.wait_for_selector(f"#run-{bad['id']} .outcome-failed")
    page.wait_for_selector(f"#run-{ok['id']} .outcome-succeeded")
    page.wait_for_selector("svg.timeline rect.bar.run-failed")
    assert page.locator(f"#run-{bad['id']} td").nth(7).inner_text() == "3"
    legend = page.locator("svg.timeline").text_content() or ""
    assert "succeeded 1" in legend and "failed 1" in legend
    page.screenshot(path=str(tmp_path / "timeline.png"), full_page=True)


def test_a_bad_schedule_says_what_is_wrong_next_to_the_form(ui_server: LiveServer, page: Any) -> None:
    page.goto(f"{ui_server.url}ui/schedules")
    page.fill("#schedule-text", "name: [unclosed")
    page.click("#create-schedule")
    page.wait_for_function(
        "document.querySelector('#schedule-form-status').textContent.includes('not valid YAML')"
    )
    page.fill("#schedule-text", SCHEDULE.replace("Europe/Vienna", "Mars/Olympus"))
    page.click("#create-schedule")
    page.wait_for_selector("#schedule-errors li")
    assert "timezone" in page.inner_text("#schedule-errors")
    assert "IANA" in page.inner_text("#schedule-errors")
    assert page.locator("#no-schedules").count() == 1  # nothing was created
    page.fill("#schedule-text", SCHEDULE)
    page.click("#preview-schedule")
    page.wait_for_selector("#schedule-preview li")
    assert page.locator("#schedule-preview li").count() == 10
    assert page.locator("#no-schedules").count() == 1  # a preview creates nothing


def test_an_unknown_schedule_is_a_page_that_says_so(ui_server: LiveServer, page: Any) -> None:
    response = page.goto(f"{ui_server.url}ui/schedules/00000000-0000-4000-8000-000000000000")
    assert response is not None and response.status == 404
    assert "There is no schedule 00000000-0000-4000-8000-000000000000" in page.inner_text("main")
