"""Assembly: settings → store → platforms → broker → engine workers → HTTP application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from ecliptic import __version__
from ecliptic.broker.api import build_router, install_error_handlers
from ecliptic.broker.handlers import handlers
from ecliptic.broker.planner import Planner, PlannerSettings
from ecliptic.broker.schema import ExecutionRequest, PhaseUpdate
from ecliptic.broker.service import Broker
from ecliptic.config import Settings, SettingsError, get_settings
from ecliptic.engine import Worker
from ecliptic.http import errors
from ecliptic.http.negotiation import negotiated, render
from ecliptic.platforms import registry
from ecliptic.platforms.base import Capacity, Platform
from ecliptic.platforms.local import LocalPlatform
from ecliptic.schedule import api as schedule_api
from ecliptic.schedule.assembly import SchedulerParts, build_scheduler
from ecliptic.staging.assembly import build_data_sources, build_estimator, build_results
from ecliptic.store import Database, upgrade
from ecliptic.web import mesh_routes as mesh_web_routes
from ecliptic.web import routes as web_routes
from ecliptic.web import schedule_routes as schedule_web_routes

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    db: Database
    broker: Broker
    worker: Worker
    scheduler: SchedulerParts

    def start(self) -> None:
        self.worker.start()
        if self.settings.scheduler:
            self.scheduler.start()

    def stop(self) -> None:
        if self.settings.scheduler:
            self.scheduler.stop()
        self.worker.stop()


def build_platforms(settings: Settings) -> dict[str, Platform]:
    platforms: dict[str, Platform] = {}
    if settings.local_platform:
        capacity = Capacity(
            cores=settings.local_cores,
            memory_gib=settings.local_memory_gib,
            storage_gib=settings.local_storage_gib,
            max_duration=settings.local_max_duration,
        )
        platforms["local"] = LocalPlatform(capacity, site=settings.local_site)
    try:
        platforms.update(registry.build_platforms(settings.platforms))
    except registry.PlatformConfigError as exc:
        raise SettingsError(str(exc)) from exc
    if not platforms:
        raise SettingsError("no platform is configured: set local_platform = true or add [platforms.<name>]")
    return platforms


def build_services(settings: Settings | None = None) -> Services:
    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url())
    upgrade(db)
    platforms = build_platforms(settings)
    planner = Planner(
        platforms,
        PlannerSettings(
            default_start_range=settings.default_start_range,
            slot_step=settings.slot_step,
            release_margin=settings.release_margin,
            max_offers=settings.max_offers,
        ),
    )
    worker_box: list[Worker] = []
    broker = Broker(
        db,
        settings,
        platforms,
        planner,
        wake=lambda: worker_box[0].wake() if worker_box else None,
        data_sources=build_data_sources(settings),
        estimator=build_estimator(db, settings),
        results=build_results(settings),
    )
    broker.sync_platforms()
    worker = Worker(
        db, handlers(broker), threads=settings.workers, lease=settings.lease, idle_poll=settings.idle_poll
    )
    worker_box.append(worker)
    scheduler = build_scheduler(db, settings)
    return Services(settings, db, broker, worker, scheduler)


def create_app(settings: Settings | None = None, *, run_workers: bool = True) -> FastAPI:
    services = build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if run_workers:
            services.start()
        try:
            yield
        finally:
            if run_workers:
                services.stop()
            services.db.dispose()

    app = FastAPI(
        title="Ecliptic",
        version=__version__,
        summary="IVOA ExecutionBroker: ask for offers, accept one, watch it run, read its output.",
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.broker = services.broker
    errors.install(app)
    install_error_handlers(app)
    schedule_api.install_error_handlers(app)
    app.include_router(build_router())
    app.include_router(schedule_api.build_router())
    app.include_router(web_routes.build_router())
    app.include_router(schedule_web_routes.build_router())
    app.include_router(mesh_web_routes.build_router(services.settings.mesh_address()))
    app.mount("/ui/static", StaticFiles(directory=web_routes.HERE / "static"), name="ui-static")

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/ui/sessions")

    @app.get("/health", tags=["service"])
    async def health(request: Request) -> Response:
        return render(
            {
                "status": "ok",
                "version": __version__,
                "database": services.db.engine.dialect.name,
                "platforms": sorted(services.broker.platforms),
            },
            negotiated(request),
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        models: tuple[type[BaseModel], ...] = (ExecutionRequest, PhaseUpdate, *schedule_api.OPENAPI_MODELS)
        for model in models:
            generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(generated.pop("$defs", {}))
            components[model.__name__] = generated
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
