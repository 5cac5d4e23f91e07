"""``ecliptic``: the command tree."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer

from ecliptic import __version__
from ecliptic.cli import client, mesh, schedule
from ecliptic.config import Settings, SettingsError, get_settings, locate_setting

T = TypeVar("T")

app = typer.Typer(
    name="ecliptic",
    help="Compute, data and time in one service: an IVOA ExecutionBroker on a durable engine.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
client.register(app)
schedule.register(app)
mesh.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ecliptic {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # Their INFO lines (every migration step, every HTTP request of a client command) are noise here.
        for noisy in ("alembic", "httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from exc


def _assembled(build: Callable[[], T]) -> T:
    """Platforms and data sources are checked when the service is put together: one located line each."""
    try:
        return build()
    except SettingsError as exc:
        toml_file = Path(os.environ.get("ECLIPTIC_CONFIG", "ecliptic.toml"))
        first = str(exc).split(":", 1)[0].strip("[] ").split(" ", 1)[0]
        line = locate_setting(toml_file, first) if toml_file.is_file() else None
        where = f"{toml_file}:{line}: " if line else (f"{toml_file}: " if toml_file.is_file() else "")
        typer.secho(f"error: {where}{exc}", err=True, fg="red")
        raise typer.Exit(2) from exc


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8080, help="Port to listen on."),
    workers: bool = typer.Option(True, help="Also run engine workers in this process."),
) -> None:
    """Run the HTTP API (and, by default, the engine workers) on the configured store."""
    import uvicorn

    from ecliptic.app import create_app

    settings_ = _settings()
    application = _assembled(lambda: create_app(settings_, run_workers=workers))
    settings = application.state.services.settings
    if settings.broker_url is None:
        # Broker-request jobs of this process's scheduler go to this very service.
        application.state.services.scheduler.instance.settings.broker_url = f"http://{host}:{port}"
    typer.echo(
        f"Ecliptic {__version__} on http://{host}:{port}/ (web UI at /ui/, API docs at /docs) — "
        f"store {application.state.services.db.engine.url!r}, data in {settings.data_dir}"
    )
    pod = None
    if settings.mesh_embedded and not settings.mesh_pod:
        from ecliptic.mesh.embedded import EmbeddedPod

        pod = EmbeddedPod(settings.data_dir / "mesh", settings.mesh_listen)
        if pod.start():
            typer.echo(f"Mesh: a one-pod network on {pod.address} (ecliptic mesh … --pod {pod.address})")
        else:
            typer.secho(
                f"Mesh: the embedded pod did not start ({pod.error}); set ECLIPTIC_MESH_LISTEN to another "
                "HOST:PORT, ECLIPTIC_MESH_POD to use a running pod, or ECLIPTIC_MESH_EMBEDDED=false",
                err=True,
                fg="yellow",
            )
    # A bounded graceful shutdown: open event streams (/events) would otherwise hold Ctrl-C forever.
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level="warning",
        proxy_headers=True,
        timeout_graceful_shutdown=5,
    )
    if pod is not None:
        pod.stop()


@app.command()
def worker() -> None:
    """Run engine workers and a scheduler instance, no HTTP (scale out: several on one PostgreSQL)."""
    from ecliptic.app import build_services

    settings_ = _settings()
    services = _assembled(lambda: build_services(settings_))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    services.start()
    typer.echo(f"Ecliptic worker {services.worker.owner} on {services.db.engine.url!r}; Ctrl-C to stop")
    stop.wait()
    services.stop()


@app.command()
def migrate() -> None:
    """Bring the store to the newest schema (serve and worker do this too)."""
    from ecliptic.store import Database, upgrade

    db = Database(_settings().resolved_database_url())
    upgrade(db)
    typer.echo(f"Store {db.engine.url!r} is up to date")
