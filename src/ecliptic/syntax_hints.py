"""What to do about a YAML or JSON syntax error, keyed by a fragment of the parser's message."""

from __future__ import annotations

from collections.abc import Iterable

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


def hint(problem: str, hints: Iterable[tuple[str, str]], default: str) -> str:
    """The first hint whose key occurs in the parser's message, else ``default``."""
    return next((hint for key, hint in hints if key in problem), default)
