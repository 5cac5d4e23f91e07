"""Server-rendered pages over the broker library; the browser's only script refreshes parts of them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import StrictUndefined

from ecliptic.broker import views
from ecliptic.broker.calendar import Hold, Resources
from ecliptic.broker.phases import TERMINAL, SessionPhase
from ecliptic.broker.service import Broker, NotFound
from ecliptic.isotime import format_duration, format_instant, utcnow
from ecliptic.web.charts import capacity_svg

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
# A misspelt template variable fails loudly instead of rendering as nothing.
templates.env.undefined = StrictUndefined
templates.env.filters["instant"] = lambda value: format_instant(value) if value else ""
templates.env.filters["duration"] = format_duration

EXAMPLE_REQUEST = """\
executable:
  kind: urn:ecliptic:executable:command
  command: [sh, -c, "echo hello from $ECLIPTIC_SESSION"]
compute:
  cores: {min: 1, max: 2}
  memory: {min: 1, max: 1}
schedule:
  requested:
    duration: PT10M
"""


def _broker(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


def _page(request: Request, name: str, fragment: bool, **context: Any) -> Response:
    template = f"{name}_rows.html" if fragment else f"{name}.html"
    return templates.TemplateResponse(request, template, context)


def build_router() -> APIRouter:
    router = APIRouter(prefix="/ui", include_in_schema=False)

    @router.get("/")
    async def home() -> Response:
        return RedirectResponse("/ui/sessions")

    @router.get("/sessions", response_class=HTMLResponse)
    async def sessions(request: Request, phase: str | None = None, fragment: bool = False) -> Response:
        if phase is not None and phase not in SessionPhase.__members__:
            phase = None
        rows = await asyncio.to_thread(_broker(request).sessions, phase, 200)
        return _page(
            request,
            "sessions",
            fragment,
            rows=rows,
            phase=phase,
            phases=list(SessionPhase),
            example=EXAMPLE_REQUEST,
            terminal=TERMINAL,
        )

    @router.get("/sessions/{uuid}", response_class=HTMLResponse)
    async def session(request: Request, uuid: str, fragment: bool = False) -> Response:
        broker = _broker(request)
        try:
            row = await asyncio.to_thread(broker.session, uuid)
        except NotFound:
            return templates.TemplateResponse(
                request, "not_found.html", {"message": f"There is no session {uuid}."}, status_code=404
            )
        wire = views.session_out(row, str(request.base_url))
        stdout = await asyncio.to_thread(_tail, broker.workdir(uuid) / "logs" / "stdout.txt")
        stderr = await asyncio.to_thread(_tail, broker.workdir(uuid) / "logs" / "stderr.txt")
        history = await asyncio.to_thread(broker.history, uuid)
        return _page(
            request,
            "session",
            fragment,
            history=history,
            row=row,
            wire=wire,
            stdout=stdout,
            stderr=stderr,
            terminal=row.phase in TERMINAL,
            options=[o.values for o in wire.meta.options],
        )

    @router.get("/capacity", response_class=HTMLResponse)
    async def capacity(request: Request, hours: int = 24) -> Response:
        hours = min(max(hours, 1), 24 * 14)
        broker = _broker(request)
        now = int(utcnow().timestamp())
        end = now + hours * 3600
        bookings = await asyncio.to_thread(broker.capacity_in_use)
        charts = []
        for name, platform in broker.platforms.items():
            info = platform.info.capacity
            holds = [
                Hold(b.start_s, b.end_s, b.cores, b.memory_gib, b.storage_gib)
                for b in bookings
                if b.platform == name and (b.expires_s is None or b.expires_s > now)
            ]
            charts.append(
                {
                    "name": name,
                    "capacity": info,
                    "holds": len(holds),
                    "svg": capacity_svg(
                        Resources(info.cores, info.memory_gib, info.storage_gib), holds, now, end
                    ),
                }
            )
        return templates.TemplateResponse(request, "capacity.html", {"charts": charts, "hours": hours})

    return router


def _tail(path: Path, limit: int = 64 * 1024) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
