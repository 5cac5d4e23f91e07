"""The scheduler from Python code: schedule a callable or a command, embedded in your process.

    from ecliptic.schedule import Scheduler

    with Scheduler() as scheduler:            # the store from ECLIPTIC_* settings (SQLite by default)
        @scheduler.every("10s")
        def heartbeat() -> None: ...

        scheduler.add("cmd:echo hello", when="0 9 * * mon-fri", name="greet", timezone="Europe/Vienna")
        scheduler.wait()                      # until Ctrl-C

Callables run in this process, on a thread; commands, snippets, files and entry points run as subprocesses.
The schedules are rows in the store like any other, so the CLI, the HTTP API and the web UI see them, and a
callable defined at module level of an importable module also runs on other scheduler instances.
"""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from ecliptic.config import Settings, get_settings
from ecliptic.schedule.assembly import SchedulerParts, build_scheduler
from ecliptic.schedule.service import NotFound, SchedulerService
from ecliptic.schedule.spec import (
    AnyTrigger,
    CallRunner,
    OnceTrigger,
    RunView,
    ScheduleSpec,
    ScheduleView,
    SingleRunner,
    parse_run,
    parse_when,
)
from ecliptic.store import Database, upgrade

F = TypeVar("F", bound=Callable[..., Any])
_IDENT = re.compile(r"^[A-Za-z_][\w.]*$")


def callable_ref(func: Callable[..., Any]) -> str:
    """``module:qualname`` for an importable function; a process-local name for lambdas and closures."""
    module = getattr(func, "__module__", None) or "__main__"
    qualname = getattr(func, "__qualname__", "") or getattr(func, "__name__", "")
    if _IDENT.match(module) and _IDENT.match(qualname):
        return f"{module}:{qualname}"
    name = re.sub(r"\W", "_", getattr(func, "__name__", "fn")) or "fn"
    return f"ecliptic_local:{name}_{id(func):x}"


class Scheduler:
    """An embedded scheduler: a service on the store plus a running instance."""

    def __init__(
        self, settings: Settings | None = None, *, namespace: str = "default", start: bool = True
    ) -> None:
        self.settings = settings or get_settings()
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(self.settings.resolved_database_url())
        upgrade(self.db)
        self.namespace = namespace
        self._callables: dict[str, Callable[..., Any]] = {}
        self.parts: SchedulerParts = build_scheduler(self.db, self.settings, callables=self._callables)
        self._running = False
        if start:
            self.start()

    @property
    def service(self) -> SchedulerService:
        return self.parts.service

    def start(self) -> None:
        if not self._running:
            self.parts.start()
            self._running = True

    def stop(self) -> None:
        if self._running:
            self.parts.stop()
            self._running = False
        self.db.dispose()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add(
        self,
        what: Callable[..., Any] | str | SingleRunner,
        when: str | AnyTrigger | datetime,
        *,
        name: str | None = None,
        replace: bool = True,
        **fields: Any,
    ) -> ScheduleView:
        """Schedule a callable, a runner shorthand (``cmd:…``, ``python:…``) or a runner model.

        ``fields`` are any other :class:`ScheduleSpec` fields (timezone, retry, overlap, timeout, …). With
        ``replace`` (the default) a schedule of the same name is updated in place, so re-running a script does
        not fail.
        """
        if callable(what) and not isinstance(what, str):
            ref = callable_ref(what)
            self._callables[ref] = what
            runner: Any = CallRunner(call=ref)
            name = (
                name or re.sub(r"[^A-Za-z0-9_.@-]", "-", getattr(what, "__name__", "job")).strip("-") or "job"
            )
        elif isinstance(what, str):
            runner = parse_run(what)
        else:
            runner = what
        if isinstance(when, datetime):
            trigger: Any = OnceTrigger(once=when)
        elif isinstance(when, str):
            trigger = parse_when(when)
        else:
            trigger = when
        spec = ScheduleSpec.model_validate(
            {
                "name": name or "job",
                "namespace": fields.pop("namespace", self.namespace),
                "trigger": trigger,
                "run": runner,
                **fields,
            }
        )
        if replace:
            try:
                return self.service.update(f"{spec.namespace}/{spec.name}", spec)
            except NotFound:
                pass
        return self.service.create(spec)

    def every(self, interval: str, **fields: Any) -> Callable[[F], F]:
        """Decorator: run the function every ``interval`` (``10s``, ``PT5M``)."""
        return self._decorator(f"every {interval}", fields)

    def cron(self, expression: str, **fields: Any) -> Callable[[F], F]:
        """Decorator: run the function on a cron expression (``0 9 * * mon-fri``, ``@daily``)."""
        return self._decorator(expression, fields)

    def _decorator(self, when: str, fields: dict[str, Any]) -> Callable[[F], F]:
        def register(func: F) -> F:
            self.add(func, when, **fields)
            return func

        return register

    def runs(self, ref: str, limit: int = 50) -> list[RunView]:
        return self.service.runs(ref, limit=limit)

    def wait(self, timeout: float | None = None) -> None:
        """Block until Ctrl-C / SIGTERM (or ``timeout`` seconds)."""
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
        stop.wait(timeout)
