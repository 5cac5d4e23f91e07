"""The scheduler's HTTP API: schedules, their runs, previews of fire times, and a server-sent-events stream.

Every operation goes through :class:`~ecliptic.schedule.service.SchedulerService`; this module only reads
bodies (JSON or YAML, through the project's negotiation helpers), checks them, and answers in the asked format
with the one error shape. A schedule is addressed by its id (or a name unique across namespaces) at
``/schedules/{ref}``, or by ``/schedules/{namespace}/{name}``; every sub-resource exists under both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, get_args
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import and_, or_, select

from ecliptic.broker.schema import ErrorResponse
from ecliptic.http.errors import ApiError, error_body, respond_error
from ecliptic.http.negotiation import negotiated, read_body, render
from ecliptic.isotime import IsoTimeError, format_instant, parse_instant
from ecliptic.schedule import triggers
from ecliptic.schedule.service import AuditView, NamespaceView, ScheduleError, SchedulerService
from ecliptic.schedule.spec import (
    CronTrigger,
    Instant,
    RunState,
    RunView,
    ScheduleSpec,
    ScheduleView,
    parse_when,
)
from ecliptic.schedule.views import describe_spec, run_view
from ecliptic.store.tables import RunRow, ScheduleRow

log = logging.getLogger(__name__)

ACTOR_HEADER = "X-Ecliptic-Actor"
RUN_STATES: tuple[str, ...] = tuple(value for part in get_args(RunState) for value in get_args(part))
TIMING_FIELDS = ("trigger", "timezone", "start", "end", "max_runs", "exclude", "jitter")
"""What a preview reads of a schedule: when it fires, not what it runs."""

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
OVERLAP = timedelta(seconds=1)
"""How far back each poll of the event stream looks again: a transaction that took its timestamp before
another but committed after it is still seen (what was sent already is not sent twice)."""
PAGE = 1000


# -- bodies -------------------------------------------------------------------------------------------------


class BackfillRequest(BaseModel):
    """The fire times of a schedule in ``[start, end]`` that have no run yet run now, one after another."""

    model_config = ConfigDict(extra="forbid")

    start: Instant
    end: Instant


class PreviewRequest(BaseModel):
    """The next fire times of a trigger, without creating a schedule.

    Give ``when`` (the command line's shorthand: ``0 9 * * 1-5``, ``@daily``, ``every 10s``, ``RRULE:…``,
    an ISO 8601 instant) or ``trigger`` (as in a schedule), and any of the schedule's timing fields
    (``timezone``, ``start``, ``end``, ``exclude``, ``max_runs``, ``jitter``). A whole schedule works too: what
    it runs is checked but not needed.
    """

    model_config = ConfigDict(extra="allow")

    when: str | None = None
    second: str | None = Field(default=None, description="Cron seconds for a cron `when`, e.g. */10.")
    trigger: dict[str, Any] | None = None
    timezone: str = "UTC"
    count: int = Field(default=10, ge=1, le=1000)
    after: Instant | None = Field(default=None, description="List times after this instant; default: now.")


class PreviewOut(BaseModel):
    times: list[str] = Field(description="The fire times in UTC (ISO 8601 with Z).")
    local: list[str] = Field(description="The same times with the schedule zone's offset.")
    timezone: str
    description: str


# -- helpers ------------------------------------------------------------------------------------------------


def _service(request: Request) -> SchedulerService:
    service: SchedulerService = request.app.state.services.scheduler.service
    return service


def actor(request: Request) -> str:
    """Who makes a change: the ``X-Ecliptic-Actor`` header, else the client's address."""
    given = request.headers.get(ACTOR_HEADER, "").strip()
    if given:
        return given[:200]
    host = request.client.host if request.client is not None else "unknown"
    return f"http:{host}"


def _data(content: Any) -> Any:
    """Wire form: by alias (``if`` of a step, not ``if_``), without empty optional fields."""
    if isinstance(content, BaseModel):
        return content.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(content, list):
        return [_data(item) for item in content]
    if isinstance(content, dict):
        return {key: _data(value) for key, value in content.items()}
    return content


def _answer(
    request: Request, content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return render(_data(content), negotiated(request), status, headers)


_TAGGED = {
    "trigger": ("once", "every", "cron", "rrule"),
    "run": ("cmd", "python", "file", "entrypoint", "call", "broker", "steps"),
}


def _clean_loc(loc: Sequence[str | int]) -> list[str | int]:
    """Pydantic's location without the union tags it inserts (``trigger.cron.cron`` → ``trigger.cron``)."""
    out: list[str | int] = []
    skip_next_tag = False
    for part in loc:
        if skip_next_tag:
            skip_next_tag = False
            if isinstance(part, str) and (part in _TAGGED["trigger"] or part in _TAGGED["run"]):
                continue
        out.append(part)
        if part in ("trigger", "run"):
            skip_next_tag = True
    return out


def _message(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", ""))
    if err.get("type") == "extra_forbidden":
        return "unknown field"
    if err.get("type") == "missing":
        return "required, but missing"
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


_LEADING_PATH = re.compile(r"^\s*([A-Za-z_]\w*(?:\.\w+|\[\d+\])*)[\s:]")
_TRIGGER_FIELDS = frozenset(("once", "every", "mode", "anchor", "cron", "second", "rrule", "dtstart"))


def _schedule_loc(msg: str) -> list[str | int]:
    """Where a whole-schedule check (the trigger and exclusions against the zone and window) points: the field
    its message starts with (``cron '61 * * * *': …`` → trigger.cron, ``exclude[0].cron …``, ``end is before
    start``), else the trigger."""
    match = _LEADING_PATH.match(msg)
    if match:
        parts: list[str | int] = []
        for part in re.split(r"\.|(?=\[)", match.group(1)):
            if part.startswith("["):
                parts.append(int(part[1:-1]))
            elif part:
                parts.append(part)
        if parts[0] in _TRIGGER_FIELDS:
            return ["trigger", *parts]
        if parts[0] in ScheduleSpec.model_fields:
            return parts
    return ["trigger"]


def validation_details(exc: ValidationError, prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    """Pydantic's errors as the error shape's details: a location naming the field, and a message."""
    details = []
    for err in exc.errors(include_url=False):
        loc = _clean_loc(err.get("loc", ()))
        if not loc and exc.title == ScheduleSpec.__name__:
            loc = _schedule_loc(_message(dict(err)))
        details.append({"loc": [*prefix, *loc], "msg": _message(dict(err)), "type": err.get("type", "")})
    return details


def invalid(what: str, details: list[dict[str, Any]]) -> ApiError:
    summary = "; ".join(
        f"{'.'.join(map(str, d['loc']))}: {d['msg']}" if d["loc"] else str(d["msg"]) for d in details
    )
    return ApiError(400, f"Invalid {what}: {summary}", details=details)


def _mapping(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        kind = "nothing" if data is None else f"a {type(data).__name__}"
        raise ApiError(400, f"The body must be {what} (a mapping), not {kind}", loc=["body"])
    return data


def parse_spec(data: Any) -> ScheduleSpec:
    """A schedule from request data; 400 naming every field that is wrong."""
    body = _mapping(data, "a schedule with name, trigger and run")
    try:
        spec = ScheduleSpec.model_validate(body)
    except ValidationError as exc:
        raise invalid("schedule", validation_details(exc)) from exc
    negative = list(_negative_durations(spec))
    if negative:
        raise invalid(
            "schedule",
            [{"loc": loc, "msg": "a duration cannot be negative", "type": "value_error"} for loc in negative],
        )
    try:
        # What is stored must read back: a value the model takes but cannot write is refused here rather than
        # stored and failing every later read.
        ScheduleSpec.model_validate(spec.model_dump(mode="json", by_alias=True))
    except ValidationError as exc:
        raise invalid("schedule", validation_details(exc)) from exc
    return spec


def _negative_durations(value: Any, loc: tuple[str | int, ...] = ()) -> Iterator[list[str | int]]:
    """Where a model holds a negative duration (the wire format cannot write one back)."""
    if isinstance(value, timedelta):
        if value < timedelta(0):
            yield list(loc)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            field = type(value).model_fields[name]
            yield from _negative_durations(getattr(value, name), (*loc, field.alias or name))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _negative_durations(item, (*loc, index))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: a mapping merges key by key, ``null`` removes a key, anything else replaces.

    One addition: a trigger or runner whose kind the patch changes (``{"trigger": {"every": "10s"}}`` on a cron
    trigger) is replaced rather than merged, as merging two kinds could only give an invalid document.
    """
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
            continue
        current = result.get(key)
        if key in _TAGGED and isinstance(value, dict) and isinstance(current, dict):
            kinds = _TAGGED[key]
            if {k for k in value if k in kinds} - {k for k in current if k in kinds}:
                current = {}
        result[key] = merge_patch(current, value)
    return result


def _local(value: datetime, zone: ZoneInfo) -> str:
    local = value.astimezone(zone)
    return local.isoformat(timespec="microseconds" if local.microsecond else "seconds")


def preview_out(spec: ScheduleSpec, times: list[datetime]) -> PreviewOut:
    return PreviewOut(
        times=[format_instant(t) for t in times],
        local=[_local(t, spec.zone) for t in times],
        timezone=spec.timezone,
        description=describe_spec(spec),
    )


def preview_spec(data: Any) -> tuple[ScheduleSpec, int, datetime | None]:
    """The synthetic schedule a ``POST /preview`` body describes, the count, and where to start."""
    body = _mapping(data, "a trigger to preview, e.g. {when: '0 9 * * 1-5', timezone: Europe/Vienna}")
    try:
        request = PreviewRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid("preview", validation_details(exc)) from exc
    doc = {k: v for k, v in body.items() if k not in ("when", "second", "count", "after")}
    if request.when is not None:
        if request.trigger is not None:
            raise ApiError(400, "Give when or trigger, not both", loc=["when"])
        try:
            trigger = parse_when(request.when)
        except ValidationError as exc:
            details = validation_details(exc)
            reason = "; ".join(str(d["msg"]) for d in details)
            raise ApiError(400, f"Invalid when: {reason}", loc=["when"]) from exc
        except ValueError as exc:
            raise ApiError(400, f"Invalid when: {exc}", loc=["when"]) from exc
        if request.second is not None:
            if not isinstance(trigger, CronTrigger):
                raise ApiError(400, "second goes with a cron expression only", loc=["second"])
            trigger = trigger.model_copy(update={"second": request.second})
        doc["trigger"] = trigger.model_dump(mode="json", exclude_none=True)
    elif request.trigger is None:
        raise ApiError(
            400,
            "Give when (e.g. '0 9 * * 1-5', '@daily', 'every 10s') or trigger (e.g. {cron: '0 9 * * 1-5'})",
            loc=["trigger"],
        )
    elif request.second is not None:
        raise ApiError(
            400, "second goes with when; in a trigger, write it inside: {cron: …, second: …}", loc=["second"]
        )
    doc.setdefault("name", "preview")
    doc.setdefault("run", {"cmd": "true"})
    try:
        spec = ScheduleSpec.model_validate(doc)
    except ValidationError as exc:
        details = validation_details(exc)
        if request.when is not None:  # the trigger came from when (and second): say so
            for detail in details:
                if detail["loc"][:1] == ["trigger"]:
                    detail["loc"] = ["second"] if detail["loc"][1:2] == ["second"] else ["when"]
        raise invalid("preview", details) from exc
    return spec, request.count, request.after


def _is_uuid(value: str) -> bool:
    try:
        uuidlib.UUID(value)
    except ValueError:
        return False
    return True


def schedule_ref(request: Request) -> str:
    """The schedule a path names: ``{ref}`` (id or unique name) or ``{namespace}/{name}``."""
    params = request.path_params
    if "ref" in params:
        return str(params["ref"])
    return f"{params['namespace']}/{params['name']}"


# -- the event stream ---------------------------------------------------------------------------------------


class Wakeups:
    """Wakes this process's event streams when a run changes here, instead of at their next poll."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def add(self, waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._lock:
            self._waiters.add(waiter)

    def discard(self, waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._lock:
            self._waiters.discard(waiter)

    def notify(self, *_: Any) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop has closed: its stream is gone
                self.discard((loop, event))


def wakeups(app: FastAPI) -> Wakeups:
    """The process's one :class:`Wakeups`, subscribed to the service and the local instance on first use
    (they keep listeners for good, so each stream must not add its own)."""
    hub: Wakeups | None = getattr(app.state, "schedule_wakeups", None)
    if hub is None:
        hub = Wakeups()
        parts = app.state.services.scheduler
        parts.service.subscribe(hub.notify)
        parts.instance.subscribe(hub.notify)
        app.state.schedule_wakeups = hub
    return hub


Cursor = tuple[datetime, int]


def encode_cursor(cursor: Cursor) -> str:
    return f"{format_instant(cursor[0])}~{cursor[1]}"


def decode_cursor(text: str) -> Cursor:
    at, _, run_id = text.strip().partition("~")
    try:
        return parse_instant(at), int(run_id or 0)
    except (IsoTimeError, ValueError) as exc:
        raise ApiError(
            400,
            f"Last-Event-ID {text!r} is not a cursor this stream gave out",
            loc=["header", "last-event-id"],
        ) from exc


def run_changes(service: SchedulerService, after: Cursor, limit: int = PAGE) -> list[tuple[Cursor, RunView]]:
    """Runs changed after ``after`` in (changed_at, id) order, each with its cursor.

    Like :meth:`SchedulerService.run_changes`, which gives no cursor: a stream needs one to page through a
    burst (a batch of writes shares one ``changed_at``) and to resume from ``Last-Event-ID``.
    """
    at, run_id = after
    with service.db.read() as session:
        rows = session.execute(
            select(RunRow, ScheduleRow)
            .join(ScheduleRow, ScheduleRow.id == RunRow.schedule_id)
            .where(or_(RunRow.changed_at > at, and_(RunRow.changed_at == at, RunRow.id > run_id)))
            .order_by(RunRow.changed_at, RunRow.id)
            .limit(limit)
        ).all()
        return [((run.changed_at, run.id), run_view(run, schedule)) for run, schedule in rows]


def _matches(view: RunView, namespace: str | None, schedule: str | None) -> bool:
    if namespace is not None and view.namespace != namespace:
        return False
    return schedule is None or schedule in (
        view.schedule_id,
        view.schedule,
        f"{view.namespace}/{view.schedule}",
    )


async def event_stream(
    request: Request,
    service: SchedulerService,
    hub: Wakeups,
    start: Cursor,
    namespace: str | None,
    schedule: str | None,
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    waiter = (loop, wake)
    hub.add(waiter)
    sent: dict[Cursor, None] = {}  # what went out within the overlap window
    high = start
    last_write = time.monotonic()
    try:
        yield f"retry: 1000\n: cursor {encode_cursor(start)}\n\n"
        while not await request.is_disconnected():
            wake.clear()
            after: Cursor = max(start, (high[0] - OVERLAP, 0))  # what came before the start is not wanted
            while True:
                try:
                    page = await asyncio.to_thread(run_changes, service, after)
                except Exception:  # the store restarts or the network blips: try again on the next poll
                    log.warning("the event stream could not read run changes", exc_info=True)
                    break
                for cursor, view in page:
                    if cursor in sent or cursor <= start:
                        continue
                    sent[cursor] = None
                    high = max(high, cursor)
                    if _matches(view, namespace, schedule):
                        data = json.dumps(_data(view), ensure_ascii=False, separators=(",", ":"))
                        yield f"id: {encode_cursor(high)}\nevent: run\ndata: {data}\n\n"
                        last_write = time.monotonic()
                if len(page) < PAGE:
                    break
                after = page[-1][0]
            floor = (high[0] - OVERLAP, 0)
            for cursor in [c for c in sent if c < floor]:
                del sent[cursor]
            if time.monotonic() - last_write >= KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                last_write = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), POLL_SECONDS)
    finally:
        hub.discard(waiter)


# -- the router ---------------------------------------------------------------------------------------------


def _schema_ref(name: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{name}"}
    return {"application/json": {"schema": ref}, "application/yaml": {"schema": ref}}


def _body_doc(name: str, *types: str) -> dict[str, Any]:
    content = _schema_ref(name)
    for media in types:
        content[media] = {"schema": {"$ref": f"#/components/schemas/{name}"}}
    return {"requestBody": {"required": True, "content": content}}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed input; `details` says what and where"},
    404: {"model": ErrorResponse, "description": "No such schedule or run"},
    406: {"model": ErrorResponse, "description": "The Accept header allows neither JSON nor YAML"},
    409: {"model": ErrorResponse, "description": "Conflicts with what exists (a name taken, a run ended)"},
    415: {"model": ErrorResponse, "description": "The body is neither JSON nor YAML"},
}

_BY_REF = [
    {
        "name": "ref",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "The schedule's id, or its name if that is unique across namespaces",
    }
]
_BY_NAME = [
    {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
]

Endpoint = Callable[..., Awaitable[Response]]


def build_router() -> APIRouter:
    router = APIRouter(tags=["schedules"])

    def both(
        suffix: str,
        endpoint: Endpoint,
        method: str,
        operation_id: str,
        *,
        body: str | None = None,
        body_types: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> None:
        """One operation at ``/schedules/{ref}…`` and at ``/schedules/{namespace}/{name}…``."""
        responses = {**kwargs.pop("responses", {}), **ERRORS}
        for path, params, op in (
            (f"/schedules/{{ref}}{suffix}", _BY_REF, operation_id),
            (f"/schedules/{{namespace}}/{{name}}{suffix}", _BY_NAME, f"{operation_id}ByName"),
        ):
            extra: dict[str, Any] = {"parameters": params}
            if body is not None:
                extra.update(_body_doc(body, *body_types))
            router.add_api_route(
                path,
                endpoint,
                methods=[method],
                operation_id=op,
                openapi_extra=extra,
                responses=responses,
                **kwargs,
            )

    # -- collection ------------------------------------------------------------------------------------------
    @router.get(
        "/schedules",
        operation_id="ScheduleList",
        summary="Every schedule, by namespace and name",
        responses={200: {"model": list[ScheduleView]}, **ERRORS},
    )
    async def list_schedules(
        request: Request, namespace: str | None = Query(default=None, description="Only this namespace")
    ) -> Response:
        negotiated(request)
        views = await asyncio.to_thread(_service(request).schedules, namespace)
        return _answer(request, views)

    @router.post(
        "/schedules",
        operation_id="ScheduleCreate",
        summary="Create a schedule (namespace from the body, else default)",
        status_code=201,
        responses={201: {"model": ScheduleView, "description": "Created; also at Location"}, **ERRORS},
        openapi_extra=_body_doc("ScheduleSpec"),
    )
    async def create_schedule(request: Request) -> Response:
        negotiated(request)
        spec = parse_spec(await read_body(request))
        view = await asyncio.to_thread(_service(request).create, spec, actor=actor(request))
        location = f"{request.base_url}schedules/{view.id}"
        return _answer(request, view, 201, {"Location": location})

    # -- actions (registered before /schedules/{namespace}/{name}, which would take their paths) --------------
    async def schedule_runs(
        request: Request,
        ref: str = Depends(schedule_ref),
        limit: int = Query(default=50, ge=1, le=1000),
        before: int | None = Query(default=None, description="Runs older than this run id (paging)"),
        state: str | None = Query(default=None, description="Only runs in this state"),
    ) -> Response:
        negotiated(request)
        service = _service(request)
        if "ref" in request.path_params and (shadowed := await _named(service, f"{ref}/runs")) is not None:
            return _answer(request, shadowed)
        _check_state(state)
        runs = await asyncio.to_thread(service.runs, ref, state=state, limit=limit, before=before)
        return _answer(request, runs)

    async def schedule_preview(
        request: Request,
        ref: str = Depends(schedule_ref),
        count: int = Query(default=10, ge=1, le=1000, description="How many fire times"),
    ) -> Response:
        negotiated(request)
        service = _service(request)
        if "ref" in request.path_params and (shadowed := await _named(service, f"{ref}/preview")) is not None:
            return _answer(request, shadowed)
        view = await asyncio.to_thread(service.get, ref)
        times = await asyncio.to_thread(service.preview, view.id, count)
        return _answer(request, preview_out(view.spec, times))

    async def pause(request: Request, ref: str = Depends(schedule_ref)) -> Response:
        negotiated(request)
        return _answer(request, await asyncio.to_thread(_service(request).pause, ref, actor=actor(request)))

    async def resume(request: Request, ref: str = Depends(schedule_ref)) -> Response:
        negotiated(request)
        return _answer(request, await asyncio.to_thread(_service(request).resume, ref, actor=actor(request)))

    async def trigger(request: Request, ref: str = Depends(schedule_ref)) -> Response:
        negotiated(request)
        run = await asyncio.to_thread(_service(request).trigger, ref, actor=actor(request))
        return _answer(request, run, 202, {"Location": f"{request.base_url}runs/{run.id}"})

    async def backfill(request: Request, ref: str = Depends(schedule_ref)) -> Response:
        negotiated(request)
        data = _mapping(
            await read_body(request), "a range like {start: 2026-01-01T00:00:00Z, end: 2026-01-02T00:00:00Z}"
        )
        try:
            span = BackfillRequest.model_validate(data)
        except ValidationError as exc:
            raise invalid("backfill range", validation_details(exc)) from exc
        if span.end < span.start:
            raise ApiError(400, "The backfill range ends before it starts", loc=["end"])
        runs = await asyncio.to_thread(
            _service(request).backfill, ref, span.start, span.end, actor=actor(request)
        )
        return _answer(request, runs, 202)

    both(
        "/runs",
        schedule_runs,
        "GET",
        "ScheduleRuns",
        summary="The schedule's runs, newest first",
        responses={200: {"model": list[RunView]}},
    )
    both(
        "/preview",
        schedule_preview,
        "GET",
        "SchedulePreview",
        summary="The next fire times",
        responses={200: {"model": PreviewOut}},
    )
    both(
        "/pause",
        pause,
        "POST",
        "SchedulePause",
        summary="Stop firing (runs in progress go on)",
        responses={200: {"model": ScheduleView}},
    )
    both(
        "/resume",
        resume,
        "POST",
        "ScheduleResume",
        summary="Fire again, from now on",
        responses={200: {"model": ScheduleView}},
    )
    both(
        "/trigger",
        trigger,
        "POST",
        "ScheduleTrigger",
        summary="Run now, outside the schedule",
        status_code=202,
        responses={202: {"model": RunView, "description": "The run; also at Location"}},
    )
    both(
        "/backfill",
        backfill,
        "POST",
        "ScheduleBackfill",
        summary="Run the fire times of a past range",
        status_code=202,
        body="BackfillRequest",
        responses={202: {"model": list[RunView]}},
    )

    # -- one schedule ----------------------------------------------------------------------------------------
    async def get_schedule(request: Request, ref: str = Depends(schedule_ref)) -> Response:
        negotiated(request)
        return _answer(request, await asyncio.to_thread(_service(request).get, ref))

    async def put_schedule(request: Request, ref: str = Depends(schedule_ref)) -> Response:
        negotiated(request)
        service = _service(request)
        spec = parse_spec(await read_body(request))
        current = await asyncio.to_thread(service.get, ref)
        _same_namespace(spec, current)
        view = await asyncio.to_thread(service.update, current.id, spec, actor=actor(request))
        return _answer(request, view)

    async def patch_schedule(request: Request, ref: str = Depends(schedule_ref)) -> Response:
        negotiated(request)
        service = _service(request)
        patch = _mapping(await read_body(request), "a JSON merge patch of the schedule (RFC 7396)")
        current = await asyncio.to_thread(service.get, ref)
        document = merge_patch(current.spec.model_dump(mode="json", by_alias=True, exclude_none=True), patch)
        spec = parse_spec(document)
        _same_namespace(spec, current)
        view = await asyncio.to_thread(service.update, current.id, spec, actor=actor(request))
        return _answer(request, view)

    async def delete_schedule(request: Request, ref: str = Depends(schedule_ref)) -> Response:
        negotiated(request)
        await asyncio.to_thread(_service(request).delete, ref, actor=actor(request))
        return Response(status_code=204)

    both(
        "",
        get_schedule,
        "GET",
        "ScheduleGet",
        summary="A schedule with its state",
        responses={200: {"model": ScheduleView}},
    )
    both(
        "",
        put_schedule,
        "PUT",
        "ScheduleReplace",
        summary="Replace the spec; takes effect at once",
        body="ScheduleSpec",
        responses={200: {"model": ScheduleView}},
    )
    both(
        "",
        patch_schedule,
        "PATCH",
        "ScheduleUpdate",
        summary="Change part of the spec (JSON merge patch)",
        body="ScheduleSpec",
        body_types=("application/merge-patch+json",),
        responses={200: {"model": ScheduleView}},
    )
    both(
        "",
        delete_schedule,
        "DELETE",
        "ScheduleDelete",
        summary="Delete a schedule and its runs",
        status_code=204,
        responses={204: {"description": "Deleted"}},
    )

    # -- preview without a schedule --------------------------------------------------------------------------
    @router.post(
        "/preview",
        operation_id="TriggerPreview",
        summary="The next fire times of a trigger, without creating anything",
        responses={200: {"model": PreviewOut}, **ERRORS},
        openapi_extra=_body_doc("PreviewRequest"),
    )
    async def preview(request: Request) -> Response:
        negotiated(request)
        spec, count, after = preview_spec(await read_body(request))
        now = _service(request).clock.now()
        times = await asyncio.to_thread(triggers.preview, spec, count, after=after or now, created=now)
        return _answer(request, preview_out(spec, times))

    # -- runs ------------------------------------------------------------------------------------------------
    @router.get(
        "/runs",
        operation_id="RunList",
        tags=["runs"],
        summary="Runs of every schedule, newest first",
        responses={200: {"model": list[RunView]}, **ERRORS},
    )
    async def list_runs(
        request: Request,
        namespace: str | None = Query(default=None),
        state: str | None = Query(default=None),
        limit: int = Query(default=50, ge=1, le=1000),
        before: int | None = Query(default=None, description="Runs older than this run id (paging)"),
    ) -> Response:
        negotiated(request)
        _check_state(state)
        runs = await asyncio.to_thread(
            _service(request).runs, None, namespace=namespace, state=state, limit=limit, before=before
        )
        return _answer(request, runs)

    @router.get(
        "/runs/{run_id}",
        operation_id="RunGet",
        tags=["runs"],
        responses={200: {"model": RunView}, **ERRORS},
    )
    async def get_run(request: Request, run_id: int) -> Response:
        negotiated(request)
        return _answer(request, await asyncio.to_thread(_service(request).run, run_id))

    @router.post(
        "/runs/{run_id}/cancel",
        operation_id="RunCancel",
        tags=["runs"],
        summary="Cancel a run: a waiting one at once (200), a running one through its owner (202)",
        responses={200: {"model": RunView}, 202: {"model": RunView}, **ERRORS},
    )
    async def cancel_run(request: Request, run_id: int) -> Response:
        negotiated(request)
        run = await asyncio.to_thread(_service(request).cancel_run, run_id, actor=actor(request))
        return _answer(request, run, 202 if run.state == "cancelling" else 200)

    # -- namespaces, audit, events ---------------------------------------------------------------------------
    @router.get(
        "/namespaces",
        operation_id="NamespaceList",
        responses={200: {"model": list[NamespaceView]}, **ERRORS},
    )
    async def list_namespaces(request: Request) -> Response:
        negotiated(request)
        return _answer(request, await asyncio.to_thread(_service(request).namespaces))

    @router.get(
        "/audit",
        operation_id="AuditList",
        summary="Who changed what, newest first",
        responses={200: {"model": list[AuditView]}, **ERRORS},
    )
    async def list_audit(
        request: Request,
        namespace: str | None = Query(default=None),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> Response:
        negotiated(request)
        return _answer(request, await asyncio.to_thread(_service(request).audit, namespace, limit))

    @router.get(
        "/events",
        operation_id="RunEvents",
        tags=["runs"],
        summary="Server-sent events: `run` with the run for every change; resume with Last-Event-ID",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "An endless event stream"}},
    )
    async def events(
        request: Request,
        namespace: str | None = Query(default=None, description="Only runs of this namespace"),
        schedule: str | None = Query(
            default=None, description="Only runs of this schedule (id, name, ns/name)"
        ),
    ) -> Response:
        service = _service(request)
        last = request.headers.get("last-event-id")
        start = decode_cursor(last) if last else (service.clock.now(), 0)
        hub = wakeups(request.app)
        return StreamingResponse(
            event_stream(request, service, hub, start, namespace, schedule),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router


async def _named(service: SchedulerService, ref: str) -> ScheduleView | None:
    """The schedule ``namespace/name`` if it exists (a schedule called ``runs`` or ``preview`` is reachable at
    ``/schedules/{namespace}/runs`` although that path also reads as the runs of ``{namespace}``)."""
    from ecliptic.schedule.service import NotFound

    if _is_uuid(ref.partition("/")[0]):
        return None
    try:
        return await asyncio.to_thread(service.get, ref)
    except NotFound:
        return None


def _check_state(state: str | None) -> None:
    if state is not None and state not in RUN_STATES:
        raise ApiError(
            400, f"{state!r} is not a run state (one of {', '.join(RUN_STATES)})", loc=["query", "state"]
        )


def _same_namespace(spec: ScheduleSpec, current: ScheduleView) -> None:
    if spec.namespace is not None and spec.namespace != current.namespace:
        raise ApiError(
            400,
            f"A schedule cannot move to another namespace ({current.namespace} → {spec.namespace}): "
            "create it there and delete this one",
            loc=["namespace"],
        )


def install_error_handlers(app: FastAPI) -> None:
    """The service's refusals (:class:`ScheduleError` and its 404/409 kinds) in the one error shape."""

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ScheduleError)
        details = []
        if exc.field:
            details = [{"loc": exc.field.split("."), "msg": exc.message, "type": "value_error"}]
        return respond_error(request, exc.status, error_body(exc.status, exc.message, details))

    app.add_exception_handler(ScheduleError, refused)


OPENAPI_MODELS: tuple[type[BaseModel], ...] = (ScheduleSpec, BackfillRequest, PreviewRequest)
"""Bodies read by hand (JSON or YAML), so FastAPI does not see them: app.py adds them to the components."""
