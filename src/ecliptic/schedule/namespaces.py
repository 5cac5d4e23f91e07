"""Namespaces: every schedule lives in one; without a name given, an ephemeral one is derived from its origin.

``digest(host, user, resource)`` qualifies a timetable uniquely even when it runs in several places at once, and
is stable, so running the same file again on the same machine lands in the same namespace.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
from typing import Any

from ecliptic.isotime import format_instant, utcnow


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def ephemeral_namespace(resource: str, *, host: str | None = None, user: str | None = None) -> str:
    """A 32-hex-digit name for what ``resource`` (a file's absolute path, a command line) schedules."""
    basis = f"{host or socket.gethostname()}-{user or _user()}-{resource}"
    return hashlib.md5(basis.encode(), usedforsecurity=False).hexdigest()


def origin(resource: str | None, *, author: str | None = None, source: str | None = None) -> dict[str, Any]:
    """What is recorded about where a namespace or schedule came from."""
    data: dict[str, Any] = {
        "host": socket.gethostname(),
        "user": _user(),
        "at": format_instant(utcnow()),
    }
    if resource is not None:
        data["resource"] = resource
    if author is not None:
        data["author"] = author
    if source is not None:
        data["source"] = source
    return data
