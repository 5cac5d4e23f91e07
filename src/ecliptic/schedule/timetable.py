"""Timetable files: many schedules in one file, checked as a whole, every problem with file, line, column and a fix.

``load()`` reads three kinds of file, chosen by suffix and content:

- ``ecliptic.yaml`` / ``.yml`` / ``.json``: Ecliptic's own format (a ``jobs:`` list of schedules, with file-wide
  ``namespace``, ``timezone``, ``defaults`` and named exclusion ``calendars``);
- Supertask timetables (``meta.type: supertask-timetable`` or ``tasks:`` with ``on.schedule``), converted by
  :mod:`ecliptic.schedule.supertask`;
- Python task files (``.py``) with a ``# /// task`` TOML block next to their PEP 723 ``# /// script`` block.

YAML is read the YAML 1.2 way: ``on``, ``yes``, ``no``, ``off`` are strings (only ``true``/``false`` are booleans),
``010`` is ten, ``12:00`` is a string (no base 60) and dates stay strings until the schedule model reads them.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from ecliptic.schedule import namespaces
from ecliptic.schedule.spec import (
    AnyTrigger,
    CatchupPolicy,
    CronTrigger,
    Exclusion,
    IntervalTrigger,
    Notification,
    OnceTrigger,
    RetryPolicy,
    RRuleTrigger,
    ScheduleSpec,
    Step,
    parse_run,
    parse_when,
)
from ecliptic.syntax_hints import JSON_HINTS, YAML_HINTS
from ecliptic.syntax_hints import hint as _hint

DEFAULT_FILE = "ecliptic.yaml"
SUFFIXES = (".yaml", ".yml", ".json", ".py")

YPath = tuple[Any, ...]
"""Where a value is in a document: mapping keys and list indexes from the top, e.g. ``("jobs", 2, "when")``."""


# -- problems -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth knowing) about a timetable file, and where it is."""

    file: str
    line: int | None
    column: int | None
    field: str | None
    message: str
    fix: str | None = None
    level: Literal["error", "warning"] = "error"

    def render(self) -> str:
        """``ecliptic.yaml:12:5: jobs[2].trigger.cron: <message> (fix: …)``; warnings say ``warning:``."""
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        parts = [where]
        if self.level == "warning":
            parts.append("warning")
        if self.field:
            parts.append(self.field)
        text = ": ".join(parts) + f": {self.message}"
        if self.fix:
            text += f" (fix: {self.fix})"
        return text


class TimetableError(Exception):
    """A timetable file that cannot be loaded, with every error found in it."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(problem.render() for problem in problems))


@dataclass
class Timetable:
    """A loaded timetable: the schedules of one file, all in one namespace."""

    path: Path
    namespace: str
    namespace_origin: dict[str, Any]
    ephemeral: bool
    schedules: list[ScheduleSpec]
    warnings: list[Problem] = field(default_factory=list)


# -- documents with positions -------------------------------------------------------------------------------


def dotted(path: Iterable[Any]) -> str:
    """``("jobs", 2, "trigger", "cron")`` → ``jobs[2].trigger.cron``."""
    text = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class Document:
    """Parsed file content plus where each key and value starts (1-based line and column), and the problems
    found so far (errors and warnings, each reported once)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.data: Any = None
        self.keys: dict[YPath, tuple[int, int]] = {}
        self.values: dict[YPath, tuple[int, int]] = {}
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self._seen: set[tuple[Any, ...]] = set()

    def position(self, path: YPath, *, value: bool = False) -> tuple[int | None, int | None]:
        """Where ``path`` is, or its nearest enclosing entry that the file has (``None`` when nothing is)."""
        for depth in range(len(path), -1, -1):
            prefix = path[:depth]
            first, second = (
                (self.values, self.keys) if value and depth == len(path) else (self.keys, self.values)
            )
            found = first.get(prefix) or second.get(prefix)
            if found is not None:
                return found
        return None, None

    def has(self, path: YPath) -> bool:
        return path in self.keys or path in self.values

    def add(
        self,
        path: YPath | None,
        message: str,
        *,
        fix: str | None = None,
        level: Literal["error", "warning"] = "error",
        value: bool = False,
        field: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        """Record a problem at ``path`` (or at an explicit ``line``/``column``)."""
        if path is not None and line is None:
            line, column = self.position(path, value=value)
        if field is None and path:
            field = dotted(path)
        problem = Problem(self.name, line, column, field, message, fix, level)
        key = (line, column, field, message, level)
        if key in self._seen:
            return
        self._seen.add(key)
        (self.errors if level == "error" else self.warnings).append(problem)

    def warn(self, path: YPath | None, message: str, *, fix: str | None = None, value: bool = False) -> None:
        self.add(path, message, fix=fix, level="warning", value=value)

    def unknown_keys(
        self,
        mapping: Mapping[Any, Any],
        path: YPath,
        known: Iterable[str],
        *,
        what: str,
        special: Mapping[str, str] | None = None,
    ) -> list[Any]:
        """Report keys of ``mapping`` that are not ``known`` (with a did-you-mean); return them."""
        known = sorted(known)
        unknown = []
        for key in mapping:
            if key in known:
                continue
            unknown.append(key)
            if not isinstance(key, str):
                self.add((*path, key), f"{what} keys are text, not {type(key).__name__} {key!r}")
                continue
            if special and key in special:
                self.add((*path, key), f"unknown key {key!r} in {what}", fix=special[key])
                continue
            self.add((*path, key), f"unknown key {key!r} in {what}", fix=did_you_mean(key, known))
        return unknown


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "known keys: " + ", ".join(choices)


# YAML 1.2 core schema: only true/false are booleans; no base-60 numbers, no '=' values, no implicit timestamps.
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_RESOLVED = ("bool", "int", "float", "timestamp", "value")


class _Yaml12Loader(yaml.SafeLoader):
    pass


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag.rsplit(":", 1)[-1] not in _RESOLVED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _construct_bool(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool:
    return str(loader.construct_scalar(node)).lower() == "true"


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node)).lower().replace(".inf", "inf").replace(".nan", "nan")
    return float(text)


_Yaml12Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Yaml12Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)

_OWN_YAML_HINTS = (
    (
        "expected a single document",
        "the file holds more than one YAML document ('---'): put every job in the one jobs: list",
    ),
    (
        "while scanning an alias",
        "a value starting with * must be in quotes, e.g. when: '*/5 * * * *'",
    ),
)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _build(
    doc: Document, loader: _Yaml12Loader, node: yaml.Node, path: YPath, stack: set[int], checked: set[int]
) -> Any:
    """Python data from ``node``, recording where every key and value starts. ``stack`` holds the nodes being
    built (an alias back into one is a cycle); ``checked`` the mappings already checked for duplicate keys
    (an aliased mapping is built again at every alias, but merged only once)."""
    doc.values[path] = _mark(node)
    if id(node) in stack:
        raise _Stop(path, "an alias refers to a mapping or list that contains it (a cycle)")
    if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ:
        stack.add(id(node))
        items = []
        for index, child in enumerate(node.value):
            doc.keys[(*path, index)] = _mark(child)
            items.append(_build(doc, loader, child, (*path, index), stack, checked))
        stack.discard(id(node))
        return items
    if isinstance(node, yaml.MappingNode) and node.tag == _MAP:
        stack.add(id(node))
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in [] if id(node) in checked else node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            try:
                earlier = seen.get(key)
            except TypeError:
                raise _Stop(path, "a mapping key is a list or mapping; keys must be text") from None
            if earlier is not None:
                line, column = _mark(key_node)
                doc.add(
                    (*path, key),
                    f"{key!r} appears twice in this mapping (lines {_mark(earlier)[0]} and {line})",
                    fix="remove one of them; YAML would silently keep only the last",
                    line=line,
                    column=column,
                )
            seen[key] = key_node
        checked.add(id(node))
        loader.flatten_mapping(node)  # '<<: *anchor' merge keys
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            doc.keys[(*path, key)] = _mark(key_node)
            result[key] = _build(doc, loader, value_node, (*path, key), stack, checked)
        stack.discard(id(node))
        return result
    return loader.construct_object(node, deep=True)


class _Stop(Exception):
    def __init__(self, path: YPath, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _yaml_error(doc: Document, exc: yaml.YAMLError) -> None:
    if not isinstance(exc, yaml.MarkedYAMLError):
        doc.add(None, f"not valid YAML: {exc}")
        return
    problem = exc.problem or str(exc)
    mark = exc.problem_mark or exc.context_mark
    hint = _hint(
        f"{exc.context or ''} {problem}", (*_OWN_YAML_HINTS, *YAML_HINTS), "fix the YAML at that position"
    )
    if mark is None:
        doc.add(None, f"not valid YAML: {problem}", fix=hint)
        return
    opened = exc.context_mark
    if exc.context and opened is not None and opened.line != mark.line:
        problem += f" ({exc.context} at line {opened.line + 1}, column {opened.column + 1})"
    doc.add(None, f"not valid YAML: {problem}", fix=hint, line=mark.line + 1, column=mark.column + 1)


def parse_document(text: str, name: str, *, json_format: bool) -> Document:
    """Parse YAML (1.2 style) or JSON into a :class:`Document`; syntax errors are in ``doc.errors``."""
    doc = Document(name)
    if json_format:
        try:
            doc.data = json.loads(text)
        except json.JSONDecodeError as exc:
            doc.add(
                None,
                f"not valid JSON: {exc.msg}",
                fix=_hint(exc.msg, JSON_HINTS, "fix the JSON at that position"),
                line=exc.lineno,
                column=exc.colno,
            )
            return doc
        # JSON is YAML 1.2: the YAML parser knows where each key is. If it disagrees, go without positions.
        probe = Document(name)
        loader = _Yaml12Loader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _build(probe, loader, node, (), set(), set())
                doc.keys, doc.values = probe.keys, probe.values
        except (yaml.YAMLError, _Stop, ValueError, TypeError):
            pass
        finally:
            loader.dispose()
        return doc
    loader = _Yaml12Loader(text)
    try:
        node = loader.get_single_node()
        doc.data = None if node is None else _build(doc, loader, node, (), set(), set())
    except yaml.YAMLError as exc:
        _yaml_error(doc, exc)
    except _Stop as exc:
        doc.add(exc.path, exc.message)
    finally:
        loader.dispose()
    return doc


# -- turning file entries into ScheduleSpecs ----------------------------------------------------------------

_TAGS = frozenset(
    ("once", "every", "cron", "rrule", "cmd", "python", "file", "entrypoint", "call", "broker", "steps")
)


@dataclass
class Draft:
    """The input of one ScheduleSpec, and where in the file each part came from, so that a validation error of
    the model lands on the line the user wrote."""

    home: YPath
    """The entry in the file (``("jobs", 2)``): where problems go that have no better place."""
    data: dict[str, Any]
    sources: dict[str, list[YPath]] = field(default_factory=dict)
    """Top-level key → paths in the file it came from, most specific first (job, then defaults, then file)."""
    renames: dict[YPath, YPath] = field(default_factory=dict)
    """Model paths written differently in the file (``trigger`` → ``jobs[0].when``): an error at or under the
    model path points at the file path (the longest matching model path wins)."""
    items: dict[str, list[YPath]] = field(default_factory=dict)
    """List-valued keys whose items come from several places (``exclude`` with calendars): each item's path."""
    given: dict[str, str] = field(default_factory=dict)
    """Keys set from outside the file (``--when``, ``--namespace``): key → what to call them in a problem."""
    reported: set[YPath] = field(default_factory=set)
    """Model paths whose problems are already recorded (their data is a placeholder): errors at or under
    them are not reported again."""


def clean_loc(loc: Iterable[Any]) -> YPath:
    """A pydantic ``loc`` without the tags of discriminated unions (``run.cmd.cmd`` → ``run.cmd``)."""
    out: list[Any] = []
    previous: Any = None
    for part in loc:
        if previous in ("trigger", "run") and part in _TAGS and out and out[-1] == previous:
            previous = None
            continue
        out.append(part)
        previous = part
    return tuple(out)


def _locate(doc: Document, draft: Draft, loc: YPath) -> tuple[YPath | None, str | None]:
    """The file path to point at for a model ``loc``, and the field name to show."""
    if not loc:
        return draft.home, dotted(draft.home)
    for depth in range(len(loc), 0, -1):
        target = draft.renames.get(loc[:depth])
        if target is not None:
            return target, dotted(target)
    key, rest = loc[0], loc[1:]
    if key in draft.given:
        return None, draft.given[key]
    candidates = draft.sources.get(key, [])
    items = draft.items.get(key)
    if items is not None and rest and isinstance(rest[0], int) and rest[0] < len(items):
        candidates, rest = [items[rest[0]]], rest[1:]
    for depth in range(len(rest), -1, -1):
        for base in candidates:
            if doc.has((*base, *rest[:depth])):
                return (*base, *rest[:depth]), dotted((*base, *rest))
    if candidates:
        return candidates[0], dotted((*candidates[0], *rest))
    return (*draft.home, *loc), dotted((*draft.home, *loc))


def error_text(exc: Exception) -> str:
    """A ValueError's message; the first entry's message for a pydantic ValidationError."""
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False)
        if errors:
            message = str(errors[0]["msg"]).removeprefix("Value error, ")
            loc = clean_loc(errors[0]["loc"])
            return f"{dotted(loc)}: {message}" if loc else message
    return str(exc)


_MODELS: dict[str, type[BaseModel]] = {
    "retry": RetryPolicy,
    "catchup": CatchupPolicy,
    "notify": Notification,
    "exclude": Exclusion,
    "steps": Step,
}
_UNIONS: dict[str, tuple[type[BaseModel], ...]] = {
    "trigger": (OnceTrigger, IntervalTrigger, CronTrigger, RRuleTrigger),
}


def _known_keys(loc: YPath, data: Any) -> list[str]:
    """The keys allowed where ``loc`` (without its last part) points, for a did-you-mean."""
    from ecliptic.schedule import spec

    parent = loc[:-1]
    names = [part for part in parent if isinstance(part, str)]
    if not names:
        return sorted(_JOB_KEYS)
    last = names[-1]
    node = data
    for part in parent:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
            break
    model: type[BaseModel] | None = _MODELS.get(last)
    if last in _UNIONS or last == "run":
        members = _UNIONS.get(last) or (
            spec.CommandRunner,
            spec.PythonRunner,
            spec.FileRunner,
            spec.EntrypointRunner,
            spec.CallRunner,
            spec.BrokerRunner,
            spec.StepsRunner,
        )
        if isinstance(node, dict):
            model = next((m for m in members if any(k in node for k in m.model_fields if k in _TAGS)), None)
    if model is None:
        return []
    return sorted(info.alias or name for name, info in model.model_fields.items())


def _message(error: Mapping[str, Any], loc: YPath, data: Any) -> tuple[str, str | None]:
    kind = error["type"]
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        name = loc[-1] if loc else "a value"
        fix = _MISSING_FIX.get(str(name), f"add {name}:")
        return f"{name!r} is missing", fix
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        known = _known_keys(loc, data)
        return f"unknown key {key!r}", (did_you_mean(key, known) if known else "remove it")
    if kind == "string_type":
        return message, "put the value in quotes"
    if kind == "missing_kind":
        return message, None
    return message, None


_MISSING_FIX = {
    "run": "add run: with what to run, e.g. run: 'cmd:echo hello' or run: {cmd: [echo, hello]}",
    "name": "add name: (letters, digits, _ . @ -)",
}


def validate(doc: Document, drafts: Iterable[Draft]) -> list[ScheduleSpec]:
    """ScheduleSpecs from ``drafts``; each validation error becomes a problem at its place in the file."""
    specs = []
    for draft in drafts:
        try:
            specs.append(ScheduleSpec.model_validate(draft.data))
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                loc = clean_loc(error["loc"])
                message, fix = _message(error, loc, draft.data)
                if not loc:
                    # A model-level check: the start/end window, or the trigger (triggers.check).
                    loc = ("end",) if "end is before start" in message else ("trigger",)
                    value = False
                else:
                    value = error["type"] not in ("missing", "extra_forbidden")
                if any(loc[:depth] in draft.reported for depth in range(1, len(loc) + 1)):
                    continue
                path, name = _locate(doc, draft, loc)
                if path is None:
                    doc.add(None, message, fix=fix, field=name)
                else:
                    doc.add(path, message, fix=fix, value=value, field=name)
    return specs


def check_unique(doc: Document, names: list[tuple[str, YPath]], what: str = "job") -> None:
    """Report names used more than once, naming both lines."""
    first: dict[str, YPath] = {}
    for name, path in names:
        if name in first:
            line_a = doc.position(first[name])[0]
            line_b = doc.position(path)[0]
            doc.add(
                path,
                f"{what} name {name!r} is used twice (lines {line_a} and {line_b})",
                fix=f"give every {what} a name of its own",
                value=True,
            )
        else:
            first[name] = path


def resolve_paths(run: Any, base: Path) -> Any:
    """Runner data with relative ``file`` and ``broker`` paths made absolute against ``base``."""
    if isinstance(run, list):
        return [resolve_paths(item, base) for item in run]
    if not isinstance(run, dict):
        return run
    out = dict(run)
    for key in ("file", "broker"):
        if isinstance(out.get(key), str) and out[key].strip():
            out[key] = absolute(out[key], base)
    if isinstance(out.get("steps"), list):
        out["steps"] = [
            {**step, "run": resolve_paths(step["run"], base)}
            if isinstance(step, dict) and "run" in step
            else step
            for step in out["steps"]
        ]
    return out


def absolute(text: str, base: Path) -> str:
    candidate = Path(text.strip()).expanduser()
    if candidate.is_absolute():
        return str(candidate)
    return os.path.normpath(base / candidate)


def _runner_data(value: Any) -> Any:
    """A ``run:`` value as model input: shorthand strings through :func:`parse_run` (ValueError if bad)."""
    if isinstance(value, str):
        return parse_run(value).model_dump(exclude_unset=True, by_alias=True)
    return value


# -- Ecliptic's own format ----------------------------------------------------------------------------------

_TOP_KEYS = ("namespace", "author", "timezone", "defaults", "calendars", "jobs")
_JOB_KEYS = (set(ScheduleSpec.model_fields) - {"namespace"}) | {"when", "second"}
_DEFAULT_KEYS = _JOB_KEYS - {"name", "when", "second", "trigger", "run", "description"}
_STR_VALUES = ("env", "labels")


def _stringify(data: dict[str, Any]) -> None:
    """Numbers where text is meant (``env: {PORT: 8080}``, ``second: 30``) become text."""
    for key in _STR_VALUES:
        values = data.get(key)
        if isinstance(values, dict):
            data[key] = {
                k: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                for k, v in values.items()
            }
    trigger = data.get("trigger")
    if (
        isinstance(trigger, dict)
        and isinstance(trigger.get("second"), int)
        and not isinstance(trigger["second"], bool)
    ):
        trigger["second"] = str(trigger["second"])


def _merge(under: Any, over: Any) -> Any:
    if isinstance(under, dict) and isinstance(over, dict):
        merged = dict(under)
        for key, value in over.items():
            merged[key] = _merge(under.get(key), value) if key in under else value
        return merged
    return over


def _calendars(doc: Document, raw: Any) -> dict[str, list[Exclusion] | None]:
    """Named calendars, each validated once (``None``: invalid, already reported)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        doc.add(("calendars",), "calendars is a mapping of name → list of exclusions", value=True)
        return {}
    calendars: dict[str, list[Exclusion] | None] = {}
    for name, entries in raw.items():
        path: YPath = ("calendars", name)
        if isinstance(entries, dict):
            entries = [entries]
            single = True
        else:
            single = False
        if not isinstance(entries, list):
            doc.add(
                path,
                "a calendar is a list of exclusions",
                fix="e.g. holidays: [{dates: [2026-12-25]}, {weekdays: [sat, sun]}]",
                value=True,
            )
            calendars[str(name)] = None
            continue
        out: list[Exclusion] | None = []
        for index, entry in enumerate(entries):
            entry_path = path if single else (*path, index)
            try:
                exclusion = Exclusion.model_validate(entry)
            except ValidationError as exc:
                for error in exc.errors(include_url=False):
                    loc = clean_loc(error["loc"])
                    message, fix = _message(error, ("exclude", 0, *loc), {"exclude": [entry]})
                    doc.add((*entry_path, *loc), message, fix=fix, value=error["type"] != "extra_forbidden")
                out = None
                continue
            if out is not None:
                out.append(exclusion)
        calendars[str(name)] = out
    return calendars


def _own_format(
    doc: Document, base: Path, namespace_given: bool, when: AnyTrigger | None
) -> tuple[list[Draft], str | None, str | None]:
    """Drafts from Ecliptic's format; returns (drafts, the file's namespace, its author)."""
    data = doc.data
    known = [*_TOP_KEYS]
    extra = [key for key in data if not (isinstance(key, str) and key.startswith("x-"))]
    doc.unknown_keys(
        {key: None for key in extra},
        (),
        known,
        what="a timetable",
        special={
            "tasks": "tasks: is Supertask's format: add meta: {type: supertask-timetable} to read it as one",
            "meta": "meta: is Supertask's format: set meta: {type: supertask-timetable}, or move namespace: "
            "to the top level",
        },
    )
    for key in ("namespace", "author", "timezone"):
        if key in data and not isinstance(data[key], str):
            doc.add((key,), f"{key} is text, not {type(data[key]).__name__}", value=True)
    file_namespace = data.get("namespace") if isinstance(data.get("namespace"), str) else None
    author = data.get("author") if isinstance(data.get("author"), str) else None

    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        doc.add(("defaults",), "defaults is a mapping of job keys", value=True)
        defaults = {}
    doc.unknown_keys(
        defaults,
        ("defaults",),
        _DEFAULT_KEYS,
        what="defaults",
        special={
            k: f"{k} belongs to each job, not to defaults"
            for k in ("name", "when", "trigger", "run", "second")
        },
    )
    defaults = {k: v for k, v in defaults.items() if k in _DEFAULT_KEYS}
    calendars = _calendars(doc, data.get("calendars"))

    jobs = data.get("jobs")
    if "jobs" not in data:
        doc.add(
            None,
            "the timetable has no jobs: list",
            fix="add jobs: with at least one job, e.g. jobs: [{name: hello, when: '@daily', run: 'cmd:echo hi'}]",
            field="jobs",
        )
        return [], file_namespace, author
    if jobs is None or jobs == []:
        doc.warn(("jobs",), "the timetable has no jobs", value=True)
        return [], file_namespace, author
    if not isinstance(jobs, list):
        doc.add(
            ("jobs",),
            f"jobs is a list of jobs, not {type(jobs).__name__}",
            value=True,
            fix="start each job with '- '",
        )
        return [], file_namespace, author

    drafts: list[Draft] = []
    names: list[tuple[str, YPath]] = []
    for index, job in enumerate(jobs):
        home: YPath = ("jobs", index)
        if not isinstance(job, dict):
            doc.add(
                home,
                f"a job is a mapping, not {type(job).__name__}",
                fix="write name:, when: and run: indented under '- '",
                value=True,
            )
            continue
        doc.unknown_keys(
            job,
            home,
            _JOB_KEYS,
            what="a job",
            special={
                "namespace": "the namespace is set once for the whole file: a top-level namespace: key",
                "cron": "write when: '<cron expression>' (or trigger: {cron: …})",
                "cmd": "write run: 'cmd:<command>' (or run: {cmd: [...]}); cwd: is the working directory",
                "command": "write run: 'cmd:<command>' (or run: {cmd: [...]})",
                "schedule": "write when: '<cron or interval>' (or trigger: {…})",
            },
        )
        draft = _job(doc, job, home, defaults, data, calendars, base, when)
        if namespace_given:
            draft.given["namespace"] = "--namespace"
        else:
            draft.sources["namespace"] = [("namespace",)]
        name = job.get("name")
        if isinstance(name, str):
            names.append((name, (*home, "name")))
        drafts.append(draft)
    check_unique(doc, names)
    return drafts, file_namespace, author


def _job(
    doc: Document,
    job: dict[Any, Any],
    home: YPath,
    defaults: dict[str, Any],
    top: dict[Any, Any],
    calendars: dict[str, list[Exclusion] | None],
    base: Path,
    when: AnyTrigger | None,
) -> Draft:
    """The draft of one job: defaults merged under it, shorthands expanded, paths made absolute."""
    own = {k: v for k, v in job.items() if k in _JOB_KEYS}
    data: dict[str, Any] = {}
    sources: dict[str, list[YPath]] = {}
    for key in ("timezone", "author"):
        if isinstance(top.get(key), str):
            data[key] = top[key]
            sources[key] = [(key,)]
    for key, value in defaults.items():
        data[key] = value
        sources[key] = [("defaults", key), *sources.get(key, [])]
    for key, value in own.items():
        data[key] = _merge(data[key], value) if key in data and key in _MERGED else value
        sources[key] = [(*home, key), *sources.get(key, [])]
    draft = Draft(home=home, data=data, sources=sources)

    if "name" not in own:
        doc.add(
            home,
            "the job has no name",
            fix="add name: (letters, digits, _ . @ -), unique in the file",
            field=dotted((*home, "name")),
        )
        _placeholder(draft, "name", "unnamed")
    _job_trigger(doc, draft, own, home, when)

    if "run" in data:
        run = data["run"]
        run_path = sources["run"][0]
        failed = False
        if isinstance(run, str):
            draft.renames[("run",)] = run_path
            try:
                run = _runner_data(run)
            except ValueError as exc:
                doc.add(run_path, error_text(exc), value=True)
                failed = True
        elif isinstance(run, dict) and isinstance(run.get("steps"), list):
            steps = []
            for number, step in enumerate(run["steps"]):
                if isinstance(step, str) or (isinstance(step, dict) and isinstance(step.get("run"), str)):
                    target = (*run_path, "steps", number) + (() if isinstance(step, str) else ("run",))
                    draft.renames[("run", "steps", number, "run")] = target
                    try:
                        step = _step_data(step)
                    except ValueError as exc:
                        doc.add(target, error_text(exc), value=True)
                        step = {"run": {"cmd": "true"}}
                        draft.reported.add(("run", "steps", number))
                steps.append(step)
            run = {**run, "steps": steps}
        if failed:
            _placeholder(draft, "run", {"cmd": "true"})
        else:
            data["run"] = resolve_paths(run, base)
    if isinstance(data.get("cwd"), str):
        data["cwd"] = absolute(data["cwd"], base)
    if "exclude" in data:
        _job_exclude(doc, draft, calendars)
    _stringify(data)
    return draft


_MERGED = ("retry", "catchup", "env", "labels")


def _placeholder(draft: Draft, key: str, value: Any) -> None:
    """``key`` is wrong and reported: validate the rest of the job with a stand-in, so its other errors show."""
    draft.data[key] = value
    draft.reported.add((key,))


def _job_trigger(
    doc: Document, draft: Draft, own: dict[Any, Any], home: YPath, when: AnyTrigger | None
) -> None:
    """``when:`` (shorthand, with an optional ``second:``) or ``trigger:`` (a mapping) → ``data["trigger"]``."""
    data = draft.data
    second = data.pop("second", None)
    shorthand = data.pop("when", None)
    if when is not None:
        data["trigger"] = when
        draft.given["trigger"] = "--when"
        return
    if "when" in own and "trigger" in own:
        doc.add(
            (*home, "trigger"),
            "the job has both when: and trigger:",
            fix=f"keep one: when: (line {doc.position((*home, 'when'))[0]}) is the shorthand, trigger: the mapping",
        )
        _placeholder(draft, "trigger", {"once": "now"})
        return
    if "trigger" in own:
        if second is not None:
            doc.add(
                (*home, "second"),
                "second: at the job level only goes with when:",
                fix="move it into the trigger: mapping (trigger: {cron: '…', second: '30'})",
            )
        return
    if "when" not in own:
        doc.add(
            home,
            "the job has no when: (or trigger:)",
            fix="add when: with a cron expression ('0 3 * * *'), an interval ('every 10m'), @daily or once",
            field=dotted((*home, "when")),
        )
        _placeholder(draft, "trigger", {"once": "now"})
        return
    draft.renames[("trigger",)] = (*home, "when")
    if isinstance(shorthand, bool) or not isinstance(shorthand, str | int | float):
        doc.add(
            (*home, "when"),
            f"when: is a text shorthand, not {type(shorthand).__name__}",
            fix="quote it (when: '0 3 * * *'), or write a trigger: mapping",
            value=True,
        )
        _placeholder(draft, "trigger", {"once": "now"})
        return
    try:
        trigger = parse_when(str(shorthand))
    except ValueError as exc:
        doc.add((*home, "when"), error_text(exc), value=True)
        _placeholder(draft, "trigger", {"once": "now"})
        return
    data["trigger"] = trigger.model_dump(exclude_none=True)
    if second is None:
        return
    if not isinstance(trigger, CronTrigger):
        doc.add(
            (*home, "second"),
            "second: only goes with a cron expression in when:",
            fix="remove second:, or make when: a 5-field cron expression",
        )
        return
    data["trigger"]["second"] = second
    draft.renames[("trigger", "second")] = (*home, "second")


def _job_exclude(doc: Document, draft: Draft, calendars: dict[str, list[Exclusion] | None]) -> None:
    """Calendar names in ``exclude`` → their (validated) entries; each item remembers where it came from."""
    origin = draft.sources["exclude"][0]
    raw = draft.data["exclude"]
    if isinstance(raw, str | dict):
        raw, item_paths = [raw], [origin]
    elif isinstance(raw, list):
        item_paths = [(*origin, i) for i in range(len(raw))]
    else:
        return  # the model reports the type
    expanded: list[Any] = []
    paths: list[YPath] = []
    for item, path in zip(raw, item_paths, strict=True):
        if not isinstance(item, str):
            expanded.append(item)
            paths.append(path)
            continue
        if item not in calendars:
            fix = (
                did_you_mean(item, calendars).replace("known keys", "calendars")
                if calendars
                else "define it in a top-level calendars: mapping, e.g. calendars: {holidays: [{dates: [2026-12-25]}]}"
            )
            doc.add(path, f"no calendar named {item!r}", fix=fix, value=True)
            continue
        entries = calendars[item]
        if entries is not None:  # else: the calendar is invalid, reported where it is defined
            expanded.extend(entries)
            paths.extend([path] * len(entries))
    draft.data["exclude"] = expanded
    draft.items["exclude"] = paths


def _step_data(step: Any) -> Any:
    """A step with the shorthand: ``- cmd:echo hi`` or ``{name: x, run: "cmd:echo hi"}``."""
    if isinstance(step, str):
        return {"run": _runner_data(step)}
    if isinstance(step, dict) and isinstance(step.get("run"), str):
        return {**step, "run": _runner_data(step["run"])}
    return step


# -- Python task files --------------------------------------------------------------------------------------

_TASK_EXAMPLE = (
    "put a block like this near the top of the file, then define run(**options):\n"
    "    # /// task\n"
    '    # cron = "0 3 * * *"\n'
    '    # timezone = "Europe/Vienna"\n'
    "    # [env]\n"
    '    # GREETING = "hello"\n'
    "    # [options]\n"
    "    # count = 3\n"
    "    # ///"
)
_TASK_KEYS = {
    "cron",
    "when",
    "second",
    "timezone",
    "name",
    "namespace",
    "author",
    "description",
    "env",
    "options",
    *(_DEFAULT_KEYS - {"exclude"}),
    "exclude",
}
_BLOCK_START = re.compile(r"^# /// (?P<type>[a-zA-Z0-9-]+)\s*$")
_TOML_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_KEY = re.compile(r'^(\s*)([A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')\s*=')
_TOML_TABLE = re.compile(r"^(\s*)\[\s*([A-Za-z0-9_.-]+)\s*\]")


def _task_block(doc: Document, text: str) -> tuple[dict[str, Any] | None, bool]:
    """The parsed ``# /// task`` block and whether there is one (errors in ``doc.errors``); records the line
    of every key, so later problems point into the block."""
    lines = text.splitlines()
    found: tuple[int, list[str]] | None = None
    index = 0
    while index < len(lines):
        match = _BLOCK_START.match(lines[index])
        if match is None or match.group("type") != "task":
            index += 1
            continue
        start = index
        content: list[str] = []
        index += 1
        while index < len(lines) and lines[index].rstrip() != "# ///":
            line = lines[index]
            if line.rstrip() == "#":
                content.append("")
            elif line.startswith("# "):
                content.append(line[2:])
            else:
                doc.add(
                    None,
                    "the task block is not closed: every line up to '# ///' must start with '# '",
                    fix="end the block with a line '# ///'",
                    line=index + 1,
                    column=1,
                )
                return None, True
            index += 1
        if index >= len(lines):
            doc.add(
                None,
                "the task block is not closed",
                fix="end the block with a line '# ///'",
                line=start + 1,
                column=1,
            )
            return None, True
        if found is not None:
            doc.add(
                None,
                "the file has two task blocks",
                fix=f"keep the one on line {found[0] + 1}",
                line=start + 1,
                column=1,
            )
            return None, True
        found = (start, content)
        index += 1
    if found is None:
        return None, False
    start, content = found
    offset = start + 1  # file line number of the '# /// task' line; TOML line k is file line offset + k
    toml_text = "\n".join(content)
    try:
        data = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = _TOML_AT.search(message)
        if at:
            doc.add(
                None,
                f"the task block is not valid TOML: {message[: at.start()]}",
                fix="write key = value lines (text in double quotes), tables as [env] and [options]",
                line=offset + int(at.group(1)),
                column=int(at.group(2)) + 2,
                field="task",
            )
        else:
            doc.add(
                None,
                f"the task block is not valid TOML: {message}",
                fix="a bracket or quote is probably not closed",
                line=offset + len(content),
                field="task",
            )
        return None, True
    table: str | None = None
    for number, raw in enumerate(content, start=1):
        table_match = _TOML_TABLE.match(raw)
        if table_match:
            table = table_match.group(2)
            doc.keys[(table,)] = (offset + number, len(table_match.group(1)) + 3)
            continue
        key_match = _TOML_KEY.match(raw)
        if key_match:
            key = key_match.group(2).strip("\"'")
            doc.keys[(table, key) if table else (key,)] = (offset + number, len(key_match.group(1)) + 3)
    return data, True


def _defines_run(doc: Document, text: str) -> bool | None:
    """Whether the file defines a top-level ``run`` function (``None``: it does not parse)."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        doc.warn(
            None,
            f"cannot check the Python code: {exc.msg} (line {exc.lineno})",
            fix="the run will fail until the syntax error is fixed",
        )
        return None
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "run" for node in tree.body
    )


def _not_json(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_not_json(v) for v in value.values())
    if isinstance(value, list):
        return any(_not_json(v) for v in value)
    return isinstance(value, date | time)


def _python_file(
    doc: Document,
    text: str,
    path: Path,
    namespace_given: bool,
    when: AnyTrigger | None,
    convention: Literal["cron", "aps"],
) -> tuple[list[Draft], str | None, str | None]:
    """The draft of a Python task file; returns (drafts, the block's namespace, its author)."""
    from ecliptic.schedule import supertask

    block, found = _task_block(doc, text)
    if doc.errors:
        return [], None, None
    has_run = _defines_run(doc, text)
    if not found:
        if when is None:
            doc.add(
                None,
                "the Python file has no '# /// task' block saying when to run it",
                fix=_TASK_EXAMPLE + "\n  or give the schedule on the command line (--when @daily)",
            )
            return [], None, None
        block = {}
        function = "run" if has_run else None  # no block: call run() if there is one, else run the script
    else:
        function = "run"
        if has_run is False:
            doc.add(
                None,
                "the task file defines no run() function, which its task block's schedule calls with [options]",
                fix="add def run(**options): … at the top level of the file",
                field="run",
            )
    assert block is not None
    doc.unknown_keys(block, (), _TASK_KEYS, what="the task block")
    data: dict[str, Any] = {k: v for k, v in block.items() if k in _TASK_KEYS}
    draft = Draft(home=(), data=data, sources={k: [(k,)] for k in data})
    if "name" not in data:
        data["name"] = path.stem
        draft.given["name"] = f"name (from the file name {path.name!r}; set name = … in the task block)"
    options = data.pop("options", {})
    if not isinstance(options, dict):
        doc.add(
            ("options",),
            "[options] is a table of run() keyword arguments",
            fix="write [options] then key = value lines",
        )
        options = {}
    elif _not_json(options):
        doc.add(
            ("options",), "[options] holds a TOML date or time, which a schedule cannot store", fix="quote it"
        )
    data["run"] = {"file": str(path), "function": function, "kwargs": options}
    draft.renames[("run",)] = ("options",)
    if isinstance(data.get("cwd"), str):
        data["cwd"] = absolute(data["cwd"], path.parent)
    cron, shorthand, second = data.pop("cron", None), data.pop("when", None), data.pop("second", None)
    if second is not None and not isinstance(second, bool) and isinstance(second, int):
        second = str(second)
    if when is not None:
        data["trigger"] = when
        draft.given["trigger"] = "--when"
    elif cron is not None and shorthand is not None:
        doc.add(("when",), "the task block has both cron and when", fix="keep one of them")
        _placeholder(draft, "trigger", {"once": "now"})
    elif cron is not None:
        draft.renames[("trigger",)] = ("cron",)
        draft.renames[("trigger", "second")] = ("second",)
        trigger = (
            supertask.convert_cron(doc, cron, ("cron",), convention, source="Supertask")
            if isinstance(cron, str)
            else None
        )
        if not isinstance(cron, str):
            doc.add(("cron",), "cron is text", fix='cron = "0 3 * * *"')
        if trigger is None:
            _placeholder(draft, "trigger", {"once": "now"})
        else:
            if second is not None:
                if trigger.second is not None:
                    doc.add(
                        ("second",),
                        "the cron expression already has a seconds field (the first of six)",
                        fix="remove second",
                    )
                data["trigger"] = {"cron": trigger.cron, "second": second}
            else:
                data["trigger"] = trigger
            if "timezone" not in data:
                doc.warn(
                    ("cron",),
                    "no timezone in the task block: Ecliptic runs this cron in UTC (Supertask ran task files in "
                    "Europe/Vienna)",
                    fix='add timezone = "Europe/Vienna" (or your zone) to the task block',
                )
    elif shorthand is not None:
        draft.renames[("trigger",)] = ("when",)
        draft.renames[("trigger", "second")] = ("second",)
        try:
            parsed = parse_when(str(shorthand))
        except ValueError as exc:
            doc.add(("when",), error_text(exc), value=True)
            _placeholder(draft, "trigger", {"once": "now"})
        else:
            data["trigger"] = parsed.model_dump(exclude_none=True)
            if second is not None:
                if isinstance(parsed, CronTrigger):
                    data["trigger"]["second"] = second
                else:
                    doc.add(
                        ("second",), "second only goes with a cron expression in when", fix="remove second"
                    )
    else:
        doc.add(
            None,
            "the task block says neither cron nor when",
            fix='add cron = "0 3 * * *" (or when = "every 10m") to the task block',
            field="cron",
        )
        _placeholder(draft, "trigger", {"once": "now"})
    if namespace_given:
        draft.given["namespace"] = "--namespace"
    file_namespace = data.get("namespace") if isinstance(data.get("namespace"), str) else None
    author = data.get("author") if isinstance(data.get("author"), str) else None
    _stringify(data)
    return [draft], file_namespace, author


# -- loading ------------------------------------------------------------------------------------------------


def is_supertask(data: Any) -> bool:
    """Whether parsed file content is a Supertask timetable."""
    if not isinstance(data, dict):
        return False
    meta = data.get("meta")
    if isinstance(meta, dict) and meta.get("type") == "supertask-timetable":
        return True
    tasks = data.get("tasks")
    return isinstance(tasks, list) and any(
        isinstance(task, dict) and isinstance(task.get("on"), dict) and "schedule" in task["on"]
        for task in tasks
    )


def _fail(name: str, message: str, fix: str | None = None) -> TimetableError:
    return TimetableError([Problem(name, None, None, None, message, fix)])


def load(
    path: Path | str,
    *,
    namespace: str | None = None,
    when: AnyTrigger | None = None,
    supertask_weekdays: Literal["cron", "aps"] = "cron",
) -> Timetable:
    """Load a timetable file (our YAML/JSON format, a Supertask timetable, or a Python task file).

    ``namespace`` overrides the file's namespace; ``when`` replaces every schedule's trigger.
    ``supertask_weekdays`` says how numeric day-of-week fields of Supertask crons are read: ``cron`` (0 = Sunday,
    with a warning where Supertask ran other days) or ``aps`` (converted so the days stay Supertask's).
    Raises :class:`TimetableError` with every error of the file.
    """
    name = str(path)
    given = Path(path).expanduser()
    if given.is_dir() and (given / DEFAULT_FILE).is_file():
        given = given / DEFAULT_FILE
        name = str(given)
    if given.suffix.lower() not in SUFFIXES:
        raise _fail(
            name,
            f"cannot tell what kind of timetable {given.name!r} is from its suffix",
            fix="use .yaml or .yml (YAML), .json (JSON) or .py (a Python task file)",
        )
    try:
        raw = given.read_bytes()
    except FileNotFoundError:
        raise _fail(name, "no such file", fix=f"create {DEFAULT_FILE} or pass --file") from None
    except IsADirectoryError:
        raise _fail(
            name, "is a directory", fix=f"create {DEFAULT_FILE} in it or pass --file with a file"
        ) from None
    except OSError as exc:
        raise _fail(name, f"cannot read it: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _fail(
            name, f"not UTF-8 text (bad byte at offset {exc.start})", fix="save the file as UTF-8"
        ) from None
    resolved = given.resolve()
    base = resolved.parent

    if namespace is not None:
        try:
            ScheduleSpec.model_validate(
                {"name": "x", "namespace": namespace, "trigger": {"once": "now"}, "run": {"cmd": "x"}}
            )
        except ValidationError as exc:
            raise _fail(name, error_text(exc), fix="pass a namespace of letters, digits, _ . @ -") from None

    suffix = given.suffix.lower()
    doc = Document(name)
    drafts: list[Draft] = []
    file_namespace: str | None = None
    author: str | None = None
    if suffix == ".py":
        drafts, file_namespace, author = _python_file(
            doc, text, resolved, namespace is not None, when, supertask_weekdays
        )
    else:
        doc = parse_document(text, name, json_format=suffix == ".json")
        if not doc.errors:
            if doc.data is None:
                doc.add(
                    None,
                    "the file is empty",
                    fix="write a timetable, e.g. jobs: [{name: hello, when: '@daily', run: 'cmd:echo hello'}]",
                )
            elif not isinstance(doc.data, dict):
                doc.add(
                    (),
                    f"the file holds a {type(doc.data).__name__}, not a timetable",
                    fix="the top level must be a mapping with keys such as namespace, timezone, jobs",
                    value=True,
                )
            elif is_supertask(doc.data):
                from ecliptic.schedule import supertask

                drafts, file_namespace = supertask.convert(
                    doc, base, namespace is not None, when, supertask_weekdays
                )
            else:
                drafts, file_namespace, author = _own_format(doc, base, namespace is not None, when)

    ns = namespace or file_namespace
    ephemeral = ns is None
    ns = ns or namespaces.ephemeral_namespace(str(resolved))
    for draft in drafts:
        draft.data["namespace"] = ns
    specs = validate(doc, drafts)
    if doc.errors:
        raise TimetableError(_sorted(doc.errors))
    return Timetable(
        path=resolved,
        namespace=ns,
        namespace_origin=namespaces.origin(str(resolved), author=author, source=resolved.name),
        ephemeral=ephemeral,
        schedules=specs,
        warnings=_sorted(doc.warnings),
    )


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.line is not None, p.line or 0, p.column or 0))


__all__ = [
    "DEFAULT_FILE",
    "Problem",
    "Timetable",
    "TimetableError",
    "is_supertask",
    "load",
]
