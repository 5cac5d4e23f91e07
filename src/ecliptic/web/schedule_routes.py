"""Server-rendered pages of the scheduler: the schedules by namespace, and one schedule with its runs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import StrictUndefined

from ecliptic.humantime import relative
from ecliptic.isotime import format_instant
from ecliptic.schedule.service import NotFound, SchedulerService
from ecliptic.schedule.spec import RunView, ScheduleView
from ecliptic.web.routes import HERE
from ecliptic.web.schedule_charts import runs_timeline_svg

templates = Jinja2Templates(directory=HERE / "templates")
# A misspelt template variable fails loudly instead of rendering as nothing.
templates.env.undefined = StrictUndefined

EXAMPLE_SCHEDULE = """\
name: hello
namespace: default
description: Say hello on weekday mornings
trigger:
  cron: "0 9 * * 1-5"
timezone: Europe/Vienna
run:
  python: print("hello from the scheduler")
"""

RUNS_SHOWN = 100


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.2f} s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def local(value: datetime | None, zone: ZoneInfo) -> str:
    if value is None:
        return ""
    return value.astimezone(zone).strftime("%a %Y-%m-%d %H:%M:%S %Z")


templates.env.filters["instant"] = lambda value: format_instant(value) if value else ""
templates.env.filters["seconds"] = seconds


@dataclass
class Row:
    """A schedule as a row of the list: the view and what the page says about it."""

    view: ScheduleView
    description: str
    next_local: str
    next_relative: str


def _service(request: Request) -> SchedulerService:
    service: SchedulerService = request.app.state.services.scheduler.service
    return service


def _row(view: ScheduleView, now: datetime) -> Row:
    zone = view.spec.zone
    nxt = view.next_fire_at
    return Row(
        view=view,
        description=view.description,  # with the zone where it matters
        next_local=local(nxt, zone) if nxt is not None else "",
        next_relative=relative(nxt, now) if nxt is not None else "",
    )


def _page(request: Request, name: str, fragment: bool, status: int = 200, **context: Any) -> Response:
    template = f"{name}_rows.html" if fragment else f"{name}.html"
    return templates.TemplateResponse(request, template, context, status_code=status)


def _spec_yaml(view: ScheduleView) -> str:
    doc = view.spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
    doc = {"name": view.name, "namespace": view.namespace, **doc}
    text: str = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    return text


def build_router() -> APIRouter:
    router = APIRouter(prefix="/ui", include_in_schema=False)

    @router.get("/schedules", response_class=HTMLResponse)
    async def schedules(request: Request, namespace: str | None = None, fragment: bool = False) -> Response:
        service = _service(request)
        views = await asyncio.to_thread(service.schedules, namespace or None)
        now = service.clock.now()
        groups: dict[str, list[Row]] = {}
        for view in views:
            groups.setdefault(view.namespace, []).append(_row(view, now))
        return _page(
            request,
            "schedules",
            fragment,
            groups=groups,
            namespace=namespace or "",
            example=EXAMPLE_SCHEDULE,
        )

    @router.get("/schedules/{ref:path}", response_class=HTMLResponse)
    async def schedule(request: Request, ref: str, fragment: bool = False) -> Response:
        service = _service(request)
        try:
            view = await asyncio.to_thread(service.get, ref)
        except NotFound:
            return templates.TemplateResponse(
                request,
                "not_found.html",
                {"message": f"There is no schedule {ref}.", "back": ("/ui/schedules", "the schedules")},
                status_code=404,
            )
        runs: list[RunView] = await asyncio.to_thread(service.runs, view.id, limit=RUNS_SHOWN)
        times = await asyncio.to_thread(service.preview, view.id, 10)
        now = service.clock.now()
        zone = view.spec.zone
        return _page(
            request,
            "schedule",
            fragment,
            row=_row(view, now),
            view=view,
            spec_yaml=_spec_yaml(view),
            runs=runs,
            times=[
                {"local": local(t, zone), "utc": format_instant(t), "in": relative(t, now)} for t in times
            ],
            chart=runs_timeline_svg(runs, now, zone),
            local=lambda value: local(value, zone),
        )

    return router
