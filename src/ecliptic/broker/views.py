"""Rows to wire models: the one place that knows how a stored session looks on the wire."""

from __future__ import annotations

from typing import Any, Literal

from ecliptic.broker import kinds
from ecliptic.broker.phases import ComponentPhase, SessionPhase, client_options
from ecliptic.broker.schema import (
    ComponentOut,
    ComponentSchedule,
    Connector,
    EnumValueOption,
    Message,
    Meta,
    OfferSetOut,
    SessionOut,
    StartDuration,
)
from ecliptic.isotime import format_duration, format_instant
from ecliptic.store.tables import ComponentRow, OfferSetRow, SessionRow, TransitionRow

_INTERNAL_SPEC = frozenset({"kind", "meta", "name", "estimates", "resolved"})
_STAGING_STATE = (
    "source",
    "size",
    "sha256",
    "progress",
    "staging_seconds",
    "estimated_seconds",
    "estimate_basis",
)
"""What a data component shows of its staging: where from, how big, how long against the estimate."""

COMPONENT_PATHS = {"executable": "executables", "compute": "compute", "storage": "storage", "data": "data"}


def _messages(raw: list[dict[str, Any]] | None) -> list[Message]:
    return [Message.model_validate(item) for item in raw or []]


def session_schedule(row: SessionRow) -> ComponentSchedule:
    return ComponentSchedule(
        preparing=StartDuration(
            start=format_instant(row.prepare_start),
            duration=format_duration(row.available_start - row.prepare_start),
        ),
        available=StartDuration(
            start=f"{format_instant(row.available_start)}/PT0S",
            duration=format_duration(row.available_end - row.available_start),
        ),
        releasing=StartDuration(
            start=format_instant(row.available_end),
            duration=format_duration(row.release_end - row.available_end),
        ),
    )


def component_out(row: SessionRow, component: ComponentRow, base_url: str) -> ComponentOut:
    fields = {key: value for key, value in component.spec.items() if key not in _INTERNAL_SPEC}
    if component.role == "data":
        staging = {key: component.state[key] for key in _STAGING_STATE if key in component.state}
        estimate = (component.spec.get("estimates") or {}).get(row.platform)
        if estimate and "estimated_seconds" not in staging:
            staging["estimated_seconds"] = estimate.get("seconds")
            staging["estimate_basis"] = estimate.get("basis")
            staging["source"] = estimate.get("source")
        if staging:
            fields["staging"] = staging
    if component.role == "compute":
        fields["cores"] = {"min": row.cores, "max": row.cores}
        fields["memory"] = {"min": row.memory_gib, "max": row.memory_gib}
    schedule = None
    if component.role == "compute":
        schedule = session_schedule(row)
    return ComponentOut(
        kind=component.kind,
        meta=Meta(
            uuid=component.uuid,
            name=component.name,
            url=f"{base_url}{COMPONENT_PATHS[component.role]}/{component.uuid}",
            messages=_messages(component.state.get("messages")),
        ),
        phase=ComponentPhase(component.phase),
        schedule=schedule,
        **fields,
    )


def session_out(row: SessionRow, base_url: str) -> SessionOut:
    phase = SessionPhase(row.phase)
    options = client_options(phase)
    by_role: dict[str, list[ComponentOut]] = {"executable": [], "compute": [], "storage": [], "data": []}
    for component in row.components:
        by_role[component.role].append(component_out(row, component, base_url))
    return SessionOut(
        kind=kinds.SESSION,
        meta=Meta(
            uuid=row.uuid,
            name=row.name,
            url=f"{base_url}sessions/{row.uuid}",
            created=row.created,
            modified=row.modified,
            messages=_messages(row.messages),
            options=[EnumValueOption(values=[p.value for p in options])] if options else [],
        ),
        phase=phase,
        expires=row.expires if phase == SessionPhase.OFFERED else None,
        schedule=session_schedule(row),
        executable=by_role["executable"][0] if by_role["executable"] else None,
        compute=by_role["compute"][0] if by_role["compute"] else None,
        storage=by_role["storage"],
        data=by_role["data"],
        connectors=_connectors(row, phase),
    )


def _connectors(row: SessionRow, phase: SessionPhase) -> list[Connector]:
    compute = next((c for c in row.components if c.role == "compute"), None)
    if compute is None:
        return []
    if phase in (SessionPhase.AVAILABLE, SessionPhase.RUNNING):
        status: Literal["PREPARING", "AVAILABLE", "FINISHED"] = "AVAILABLE"
    elif phase in (SessionPhase.OFFERED, SessionPhase.ACCEPTED, SessionPhase.WAITING, SessionPhase.PREPARING):
        status = "PREPARING"
    else:
        status = "FINISHED"
    return [
        Connector(kind=item["kind"], status=status, protocol=item["protocol"], location=item["location"])
        for item in compute.state.get("connectors") or []
    ]


def transition_out(row: TransitionRow) -> dict[str, Any]:
    return {
        "at": format_instant(row.at),
        "component": row.component,
        "from": row.from_phase,
        "to": row.to_phase,
        "reason": row.reason,
    }


def offerset_out(row: OfferSetRow, base_url: str) -> OfferSetOut:
    return OfferSetOut(
        meta=Meta(
            uuid=row.uuid,
            name=row.name,
            url=f"{base_url}offersets/{row.uuid}",
            created=row.created,
            messages=_messages(row.messages),
        ),
        result="YES" if row.result == "YES" else "NO",
        offers=[session_out(session, base_url) for session in row.sessions],
    )
