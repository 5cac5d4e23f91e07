"""Request bodies the broker tests build on."""

from __future__ import annotations

from typing import Any

from ecliptic.broker import kinds


def command_request(*argv: str, duration: str = "PT5M", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "executable": {"kind": kinds.COMMAND, "command": list(argv) or ["true"]},
        "schedule": {"requested": {"duration": duration}},
    }
    body.update(extra)
    return body


def accept(value: str = "ACCEPTED") -> dict[str, str]:
    return {"kind": "uri:enum-value-update", "path": "phase", "value": value}
