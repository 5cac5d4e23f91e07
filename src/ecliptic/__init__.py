"""Ecliptic: compute, data and time in one service.

Three systems on one durable core: an IVOA ExecutionBroker (`ecliptic.broker`), a job scheduler and a
distributed file system. See ``docs/architecture.md`` for the map.
"""

__version__ = "0.1.0"
