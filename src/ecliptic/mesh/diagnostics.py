"""``config check``: every problem of a network config or a ``pod.toml`` at once, located like a compiler's.

A check reads the TOML, reports unknown keys (with the nearest known one), values the models refuse (what
was given, what is allowed, what to write instead), then looks at the values together and at the disk
under the pod's state directory. Values that fail are replaced by their defaults for the later checks, so
one typo does not hide the rest of the report.

tomllib gives parsed values but no positions, so keys are found again by scanning the text: the configs
are flat, so a key is the first word of a ``key = value`` line (a ``[table]`` header is located too, to
point at it when someone writes one).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import shutil
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from ecliptic.mesh.settings import (
    MAX_ATTR_TIMEOUT,
    NETWORK_DOCS,
    POD_DOCS,
    FieldDoc,
    MiB,
    NetworkConfig,
    PodConfig,
    describe,
    format_size,
)

Level = Literal["error", "warning", "advice"]
_ORDER: dict[Level, int] = {"error": 0, "warning": 1, "advice": 2}

Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True)
class Diagnostic:
    """One problem: where (``line``/``column`` of the key, 1-based, None if the key is not in the file)."""

    level: Level
    source: str
    line: int | None
    column: int | None
    field: str | None
    message: str
    fix: str | None
    # The source line itself, so render() needs no file access.
    snippet: str | None = None


_KEY_PART = r"""(?:"[^"\n]*"|'[^'\n]*'|[A-Za-z0-9_-]+)"""
_KEY_LINE = re.compile(rf"(?P<indent>[ \t]*)(?P<key>{_KEY_PART})(?:[ \t]*\.[ \t]*{_KEY_PART})*[ \t]*=")
_TABLE_LINE = re.compile(rf"(?P<indent>[ \t]*)\[\[?[ \t]*(?P<key>{_KEY_PART})")
_TOML_AT = re.compile(r" \(at line (\d+), column (\d+)\)$")
_TOML_AT_END = " (at end of document)"
_BARE_VALUE = re.compile(
    rf"[ \t]*(?P<key>{_KEY_PART})[ \t]*=[ \t]*(?P<value>[^\"'\[{{#\s][^#\s]*)[ \t]*(?:#.*)?"
)

_TOML_HINTS = (
    ("Unterminated string", "close the text with a double quote on the same line"),
    ("Illegal character '\\n'", "close the text with a double quote on the same line"),
    ("Expected '=' after a key", "each setting is one line: key = value"),
    ("Invalid statement", "a line is key = value, or a comment starting with #"),
    (
        "Expected newline or end of document after a statement",
        "one key = value per line; text goes in double quotes, comments start with #",
    ),
    ("Invalid value", 'a value is a number, true or false, or text in double quotes, like "4MiB"'),
    ("Cannot overwrite a value", "each key may be set only once"),
    ("Cannot declare", "each key may be set only once"),
)


class _Text:
    """The config's lines and where each top-level key is written."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        # TOML counts lines by "\n" alone; str.splitlines() would also split on form feeds and the like.
        self.lines = [line.removesuffix("\r") for line in text.split("\n")]
        self.keys: dict[str, list[tuple[int, int]]] = {}
        in_table = False
        in_multiline = False
        for number, line in enumerate(self.lines, start=1):
            if in_multiline:
                in_multiline = _toggles_multiline(line, in_multiline)
                continue
            table = _TABLE_LINE.match(line)
            if table is not None:
                in_table = True
                self.keys.setdefault(_unquote(table["key"]), []).append((number, len(table["indent"]) + 1))
                continue
            key = _KEY_LINE.match(line)
            if key is not None and not in_table:
                self.keys.setdefault(_unquote(key["key"]), []).append((number, len(key["indent"]) + 1))
            in_multiline = _toggles_multiline(line, in_multiline)

    def line(self, number: int | None) -> str | None:
        if number is None or not 1 <= number <= len(self.lines):
            return None
        return self.lines[number - 1]

    def at(
        self,
        level: Level,
        field: str | None,
        message: str,
        fix: str | None,
        *,
        line: int | None = None,
        column: int | None = None,
    ) -> Diagnostic:
        """A diagnostic at ``line``/``column``, or at the key ``field`` when no position is given."""
        if line is None and field is not None and field in self.keys:
            line, column = self.keys[field][0]
        return Diagnostic(level, self.source, line, column, field, message, fix, self.line(line))


def _toggles_multiline(line: str, inside: bool) -> bool:
    count = line.count('"""') + line.count("'''")
    return inside if count % 2 == 0 else not inside


def _unquote(key: str) -> str:
    return key[1:-1] if key[:1] in "\"'" else key


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    known = "the keys are: " + ", ".join(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? ({known})" if close else known


def _syntax_error(doc: _Text, error: tomllib.TOMLDecodeError) -> list[Diagnostic]:
    message = str(error)
    if message.startswith(("Cannot overwrite a value", "Cannot declare")):
        twice = [
            doc.at(
                "error",
                key,
                f"{key!r} is set more than once (first on line {places[0][0]})",
                "keep one of these lines and delete the others",
                line=line,
                column=column,
            )
            for key, places in doc.keys.items()
            for line, column in places[1:]
        ]
        if twice:
            return twice
    line: int | None
    column: int | None
    at = _TOML_AT.search(message)
    if at is not None:
        problem = message[: at.start()]
        line, column = int(at.group(1)), int(at.group(2))
    else:
        problem = message.removesuffix(_TOML_AT_END)
        line, column = _guess_end_position(doc, problem)
    hint = next((hint for key, hint in _TOML_HINTS if problem.startswith(key)), None)
    bare = _BARE_VALUE.fullmatch(doc.line(line) or "")
    if bare is not None and problem.startswith(("Invalid value", "Expected newline")):
        key, value = _unquote(bare["key"]), bare["value"]
        return [
            doc.at(
                "error",
                key,
                f"not valid TOML: {value} is not a value (text must be in double quotes)",
                f'write {key} = "{value}"',
                line=line,
                column=bare.start("value") + 1,
            )
        ]
    key_line = _KEY_LINE.match(doc.line(line) or "")
    return [
        doc.at(
            "error",
            _unquote(key_line["key"]) if key_line else None,
            f"not valid TOML: {problem[:1].lower()}{problem[1:]}",
            hint or "check the quotes and brackets on this line",
            line=line,
            column=column,
        )
    ]


def _guess_end_position(doc: _Text, problem: str) -> tuple[int | None, int | None]:
    """Where an error tomllib reports "at end of document" most likely is."""
    if problem.startswith("Unterminated string"):
        for number, line in enumerate(doc.lines, start=1):
            code = line.replace('\\"', "")
            if code.split("#")[0].count('"') % 2:
                return number, code.index('"') + 1
    for number in range(len(doc.lines), 0, -1):
        line = doc.lines[number - 1]
        if line.strip():
            return number, len(line) + 1
    return None, None


def _value_fix(field: str, doc: FieldDoc, given: Any) -> str:
    generic = f"{field} takes {doc.allowed}; for example: {field} = {doc.example}"
    bare = isinstance(given, int | float) and not isinstance(given, bool)
    if bare and isinstance(given, int) and field == "block_size" and 0 < given < MiB:
        return f'a size without a unit is bytes: did you mean {field} = "{given}MiB"? ({generic})'
    if bare and field == "attr_timeout" and given > MAX_ATTR_TIMEOUT:
        return f'a number is seconds: did you mean {field} = "{given}ms"? ({generic})'
    return generic


def _read(
    doc: _Text,
    text: str,
    model: type[Model],
    docs: Mapping[str, FieldDoc],
    elsewhere: Mapping[str, str],
) -> tuple[Model | None, dict[str, Any], set[str], list[Diagnostic]]:
    """The model from ``text`` (failing keys left at their defaults), the raw values, the failed keys."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return None, {}, set(), _syntax_error(doc, exc)
    found: list[Diagnostic] = []
    failed: set[str] = set()
    for key, value in data.items():
        if key in docs:
            continue
        failed.add(key)
        if key in elsewhere:
            found.append(doc.at("error", key, f"{key!r} does not belong in this file", elsewhere[key]))
        elif isinstance(value, dict):
            found.append(
                doc.at(
                    "error",
                    key,
                    f"unknown table [{key}]: this config has no tables, only key = value lines",
                    _did_you_mean(key, docs),
                )
            )
        else:
            found.append(doc.at("error", key, f"unknown key {key!r}", _did_you_mean(key, docs)))
    known = {key: value for key, value in data.items() if key in docs}
    try:
        config = model.model_validate(known)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            field = str(error["loc"][0]) if error["loc"] else None
            given = known.get(field) if field else None
            cause = (error.get("ctx") or {}).get("error")
            reason = str(cause) if error["type"] == "value_error" and cause else error["msg"]
            if field is None or field not in docs:
                found.append(doc.at("error", None, reason, None))
                continue
            failed.add(field)
            found.append(doc.at("error", field, reason, _value_fix(field, docs[field], given)))
        # The fields that passed validated on their own, so without the others they validate again.
        config = model.model_validate({key: value for key, value in known.items() if key not in failed})
    return config, data, failed, found


def _sort(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """In file order, like a compiler; problems with keys not in the file (defaults) last."""
    return sorted(
        diagnostics,
        key=lambda d: (d.line is None, d.line or 0, d.column or 0, _ORDER[d.level]),
    )


def _seconds(value: float) -> str:
    return f"{value:g} s"


# Network config


_POD_KEYS_IN_NETWORK = {
    key: f"{key} is a setting of one pod: put it in that pod's pod.toml" for key in POD_DOCS
}
_NETWORK_KEYS_IN_POD = {
    key: f"{key} is shared by the whole network: set it in the network config, not in pod.toml"
    for key in NETWORK_DOCS
}


def read_network(text: str, source: str) -> tuple[NetworkConfig | None, list[Diagnostic]]:
    """The network config and every diagnostic; the config is None only when the text is not TOML.

    In the config, keys that failed are at their defaults: use it only if no diagnostic is an error.
    """
    doc = _Text(text, source)
    config, data, failed, found = _read(doc, text, NetworkConfig, NETWORK_DOCS, _POD_KEYS_IN_NETWORK)
    if config is not None:
        found.extend(d for d in _network_semantics(doc, config, data) if d.field not in failed)
    return config, _sort(found)


def check_network(text: str, source: str) -> list[Diagnostic]:
    """Every problem of a network config's TOML text, in file order."""
    return read_network(text, source)[1]


def _network_semantics(doc: _Text, config: NetworkConfig, data: Mapping[str, Any]) -> Iterable[Diagnostic]:
    if config.replication > 1:
        yield doc.at(
            "warning",
            "replication",
            f"this version keeps one copy of each block: replication = {config.replication} is stored "
            "and will be honoured by a later version",
            "until then a lost pod loses the blocks it held: back up what you cannot afford to lose",
        )
    if config.block_size < MiB:
        yield doc.at(
            "advice",
            "block_size",
            f"block_size {format_size(config.block_size)} is smaller than the 1 MiB requests FUSE sends: "
            "each request then spans several blocks, and every block costs its own lookup, transfer and "
            "metadata",
            'use block_size = "1MiB" or more (the default is "4MiB")',
        )
    if config.gc_grace < 60:
        raw = data.get("gc_grace")
        bare = isinstance(raw, int | float) and not isinstance(raw, bool) and raw > 0
        keep = 'keep at least "1m"; the default "10m" is safe'
        yield doc.at(
            "warning",
            "gc_grace",
            f"gc_grace of {_seconds(config.gc_grace)} is short: a block uploaded by a write still in flight "
            "is not referenced yet and could be collected (Garage lost data with short GC delays)",
            f'a number is seconds: did you mean gc_grace = "{raw}m"? Otherwise {keep}' if bare else keep,
        )
    if config.attr_timeout == 0:
        yield doc.at(
            "advice",
            "attr_timeout",
            "attr_timeout = 0: every stat through a mount becomes a network round trip",
            "a second (attr_timeout = 1.0, the default) hides most round trips and still shows changes soon",
        )
    elif config.attr_timeout > 10:
        yield doc.at(
            "warning",
            "attr_timeout",
            f"attr_timeout of {_seconds(config.attr_timeout)}: a mount may not see changes made on other "
            "pods for up to that long",
            "keep it at a few seconds (the default is 1.0) unless the files never change",
        )
    if config.down_after < 3:
        yield doc.at(
            "advice",
            "down_after",
            f"down_after of {_seconds(config.down_after)}: a busy machine or a brief network hiccup will "
            "mark pods down, and soon up again",
            "the default of 6 s rides out short stalls",
        )


# Pod config


def read_pod(
    text: str,
    source: str,
    *,
    root: Path | None = None,
    network: NetworkConfig | None = None,
) -> tuple[PodConfig | None, list[Diagnostic]]:
    """The pod config and every diagnostic; the config is None only when the text is not TOML.

    In the config, keys that failed are at their defaults: use it only if no diagnostic is an error.
    """
    doc = _Text(text, source)
    config, data, failed, found = _read(doc, text, PodConfig, POD_DOCS, _NETWORK_KEYS_IN_POD)
    if config is not None:
        checks = [
            *_pod_semantics(doc, config, data, network),
            *([] if root is None else _disk_semantics(doc, config, root)),
        ]
        found.extend(d for d in checks if d.field not in failed)
    return config, _sort(found)


def check_pod(
    text: str,
    source: str,
    *,
    root: Path | None = None,
    network: NetworkConfig | None = None,
) -> list[Diagnostic]:
    """Every problem of a ``pod.toml``, in file order.

    ``root`` is the pod's state directory (it need not exist yet: the nearest existing parent is measured);
    ``network`` enables the checks that depend on the network's block size.
    """
    return read_pod(text, source, root=root, network=network)[1]


def _pod_semantics(
    doc: _Text, config: PodConfig, data: Mapping[str, Any], network: NetworkConfig | None
) -> Iterable[Diagnostic]:
    for field in ("max_disk", "target_disk", "cache_size", "reserve"):
        raw = data.get(field)
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 < raw < MiB:
            yield doc.at(
                "warning",
                field,
                f"{field} = {raw} is {raw} bytes",
                f'a size without a unit is bytes: did you mean {field} = "{raw}G"?',
            )
    if config.max_disk is not None:
        if config.target_disk is not None and config.target_disk > config.max_disk:
            yield doc.at(
                "error",
                "target_disk",
                f"target_disk ({format_size(config.target_disk)}) is larger than max_disk "
                f"({format_size(config.max_disk)}): the pod cannot aim above its own limit",
                "lower target_disk to at most max_disk, or raise max_disk",
            )
        if config.cache_size > config.max_disk:
            yield doc.at(
                "warning",
                "cache_size",
                f"cache_size ({format_size(config.cache_size)}) is larger than max_disk "
                f"({format_size(config.max_disk)}): the cache would outgrow all the pod may store",
                "make cache_size a fraction of max_disk, or raise max_disk",
            )
    if config.cache_size == 0:
        yield doc.at(
            "advice",
            "cache_size",
            "cache_size = 0: every read of a block held by another pod goes over the network",
            f'a cache of a few blocks already helps, like cache_size = "{POD_DOCS["cache_size"].example[1:-1]}"',
        )
    if "reserve" in data and config.reserve == 0:
        yield doc.at(
            "advice",
            "reserve",
            "reserve = 0: the pod may fill the disk to the last byte, and then the system and other "
            "programs (logs, databases) fail to write",
            'keep some room free, like reserve = "1G"',
        )
    if config.advertise is not None and _is_loopback(config.advertise):
        yield doc.at(
            "warning",
            "advertise",
            f"{describe(config.advertise)} is a loopback address: pods on other machines cannot dial it",
            "fine when every pod runs on this machine; otherwise write a name or address they can reach",
        )
    if network is not None:
        block = network.block_size
        if config.max_disk is not None and config.max_disk < block:
            yield doc.at(
                "error",
                "max_disk",
                f"max_disk ({format_size(config.max_disk)}) is smaller than one block of the network "
                f"({format_size(block)}): the pod could not store a single block",
                f"raise max_disk well above {format_size(block)}",
            )
        if 0 < config.cache_size < block:
            yield doc.at(
                "warning",
                "cache_size",
                f"cache_size ({format_size(config.cache_size)}) cannot hold one block of the network "
                f"({format_size(block)}): nothing read through this pod will be cached",
                f"raise cache_size to several blocks, at least {format_size(block)}",
            )


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _measured(root: Path) -> Path:
    """``root`` or, before the pod is set up, its nearest existing parent: the disk it will be made on."""
    path = root.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _disk_semantics(doc: _Text, config: PodConfig, root: Path) -> Iterable[Diagnostic]:
    try:
        usage = shutil.disk_usage(_measured(root))
    except OSError as exc:
        yield doc.at(
            "advice",
            None,
            f"could not measure the disk under {root}: {exc}",
            "the checks of max_disk and reserve against the disk were skipped",
        )
        return
    total, free = usage.total, usage.free
    where = f"the disk under {root}"
    for field in ("max_disk", "target_disk"):
        value = getattr(config, field)
        if value is not None and value > total:
            yield doc.at(
                "warning",
                field,
                f"{field} ({format_size(value)}) is larger than {where} ({format_size(total)} in all): "
                "the disk fills up first",
                f"set {field} to at most {format_size(max(0, total - config.reserve))} "
                "(the disk less reserve)",
            )
    if config.reserve >= free:
        yield doc.at(
            "error",
            "reserve",
            f"reserve ({format_size(config.reserve)}) is not less than the free space on {where} "
            f"({format_size(free)}): the pod could not store anything",
            "free space on that disk, lower reserve, or put the pod's state directory on another disk",
        )
    elif config.max_disk is not None and config.max_disk <= total and config.max_disk > free - config.reserve:
        yield doc.at(
            "advice",
            "max_disk",
            f"{where} has {format_size(free)} free: keeping reserve ({format_size(config.reserve)}) free, "
            f"the pod can add about {format_size(free - config.reserve)}, less than max_disk "
            f"({format_size(config.max_disk)})",
            "fine if the pod already holds its share; otherwise free space or lower max_disk",
        )


# Output


def _caret_width(snippet: str, column: int) -> int:
    rest = snippet[column - 1 :]
    token = re.match(r"\[[^\]]*\]+|\"[^\"]*\"|'[^']*'|[A-Za-z0-9_.:/-]+", rest)
    return len(token.group(0)) if token else 1


def _render_one(d: Diagnostic) -> str:
    head = f"{d.level}[{d.field}]: {d.message}" if d.field else f"{d.level}: {d.message}"
    where = d.source
    if d.line is not None:
        where += f":{d.line}" + (f":{d.column}" if d.column is not None else "")
    gutter = " " * len(str(d.line or 0))
    out = [head, f"{gutter} --> {where}"]
    if d.line is not None and d.snippet is not None:
        out += [f"{gutter}  |", f" {d.line} | {d.snippet}".rstrip()]
        if d.column is not None:
            # Keep the line's own tabs so the carets line up under the key in any terminal.
            indent = "".join(c if c == "\t" else " " for c in d.snippet[: d.column - 1])
            out.append(f"{gutter}  | {indent}{'^' * _caret_width(d.snippet, d.column)}")
    if d.fix:
        out.append(f"{gutter}  = fix: {d.fix}")
    return "\n".join(out)


def summary(diagnostics: Iterable[Diagnostic]) -> str:
    """``"1 error, 2 warnings, 0 advice"``."""
    counts = {"error": 0, "warning": 0, "advice": 0}
    for d in diagnostics:
        counts[d.level] += 1
    errors, warnings = counts["error"], counts["warning"]
    return (
        f"{errors} error{'' if errors == 1 else 's'}, {warnings} warning{'' if warnings == 1 else 's'}, "
        f"{counts['advice']} advice"
    )


def render(diagnostics: Iterable[Diagnostic]) -> str:
    """Plain text in the manner of rustc, one blank line between diagnostics, and a summary line."""
    diagnostics = list(diagnostics)
    return "\n\n".join([*(_render_one(d) for d in diagnostics), summary(diagnostics)]) + "\n"


def exit_code(diagnostics: Iterable[Diagnostic]) -> int:
    """2 if any diagnostic is an error, else 0 (warnings and advice do not fail a check)."""
    return 2 if any(d.level == "error" for d in diagnostics) else 0
