"""Request files (YAML or JSON) as the CLI reads them: parsed, with line, column and a hint on failure."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ecliptic.broker.client import Format, Json
from ecliptic.syntax_hints import JSON_HINTS, YAML_HINTS
from ecliptic.syntax_hints import hint as _hint


@dataclass(frozen=True)
class RequestDocument:
    """A request file as read: its text (sent as it is), its format, and the parsed mapping."""

    name: str
    text: str
    fmt: Format
    data: Json


class RequestFileError(Exception):
    """A request file that cannot be sent, with where and how to fix it."""

    def __init__(self, message: str, *, excerpt: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.excerpt = excerpt
        self.hint = hint


EXCERPT_WIDTH = 100


def _excerpt(text: str, line: int, column: int) -> str:
    """The offending line with a caret under the column (both 1-based)."""
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return ""
    source = lines[line - 1].replace("\t", " ")
    caret = column - 1
    if len(source) > EXCERPT_WIDTH:
        # A long line (minified JSON, say) is cut to a window around the column so the caret stays in view.
        start = max(0, min(caret - EXCERPT_WIDTH // 2, len(source) - EXCERPT_WIDTH))
        end = start + EXCERPT_WIDTH
        head, tail = ("…" if start else ""), ("…" if end < len(source) else "")
        source = head + source[start:end] + tail
        caret = caret - start + len(head)
    gutter = f"{line:>4} | "
    return f"{gutter}{source}\n{' ' * (len(gutter) + caret)}^"


def parse_request(text: str, name: str, fmt: Format) -> Json:
    """The request mapping in ``text``, or :class:`RequestFileError` naming ``name``, the line and column."""
    data: Any
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RequestFileError(
                f"{name}, line {exc.lineno}, column {exc.colno}: not valid JSON: {exc.msg}",
                excerpt=_excerpt(text, exc.lineno, exc.colno),
                hint=_hint(exc.msg, JSON_HINTS, "fix the JSON at that position"),
            ) from exc
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            problem = exc.problem or str(exc)
            mark = exc.problem_mark or exc.context_mark
            if mark is None:
                raise RequestFileError(f"{name}: not valid YAML: {problem}") from exc
            line, column = mark.line + 1, mark.column + 1
            opened = exc.context_mark
            if exc.context and opened is not None and opened.line != mark.line:
                # "while parsing a flow sequence" points at the unclosed bracket: worth saying where that is.
                problem += f" ({exc.context} at line {opened.line + 1}, column {opened.column + 1})"
            raise RequestFileError(
                f"{name}, line {line}, column {column}: not valid YAML: {problem}",
                excerpt=_excerpt(text, line, column),
                hint=_hint(f"{exc.context or ''} {problem}", YAML_HINTS, "fix the YAML at that position"),
            ) from exc
        except yaml.YAMLError as exc:
            raise RequestFileError(f"{name}: not valid YAML: {exc}") from exc
    if data is None:
        raise RequestFileError(
            f"{name} is empty",
            hint="write an execution request: at least an executable, e.g. "
            "executable: {kind: urn:ecliptic:executable:command, command: [echo, hello]}",
        )
    if not isinstance(data, dict):
        raise RequestFileError(
            f"{name} holds a {type(data).__name__}, not an execution request",
            hint="the top level must be a mapping with keys such as executable, compute, schedule",
        )
    return data


def read_request(source: str) -> RequestDocument:
    """Read and parse a request file (``-``: standard input); JSON by a ``.json`` suffix, else YAML."""
    if source == "-":
        name = "<stdin>"
        raw = sys.stdin.buffer.read()
    else:
        name = source
        path = Path(source)
        try:
            raw = path.read_bytes()
        except FileNotFoundError as exc:
            raise RequestFileError(
                f"{name}: no such file", hint="give the path of a YAML or JSON request"
            ) from exc
        except IsADirectoryError as exc:
            raise RequestFileError(f"{name} is a directory, not a request file") from exc
        except OSError as exc:
            raise RequestFileError(f"{name}: cannot read it: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RequestFileError(f"{name} is not UTF-8 text (bad byte at offset {exc.start})") from exc
    # YAML reads JSON too, but a .json file deserves JSON's error messages and a JSON Content-Type.
    fmt: Format = "json" if name.lower().endswith(".json") else "yaml"
    return RequestDocument(name=name, text=text, fmt=fmt, data=parse_request(text, name, fmt))


# -- output helpers ------------------------------------------------------------------------------------------
