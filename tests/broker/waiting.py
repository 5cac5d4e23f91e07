"""Polling helpers for tests: bounded waits, never assertions on time."""

from __future__ import annotations

import time
from typing import Any

import httpx

TERMINAL = {"REJECTED", "EXPIRED", "COMPLETED", "FAILED", "CANCELLED"}


def wait_for_phase(
    http: httpx.Client, session_uuid: str, phases: set[str] | None = None, timeout: float = 60
) -> dict[str, Any]:
    wanted = phases or TERMINAL
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = http.get(f"sessions/{session_uuid}").json()
        if body["phase"] in wanted:
            return body
        time.sleep(0.05)
    raise AssertionError(f"session {session_uuid} stayed {body.get('phase')} (wanted {sorted(wanted)})")


def wait_for_component(
    http: httpx.Client, session_uuid: str, role: str, phase: str, timeout: float = 60
) -> dict[str, Any]:
    """Wait until a component reaches ``phase``: the session's own phase can change first."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = http.get(f"sessions/{session_uuid}").json()
        if body[role]["phase"] == phase:
            return body
        time.sleep(0.05)
    raise AssertionError(
        f"{role} of session {session_uuid} stayed {body.get(role, {}).get('phase')}, not {phase}"
    )
