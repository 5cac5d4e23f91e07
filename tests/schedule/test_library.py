"""The scheduler from Python code: decorators, callables, commands, on a real store."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ecliptic.schedule import Scheduler
from ecliptic.schedule.library import callable_ref
from tests.conftest import make_settings

hits: list[float] = []


def beat() -> None:
    hits.append(time.time())


def wait_for(predicate, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.03)


def test_decorated_functions_commands_and_closures(tmp_path: Path, database_url: str) -> None:
    hits.clear()
    settings = make_settings(tmp_path / "data", database_url, scheduler_tick="PT0.02S")
    local: list[str] = []
    done = threading.Event()

    with Scheduler(settings, namespace="lib") as scheduler:
        scheduler.every("100ms", name="beat", max_runs=3, overlap="queue")(beat)
        scheduler.add(lambda: (local.append("closure"), done.set()), "once", name="closure")
        view = scheduler.add("python:print('from the library')", "once", name="snippet")
        assert view.namespace == "lib" and view.spec.run.model_dump()["python"].startswith("print")

        wait_for(lambda: len(hits) >= 3 and done.is_set())
        runs = scheduler.runs("lib/snippet")
        wait_for(lambda: [r.state for r in scheduler.runs("lib/snippet")] == ["succeeded"])
        (run,) = scheduler.runs("lib/snippet")
        assert "from the library" in (run.stdout_tail or "")
        assert local == ["closure"]
        assert len(hits) == 3  # max_runs
        # Adding the same name again updates it in place instead of failing.
        again = scheduler.add(beat, "every 1h", name="beat")
        assert again.id == scheduler.service.get("lib/beat").id
        assert again.spec.trigger.model_dump(mode="json")["every"] == "PT1H"
        del runs


def test_callable_references() -> None:
    assert callable_ref(beat) == "tests.schedule.test_library:beat"
    ref = callable_ref(lambda: None)
    assert ref.startswith("ecliptic_local:")
