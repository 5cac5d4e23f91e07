"""The scheduler commands on a store in a temporary directory: preview, the listings and changes through Typer's
runner, and ``ecliptic run`` as real processes (exit status, streaming, signals), each bounded by a timeout."""

from __future__ import annotations

import itertools
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from ecliptic.cli import schedule as schedule_cli
from ecliptic.cli.main import app
from ecliptic.config import get_settings
from ecliptic.isotime import utcnow
from ecliptic.schedule import timetable
from ecliptic.schedule.assembly import build_scheduler
from ecliptic.schedule.service import NotFound, SchedulerService
from ecliptic.schedule.spec import RunView, ScheduleSpec, parse_run, parse_when
from ecliptic.store import Database, upgrade
from ecliptic.store.tables import SchedulerInstanceRow

FAST = {
    "ECLIPTIC_SCHEDULER_TICK": "PT0.05S",
    "ECLIPTIC_SCHEDULER_LEASE": "PT5S",
}
PROCESS_TIMEOUT = 60


def cli(*args: str) -> Result:
    """``ecliptic ARGS`` in this process; an exception other than an exit is a bug of the command."""
    result = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200"}).invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"ecliptic {' '.join(args)} raised:\n{result.output}") from result.exception
    return result


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Settings pointing into tmp_path (and no ecliptic.toml of the working directory)."""
    data = tmp_path / "data"
    monkeypatch.setenv("ECLIPTIC_DATA_DIR", str(data))
    monkeypatch.delenv("ECLIPTIC_DATABASE_URL", raising=False)
    monkeypatch.setenv("ECLIPTIC_CONFIG", str(tmp_path / "none.toml"))
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield data
    get_settings.cache_clear()


@pytest.fixture
def store(data_dir: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[SchedulerService]:
    """A service on the store the commands use (SQLite, and PostgreSQL when the tests have one)."""
    monkeypatch.setenv("ECLIPTIC_DATABASE_URL", database_url)
    get_settings.cache_clear()
    db = Database(database_url)
    upgrade(db)
    yield SchedulerService(db)
    db.dispose()


def spec(name: str, namespace: str, trigger: dict[str, Any], run: Any = None, **fields: Any) -> ScheduleSpec:
    return ScheduleSpec.model_validate(
        {"name": name, "namespace": namespace, "trigger": trigger, "run": run or {"cmd": ["true"]}, **fields}
    )


def prepare(service: SchedulerService) -> None:
    service.create(spec("backup", "alpha", {"cron": "0 3 * * *"}, timezone="Europe/Vienna"))
    service.create(spec("report", "alpha", {"every": "1h"}))
    service.create(spec("backup", "beta", {"cron": "30 4 * * 1-5"}))


# -- preview --------------------------------------------------------------------------------------------------
def instants(result: Result) -> list[datetime]:
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines, result.output
    return [datetime.fromisoformat(line) for line in lines]


def test_preview_prints_instants_with_the_zone_offset_only() -> None:
    result = cli("preview", "0 9 * 12 *", "--tz", "Europe/Vienna", "--count", "5")
    times = instants(result)
    assert len(times) == 5
    for at in times:
        assert at.utcoffset() == timedelta(hours=1)  # December in Vienna: CET
        assert (at.month, at.hour, at.minute, at.second) == (12, 9, 0, 0)
    assert re.fullmatch(r"\d{4}-12-\d\dT09:00:00\+01:00", result.stdout.splitlines()[0])
    assert times == sorted(times) and times[0] > utcnow()
    assert "9" in result.stderr  # the schedule in words goes to stderr, not into the piped output


def test_preview_across_a_dst_change_shows_both_offsets() -> None:
    result = cli("preview", "0 12 * 3,4 *", "--tz", "Europe/Vienna", "--count", "61")
    times = instants(result)
    assert {at.utcoffset() for at in times} == {timedelta(hours=1), timedelta(hours=2)}
    assert all((at.hour, at.minute) == (12, 0) for at in times)  # 12:00 local on either side of the change


def test_preview_weekdays_are_monday_to_friday() -> None:
    times = instants(cli("preview", "0 9 * * 1-5", "--count", "20"))
    assert {at.weekday() for at in times} == {0, 1, 2, 3, 4}
    assert all((at.hour, at.minute) == (9, 0) and at.utcoffset() == timedelta(0) for at in times)


def test_preview_intervals_seconds_and_words() -> None:
    times = instants(cli("preview", "every", "10s", "--count", "3"))
    assert [b - a for a, b in itertools.pairwise(times)] == [timedelta(seconds=10)] * 2
    seconds = instants(cli("preview", "* * * * *", "--second", "*/15", "--count", "8"))
    assert {at.second for at in seconds} <= {0, 15, 30, 45} and len(set(seconds)) == 8


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["not a schedule"], "not a schedule"),
        (["0 0 9 * * 1-5"], "6 fields"),
        (["0 9 * * *", "--tz", "Mars/Olympus"], "IANA time zone"),
        (["every 10s", "--second", "5"], "--second goes with a cron expression"),
        (["61 9 * * *"], ""),
    ],
)
def test_preview_refuses_bad_input_in_one_red_line(args: list[str], says: str) -> None:
    result = cli("preview", *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert says in result.stderr


def test_preview_bad_spec_names_the_accepted_forms() -> None:
    result = cli("preview", "sometimes")
    assert result.exit_code == 2
    for form in ("once", "@daily", "cron", "every 10s", "RRULE"):
        assert form in result.stderr


# -- listings and changes -------------------------------------------------------------------------------------
def test_namespaces_and_jobs(store: SchedulerService) -> None:
    prepare(store)
    listing = cli("namespaces")
    assert listing.exit_code == 0, listing.output
    assert "alpha" in listing.stdout and "beta" in listing.stdout
    data = json.loads(cli("namespaces", "--json").stdout)
    counts = {item["name"]: item["schedules"] for item in data["namespaces"]}
    assert counts == {"alpha": 2, "beta": 1}
    assert all(item["ephemeral"] is False for item in data["namespaces"])

    jobs = cli("jobs")
    assert jobs.exit_code == 0, jobs.output
    for name in ("backup", "report", "alpha", "beta"):
        assert name in jobs.stdout
    assert "CET" in jobs.stdout or "CEST" in jobs.stdout  # alpha/backup's next fire in its own zone
    assert re.search(r"in \d+ (s|min|h)", jobs.stdout)
    only = cli("jobs", "--ns", "beta")
    assert "beta" in only.stdout and "alpha" not in only.stdout
    found = json.loads(cli("jobs", "--ns", "alpha", "--json").stdout)["jobs"]
    assert sorted(job["name"] for job in found) == ["backup", "report"]
    assert all(job["description"] and job["next_fire_at"].endswith("Z") for job in found)
    assert "no jobs in namespace gamma" in cli("jobs", "--ns", "gamma").stdout


def test_an_empty_store_lists_nothing(store: SchedulerService) -> None:
    assert "no namespaces" in cli("namespaces").stdout
    assert "no jobs" in cli("jobs").stdout
    assert "no runs" in cli("runs").stdout
    assert json.loads(cli("runs", "--json").stdout) == {"runs": []}


def test_pause_resume_delete(store: SchedulerService) -> None:
    prepare(store)
    paused = cli("pause", "alpha/report")
    assert paused.exit_code == 0, paused.output
    assert "alpha/report is paused" in paused.stdout
    assert store.get("alpha/report").paused
    assert "paused" in cli("jobs", "--ns", "alpha").stdout
    resumed = cli("resume", "report")  # a name unique in the store is enough
    assert resumed.exit_code == 0, resumed.output
    assert "alpha/report is resumed; next fire" in resumed.stdout
    assert not store.get("alpha/report").paused
    view = store.get("beta/backup")
    deleted = cli("delete", view.id)  # and so is the id
    assert deleted.exit_code == 0 and "deleted beta/backup" in deleted.stdout
    with pytest.raises(NotFound):
        store.get("beta/backup")


@pytest.mark.parametrize("command", ["pause", "resume", "trigger", "delete", "runs"])
def test_unknown_or_ambiguous_jobs_exit_2(store: SchedulerService, command: str) -> None:
    prepare(store)
    missing = cli(command, "nosuch")
    assert missing.exit_code == 2, missing.output
    assert missing.stderr.startswith("error: no schedule 'nosuch'")
    assert len(missing.stderr.strip().splitlines()) == 1
    ambiguous = cli(command, "backup")
    assert ambiguous.exit_code == 2, ambiguous.output
    assert "names several schedules (alpha/backup, beta/backup)" in ambiguous.stderr


def test_trigger_says_whether_a_scheduler_runs(store: SchedulerService) -> None:
    prepare(store)
    result = cli("trigger", "alpha/report")
    assert result.exit_code == 0, result.output
    assert re.search(r"run \d+ of alpha/report is queued for now", result.stdout)
    assert "no scheduler instance is running" in result.stdout and "ecliptic run" in result.stdout
    assert [run.cause for run in store.runs("alpha/report")] == ["manual"]

    now = utcnow()
    with store.db.write() as session:
        session.add(
            SchedulerInstanceRow(
                id="elsewhere:1:x", host="elsewhere", pid=1, started_at=now, heartbeat_at=now
            )
        )
        session.add(
            SchedulerInstanceRow(
                id="gone:1:x", host="gone", pid=1, started_at=now, heartbeat_at=now - timedelta(hours=1)
            )
        )
    again = cli("trigger", "alpha/report")
    assert "1 scheduler instance is running" in again.stdout


def wait_runs(service: SchedulerService, ref: str, count: int, timeout: float = 30) -> list[RunView]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [r for r in service.runs(ref) if r.state not in ("scheduled", "running", "cancelling")]
        if len(done) >= count:
            return done
        time.sleep(0.05)
    raise AssertionError(f"{count} runs of {ref} did not end: {service.runs(ref)}")


def test_runs_table_and_json(store: SchedulerService) -> None:
    store.create(spec("fails", "alpha", {"cron": "0 3 * * *"}, run={"cmd": "sh -c 'echo oops >&2; exit 3'"}))
    store.create(spec("works", "alpha", {"cron": "0 3 * * *"}))
    settings = get_settings()
    parts = build_scheduler(store.db, settings, heartbeat=timedelta(milliseconds=200))
    parts.start()
    try:
        parts.service.trigger("alpha/fails")
        parts.service.trigger("alpha/works")
        wait_runs(store, "alpha/fails", 1)
        wait_runs(store, "alpha/works", 1)
    finally:
        parts.stop()
    table = cli("runs", "alpha/fails")
    assert table.exit_code == 0, table.output
    assert "failed" in table.stdout and "manual" in table.stdout and "exit status 3" in table.stdout
    everything = cli("runs", "--ns", "alpha")
    assert "alpha/fails" in everything.stdout and "alpha/works" in everything.stdout
    runs = json.loads(cli("runs", "alpha/fails", "--json").stdout)["runs"]
    assert [(r["state"], r["exit_code"], r["cause"]) for r in runs] == [("failed", 3, "manual")]
    assert "oops" in runs[0]["stderr_tail"]
    assert len(json.loads(cli("runs", "--limit", "1", "--json").stdout)["runs"]) == 1


# -- run: what it checks before it starts ---------------------------------------------------------------------
GOOD = """\
namespace: nightly
timezone: Europe/Vienna
jobs:
  - name: backup
    when: "0 3 * * *"
    run: "cmd:true"
  - name: tick
    when: every 10m
    run: "python:print('tick')"
"""

BROKEN = """\
jobs:
  - name: backup
    timezone: Mars/Olympus
    when: "0 3 * * *"
    run: "cmd:true"
  - name: other
    run: "cmd:true"
"""


def test_check_validates_and_shows_next_fires_without_touching_the_store(
    data_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "nightly.yaml").write_text(GOOD)
    result = cli("run", "--file", "nightly.yaml", "--check")
    assert result.exit_code == 0, result.output
    assert "namespace nightly" in result.stdout
    assert "backup" in result.stdout and "tick" in result.stdout
    assert re.search(r"\d{4}-\d\d-\d\d 03:00:00 CES?T", result.stdout)
    assert "2 jobs: ok" in result.stdout
    assert not data_dir.exists()


def test_a_broken_timetable_prints_each_problem_with_its_place(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN)
    for extra in ([], ["--check"]):
        result = cli("run", "--file", "broken.yaml", *extra)
        assert result.exit_code == 2, result.output
        located = [line for line in result.stderr.splitlines() if re.match(r"broken\.yaml:\d+:\d+: ", line)]
        assert len(located) >= 2, result.stderr
        assert any(line.startswith("broken.yaml:3:") for line in located), located
        assert "nothing changed" in result.stderr
    assert not (data_dir / "ecliptic.sqlite").exists()


def test_run_without_a_file_names_the_default(data_dir: Path) -> None:
    result = cli("run")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{timetable.DEFAULT_FILE}: no such file")
    assert schedule_cli.DEFAULT_FILE == timetable.DEFAULT_FILE


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--file", "x.yaml", "--command", "true"], "not both"),
        (["--second", "*/5", "--command", "true"], "--second goes with a cron expression, not 'once'"),
        (["--second", "*/5", "--file", "x.yaml"], "--second goes with --when"),
        (["--when", "every 5s", "--second", "5", "--command", "true"], "--second goes with a cron"),
        (["--when", "whenever", "--command", "true"], "not a schedule"),
        (["--tz", "Nowhere/Special", "--command", "true"], "IANA time zone"),
        (["--timeout", "soon", "--command", "true"], "--timeout"),
        (["--name", "x", "--file", "x.yaml"], "--name names the job of a command"),
        (["--name", "bad name!", "--command", "true"], "not a schedule name"),
        (["--", "cmd:"], "the command is empty"),
    ],
)
def test_run_refuses_bad_options(data_dir: Path, args: list[str], says: str) -> None:
    result = cli("run", *args)
    assert result.exit_code == 2, result.output
    assert says in result.stderr


def test_check_of_a_command(data_dir: Path) -> None:
    result = cli(
        "run", "--when", "0 9 * * 1-5", "--tz", "Europe/Vienna", "--check", "--", "cmd:echo", "hello"
    )
    assert result.exit_code == 0, result.output
    assert "echo-hello" in result.stdout and "ephemeral" in result.stdout


def test_names_and_words() -> None:
    assert schedule_cli.derive_name("sh:echo hello") == "echo-hello"
    assert schedule_cli.derive_name("cmd:echo hello") == "echo-hello"
    assert schedule_cli.derive_name('python:print("hello")') == "python-print-hello"
    assert schedule_cli.derive_name("file:jobs/task.py --fast") == "task.py"
    assert schedule_cli.derive_name("sh:$$$") == "job"
    assert len(schedule_cli.derive_name("sh:" + "x" * 300)) <= 64
    assert schedule_cli.join_words(["cmd:echo", "a b", "c"]) == "cmd:echo 'a b' c"
    assert schedule_cli.join_words(["python:print(1);", "print(2)"]) == "python:print(1); print(2)"
    assert schedule_cli.join_words(['python:print("hello")']) == 'python:print("hello")'


# -- run: real processes --------------------------------------------------------------------------------------
def env_for(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECLIPTIC_")}
    env.update(FAST)
    env.update(
        {
            "ECLIPTIC_DATA_DIR": str(data_dir),
            "ECLIPTIC_CONFIG": str(data_dir.parent / "none.toml"),
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }
    )
    return env


def ecliptic(
    data_dir: Path, *args: str, timeout: float = PROCESS_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ecliptic", *args],
        env=env_for(data_dir),
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(data_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ecliptic", *args],
        env=env_for(data_dir),
        cwd=data_dir.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str], sig: int) -> tuple[int, str, str]:
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"ecliptic did not stop on signal {sig}:\n{out}\n{err}") from None
    return proc.returncode, out, err


def runs_of(data_dir: Path, job: str) -> list[dict[str, Any]]:
    result = ecliptic(data_dir, "runs", job, "--json", "--limit", "1000")
    assert result.returncode == 0, result.stderr
    runs: list[dict[str, Any]] = json.loads(result.stdout)["runs"]
    return runs


def stored_runs(data_dir: Path, job: str) -> list[RunView]:
    """The runs of ``job`` as the store of ``data_dir`` has them now (none while it does not exist yet)."""
    path = data_dir / "ecliptic.sqlite"
    if not path.exists():
        return []
    db = Database(f"sqlite:///{path}")
    try:
        return SchedulerService(db).runs(job, limit=1000)
    except Exception:  # not migrated yet, or the schedule is not there yet
        return []
    finally:
        db.dispose()


def wait_for(predicate: Any, timeout: float = 30, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def test_a_once_command_exits_with_its_status(data_dir: Path) -> None:
    result = ecliptic(data_dir, "run", "--command", "exit 3", "--when", "once")
    assert result.returncode == 3, result.stderr
    assert "exit-3" in result.stderr and "failed" in result.stderr
    again = ecliptic(data_dir, "run", "--command", "exit 3")  # once is the default; it runs again
    assert again.returncode == 3, again.stderr
    assert [r["state"] for r in runs_of(data_dir, "exit-3")] == ["failed", "failed"]


def test_a_python_snippet_prints_and_exits_0(data_dir: Path) -> None:
    result = ecliptic(data_dir, "run", "--", "python:print('hello')")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"  # the job's output only: ecliptic's own lines go to stderr
    assert "namespace" in result.stderr and "ephemeral" in result.stderr and "succeeded" in result.stderr
    quiet = ecliptic(
        data_dir, "run", "-q", "--", 'python:import sys; print("out"); print("err", file=sys.stderr)'
    )
    assert quiet.returncode == 0, quiet.stderr
    assert (quiet.stdout, quiet.stderr) == ("out\n", "err\n")


def test_a_timeout_exits_124(data_dir: Path) -> None:
    began = time.monotonic()
    result = ecliptic(data_dir, "run", "--timeout", "1s", "--", "cmd:sleep", "30")
    assert result.returncode == 124, result.stderr
    assert "timed out" in result.stderr
    assert time.monotonic() - began < 20


def test_words_after_the_command_need_no_dashes_and_keep_their_quoting(data_dir: Path) -> None:
    result = ecliptic(data_dir, "run", "-q", "cmd:printf", "%s|", "a b", "c")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "a b|c|"
    shell = ecliptic(data_dir, "run", "-q", "--command", "echo $((6 * 7)) | tr 4 X")
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout == "X2\n"


def test_a_recurring_command_runs_until_sigint(data_dir: Path) -> None:
    proc = start(data_dir, "run", "--when", "every 1s", "--", "cmd:true")
    try:
        wait_for(
            lambda: len([r for r in stored_runs(data_dir, "true") if r.state == "succeeded"]) >= 2,
            what="2 runs",
        )
    finally:
        code, out, err = stop(proc, signal.SIGINT)
    assert code == 0, err
    assert out.count("succeeded") >= 2, out
    assert "namespace" in out
    done = [r for r in runs_of(data_dir, "true") if r["state"] == "succeeded"]
    assert len(done) >= 2
    jobs = json.loads(ecliptic(data_dir, "jobs", "--json").stdout)["jobs"]
    assert [job["name"] for job in jobs] == ["true"]
    assert jobs[0]["owner"] is None  # handed back on the way out


def test_a_terminal_shows_the_live_status_line(data_dir: Path) -> None:
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecliptic", "run", "--when", "every 1s", "--", "cmd:true"],
        env={**env_for(data_dir), "TERM": "xterm"},
        cwd=data_dir.parent,
        stdout=child,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(child)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (b"succeeded" in seen and b"next: " in seen):
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(main, 65536)
                except OSError:  # the process is gone
                    break
    finally:
        code, _, err = stop(proc, signal.SIGINT)
        os.close(main)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))
    assert code == 0, err
    assert re.search(r"\d running · next: true at \d\d:\d\d:\d\d UTC \((in \d+ s|now)\)", text), text
    assert "true  succeeded" in text


def test_sigterm_stops_a_recurring_timetable_cleanly(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "ecliptic.yaml").write_text(GOOD)
    proc = start(data_dir, "run")
    try:
        wait_for(lambda: bool(live(data_dir)), what="the scheduler instance")
    finally:
        code, out, err = stop(proc, signal.SIGTERM)
    assert code == 0, err
    assert "namespace nightly (from the file)" in out
    assert "backup" in out and "tick" in out
    assert not live(data_dir)


def live(data_dir: Path) -> list[str]:
    """The scheduler instances registered in the store of ``data_dir``."""
    if not (data_dir / "ecliptic.sqlite").exists():
        return []
    db = Database(f"sqlite:///{data_dir / 'ecliptic.sqlite'}")
    try:
        with db.read() as session:
            return [row.id for row in session.query(SchedulerInstanceRow)]
    except Exception:  # not migrated yet
        return []
    finally:
        db.dispose()


def test_an_interrupted_once_job_exits_130(data_dir: Path) -> None:
    proc = start(data_dir, "run", "--", "cmd:sleep", "60")
    try:
        wait_for(
            lambda: any(r.state == "running" for r in stored_runs(data_dir, "sleep-60")), what="the start"
        )
    finally:
        code, _, err = stop(proc, signal.SIGINT)
    assert code == 130, err
    assert [r["state"] for r in runs_of(data_dir, "sleep-60")] == ["interrupted"]


ONCE = """\
namespace: setup
jobs:
  - name: first
    when: once
    run: "python:print('one')"
  - name: second
    when: once
    run: "sh:echo two"
"""


def test_a_file_of_once_jobs_exits_when_they_are_done_and_runs_them_again(
    data_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "setup.yaml").write_text(ONCE)
    for _ in range(2):
        result = ecliptic(data_dir, "run", "--file", "setup.yaml")
        assert result.returncode == 0, result.stderr
        assert sorted(result.stdout.splitlines()) == ["one", "two"]
        assert result.stderr.count("succeeded") == 2
    assert len(runs_of(data_dir, "setup/first")) == 2
    (tmp_path / "setup.yaml").write_text(ONCE.replace("sh:echo two", "sh:exit 5"))
    failing = ecliptic(data_dir, "run", "--file", "setup.yaml")
    assert failing.returncode == 1, failing.stderr  # several once-jobs: 1 when any failed
    assert "jobs: 1 changed, 1 unchanged" in failing.stderr


def test_a_file_run_with_when_once_and_an_ephemeral_namespace(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text(GOOD.replace("namespace: nightly\n", ""))
    result = ecliptic(data_dir, "run", "--file", "jobs.yaml", "--when", "once", "--retries", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "tick\n"
    assert "ephemeral: derived from host, user and" in result.stderr
    found = json.loads(ecliptic(data_dir, "namespaces", "--json").stdout)["namespaces"]
    assert len(found) == 1 and found[0]["ephemeral"] is True
    assert found[0]["origin"]["resource"] == str((tmp_path / "jobs.yaml").resolve())
    assert found[0]["schedules"] == 2


def test_a_once_job_that_another_scheduler_owns_is_followed_to_its_end(data_dir: Path) -> None:
    """The run is the other instance's to start; ``ecliptic run`` still streams it and exits with its status."""
    url = f"sqlite:///{data_dir / 'ecliptic.sqlite'}"
    data_dir.mkdir(parents=True)
    db = Database(url)
    upgrade(db)
    service = SchedulerService(db)
    greet = ScheduleSpec(
        name="greet", namespace="shared", trigger=parse_when("once"), run=parse_run("sh:echo hi; exit 7")
    )
    service.create(greet)
    other = subprocess.Popen(
        [sys.executable, "-m", "tests.schedule.scheduler_process", url, str(data_dir)],
        cwd=Path(__file__).resolve().parents[2],
        env=env_for(data_dir),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None and other.stdout.readline().startswith("ready")
        wait_for(
            lambda: (
                bool(stored_runs(data_dir, "shared/greet"))
                and stored_runs(data_dir, "shared/greet")[0].state == "failed"
            )
        )
        owner = service.get("shared/greet").owner
        assert owner is not None
        result = ecliptic(
            data_dir, "run", "--ns", "shared", "--name", "greet", "--command", "echo hi; exit 7"
        )
        assert result.returncode == 7, result.stderr
        assert result.stdout == "hi\n"
        assert "jobs: 1 unchanged" in result.stderr
        runs = service.runs("shared/greet")
        assert [(r.cause, r.state) for r in runs] == [("manual", "failed"), ("schedule", "failed")]
        assert runs[0].owner == owner  # the other instance ran it
    finally:
        other.send_signal(signal.SIGTERM)
        other.wait(timeout=PROCESS_TIMEOUT)
        db.dispose()
