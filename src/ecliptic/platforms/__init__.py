"""Execution platforms: where a session's executable really runs. One protocol, one module per platform."""

from ecliptic.platforms.base import Capacity, LaunchSpec, Platform, RunState, RunStatus

__all__ = ["Capacity", "LaunchSpec", "Platform", "RunState", "RunStatus"]
