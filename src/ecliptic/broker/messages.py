"""Broker messages: kind, level, template, values *and* rendered text (the reference sends only the template)."""

from __future__ import annotations

import re
from typing import Any

from ecliptic.broker.schema import Level, Message
from ecliptic.isotime import utcnow

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def render(template: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), template)


def make(kind: str, level: Level, template: str, /, **values: Any) -> Message:
    text_values = {key: str(value) for key, value in values.items()}
    return Message(
        kind=kind,
        time=utcnow(),
        level=level,
        template=template,
        values=text_values,
        message=render(template, text_values),
    )


def error(kind: str, template: str, /, **values: Any) -> Message:
    return make(kind, "ERROR", template, **values)


def warn(kind: str, template: str, /, **values: Any) -> Message:
    return make(kind, "WARN", template, **values)


def info(kind: str, template: str, /, **values: Any) -> Message:
    return make(kind, "INFO", template, **values)
