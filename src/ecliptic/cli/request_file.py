"""Request files (YAML or JSON) as the CLI reads them: parsed, with line, column and a hint on failure."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ecliptic.broker.client import Format, Json


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


YAML_HINTS = (
    (
        "mapping values are not allowed",
        "a value contains ': ' or a key is indented too far: put the value in "
        "quotes, or line the key up with its siblings",
    ),
    ("found character '\\t'", "YAML indentation must be spaces, not tabs"),
    ("could not find expected ':'", "a key is missing its ':', or a quoted string is not closed"),
    (
        "did not find expected key",
        "the indentation is inconsistent: keys of one mapping must line up, and list items start with '- '",
    ),
    (
        "did not find expected '-' indicator",
        "items of one list must all start with '- ' at the same indentation",
    ),
    ("did not find expected node content", "a value is missing, or a bracket or quote is not closed"),
    (
        "expected a single document",
        "the file holds more than one YAML document ('---'): send one request per file",
    ),
    ("expected ',' or ']'", "a [ list ] is not closed, or a comma is missing between its items"),
    ("expected ',' or '}'", "a { mapping } is not closed, or a comma is missing between its items"),
    ("found unexpected end of stream", "a quoted string is not closed"),
    ("while scanning a quoted scalar", "a quoted string is not closed"),
    ("found undefined alias", "an alias (*name) refers to an anchor (&name) that is not defined"),
)
JSON_HINTS = (
    ("Expecting property name", "keys must be in double quotes, and there is no comma after the last item"),
    ("Expecting ',' delimiter", "a comma is missing between two items, or a bracket is not closed"),
    ("Expecting ':' delimiter", "a key must be followed by ':' and its value"),
    ("Expecting value", "a value is missing here, or there is a comma after the last item"),
    ("Extra data", "there is more text after the end of the JSON document"),
    ("Unterminated string", "a string is not closed with a double quote"),
    ("Invalid control character", "strings cannot hold raw newlines or tabs: write \\n or \\t"),
)


def _hint(problem: str, hints: tuple[tuple[str, str], ...], default: str) -> str:
    return next((hint for key, hint in hints if key in problem), default)


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
