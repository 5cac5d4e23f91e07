"""The web UI in a real headless Chromium: ask for offers, accept, watch it run, read its output, cancel."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from typing import Any

from tests.conftest import LiveServer

REQUEST = """\
executable:
  kind: urn:ecliptic:executable:command
  command: [sh, -c, "{script}"]
schedule:
  requested:
    duration: PT5M
"""


def test_ask_accept_watch_and_read_output(ui_server: LiveServer, page: Any, tmp_path: Path) -> None:
    page.goto(f"{ui_server.url}ui/sessions")
    page.fill("#request-text", REQUEST.format(script="echo hello from the browser"))
    page.click("#ask")
    page.wait_for_selector(".offer button.accept")
    assert page.locator(".offer").count() >= 1
    page.locator(".offer button.accept").first.click()
    page.wait_for_url("**/ui/sessions/*")
    page.wait_for_function(
        "['COMPLETED', 'FAILED', 'CANCELLED'].includes(document.querySelector('#session-phase').textContent.trim())",
        timeout=90_000,
    )
    assert page.inner_text("#session-phase").strip() == "COMPLETED", page.inner_text("main")
    assert "hello from the browser" in page.inner_text("#stdout")
    assert "the executable exited with code 0" in page.inner_text("table.history")
    page.screenshot(path=str(tmp_path / "session.png"), full_page=True)
    page.goto(f"{ui_server.url}ui/sessions")
    assert page.locator("tbody .phase-completed").count() == 1


def test_bad_requests_say_what_is_wrong(ui_server: LiveServer, page: Any) -> None:
    page.goto(f"{ui_server.url}ui/sessions")
    page.fill("#request-text", "executable: [unclosed")
    page.click("#ask")
    page.wait_for_function("document.querySelector('#offer-status').textContent.includes('not valid YAML')")
    page.fill("#request-text", REQUEST.format(script="true").replace("PT5M", "P30D"))
    page.click("#ask")
    page.wait_for_selector("#offers .level-error")
    assert "maximum" in page.inner_text("#offers")


def test_cancel_from_the_session_page(ui_server: LiveServer, page: Any) -> None:
    page.goto(f"{ui_server.url}ui/sessions")
    page.fill("#request-text", REQUEST.format(script="sleep 120"))
    page.click("#ask")
    page.locator(".offer button.accept").first.click()
    page.wait_for_url("**/ui/sessions/*")
    page.wait_for_function("document.querySelector('#session-phase').textContent.trim() === 'AVAILABLE'")
    page.click("button.action[data-phase='CANCELLED']")
    page.wait_for_function("document.querySelector('#session-phase').textContent.trim() === 'CANCELLED'")
    page.wait_for_selector("text=cancelled by the client")


def test_capacity_picture(ui_server: LiveServer, page: Any, tmp_path: Path) -> None:
    page.goto(f"{ui_server.url}ui/sessions")
    page.fill("#request-text", REQUEST.format(script="true").replace("PT5M", "PT3H"))
    page.click("#ask")
    page.wait_for_selector(".offer")
    page.goto(f"{ui_server.url}ui/capacity")
    svg = page.locator("svg.chart")
    assert svg.count() == 1
    assert "capacity: 8 cores" in (svg.text_content() or "")
    assert "bookings held" in page.inner_text("main")
    page.screenshot(path=str(tmp_path / "capacity.png"), full_page=True)


def test_an_unknown_session_is_a_page_that_says_so(ui_server: LiveServer, page: Any) -> None:
    response = page.goto(f"{ui_server.url}ui/sessions/00000000-0000-4000-8000-000000000000")
    assert response is not None and response.status == 404
    assert "There is no session 00000000-0000-4000-8000-000000000000" in page.inner_text("main")


def test_the_session_page_shows_where_data_came_from_and_how_long_it_took(
    ui_server: LiveServer, page: Any, tmp_path: Path
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "cube.fits").write_bytes(b"x" * 100_000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        request = REQUEST.format(script="wc -c < input/cube.fits") + (
            f"data:\n  - meta: {{name: cube}}\n    location: http://127.0.0.1:{server.server_address[1]}/cube.fits\n"
            "compute:\n  volumes: [{path: input/cube.fits, resource: cube}]\n"
        )
        page.goto(f"{ui_server.url}ui/sessions")
        page.fill("#request-text", request)
        page.click("#ask")
        page.locator(".offer button.accept").first.click()
        page.wait_for_url("**/ui/sessions/*")
        page.wait_for_function("document.querySelector('#session-phase').textContent.trim() === 'COMPLETED'")
        staging = page.inner_text("table >> nth=0")
        assert f"http:127.0.0.1:{server.server_address[1]}" in staging
        assert "took" in staging and "estimated" in staging
        assert "100000" in page.inner_text("#stdout")
    finally:
        server.shutdown()
