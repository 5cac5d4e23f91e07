"""Supertask timetables, converted to ScheduleSpecs, with warnings where Ecliptic would run them differently.

Supertask (pyveci/supertask) reads ``meta: {type: supertask-timetable, namespace?}`` and
``tasks: [{meta: {id, name, description, enabled}, on: {schedule: [{cron}]}, steps: [{name, uses, run, args,
kwargs, if}]}]``. What differs, and what this module does about it:

- **Cron fields.** 5 fields are standard; 6 fields put the *seconds first* (APScheduler's order), which becomes
  ``CronTrigger(cron=<last five>, second=<first>)``; a 7th field (a year) is only accepted as ``*``.
- **Weekdays.** Supertask handed numeric day-of-week values to APScheduler 3, where 0 is Monday, so ``1-5`` ran
  Tuesday to Saturday. ``weekdays="cron"`` keeps the cron meaning (0 = Sunday) and warns, naming both sets of
  days; ``weekdays="aps"`` rewrites the field so the job keeps Supertask's days, and says so. Names (``mon-fri``)
  mean the same in both and are left alone.
- **Day-of-month with day-of-week.** APScheduler needs both to match, cron either: a warning says so.
- **Time zone.** Supertask ran everything in Europe/Vienna; so does the conversion, with a warning, unless the
  file says ``timezone:`` (top level or under ``meta:``; an Ecliptic extension).
- **Steps.** ``uses: python-entrypoint`` → :class:`EntrypointRunner`; ``uses: python-file`` →
  :class:`FileRunner` calling the file's ``run(**kwargs)``. Several steps (or a disabled one) → :class:`StepsRunner`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from ecliptic.schedule.spec import (
    AnyTrigger,
    CronTrigger,
    EntrypointRunner,
    FileRunner,
    Step,
    StepsRunner,
)
from ecliptic.schedule.timetable import Document, Draft, YPath, absolute, check_unique, clean_loc, dotted

USES = ("python-entrypoint", "python-file")
SUPERTASK_ZONE = "Europe/Vienna"

_TOP_KEYS = ("meta", "tasks", "timezone")
_META_KEYS = ("type", "version", "generator", "namespace", "timezone")
_TASK_KEYS = ("meta", "on", "steps")
_TASK_META_KEYS = ("id", "name", "description", "enabled")
_ON_KEYS = ("schedule",)
_ENTRY_KEYS = ("cron",)
_STEP_KEYS = ("name", "uses", "run", "args", "kwargs", "if")

# -- cron ---------------------------------------------------------------------------------------------------

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Index = day of the week counted from Monday, which is also APScheduler's number for it."""
_DOW_ITEM = re.compile(r"^(\*|[a-z]{3}|\d+)(?:-([a-z]{3}|\d+))?(?:/(\d+))?$")

Convention = Literal["cron", "aps"]


def _day_value(text: str, convention: Convention) -> int | None:
    """A day-of-week number or name in the convention's own numbering (cron: 0 = 7 = Sunday; APS: 0 = Monday)."""
    if text.isdigit():
        value = int(text)
        return value if value <= (6 if convention == "aps" else 7) else None
    if text in _DAY_NAMES:
        index = _DAY_NAMES.index(text)
        return index if convention == "aps" else index + 1  # cron: mon = 1 … sun = 7
    return None


def weekdays(field: str, convention: Convention) -> frozenset[int] | None:
    """The days a day-of-week field means, counted from Monday (0 = Monday … 6 = Sunday); ``None`` when the
    field is not one this reader understands (it is then left to the trigger check)."""
    days: set[int] = set()
    top = 6 if convention == "aps" else 7
    for item in field.lower().split(","):
        match = _DOW_ITEM.match(item)
        if match is None:
            return None
        first, last, step_text = match.groups()
        if first == "*":
            if last is not None:
                return None
            low, high = 0, top
        else:
            low_value = _day_value(first, convention)
            if low_value is None:
                return None
            low = low_value
            if last is not None:
                high_value = _day_value(last, convention)
                if high_value is None:
                    return None
                high = high_value
            else:
                high = top if step_text else low
        step = int(step_text or 1)
        if high < low or step == 0:
            return None
        for value in range(low, high + 1, step):
            days.add(value if convention == "aps" else (value - 1) % 7)
    return frozenset(days)


def _runs(values: list[int]) -> list[list[int]]:
    groups: list[list[int]] = []
    for value in values:
        if groups and value == groups[-1][-1] + 1:
            groups[-1].append(value)
        else:
            groups.append([value])
    return groups


def _render(days: frozenset[int], label: Any) -> str:
    """Days (Monday = 0) as a field, Monday first, Sunday last; runs of three or more as ranges."""
    parts: list[str] = []
    for group in _runs(sorted(d for d in days if d < 6)):
        if len(group) >= 3:
            parts.append(f"{label(group[0])}-{label(group[-1])}")
        else:
            parts.extend(str(label(d)) for d in group)
    if 6 in days:
        parts.append(str(label(6)))
    return ",".join(parts)


def cron_field(days: frozenset[int]) -> str:
    """A cron day-of-week field (0 = Sunday) for days counted from Monday: ``{1..5}`` → ``2-6``."""
    if len(days) == 7:
        return "*"
    return _render(days, lambda d: (d + 1) % 7)


def names_field(days: frozenset[int]) -> str:
    """The same with day names, which mean the same in every dialect: ``{1..5}`` → ``tue-sat``."""
    if len(days) == 7:
        return "*"
    return _render(days, lambda d: _DAY_NAMES[d])


def day_list(days: frozenset[int]) -> str:
    if not days:
        return "no day"
    return ", ".join(_DAY_NAMES[d].capitalize() for d in sorted(days))


def convert_cron(
    doc: Document, cron: str, path: YPath, convention: Convention, *, source: str = "Supertask"
) -> CronTrigger | None:
    """A Supertask cron string as a :class:`CronTrigger` (``None``: the problem is recorded at ``path``)."""
    fields = cron.split()
    if len(fields) == 1 and fields[0].startswith("@"):
        return CronTrigger(cron=fields[0].lower())
    if len(fields) == 7:
        year = fields[6]
        if year not in ("*", "?"):
            doc.add(
                path,
                f"cron {cron!r} has 7 fields: the last one is a year ({year!r}), which Ecliptic does not support",
                fix="drop the year field and limit the schedule with start:/end: instead, e.g. "
                "start: 2026-01-01T00:00:00+01:00 and end: 2027-01-01T00:00:00+01:00 on a job in ecliptic.yaml",
                value=True,
            )
            return None
        fields = fields[:6]
    second: str | None = None
    if len(fields) == 6:
        second, fields = fields[0], fields[1:]
    elif len(fields) != 5:
        doc.add(
            path,
            f"cron {cron!r} has {len(fields)} fields; {source} crons have 5 (minute hour day month day-of-week), "
            "6 (seconds first) or 7 (seconds first, year last)",
            fix="write 5 fields, e.g. '0 3 * * *', or put the seconds first: '*/10 * * * * *'",
            value=True,
        )
        return None
    minute, hour, dom, month, written = fields
    dow = _weekdays(doc, cron, written, path, convention, source)
    if dow is None:
        return None
    if dom not in ("*", "?") and dow not in ("*", "?"):
        doc.warn(
            path,
            f"cron {cron!r} restricts both the day of the month ({dom!r}) and the day of the week ({dow!r}): "
            f"{source} (APScheduler) ran it only on days matching both, Ecliptic (like cron) runs it on days "
            "matching either",
            fix="to keep 'both', restrict one field and add an exclude: entry for the other",
            value=True,
        )
    return CronTrigger(cron=" ".join((minute, hour, dom, month, dow)), second=second)


def _weekdays(
    doc: Document, cron: str, dow: str, path: YPath, convention: Convention, source: str
) -> str | None:
    """The day-of-week field to use (``None``: an error was recorded), warning where the days change."""
    if not re.search(r"\d", dow):
        return dow
    as_aps = weekdays(dow, "aps")
    as_cron = weekdays(dow, "cron")
    if as_cron is None and as_aps is None:
        return dow  # not understood by either reader: the trigger check reports it
    if as_aps == as_cron:
        return dow
    if convention == "aps":
        if as_aps is None:
            doc.add(
                path,
                f"day-of-week {dow!r} of cron {cron!r} is not valid for APScheduler (0–6, 0 = Monday), so "
                "it cannot be converted",
                fix="write day names (mon … sun), or load with --supertask-weekdays cron to read it as cron does",
                value=True,
            )
            return None
        converted = cron_field(as_aps)
        doc.warn(
            path,
            f"day-of-week {dow!r} of cron {cron!r} converted to {converted!r}: {source} (APScheduler, 0 = Monday) "
            f"ran it on {day_list(as_aps)}, and so will Ecliptic",
            fix=f"write day names ({names_field(as_aps)!r}) to make the file mean the same everywhere",
            value=True,
        )
        return converted
    ecliptic_days = day_list(as_cron) if as_cron is not None else "no day (the trigger check rejects it)"
    if as_aps is None:
        doc.warn(
            path,
            f"day-of-week {dow!r} of cron {cron!r}: {source} (APScheduler, 0–6, 0 = Monday) did not accept it; "
            f"Ecliptic reads it as cron does (0 and 7 = Sunday): {ecliptic_days}",
            value=True,
        )
        return dow
    doc.warn(
        path,
        f"day-of-week {dow!r} of cron {cron!r}: {source} (APScheduler, 0 = Monday) ran it on {day_list(as_aps)}; "
        f"Ecliptic reads it as cron does (0 = Sunday) and runs it on {ecliptic_days}",
        fix=f"to keep {source}'s days write {cron_field(as_aps)!r} (or {names_field(as_aps)!r}), or load with "
        "--supertask-weekdays aps",
        value=True,
    )
    return dow


# -- timetables ---------------------------------------------------------------------------------------------


def _model_problems(doc: Document, exc: ValidationError, path: YPath, keys: dict[str, str]) -> None:
    """Errors of a model built from a step, located at the step's keys (``keys``: model field → step key)."""
    for error in exc.errors(include_url=False):
        loc = clean_loc(error["loc"])
        where: YPath = path
        if loc and isinstance(loc[0], str) and loc[0] in keys:
            where = (*path, keys[loc[0]], *loc[1:])
        doc.add(where, str(error["msg"]).removeprefix("Value error, "), value=True)


def _step(doc: Document, step: Any, path: YPath, base: Path) -> Step | None:
    if not isinstance(step, dict):
        doc.add(path, f"a step is a mapping with name, uses and run, not {type(step).__name__}", value=True)
        return None
    for key in step:
        if key not in _STEP_KEYS:
            doc.warn(
                (*path, key), f"unknown key {key!r} in a step: Supertask ignored it, and so does Ecliptic"
            )
    uses, run = step.get("uses"), step.get("run")
    args = step.get("args") or []
    kwargs = step.get("kwargs") or {}
    if uses not in USES:
        doc.add(
            (*path, "uses") if "uses" in step else path,
            f"unknown step type uses: {uses!r}" if "uses" in step else "the step has no uses:",
            fix="known step types: " + ", ".join(USES),
            value=True,
        )
        return None
    if not isinstance(run, str) or not run.strip():
        doc.add(
            (*path, "run") if "run" in step else path,
            "the step's run: is missing or empty",
            fix="module:function for python-entrypoint, a file path for python-file",
            value=True,
        )
        return None
    runner: BaseModel
    try:
        if uses == "python-entrypoint":
            runner = EntrypointRunner.model_validate(
                {"entrypoint": run.strip(), "args": args, "kwargs": kwargs}
            )
        else:
            target, function = run.strip(), "run"
            if re.match(r"^[a-z][a-z0-9+.-]*://", target):
                doc.add(
                    (*path, "run"),
                    f"{target!r} is a URL: Ecliptic runs local files only",
                    fix="download the file next to the timetable and give its path",
                    value=True,
                )
                return None
            head, sep, tail = target.rpartition(":")
            if sep and re.fullmatch(r"[A-Za-z_]\w*", tail) and head:
                target, function = head, tail
                if function != "run":
                    doc.warn(
                        (*path, "run"),
                        f"Supertask called run() whatever the name after ':'; Ecliptic calls {function}()",
                        value=True,
                    )
            if args:
                doc.add(
                    (*path, "args"),
                    "python-file steps take keyword arguments only: run(**kwargs)",
                    fix="move the values to kwargs:",
                    value=True,
                )
                return None
            runner = FileRunner.model_validate(
                {"file": absolute(target, base), "function": function, "kwargs": kwargs}
            )
        return Step.model_validate({"name": step.get("name"), "run": runner, "if": step.get("if", True)})
    except ValidationError as exc:
        _model_problems(
            doc,
            exc,
            path,
            {
                "entrypoint": "run",
                "file": "run",
                "args": "args",
                "kwargs": "kwargs",
                "if_": "if",
                "if": "if",
                "name": "name",
            },
        )
        return None


def _mapping(doc: Document, value: Any, path: YPath, what: str) -> dict[Any, Any] | None:
    if isinstance(value, dict):
        return value
    doc.add(path, f"{what} is a mapping, not {type(value).__name__}", value=True)
    return None


def _ignored(doc: Document, mapping: dict[Any, Any], path: YPath, known: tuple[str, ...], what: str) -> None:
    for key in mapping:
        if key not in known:
            doc.warn(
                (*path, key),
                f"unknown key {key!r} in {what}: Supertask ignored it, and so does Ecliptic",
                fix="known keys: " + ", ".join(known),
            )


def convert(
    doc: Document, base: Path, namespace_given: bool, when: AnyTrigger | None, convention: Convention
) -> tuple[list[Draft], str | None]:
    """Drafts (one per task and schedule entry) from a Supertask timetable; returns (drafts, namespace)."""
    data: dict[Any, Any] = doc.data
    _ignored(doc, data, (), _TOP_KEYS, "a Supertask timetable")
    meta = _mapping(doc, data.get("meta", {}), ("meta",), "meta") or {}
    _ignored(doc, meta, ("meta",), _META_KEYS, "meta")
    namespace = meta.get("namespace") or None
    if namespace is not None and not isinstance(namespace, str):
        doc.add(("meta", "namespace"), "the namespace is text", value=True)
        namespace = None

    zone_paths = [p for p in (("timezone",), ("meta", "timezone")) if doc.has(p)]
    zone_path: YPath | None = zone_paths[0] if zone_paths else None
    if len(zone_paths) > 1:
        doc.add(("meta", "timezone"), "timezone is given twice (top level and under meta:)", fix="keep one")
    zone = data.get("timezone", meta.get("timezone"))
    if zone is None:
        zone = SUPERTASK_ZONE
        doc.warn(
            ("meta",) if "meta" in data else (),
            f"a Supertask timetable has no time zone: Supertask ran every task in {SUPERTASK_ZONE}, so Ecliptic "
            "does too",
            fix="add timezone: <IANA zone> under meta: to run the tasks in another zone (an Ecliptic extension)",
        )

    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        doc.add(
            ("tasks",) if "tasks" in data else (),
            "the Supertask timetable has no tasks: list",
            fix="add tasks: with meta:, on: {schedule: [{cron: …}]} and steps:",
            field="tasks",
        )
        return [], namespace

    drafts: list[Draft] = []
    names: list[tuple[str, YPath]] = []
    for index, task in enumerate(tasks):
        home: YPath = ("tasks", index)
        task_map = _mapping(doc, task, home, "a task")
        if task_map is None:
            continue
        _ignored(doc, task_map, home, _TASK_KEYS, "a task")
        task_meta = (
            _mapping(doc, task_map.get("meta"), (*home, "meta"), "a task's meta")
            if "meta" in task_map
            else None
        )
        if task_meta is None:
            if "meta" not in task_map:
                doc.add(
                    home,
                    "the task has no meta: (with its id)",
                    fix="add meta: {id: …, name: …, enabled: true}",
                )
            continue
        _ignored(doc, task_meta, (*home, "meta"), _TASK_META_KEYS, "a task's meta")
        task_id = task_meta.get("id")
        if task_id is None or isinstance(task_id, bool | dict | list):
            doc.add(
                (*home, "meta"), "the task has no id", fix="add id: under the task's meta: (it names the job)"
            )
            continue
        enabled = task_meta.get("enabled", True)
        if not isinstance(enabled, bool):
            doc.add((*home, "meta", "enabled"), "enabled is true or false", value=True)
            enabled = True

        steps_raw = task_map.get("steps")
        steps: list[Step] = []
        steps_ok = True
        if not isinstance(steps_raw, list) or not steps_raw:
            doc.add(
                (*home, "steps") if "steps" in task_map else home,
                "the task has no steps",
                fix="add steps: [{name: …, uses: python-entrypoint, run: module:function}]",
                field=dotted((*home, "steps")),
            )
            steps_ok = False
        else:
            for number, step in enumerate(steps_raw):
                converted = _step(doc, step, (*home, "steps", number), base)
                if converted is None:
                    steps_ok = False
                else:
                    steps.append(converted)
        runner: BaseModel | None = None
        if steps_ok:
            if len(steps) == 1 and steps[0].if_:
                runner = steps[0].run
            else:
                runner = StepsRunner(steps=steps)
                if not any(step.if_ for step in steps):
                    doc.warn(
                        (*home, "steps"),
                        "every step of the task is disabled (if: false): its runs do nothing",
                    )

        on = _mapping(doc, task_map.get("on"), (*home, "on"), "on:") if "on" in task_map else None
        if on is None:
            if "on" not in task_map:
                doc.add(
                    home,
                    "the task has no on: {schedule: […]}",
                    fix="add on: {schedule: [{cron: '0 3 * * *'}]}",
                )
            continue
        _ignored(doc, on, (*home, "on"), _ON_KEYS, "on:")
        schedule = on.get("schedule")
        if not isinstance(schedule, list):
            doc.add((*home, "on", "schedule"), "schedule: is a list of {cron: …} entries", value=True)
            continue
        if not schedule:
            doc.warn((*home, "on", "schedule"), "the task has no schedule entries: it never runs")
            continue

        entries: list[tuple[int, CronTrigger | AnyTrigger | None]] = []
        if when is not None:
            entries.append((0, when))
        else:
            for number, entry in enumerate(schedule):
                entry_path: YPath = (*home, "on", "schedule", number)
                entry_map = _mapping(doc, entry, entry_path, "a schedule entry")
                if entry_map is None:
                    continue
                _ignored(doc, entry_map, entry_path, _ENTRY_KEYS, "a schedule entry")
                cron = entry_map.get("cron")
                if not isinstance(cron, str):
                    doc.add(entry_path, "the schedule entry has no cron: text", fix="write cron: '0 3 * * *'")
                    continue
                entries.append((number, convert_cron(doc, cron, (*entry_path, "cron"), convention)))

        for number, trigger in entries:
            entry_path = (*home, "on", "schedule", number)
            name = str(task_id) if number == 0 else f"{task_id}-{number + 1}"
            names.append((name, (*home, "meta", "id") if number == 0 else entry_path))
            label = task_meta.get("name")
            description = task_meta.get("description") or label
            data_out: dict[str, Any] = {
                "name": name,
                "trigger": trigger if trigger is not None else {"once": "now"},
                "timezone": zone,
                "run": runner if runner is not None else {"cmd": "true"},
                "paused": not enabled,
            }
            if isinstance(description, str):
                data_out["description"] = description
            if isinstance(label, str):
                data_out["labels"] = {"supertask.name": label}
            draft = Draft(home=home, data=data_out)
            draft.renames[("name",)] = (*home, "meta", "id")
            draft.renames[("paused",)] = (*home, "meta", "enabled")
            draft.renames[("description",)] = (*home, "meta")
            draft.renames[("labels",)] = (*home, "meta", "name")
            draft.renames[("run",)] = (*home, "steps")
            draft.renames[("timezone",)] = zone_path or ("meta",)
            if when is not None:
                draft.given["trigger"] = "--when"
            else:
                draft.renames[("trigger",)] = (*entry_path, "cron")
            if trigger is None:
                draft.reported.add(("trigger",))
            if runner is None:
                draft.reported.add(("run",))
            if namespace_given:
                draft.given["namespace"] = "--namespace"
            else:
                draft.renames[("namespace",)] = ("meta", "namespace")
            drafts.append(draft)
    check_unique(doc, names, what="task")
    return drafts, namespace
