"""The ExecutionBroker HTTP API: current paths, the Mar-2026 aliases, and session outputs."""

from __future__ import annotations

import asyncio
import os
import uuid as uuidlib
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from pydantic import ValidationError

from ecliptic.broker import views
from ecliptic.broker.phases import SessionPhase
from ecliptic.broker.schema import ErrorResponse, ExecutionRequest, OfferSetOut, PhaseUpdate, SessionOut
from ecliptic.broker.service import Broker, NotFound
from ecliptic.broker.validate import RequestInvalid, pydantic_details
from ecliptic.http.errors import ApiError, error_body, respond_error
from ecliptic.http.negotiation import negotiated, read_body, render

UPDATE_KINDS = {"uri:enum-value-update", "urn:enum-value-update"}
CONTROL_DIR = ".ecliptic"


def _schema_ref(name: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{name}"}
    return {"application/json": {"schema": ref}, "application/yaml": {"schema": ref}}


def _body_doc(name: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": _schema_ref(name)}}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed input; `details` says what and where"},
    404: {"model": ErrorResponse, "description": "No such resource"},
    406: {"model": ErrorResponse, "description": "The Accept header allows neither JSON nor YAML"},
    415: {"model": ErrorResponse, "description": "The body is neither JSON nor YAML"},
}


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuidlib.UUID(value))
    except ValueError as exc:
        raise ApiError(400, f"{value!r} is not a {what} UUID", loc=["path", "uuid"]) from exc


def _base(request: Request) -> str:
    return str(request.base_url)


def _broker(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


async def _execution_request(request: Request) -> ExecutionRequest:
    data = await read_body(request)
    if not isinstance(data, dict):
        raise ApiError(
            400,
            f"The body must be an execution request object (a mapping), not {type(data).__name__}",
            loc=["body"],
        )
    try:
        return ExecutionRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestInvalid(pydantic_details(exc)) from exc


def _invalid(exc: RequestInvalid) -> ApiError:
    return ApiError(
        400,
        f"The request is malformed: {exc}",
        details=[detail.model_dump() for detail in exc.details],
    )


def _updates(data: Any) -> list[PhaseUpdate]:
    items = data if isinstance(data, list) else [data]
    if not items:
        raise ApiError(400, "The update list is empty", loc=["body"])
    updates = []
    for index, item in enumerate(items):
        loc: list[str | int] = [index] if isinstance(data, list) else []
        if not isinstance(item, dict):
            raise ApiError(
                400,
                "An update must be an object like "
                '{"kind": "uri:enum-value-update", "path": "phase", "value": "ACCEPTED"}',
                loc=["body", *loc],
            )
        try:
            update = PhaseUpdate.model_validate(item)
        except ValidationError as exc:
            raise _invalid(RequestInvalid(pydantic_details(exc, ("body", *loc)))) from exc
        if update.kind not in UPDATE_KINDS:
            raise ApiError(
                400,
                f"Unsupported update kind {update.kind!r}: use uri:enum-value-update",
                loc=["body", *loc, "kind"],
            )
        if update.path.strip("/") != "phase":
            raise ApiError(
                400, f"Cannot update {update.path!r}: only phase can be changed", loc=["body", *loc, "path"]
            )
        if update.value not in SessionPhase.__members__:
            allowed = ", ".join(p.value for p in SessionPhase)
            raise ApiError(
                400,
                f"{update.value!r} is not a session phase (one of {allowed})",
                loc=["body", *loc, "value"],
            )
        updates.append(update)
    return updates


def build_router() -> APIRouter:
    router = APIRouter()

    async def create_offers(request: Request) -> Response:
        fmt = negotiated(request)
        broker = _broker(request)
        execution = await _execution_request(request)
        offerset = await asyncio.to_thread(broker.request_offers, execution)
        body = views.offerset_out(offerset, _base(request))
        return render(body, fmt, 303, {"Location": f"{_base(request)}offersets/{offerset.uuid}"})

    for path, op in (("/requests", "ExecutionRequest"), ("/offersets", "OfferSetPost")):
        router.add_api_route(
            path,
            create_offers,
            methods=["POST"],
            status_code=303,
            operation_id=op,
            summary="Ask for offers",
            tags=["offers"],
            responses={
                303: {"model": OfferSetOut, "description": "The offer set (YES or NO), also at Location"},
                **ERRORS,
            },
            openapi_extra=_body_doc("ExecutionRequest"),
        )

    @router.get(
        "/offersets/{uuid}",
        operation_id="OfferSetSelect",
        tags=["offers"],
        responses={200: {"model": OfferSetOut}, **ERRORS},
    )
    async def get_offerset(uuid: str, request: Request) -> Response:
        fmt = negotiated(request)
        offerset = await asyncio.to_thread(_broker(request).offerset, _uuid(uuid, "offer set"))
        return render(views.offerset_out(offerset, _base(request)), fmt)

    async def direct(request: Request) -> Response:
        fmt = negotiated(request)
        broker = _broker(request)
        execution = await _execution_request(request)
        result = await asyncio.to_thread(broker.direct, execution)
        body = views.session_out(result.session, _base(request))
        location = {"Location": f"{_base(request)}sessions/{result.session.uuid}"}
        return render(body, fmt, 303 if result.accepted else 400, location)

    for path, op in (("/direct", "DirectExecution"), ("/sessions", "DirectExecutionPost")):
        router.add_api_route(
            path,
            direct,
            methods=["POST"],
            status_code=303,
            operation_id=op,
            tags=["sessions"],
            summary="Run now: book the first slot and accept it",
            responses={
                303: {"model": SessionOut, "description": "The accepted session, also at Location"},
                400: {"model": SessionOut, "description": "A FAILED session whose messages say why"},
            },
            openapi_extra=_body_doc("ExecutionRequest"),
        )

    @router.get("/sessions", operation_id="SessionList", tags=["sessions"])
    async def list_sessions(
        request: Request,
        phase: str | None = Query(default=None, description="Only sessions in this phase"),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> Response:
        fmt = negotiated(request)
        if phase is not None and phase not in SessionPhase.__members__:
            raise ApiError(400, f"{phase!r} is not a session phase", loc=["query", "phase"])
        rows = await asyncio.to_thread(_broker(request).sessions, phase, limit)
        return render({"sessions": [views.session_out(row, _base(request)) for row in rows]}, fmt)

    async def get_session(uuid: str, request: Request) -> Response:
        fmt = negotiated(request)
        row = await asyncio.to_thread(_broker(request).session, _uuid(uuid, "session"))
        return render(views.session_out(row, _base(request)), fmt)

    async def update_session(uuid: str, request: Request) -> Response:
        fmt = negotiated(request)
        session_uuid = _uuid(uuid, "session")
        broker = _broker(request)
        updates = _updates(await read_body(request))
        row = None
        for update in updates:
            updated, refused = await asyncio.to_thread(broker.update, session_uuid, update)
            row = updated
            if refused is not None:
                current = views.session_out(updated, _base(request))
                if broker.settings.compat_silent_updates:
                    return render(current, fmt)
                return render(
                    error_body(409, refused, session=current.model_dump(mode="json", exclude_none=True)),
                    fmt,
                    409,
                )
        assert row is not None
        return render(views.session_out(row, _base(request)), fmt)

    for prefix in ("/sessions", "/executions"):
        router.add_api_route(
            f"{prefix}/{{uuid}}",
            get_session,
            methods=["GET"],
            tags=["sessions"],
            operation_id="SessionSelect" if prefix == "/sessions" else "ExecutionSelect",
            responses={200: {"model": SessionOut}, **ERRORS},
        )
        router.add_api_route(
            f"{prefix}/{{uuid}}",
            update_session,
            methods=["POST"],
            tags=["sessions"],
            operation_id="SessionUpdate" if prefix == "/sessions" else "ExecutionUpdate",
            summary="Change the phase: ACCEPTED or REJECTED an offer, CANCELLED a live session",
            responses={
                200: {"model": SessionOut},
                409: {
                    "model": ErrorResponse,
                    "description": "Not allowed now; `session` is the session as it is",
                },
                **ERRORS,
            },
            openapi_extra=_body_doc("PhaseUpdate"),
        )

    for role_path in ("executables", "compute", "storage", "data"):

        async def get_component(uuid: str, request: Request) -> Response:
            fmt = negotiated(request)
            row, component = await asyncio.to_thread(_broker(request).component, _uuid(uuid, "component"))
            return render(views.component_out(row, component, _base(request)), fmt)

        router.add_api_route(
            f"/{role_path}/{{uuid}}",
            get_component,
            methods=["GET"],
            tags=["components"],
            operation_id=f"{role_path.title()}Select",
            responses=ERRORS,
        )

    @router.get(
        "/sessions/{uuid}/logs",
        tags=["outputs"],
        response_class=PlainTextResponse,
        summary="The executable's standard output or error",
    )
    async def session_logs(
        uuid: str,
        request: Request,
        stream: str = Query(default="stdout", pattern="^(stdout|stderr)$"),
        tail: int | None = Query(default=None, ge=1, le=1_000_000, description="Only the last N lines"),
        offset: int = Query(default=0, ge=0, description="Start at this byte (to follow a growing log)"),
    ) -> Response:
        broker = _broker(request)
        session_uuid = _uuid(uuid, "session")
        await asyncio.to_thread(broker.session, session_uuid)
        path = broker.workdir(session_uuid) / "logs" / f"{stream}.txt"
        data = await asyncio.to_thread(_read_bytes, path, offset)
        text = data.decode("utf-8", errors="replace")
        if tail is not None:
            text = "".join(text.splitlines(keepends=True)[-tail:])
        # The size lets a follower ask for the next part with ?offset= without re-reading the whole log.
        return PlainTextResponse(text, headers={"X-Log-Size": str(offset + len(data))})

    @router.get("/sessions/{uuid}/history", tags=["sessions"], summary="Every phase change, with its reason")
    async def session_history(uuid: str, request: Request) -> Response:
        fmt = negotiated(request)
        rows = await asyncio.to_thread(_broker(request).history, _uuid(uuid, "session"))
        return render({"history": [views.transition_out(row) for row in rows]}, fmt)

    @router.get("/sessions/{uuid}/files", tags=["outputs"], summary="Files in the session's storage")
    async def session_files(uuid: str, request: Request) -> Response:
        fmt = negotiated(request)
        broker = _broker(request)
        session_uuid = _uuid(uuid, "session")
        await asyncio.to_thread(broker.session, session_uuid)
        files = await asyncio.to_thread(_list_files, broker.workdir(session_uuid))
        return render({"files": files}, fmt)

    @router.get("/sessions/{uuid}/files/{path:path}", tags=["outputs"], summary="One file from the session")
    async def session_file(uuid: str, path: str, request: Request) -> Response:
        broker = _broker(request)
        session_uuid = _uuid(uuid, "session")
        await asyncio.to_thread(broker.session, session_uuid)
        workdir = broker.workdir(session_uuid)
        target = _inside(workdir, path)
        if target is None or not target.is_file():
            raise ApiError(404, f"Session {session_uuid} has no file {path!r}", loc=["path", "path"])
        return FileResponse(target)

    return router


def _read_bytes(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read()
    except FileNotFoundError:
        return b""


def _inside(workdir: Path, relative: str) -> Path | None:
    """``relative`` under ``workdir``, or None if it escapes it or names the control directory."""
    root = workdir.resolve()
    target = (workdir / relative).resolve()
    if target != root and root not in target.parents:
        return None
    if CONTROL_DIR in target.relative_to(root).parts:
        return None
    return target


def _list_files(workdir: Path) -> list[dict[str, Any]]:
    if not workdir.is_dir():
        return []
    files = []
    for dirpath, dirnames, filenames in os.walk(workdir):
        dirnames[:] = sorted(d for d in dirnames if d != CONTROL_DIR)
        for name in sorted(filenames):
            full = Path(dirpath) / name
            stat = full.stat()
            files.append({"path": str(full.relative_to(workdir)), "size": stat.st_size})
    return files


def install_error_handlers(app: FastAPI) -> None:
    async def not_found(request: Request, exc: Exception) -> Response:
        return respond_error(request, 404, error_body(404, str(exc).capitalize()))

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestInvalid)
        error = _invalid(exc)
        return respond_error(request, 400, error_body(400, error.message, error.details))

    app.add_exception_handler(NotFound, not_found)
    app.add_exception_handler(RequestInvalid, invalid)
