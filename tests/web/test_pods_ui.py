"""The pods page in a real headless Chromium over two real pod processes, and its bars as plain functions."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ecliptic.web import mesh_routes
from ecliptic.web import routes as web_routes
from ecliptic.web.mesh_charts import HELD, space_bar_svg, space_legend_svg, space_parts
from tests.conftest import free_port
from tests.mesh.conftest import network  # noqa: F401  (the fixture, used outside tests/mesh)
from tests.mesh.harness import Network, PodProcess, wait_for


@contextmanager
def serve(pod_address: str | None) -> Iterator[str]:
    """Only the pods pages and the static files base.html links, under uvicorn on a loopback port."""
    app = FastAPI()
    app.include_router(mesh_routes.build_router(pod_address))
    app.mount("/ui/static", StaticFiles(directory=web_routes.HERE / "static"), name="ui-static")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _reach(through: PodProcess, name: str) -> str:
    with through.client() as client:
        return next(str(p["reach"]) for p in client.pods() if p["name"] == name)


def test_the_pods_page_shows_the_network_and_browses_its_files(
    network: Network,  # noqa: F811
    page: Any,
    tmp_path: Path,
) -> None:
    a = network.pod("a", join=False)
    b = network.pod("b")
    with a.client() as client:
        client.mkdir("/data/deep", parents=True)
        client.write_bytes("/data/x.txt", b"hello mesh\n")
        client.write_bytes("/data/big.bin", bytes(3 * 1024 * 1024))
        client.write_bytes("/top.txt", b"top")
    wait_for(lambda: _reach(a, "b") == "up", what="a to reach b")

    with serve(a.address) as url:
        response = page.goto(f"{url}ui/pods")
        assert response is not None and response.status == 200
        rows = page.locator("table.pods tbody tr")
        assert rows.count() == 2
        row_a, row_b = page.locator("tr[data-pod='a']"), page.locator("tr[data-pod='b']")
        assert row_a.get_attribute("data-state") == "active" and row_a.get_attribute("data-reach") == "self"
        assert row_b.get_attribute("data-state") == "active" and row_b.get_attribute("data-reach") == "up"
        assert a.node_id[:8] in row_a.inner_text() and b.node_id[:8] in row_b.inner_text()
        assert a.address in row_a.inner_text()
        assert page.locator("table.pods svg.space-bar").count() == 2
        assert row_a.locator("svg.space-bar rect.held").count() == 1  # a holds what was written through it
        assert re.search(r"\d+(\.\d)? ms", row_b.locator("td").nth(8).inner_text())
        summary = page.inner_text("#pods-summary")
        assert "through pod a" in summary and a.address in summary and "2 pods" in summary, summary
        assert "3 files" in summary and "2 directories" in summary, summary

        names = [n.get_attribute("data-name") for n in page.locator("table.files tbody tr").all()]
        assert names == ["data", "top.txt"]  # directories first
        page.screenshot(path=str(tmp_path / "pods.png"), full_page=True)

        page.click("table.files a:has-text('data/')")
        page.wait_for_url("**/ui/pods?path=/data")
        names = [n.get_attribute("data-name") for n in page.locator("table.files tbody tr").all()]
        assert names == ["deep", "big.bin", "x.txt"]
        big = page.locator("tr[data-name='big.bin']")
        assert "3 MiB" in big.inner_text() and a.node_id[:8] in big.locator("td").nth(3).inner_text()
        assert "11 B" in page.locator("tr[data-name='x.txt']").inner_text()
        page.screenshot(path=str(tmp_path / "files.png"), full_page=True)
        page.click("table.files a:has-text('deep/')")
        page.wait_for_url("**/ui/pods?path=/data/deep")
        assert page.locator("#empty-directory").count() == 1
        assert [c.inner_text() for c in page.locator("nav.crumbs a, nav.crumbs b").all()] == [
            "network",
            "data",
            "deep",
        ]
        page.click("nav.crumbs a:has-text('data')")
        page.wait_for_url("**/ui/pods?path=/data")
        page.click("nav.crumbs a:has-text('network')")
        page.wait_for_url("**/ui/pods")
        assert page.locator("tr[data-name='top.txt']").count() == 1

        missing = page.goto(f"{url}ui/pods?path=/data/nope")
        assert missing is not None and missing.status == 404
        assert "There is no directory /data/nope" in page.inner_text("main")
        a_file = page.goto(f"{url}ui/pods?path=/top.txt")
        assert a_file is not None and a_file.status == 404

        page.goto(f"{url}ui/pods")
        b.stop()
        # b is judged down after 6 s without a round; the table refreshes by itself, without a reload.
        page.wait_for_selector("tr[data-pod='b'][data-reach='down']", timeout=15_000)
        assert page.locator("tr[data-pod='a'][data-reach='self']").count() == 1
        assert page.locator("tr[data-pod='b'] svg.space-bar[opacity]").count() == 1  # stale figures, faded
        page.screenshot(path=str(tmp_path / "pods-down.png"), full_page=True)


def test_without_a_pod_the_page_says_how_to_configure_one(page: Any) -> None:
    with serve(None) as url:
        response = page.goto(f"{url}ui/pods")
        assert response is not None and response.status == 200
        assert "ECLIPTIC_MESH_POD=HOST:PORT" in page.inner_text("#pods-unconfigured")
        assert page.locator("[data-refresh]").count() == 0  # nothing to poll
        assert page.locator("header nav").count() == 1  # the site's frame, with its stylesheet
        fragment = httpx.get(f"{url}ui/pods/rows", timeout=10)
        assert fragment.status_code == 200 and "ECLIPTIC_MESH_POD" in fragment.text


def test_a_pod_that_does_not_answer_is_named_in_an_error_box(page: Any) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    with serve(address) as url:
        response = page.goto(f"{url}ui/pods?path=/anything")
        assert response is not None and response.status == 200
        box = page.inner_text("#pods-problem")
        assert f"No pod answers at {address}" in box, box
        assert page.locator("#files").count() == 0
        # The fragment says so too, with 200, so the refreshing page replaces a table that went stale.
        fragment = httpx.get(f"{url}ui/pods/rows", timeout=10)
        assert fragment.status_code == 200 and f"No pod answers at {address}" in fragment.text
    with serve("no-port-here") as url:
        assert "cannot be used" in httpx.get(f"{url}ui/pods", timeout=10).text


def test_the_bar_splits_the_disk_into_held_other_and_free() -> None:
    assert space_parts(held=10, free=60, capacity=100) == {"held": 10, "other": 30, "free": 60}
    assert space_parts(held=50, free=80, capacity=100) == {"held": 50, "other": 0, "free": 80}
    svg = space_bar_svg(10, 60, 100, name="a", width=200)
    widths = {
        k: float(w)
        for k, w in re.findall(r'class="(held|other|free)" x="[\d.]+" y="0" width="([\d.]+)"', svg)
    }
    assert widths == {"held": 20.0, "other": 60.0, "free": 120.0}
    assert f'fill="{HELD}"' in svg and 'aria-label="pod a: held here 10 B (10 %)' in svg
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "opacity" not in svg


def test_a_tiny_share_still_shows_and_the_bar_keeps_its_length() -> None:
    svg = space_bar_svg(1024, 2**40, 2**41, width=200)
    widths = [
        float(w) for w in re.findall(r'class="(?:held|other|free)" x="[\d.]+" y="0" width="([\d.]+)"', svg)
    ]
    assert widths[0] == 2.0 and abs(sum(widths) - 200) < 0.5
    assert "held here 1 KiB (&lt;1 %)" in svg


def test_a_pod_with_no_figures_and_hostile_names() -> None:
    empty = space_bar_svg(0, 0, 0, name="b")
    assert "no space reported yet" in empty and 'class="held"' not in empty
    hostile = space_bar_svg(1, 1, 4, name='<script>"x"&', dim=True)
    assert "<script>" not in hostile and "&lt;script&gt;&quot;x&quot;&amp;" in hostile
    assert 'opacity="0.45"' in hostile
    legend = space_legend_svg()
    assert [t for t in ("held here", "other use of the disk", "free") if t in legend] == [
        "held here",
        "other use of the disk",
        "free",
    ]
