"""JSON and YAML in and out, chosen by ``Content-Type`` and ``Accept``.

With no ``Accept`` header (or ``*/*``) the answer is JSON, as the reference broker and most HTTP clients
expect; the Working Draft's YAML default is one ``Accept: application/yaml`` away.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import yaml
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from ecliptic.http.errors import ApiError

Format = Literal["json", "yaml"]

JSON_TYPES = ("application/json", "text/json")
YAML_TYPES = (
    "application/yaml",
    "text/yaml",
    "application/x-yaml",
    "text/x-yaml",
    "application/yml",
    "text/yml",
)
ACCEPTED_BODY_TYPES = ", ".join(JSON_TYPES + YAML_TYPES)


def _format_of(media_type: str) -> Format | None:
    media_type = media_type.split(";", 1)[0].strip().lower()
    if media_type in JSON_TYPES or media_type.endswith("+json"):
        return "json"
    if media_type in YAML_TYPES or media_type.endswith("+yaml") or media_type.endswith("+yml"):
        return "yaml"
    return None


def choose_format(accept: str | None) -> Format:
    """The best format the client accepts; 406 when it accepts neither JSON nor YAML."""
    if not accept or not accept.strip():
        return "json"
    ranked: list[tuple[float, int, Format]] = []
    for position, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        fmt = _format_of(media)
        if fmt is None and media in ("*/*", "application/*"):
            fmt = "json"
        elif fmt is None and media == "text/*":
            fmt = "yaml"
        if fmt is not None:
            ranked.append((-quality, position, fmt))
    if not ranked:
        raise ApiError(
            406,
            f"Cannot answer in any type the Accept header allows ({accept!r}); "
            "this API speaks application/json and application/yaml",
        )
    return sorted(ranked)[0][2]


async def read_body(request: Request) -> Any:
    """The request body as plain data; 415 for a type we do not read, 400 for a body that does not parse."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "")
    fmt = _format_of(content_type) if content_type else None
    if content_type and fmt is None:
        raise ApiError(
            415,
            f"Cannot read a body of type {content_type!r}: send one of {ACCEPTED_BODY_TYPES}",
        )
    if not raw.strip():
        raise ApiError(400, "The request has no body: send a JSON or YAML document")
    text = raw.decode("utf-8", errors="replace")
    if fmt == "json" or (fmt is None and text.lstrip().startswith(("{", "["))):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApiError(
                400,
                f"The body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                loc=["body"],
            ) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ApiError(400, f"The body is not valid YAML: {problem}{where}", loc=["body"]) from exc


def to_data(content: Any) -> Any:
    if isinstance(content, BaseModel):
        return content.model_dump(mode="json", exclude_none=True)
    if isinstance(content, list):
        return [to_data(item) for item in content]
    if isinstance(content, dict):
        return {key: to_data(value) for key, value in content.items()}
    return content


def render(content: Any, fmt: Format, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = to_data(content)
    if fmt == "yaml":
        body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        return Response(body, status_code=status, media_type="application/yaml", headers=headers)
    return Response(
        json.dumps(data, ensure_ascii=False),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def negotiated(request: Request) -> Format:
    return choose_format(request.headers.get("accept"))
