"""The durable time engine: due work items in the store, claimed by workers with leases.

Anything that must happen later — an offer expiring, a session starting, a platform being polled, a resource
being released — is a row in ``work_items`` before it is anything else. Workers in any number of processes
claim due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), run an idempotent
handler, and either delete the row, move it to a new due time, or back off after an error. A process that dies
mid-work loses nothing: its leases lapse and another worker picks the item up.
"""

from ecliptic.engine.outcome import Again, Done, Job, Outcome
from ecliptic.engine.queue import cancel, claim, finish, pending, schedule
from ecliptic.engine.worker import Handler, Worker

__all__ = [
    "Again",
    "Done",
    "Handler",
    "Job",
    "Outcome",
    "Worker",
    "cancel",
    "claim",
    "finish",
    "pending",
    "schedule",
]
