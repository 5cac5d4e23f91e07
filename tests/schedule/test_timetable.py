"""Timetable files: our format, Supertask's, Python task files; every problem with file, line, column, field."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from ecliptic.schedule import namespaces
from ecliptic.schedule.spec import (
    BrokerRunner,
    CommandRunner,
    CronTrigger,
    EntrypointRunner,
    FileRunner,
    IntervalTrigger,
    OnceTrigger,
    StepsRunner,
)
from ecliptic.schedule.supertask import cron_field, weekdays
from ecliptic.schedule.timetable import DEFAULT_FILE, Problem, Timetable, TimetableError, load

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(path: Path, *, namespace: str | None = None) -> list[Problem]:
    with pytest.raises(TimetableError) as caught:
        load(path, namespace=namespace)
    assert str(caught.value) == "\n".join(p.render() for p in caught.value.problems)
    return caught.value.problems


def one(found: list[Problem], field: str) -> Problem:
    matching = [p for p in found if p.field == field]
    assert len(matching) == 1, f"{field}: {[p.render() for p in found]}"
    return matching[0]


# -- the examples ---------------------------------------------------------------------------------------------


def test_the_example_timetable_loads() -> None:
    table = load(EXAMPLES / "ecliptic.yaml")
    assert table.namespace == "examples" and not table.ephemeral
    names = [s.name for s in table.schedules]
    assert len(names) >= 3 and len(set(names)) == len(names)
    kinds = {type(s.trigger) for s in table.schedules}
    assert len(kinds) >= 3
    assert any(s.retry.max > 0 for s in table.schedules)
    assert any(s.exclude for s in table.schedules)
    assert all(s.namespace == "examples" and s.timezone == "Europe/Vienna" for s in table.schedules)
    assert "127.0.0.1:9999/hook" in (EXAMPLES / "ecliptic.yaml").read_text()
    assert table.warnings == []


def test_the_example_supertask_timetable_loads() -> None:
    table = load(EXAMPLES / "supertask-timetable.yaml")
    first = table.schedules[0]
    assert first.trigger == CronTrigger(cron="* * * * *", second="*/10")
    assert isinstance(first.run, StepsRunner)
    assert isinstance(first.run.steps[0].run, EntrypointRunner) and first.run.steps[1].if_ is False
    assert all(s.timezone == "Europe/Vienna" for s in table.schedules)
    assert any("Europe/Vienna" in w.message for w in table.warnings)


def test_the_example_task_file_loads() -> None:
    before = dict(os.environ)
    table = load(EXAMPLES / "task.py")
    assert dict(os.environ) == before
    (spec,) = table.schedules
    assert isinstance(spec.run, FileRunner) and spec.run.function == "run"
    assert spec.run.file == str(EXAMPLES / "task.py")
    assert spec.env and spec.run.kwargs
    text = (EXAMPLES / "task.py").read_text()
    assert "# /// script" in text and "# /// task" in text


# -- our format -----------------------------------------------------------------------------------------------


def test_a_full_timetable(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ecliptic.yaml",
        """
        namespace: nightly
        author: Jane Doe
        timezone: Europe/Vienna
        defaults: {retry: {max: 2}, timeout: 10m, overlap: queue, env: {A: "1"}}
        calendars:
          holidays: [{dates: [2026-12-25, 2026-12-26]}, {weekdays: [sat, sun]}]
        jobs:
          - name: backup
            when: "0 3 * * 1-5"
            second: 30
            run: "cmd:tar czf /tmp/x.tgz ."
            exclude: [holidays, {daily: ["12:00", "13:00"]}]
            retry: {backoff: 5s}
            env: {B: 2}
          - name: every
            when: every 10m
            timezone: UTC
            run: {cmd: [echo, hi]}
          - name: mapping
            trigger: {cron: "*/5 * * * *", second: 15}
            run: "sh:echo $HOME"
            overlap: allow
        """,
    )
    table = load(path)
    assert table.namespace == "nightly" and not table.ephemeral
    assert table.path == path.resolve()
    assert table.namespace_origin["author"] == "Jane Doe"
    assert table.namespace_origin["source"] == "ecliptic.yaml"
    assert table.namespace_origin["resource"] == str(path.resolve())
    backup, every, mapping = table.schedules
    assert backup.trigger == CronTrigger(cron="0 3 * * 1-5", second="30")
    assert backup.timezone == "Europe/Vienna" and every.timezone == "UTC"
    assert backup.retry.max == 2 and backup.retry.backoff.total_seconds() == 5
    assert backup.timeout is not None and backup.timeout.total_seconds() == 600
    assert backup.env == {"A": "1", "B": "2"}
    assert backup.overlap == "queue" and mapping.overlap == "allow"
    assert len(backup.exclude) == 3 and backup.exclude[1].weekdays == ["sat", "sun"]
    assert backup.author == "Jane Doe"
    assert backup.run == CommandRunner(cmd="tar czf /tmp/x.tgz .")
    assert every.trigger == IntervalTrigger(every="PT10M")
    assert mapping.trigger == CronTrigger(cron="*/5 * * * *", second="15")
    assert mapping.run == CommandRunner(cmd="echo $HOME", shell=True)
    assert all(s.namespace == "nightly" for s in table.schedules)


def test_a_json_timetable(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(
        json.dumps({"jobs": [{"name": "a", "when": "@daily", "run": {"cmd": ["true"]}}]}, indent=2)
    )
    (spec,) = load(path).schedules
    assert spec.trigger == CronTrigger(cron="@daily")


def test_json_errors_have_lines(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(
        '{\n  "jobs": [\n    {"name": "a", "when": "@daily", "run": {"cmd": ["true"]}, "timeout": "x"}\n  ]\n}'
    )
    problem = one(problems(path), "jobs[0].timeout")
    assert problem.line == 3 and problem.column is not None and "duration" in problem.message
    path.write_text('{"jobs": [\n  {"name": "a",}\n]}')
    (syntax,) = problems(path)
    assert syntax.line == 2 and syntax.column is not None and "JSON" in syntax.message and syntax.fix


def test_on_yes_no_stay_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.yaml",
        """
        jobs:
          - name: a
            when: "@daily"
            run: {cmd: [echo, "1"]}
            labels: {on: yes, no: off, octal: 010, time: 12:30}
            notify: [{webhook: "http://127.0.0.1:9999/hook", on: [failure]}]
        """,
    )
    (spec,) = load(path).schedules
    assert spec.labels == {"on": "yes", "no": "off", "octal": "10", "time": "12:30"}
    assert spec.notify[0].on == ["failure"]


def test_runner_shapes_and_relative_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sub/ecliptic.yaml",
        """
        jobs:
          - {name: f, when: "@hourly", run: "file:scripts/job.py", cwd: work}
          - {name: g, when: "@hourly", run: {file: ../up.sh, args: [x]}}
          - {name: b, when: "@hourly", run: {broker: request.yaml}}
          - {name: abs, when: "@hourly", run: {file: /opt/x.py}, cwd: /srv}
          - name: s
            when: "@hourly"
            run:
              steps:
                - "cmd:echo one"
                - {name: two, run: "file:two.py", if: false}
                - {run: {entrypoint: "pkg.mod:fn", kwargs: {a: 1}}}
        """,
    )
    base = tmp_path.resolve() / "sub"
    f, g, b, absolute, steps = load(path).schedules
    assert f.run == FileRunner(file=str(base / "scripts" / "job.py")) and f.cwd == str(base / "work")
    assert isinstance(g.run, FileRunner) and g.run.file == str(tmp_path.resolve() / "up.sh")
    assert b.run == BrokerRunner(broker=str(base / "request.yaml"))
    assert absolute.run == FileRunner(file="/opt/x.py") and absolute.cwd == "/srv"
    assert isinstance(steps.run, StepsRunner)
    one_, two, three = steps.run.steps
    assert one_.run == CommandRunner(cmd="echo one")
    assert two.name == "two" and two.if_ is False and two.run == FileRunner(file=str(base / "two.py"))
    assert three.run == EntrypointRunner(entrypoint="pkg.mod:fn", kwargs={"a": 1})


def test_ephemeral_namespace_is_stable_per_path(tmp_path: Path) -> None:
    text = "jobs: [{name: a, when: '@daily', run: 'cmd:true'}]\n"
    first = write(tmp_path, "a/ecliptic.yaml", text)
    second = write(tmp_path, "b/ecliptic.yaml", text)
    one_, again, other = load(first), load(first), load(second)
    assert one_.ephemeral and one_.namespace == again.namespace != other.namespace
    assert one_.namespace == namespaces.ephemeral_namespace(str(first.resolve()))
    assert one_.schedules[0].namespace == one_.namespace


def test_namespace_and_when_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ecliptic.yaml",
        """
        namespace: infile
        jobs:
          - {name: a, when: "0 3 * * *", second: 5, run: "cmd:true"}
          - {name: b, trigger: {every: 1h}, run: "cmd:true"}
        """,
    )
    table = load(path, namespace="override", when=OnceTrigger(once="now"))
    assert table.namespace == "override" and not table.ephemeral
    assert [s.trigger for s in table.schedules] == [OnceTrigger(once="now")] * 2
    assert {s.namespace for s in table.schedules} == {"override"}
    (bad,) = problems(path, namespace="no spaces")
    assert "namespace" in bad.message


def test_a_directory_means_its_ecliptic_yaml(tmp_path: Path) -> None:
    write(tmp_path, DEFAULT_FILE, "jobs: [{name: a, when: '@daily', run: 'cmd:true'}]\n")
    assert isinstance(load(tmp_path), Timetable)


# -- errors ---------------------------------------------------------------------------------------------------


def test_a_missing_file_says_how_to_fix_it(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path / "ecliptic.yaml")
    assert "no such file" in problem.message and problem.fix and "--file" in problem.fix
    (suffix,) = problems(write(tmp_path, "t.txt", "x"))
    assert ".yaml" in (suffix.fix or "")


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", "jobs:\n  - name: a\n    when: */5 * * * *\n")
    (problem,) = problems(path)
    assert (problem.line, problem.column) == (3, 12)
    assert problem.fix and "quotes" in problem.fix
    assert problem.render().startswith(f"{path}:3:12: not valid YAML")
    path = write(tmp_path, "u.yaml", "jobs:\n  - name: a\n   when: x\n")
    (problem,) = problems(path)
    assert problem.line == 3 and problem.column is not None and problem.fix


def test_unknown_keys_suggest_the_right_one(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.yaml",
        """
        timezon: UTC
        jobs:
          - name: a
            when: "@daily"
            run: "cmd:true"
            retyr: {max: 1}
            retry: {maxx: 1}
        """,
    )
    found = problems(path)
    top = one(found, "timezon")
    assert (top.line, top.column) == (1, 1) and top.fix == "did you mean 'timezone'?"
    job = one(found, "jobs[0].retyr")
    assert (job.line, job.column) == (6, 5) and job.fix == "did you mean 'retry'?"
    nested = one(found, "jobs[0].retry.maxx")
    assert nested.line == 7 and nested.fix == "did you mean 'max'?"
    assert (
        job.render()
        == f"{path}:6:5: jobs[0].retyr: unknown key 'retyr' in a job (fix: did you mean 'retry'?)"
    )


def test_all_errors_of_a_file_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.yaml",
        """
        calendars:
          holidays: [{dates: [2026-12-25]}]
        jobs:
          - name: no-run
            when: "@daily"
          - name: both
            when: "@daily"
            trigger: {cron: "0 3 * * *"}
            run: "cmd:true"
          - name: duration
            when: "@daily"
            run: "cmd:true"
            timeout: banana
          - name: zone
            when: "@daily"
            run: "cmd:true"
            timezone: Mars/Olympus
          - name: duration
            when: "@daily"
            run: "cmd:true"
          - name: calendar
            when: "@daily"
            run: "cmd:true"
            exclude: [holidayz]
          - name: bad-when
            when: "every 10x"
            run: "cmd:true"
        """,
    )
    found = problems(path)
    assert all(p.file == str(path) and p.level == "error" for p in found)
    assert all(p.line is not None and p.column is not None and p.field for p in found)
    missing = one(found, "jobs[0].run")
    assert missing.line == 4 and missing.fix and "run:" in missing.fix
    both = one(found, "jobs[1].trigger")
    assert both.line == 8 and "both" in both.message and "line 7" in (both.fix or "")
    duration = one(found, "jobs[2].timeout")
    assert (duration.line, duration.column) == (13, 14) and "duration" in duration.message
    zone = one(found, "jobs[3].timezone")
    assert (zone.line, zone.column) == (17, 15) and "IANA" in zone.message
    duplicate = one(found, "jobs[4].name")
    assert duplicate.line == 18 and "lines 10 and 18" in duplicate.message
    calendar = one(found, "jobs[5].exclude[0]")
    assert calendar.line == 24 and calendar.fix == "did you mean 'holidays'?"
    when = one(found, "jobs[6].when")
    assert when.line == 26 and "duration" in when.message
    assert len(found) == 7


def test_errors_in_defaults_and_calendars_point_there(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.yaml",
        """
        timezone: Nowhere/City
        defaults: {timeout: soon}
        calendars:
          holidays: [{dates: [2026-13-01]}, {weekday: [sat]}]
        jobs:
          - {name: a, when: "@daily", run: "cmd:true", exclude: [holidays]}
          - {name: b, when: "@daily", run: "cmd:true"}
        """,
    )
    found = problems(path)
    assert one(found, "timezone").line == 1
    assert one(found, "defaults.timeout").line == 2
    assert one(found, "calendars.holidays[0].dates[0]").line == 4
    assert one(found, "calendars.holidays[1].weekday").fix == "did you mean 'weekdays'?"
    assert len(found) == 4  # once each, not once per job


def test_nested_runner_errors_are_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.yaml",
        """
        jobs:
          - name: a
            when: "@daily"
            run:
              steps:
                - {name: x, run: {entrypoint: nope}}
                - "entrypoint:nope2"
          - name: b
            when: "@daily"
            run: {cmd: [echo], shel: true}
          - name: c
            when: "@daily"
            run: {commnd: [echo]}
        """,
    )
    found = problems(path)
    entry = one(found, "jobs[0].run.steps[0].run.entrypoint")
    assert entry.line == 6 and "module:function" in entry.message
    assert one(found, "jobs[0].run.steps[1]").line == 7
    assert one(found, "jobs[1].run.shel").fix == "did you mean 'shell'?"
    kind = one(found, "jobs[2].run")
    assert kind.line == 13 and "cmd" in kind.message


def test_second_needs_a_cron_when(tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", "jobs: [{name: a, when: every 10s, second: '5', run: 'cmd:true'}]\n")
    assert "cron" in one(problems(path), "jobs[0].second").message


def test_a_trigger_check_error_passes_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ecliptic.schedule import triggers

    def check(spec: object) -> None:
        raise ValueError("minute 61 is out of range 0-59")

    monkeypatch.setattr(triggers, "check", check)
    path = write(tmp_path, "t.yaml", "jobs:\n  - name: a\n    when: '61 * * * *'\n    run: 'cmd:true'\n")
    problem = one(problems(path), "jobs[0].when")
    assert problem.message == "minute 61 is out of range 0-59" and problem.line == 3


def test_a_file_without_jobs(tmp_path: Path) -> None:
    (problem,) = problems(write(tmp_path, "t.yaml", "namespace: x\n"))
    assert problem.field == "jobs" and problem.fix
    (problem,) = problems(write(tmp_path, "e.yaml", ""))
    assert "empty" in problem.message
    (problem,) = problems(write(tmp_path, "l.yaml", "- a\n- b\n"))
    assert "list" in problem.message and problem.line == 1


def test_duplicate_yaml_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path, "t.yaml", "jobs:\n  - name: a\n    name: b\n    when: '@daily'\n    run: 'cmd:true'\n"
    )
    (problem,) = problems(path)
    assert problem.line == 3 and "twice" in problem.message


# -- Supertask ------------------------------------------------------------------------------------------------

SUPERTASK = """
meta:
  type: supertask-timetable
  version: 1
tasks:
  - meta: {{id: job, name: The job, description: Does things, enabled: {enabled}}}
    on:
      schedule:
{schedule}
    steps:
{steps}
"""
ENTRYPOINT_STEP = (
    "      - {name: call, uses: python-entrypoint, run: 'pkg.mod:fn', args: [1], kwargs: {a: 2}}"
)


def supertask(tmp_path: Path, crons: list[str], steps: str = ENTRYPOINT_STEP, enabled: str = "true") -> Path:
    schedule = "\n".join(f"        - cron: {cron!r}" for cron in crons)
    text = SUPERTASK.format(enabled=enabled, schedule=schedule, steps=steps)
    return write(tmp_path, "timetable.yaml", text)


def test_supertask_conversion(tmp_path: Path) -> None:
    path = supertask(tmp_path, ["0 3 * * *", "*/10 * * * * *", "0 9 * * mon-fri"], enabled="false")
    table = load(path)
    first, second, third = table.schedules
    assert [s.name for s in table.schedules] == ["job", "job-2", "job-3"]
    assert first.trigger == CronTrigger(cron="0 3 * * *")
    assert second.trigger == CronTrigger(cron="* * * * *", second="*/10")
    assert third.trigger == CronTrigger(cron="0 9 * * mon-fri")
    assert all(s.paused and s.timezone == "Europe/Vienna" for s in table.schedules)
    assert first.run == EntrypointRunner(entrypoint="pkg.mod:fn", args=[1], kwargs={"a": 2})
    assert first.description == "Does things"
    (zone,) = table.warnings
    assert zone.level == "warning" and "Europe/Vienna" in zone.message and "timezone" in (zone.fix or "")
    assert table.ephemeral


def test_supertask_detected_without_meta_and_zone_extension(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.yml",
        """
        meta: {namespace: st, timezone: America/New_York}
        tasks:
          - meta: {id: x}
            on: {schedule: [{cron: "0 3 * * *"}]}
            steps:
              - {name: a, uses: python-file, run: tasks/a.py, kwargs: {n: 1}}
              - {name: b, uses: python-entrypoint, run: "m:f", if: false}
        """,
    )
    table = load(path)
    assert table.namespace == "st" and table.warnings == []
    (spec,) = table.schedules
    assert spec.timezone == "America/New_York" and not spec.paused
    assert isinstance(spec.run, StepsRunner)
    file_step, skipped = spec.run.steps
    assert file_step.run == FileRunner(
        file=str(tmp_path.resolve() / "tasks" / "a.py"), function="run", kwargs={"n": 1}
    )
    assert skipped.if_ is False


def test_supertask_single_python_file_step(tmp_path: Path) -> None:
    path = supertask(tmp_path, ["0 3 * * *"], steps="      - {name: a, uses: python-file, run: /opt/a.py}")
    (spec,) = load(path).schedules
    assert spec.run == FileRunner(file="/opt/a.py", function="run")


def test_supertask_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.yaml",
        """
        meta: {type: supertask-timetable}
        tasks:
          - meta: {id: a}
            on: {schedule: [{cron: "0 0 3 * * * 2027"}]}
            steps: [{name: s, uses: shell-command, run: "echo"}]
          - meta: {id: b}
            on: {schedule: [{cron: "0 3 * *"}]}
            steps: [{name: s, uses: python-entrypoint, run: "nocolon"}]
        """,
    )
    found = problems(path)
    assert all(p.line is not None and p.column is not None and p.field for p in found)
    year = one(found, "tasks[0].on.schedule[0].cron")
    assert (
        year.line == 4
        and "year" in year.message
        and "start" in (year.fix or "")
        and "end" in (year.fix or "")
    )
    uses = one(found, "tasks[0].steps[0].uses")
    assert uses.line == 5 and uses.column is not None
    assert "python-entrypoint" in (uses.fix or "") and "python-file" in (uses.fix or "")
    fields = one(found, "tasks[1].on.schedule[0].cron")
    assert fields.line == 7 and "4 fields" in fields.message
    ref = one(found, "tasks[1].steps[0].run")
    assert ref.line == 8 and "module:function" in ref.message


def test_supertask_seven_fields_with_any_year(tmp_path: Path) -> None:
    (spec,) = load(supertask(tmp_path, ["*/5 * * * * * *"])).schedules
    assert spec.trigger == CronTrigger(cron="* * * * *", second="*/5")


def test_weekdays_cron_mode_warns_with_the_days(tmp_path: Path) -> None:
    table = load(supertask(tmp_path, ["0 9 * * 1-5", "0 9 * * mon-fri", "0 9 * * *"]))
    assert [s.trigger.cron for s in table.schedules if isinstance(s.trigger, CronTrigger)] == [
        "0 9 * * 1-5",
        "0 9 * * mon-fri",
        "0 9 * * *",
    ]
    (warning,) = [w for w in table.warnings if "day-of-week" in w.message]
    assert warning.field == "tasks[0].on.schedule[0].cron" and warning.line == 8
    assert "Tue, Wed, Thu, Fri, Sat" in warning.message and "Mon, Tue, Wed, Thu, Fri" in warning.message
    assert "--supertask-weekdays aps" in (warning.fix or "") and "'2-6'" in (warning.fix or "")
    assert "'tue-sat'" in (warning.fix or "")
    assert warning.render().startswith(f"{tmp_path / 'timetable.yaml'}:8:")
    assert ": warning: tasks[0].on.schedule[0].cron: day-of-week '1-5'" in warning.render()


def test_weekdays_aps_mode_converts(tmp_path: Path) -> None:
    crons = [
        "0 9 * * 1-5",
        "0 9 * * 5-6",
        "0 9 * * 0",
        "0 9 * * 6",
        "0 9 * * */2",
        "0 9 * * 0-6",
        "0 9 * * sat",
    ]
    table = load(supertask(tmp_path, crons), supertask_weekdays="aps")
    assert [s.trigger.cron for s in table.schedules if isinstance(s.trigger, CronTrigger)] == [
        "0 9 * * 2-6",
        "0 9 * * 6,0",
        "0 9 * * 1",
        "0 9 * * 0",
        "0 9 * * 1,3,5,0",
        "0 9 * * 0-6",
        "0 9 * * sat",
    ]
    converted = [w for w in table.warnings if "converted" in w.message]
    assert len(converted) == 5
    assert "'1-5'" in converted[0].message and "'2-6'" in converted[0].message
    assert "Tue, Wed, Thu, Fri, Sat" in converted[0].message
    assert "Sat, Sun" in converted[1].message


def test_weekday_fields() -> None:
    assert weekdays("1-5", "aps") == frozenset({1, 2, 3, 4, 5})
    assert weekdays("1-5", "cron") == frozenset({0, 1, 2, 3, 4})
    assert weekdays("0,7", "cron") == frozenset({6})
    assert weekdays("mon-wed,fri", "aps") == weekdays("mon-wed,fri", "cron") == frozenset({0, 1, 2, 4})
    assert weekdays("3/2", "aps") == frozenset({3, 5})
    assert weekdays("bogus", "aps") is None
    assert cron_field(frozenset({6})) == "0"
    assert cron_field(frozenset({0, 1, 2, 3, 4, 5, 6})) == "*"
    assert cron_field(frozenset({0, 4, 5, 6})) == "1,5,6,0"


def test_weekdays_dom_and_dow_warning(tmp_path: Path) -> None:
    table = load(supertask(tmp_path, ["0 9 1 * mon"]))
    assert any("both" in w.message for w in table.warnings)


# -- Python task files ----------------------------------------------------------------------------------------

TASK_FILE = """\
# /// script
# dependencies = []
# ///
# /// task
{block}
# ///

def run(**options):
    print(options)
"""


def task_file(tmp_path: Path, block: str, name: str = "job.py") -> Path:
    lines = "\n".join(f"# {line}" if line else "#" for line in textwrap.dedent(block).strip().splitlines())
    path = tmp_path / name
    path.write_text(TASK_FILE.format(block=lines))
    return path


def test_a_task_file(tmp_path: Path) -> None:
    before = dict(os.environ)
    path = task_file(
        tmp_path,
        """
        cron = "0 3 * * *"
        timezone = "Europe/Vienna"
        [env]
        SECRET_FOR_TEST_ONLY = "x"
        PORT = 8080
        [options]
        count = 3
        """,
    )
    table = load(path)
    assert dict(os.environ) == before and "SECRET_FOR_TEST_ONLY" not in os.environ
    (spec,) = table.schedules
    assert spec.name == "job" and spec.timezone == "Europe/Vienna"
    assert spec.trigger == CronTrigger(cron="0 3 * * *")
    assert spec.env == {"SECRET_FOR_TEST_ONLY": "x", "PORT": "8080"}
    assert spec.run == FileRunner(file=str(path.resolve()), function="run", kwargs={"count": 3})
    assert table.ephemeral and table.namespace == namespaces.ephemeral_namespace(str(path.resolve()))
    assert table.warnings == []


def test_task_file_seconds_first_name_when_and_namespace(tmp_path: Path) -> None:
    path = task_file(tmp_path, 'cron = "*/10 * * * * *"\nname = "ten"\nnamespace = "tasks"')
    table = load(path)
    (spec,) = table.schedules
    assert spec.name == "ten" and table.namespace == "tasks"
    assert spec.trigger == CronTrigger(cron="* * * * *", second="*/10")
    assert any("UTC" in w.message for w in table.warnings)
    (spec,) = load(task_file(tmp_path, 'when = "every 5m"', name="other.py")).schedules
    assert spec.trigger == IntervalTrigger(every="PT5M")


def test_task_file_when_override_and_no_block(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("print('hello')\n")
    (problem,) = problems(script)
    assert "# /// task" in (problem.fix or "") and 'cron = "' in (problem.fix or "")
    (spec,) = load(script, when=OnceTrigger(once="now")).schedules
    assert spec.run == FileRunner(file=str(script.resolve())) and spec.trigger == OnceTrigger(once="now")


def test_task_file_toml_error_has_the_file_line(tmp_path: Path) -> None:
    path = task_file(tmp_path, 'cron = "0 3 * * *"\n[options]\ncount = three')
    (problem,) = problems(path)
    assert problem.line == 7 and problem.column == 11 and "TOML" in problem.message


def test_task_file_value_errors_have_lines(tmp_path: Path) -> None:
    path = task_file(tmp_path, 'cron = "0 3 * * *"\ntimezone = "Mars/Base"\ntimeot = "1m"')
    found = problems(path)
    assert one(found, "timezone").line == 6
    assert one(found, "timeot").line == 7 and one(found, "timeot").fix == "did you mean 'timeout'?"


def test_task_file_without_run_function(tmp_path: Path) -> None:
    path = tmp_path / "norun.py"
    path.write_text('# /// task\n# cron = "0 3 * * *"\n# ///\nprint(1)\n')
    (problem,) = problems(path)
    assert "run()" in problem.message


def test_anchors_merge_keys_and_x_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.yaml",
        """
        x-common: &common {when: "@daily", run: "cmd:true", timeout: 1m}
        jobs:
          - {<<: *common, name: a}
          - {<<: *common, name: b, timeout: 2m}
          - {<<: *common, name: c, timeout: 3m}
        """,
    )
    a, b, c = load(path).schedules
    assert [s.timeout.total_seconds() if s.timeout else None for s in (a, b, c)] == [60, 120, 180]
