"""Session and component phases, and which transitions a client may ask for."""

from __future__ import annotations

import enum


class SessionPhase(enum.StrEnum):
    INITIAL = "INITIAL"
    OFFERED = "OFFERED"
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    WAITING = "WAITING"
    PREPARING = "PREPARING"
    AVAILABLE = "AVAILABLE"
    RUNNING = "RUNNING"
    RELEASING = "RELEASING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class ComponentPhase(enum.StrEnum):
    INITIALIZING = "INITIALIZING"
    WAITING = "WAITING"
    PREPARING = "PREPARING"
    AVAILABLE = "AVAILABLE"
    RUNNING = "RUNNING"
    RELEASING = "RELEASING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL = frozenset(
    {
        SessionPhase.REJECTED,
        SessionPhase.EXPIRED,
        SessionPhase.COMPLETED,
        SessionPhase.FAILED,
        SessionPhase.CANCELLED,
    }
)
COMPONENT_TERMINAL = frozenset({ComponentPhase.COMPLETED, ComponentPhase.FAILED, ComponentPhase.CANCELLED})

# What a client may ask for, from each phase (WD "update options"). FAILED is accepted from any live phase
# for compatibility with Calycopis, but it needs a reason (see lifecycle.update_phase).
CLIENT_TRANSITIONS: dict[SessionPhase, frozenset[SessionPhase]] = {
    SessionPhase.OFFERED: frozenset({SessionPhase.ACCEPTED, SessionPhase.REJECTED}),
    **{
        phase: frozenset({SessionPhase.CANCELLED})
        for phase in (
            SessionPhase.ACCEPTED,
            SessionPhase.WAITING,
            SessionPhase.PREPARING,
            SessionPhase.AVAILABLE,
            SessionPhase.RUNNING,
        )
    },
}


def client_options(phase: SessionPhase) -> list[SessionPhase]:
    return sorted(CLIENT_TRANSITIONS.get(phase, frozenset()))
