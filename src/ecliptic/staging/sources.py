"""The one ``DataSource`` protocol every kind of data resource is staged through.

A data component's ``spec`` (normalised by the broker's validator) names the data; its source first
*resolves* it to replicas, best first, each tagged with the ``source`` key that transfer-time estimates are
kept under; then *fetches* one replica into the session's storage. ``resolve`` runs when offers are made
(outside any store transaction) and again when staging starts; ``fetch`` runs in an engine worker and may run
twice for the same component after a crash, so it is idempotent and, where the protocol allows, resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ecliptic.staging.download import StagedFile

Progress = Callable[[int, int | None], None]
"""``progress(done_bytes, total_bytes_or_None)``, called as bytes arrive."""


@dataclass(frozen=True)
class Replica:
    source: str
    """The estimate key: ``http:<host>:<port>``, ``rse:<NAME>``, ``mesh:<pod name>``, ``s3:<host>:<port>``,
    ``preparedata:<host>``."""
    url: str
    """Where this copy is read from (a URL, a PFN, a mesh path)."""
    size: int | None = None
    site: str | None = None
    """The site the copy lives at, when known (an RSE name, a mesh pod): a platform at that site needs no
    transfer."""


@dataclass(frozen=True)
class Resolved:
    replicas: list[Replica]
    """Best first; never empty (a source that finds none raises StagingError)."""
    size: int | None = None
    """Total bytes, when known."""
    checksum: tuple[str, str] | None = None
    """``(algorithm, hex digest)`` the staged bytes must match, when the catalogue knows one."""
    details: dict[str, Any] = field(default_factory=dict)


class DataSource(Protocol):
    kinds: frozenset[str]
    """The data resource kind URIs (and, for simple data, URL schemes as ``scheme:``) it handles."""

    def resolve(self, spec: dict[str, Any]) -> Resolved:
        """Where the data is. Raises :class:`~ecliptic.staging.download.StagingError` with a message for
        the client (not found, no permission, …); ``retryable`` when trying later may help."""
        ...

    def fetch(
        self, spec: dict[str, Any], replica: Replica, dest_dir: Path, progress: Progress | None = None
    ) -> StagedFile:
        """Put the data into ``dest_dir`` (a file, or a directory for collections) and describe what is there.

        ``StagedFile.sha256`` is the file's digest, or for a directory the digest of its sorted
        ``<relative path>\\0<sha256>\\n`` lines.
        """
        ...
