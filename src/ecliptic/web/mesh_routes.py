"""Server-rendered pages of the mesh: the network's pods as one pod sees them, and its files by directory.

Each request opens its own client to the configured pod and closes it, so a pod that restarts is picked
up by the next refresh with nothing kept here. A pod that does not answer is an error box in a 200 page,
and in a 200 fragment too: app.js keeps the old content when a refresh gets a non-2xx answer, so a 502
would leave a stale table that still looks healthy instead of saying the pod is gone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import StrictUndefined

from ecliptic.isotime import format_instant
from ecliptic.mesh.client import MeshClient, normalize
from ecliptic.mesh.entries import Entry
from ecliptic.mesh.settings import format_size
from ecliptic.mesh.wire import MeshError, ProtocolError
from ecliptic.web.mesh_charts import space_bar_svg, space_legend_svg
from ecliptic.web.routes import HERE

templates = Jinja2Templates(directory=HERE / "templates")
# A misspelt template variable fails loudly instead of rendering as nothing.
templates.env.undefined = StrictUndefined
templates.env.filters["size"] = format_size

TIMEOUT = 5.0
"""Seconds a request waits for the pod: one that hangs gives an error box, not a page that never loads."""

SHORT = 8
"""Characters of a node id shown, as ``ecliptic mesh ls -l`` shows holders."""

CONFIGURE = "ECLIPTIC_MESH_POD=HOST:PORT"


class NoSuchDirectory(Exception):
    """The asked path is no directory of the network: a not-found page, unlike a pod that fails."""


@dataclass
class PodRow:
    """A pod as a row of the table: its record, how the answering pod reaches it, and its bar."""

    node: str
    short: str
    name: str
    address: str
    state: str
    reach: str
    files: int
    held: int
    free: int
    capacity: int
    rtt_ms: float
    error: str
    bar: str


@dataclass
class FileRow:
    name: str
    kind: str
    size: int
    modified: str
    target: str
    href: str
    holders: list[tuple[str, str]]
    """(short node id, what its tooltip says) for each pod holding the file's blocks."""


@dataclass
class Survey:
    info: dict[str, Any]
    pods: list[PodRow]
    entries: list[Entry] | None


@dataclass
class Problem:
    title: str
    detail: str


def _pod_rows(raw: list[dict[str, Any]], info: dict[str, Any]) -> list[PodRow]:
    peers: dict[str, Any] = info.get("peers") or {}
    rows = []
    for pod in raw:
        node = str(pod["node"])
        reach = str(pod["reach"])
        held, free, capacity = int(pod["bytes"]), int(pod["free"]), int(pod["capacity"])
        rows.append(
            PodRow(
                node=node,
                short=node[:SHORT],
                name=str(pod["name"]),
                address=str(pod["address"]),
                state=str(pod["state"]),
                reach=reach,
                files=int(pod["files"]),
                held=held,
                free=free,
                capacity=capacity,
                rtt_ms=float(pod["rtt_ms"]),
                error=str((peers.get(node) or {}).get("error") or ""),
                # The figures of a pod out of reach are its last replicated ones: drawn, but faded.
                bar=space_bar_svg(
                    held, free, capacity, name=str(pod["name"]), dim=reach not in ("self", "up")
                ),
            )
        )
    rows.sort(key=lambda row: (row.reach != "self", row.name, row.node))
    return rows


def _survey(address: str, token: str | None, path: str | None) -> Survey:
    """Everything a page shows, over one connection; ``path`` None for the fragment, which lists nothing."""
    client = MeshClient(address, token=token, timeout=TIMEOUT)
    try:
        info = client.pod_info()
        rows = _pod_rows(client.pods(), info)
        entries = None
        if path is not None:
            try:
                folder = client.stat(path)
            except MeshError as exc:
                if exc.code in ("ENOENT", "ENOTDIR"):
                    raise NoSuchDirectory(path) from None
                raise
            if folder.kind != "dir":
                raise NoSuchDirectory(path)
            entries = client.children(folder.id)
        return Survey(info, rows, entries)
    finally:
        client.close()


def _problem(address: str, exc: Exception) -> Problem:
    if isinstance(exc, ValueError):
        return Problem(f"The configured pod address {address!r} cannot be used.", str(exc))
    if isinstance(exc, MeshError) and exc.code != "EHOSTUNREACH":
        return Problem(f"The pod at {address} refused to answer.", f"{exc.message} [{exc.code}]")
    detail = exc.message if isinstance(exc, MeshError) else f"{type(exc).__name__}: {exc}"
    return Problem(f"No pod answers at {address}.", detail)


def _crumbs(path: str) -> list[tuple[str, str]]:
    """(label, path) from the root down to ``path``."""
    crumbs = [("network", "/")]
    walked = ""
    for part in path.strip("/").split("/"):
        if part:
            walked = f"{walked}/{part}"
            crumbs.append((part, walked))
    return crumbs


def _file_rows(entries: list[Entry], path: str, pods: list[PodRow]) -> list[FileRow]:
    known = {pod.node: pod for pod in pods}
    rows = []
    for entry in sorted(entries, key=lambda e: (e.kind != "dir", e.name)):
        child = f"{path.rstrip('/')}/{entry.name}"
        holders = []
        for node in entry.holders:
            pod = known.get(node)
            tip = f"pod {pod.name} ({pod.reach})" if pod is not None else f"node {node} (not in the pod list)"
            holders.append((node[:SHORT], tip))
        modified = datetime.fromtimestamp(entry.mtime_ns // 1_000_000_000, UTC) if entry.mtime_ns else None
        rows.append(
            FileRow(
                name=entry.name,
                kind=entry.kind,
                size=entry.size,
                modified=format_instant(modified) if modified is not None else "",
                target=entry.target,
                href=child if entry.kind == "dir" else "",
                holders=holders,
            )
        )
    return rows


def _context(
    address: str | None, survey: Survey | None, problem: Problem | None, path: str
) -> dict[str, Any]:
    pods = survey.pods if survey is not None else []
    return {
        "address": address,
        "configure": CONFIGURE,
        "problem": problem,
        "info": survey.info if survey is not None else None,
        "pods": pods,
        "states": {state: sum(p.state == state for p in pods) for state in ("active", "leaving", "left")},
        "reachable": sum(p.reach in ("self", "up") for p in pods),
        "legend": space_legend_svg(),
        "path": path,
        "crumbs": _crumbs(path),
        "files": (
            _file_rows(survey.entries, path, pods)
            if survey is not None and survey.entries is not None
            else None
        ),
    }


def build_router(pod_address: str | None, *, token: str | None = None) -> APIRouter:
    """The pods pages, reading the network through ``pod_address`` (None: the page says how to set it).

    ``token`` is the network's join token, which a pod asks of clients that are not on its own host.
    """
    router = APIRouter(prefix="/ui", include_in_schema=False)

    async def look(path: str | None) -> tuple[Survey | None, Problem | None]:
        if pod_address is None:
            return None, None
        try:
            return await asyncio.to_thread(_survey, pod_address, token, path), None
        except (MeshError, ProtocolError, OSError, ValueError) as exc:
            return None, _problem(pod_address, exc)

    @router.get("/pods", response_class=HTMLResponse)
    async def pods(request: Request, path: str = "/") -> Response:
        shown = normalize(path)
        try:
            survey, problem = await look(shown)
        except NoSuchDirectory:
            return templates.TemplateResponse(
                request,
                "not_found.html",
                {
                    "message": f"There is no directory {shown} in the network.",
                    "back": ("/ui/pods", "the pods"),
                },
                status_code=404,
            )
        return templates.TemplateResponse(request, "pods.html", _context(pod_address, survey, problem, shown))

    @router.get("/pods/rows", response_class=HTMLResponse)
    async def pods_rows(request: Request) -> Response:
        survey, problem = await look(None)
        return templates.TemplateResponse(
            request, "pods_rows.html", _context(pod_address, survey, problem, "/")
        )

    return router
