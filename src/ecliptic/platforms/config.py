"""What every configured platform has in common: its size, its site, and how long it takes to get ready.

Platforms are configured in ``ecliptic.toml`` under ``[platforms.<name>]`` with a ``type`` (``docker``,
``podman``, ``slurm``, ``kubernetes``, ``skaha``); each platform module defines its own model on top of
:class:`PlatformConfig`. Unknown keys are errors, so a misspelt setting is caught when the service starts.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field

from ecliptic.config import IsoDuration
from ecliptic.platforms.base import Capacity


class PlatformConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    cores: int = Field(default=2, ge=1, description="Cores the broker may book on this platform at once.")
    memory_gib: int = Field(default=4, ge=1)
    storage_gib: int = Field(default=100, ge=1)
    max_duration: IsoDuration = Field(default=timedelta(hours=24))
    site: str = Field(
        default="local",
        description="Where this platform's storage is (a name shared with data sources, e.g. an RSE or a pod); "
        "data already at the site is estimated to stage fastest.",
    )
    prepare_seconds: dict[str, float] = Field(
        default_factory=dict,
        description="Override the platform's own estimates of preparation time per role "
        "(executable, compute, storage).",
    )

    def capacity(self) -> Capacity:
        return Capacity(self.cores, self.memory_gib, self.storage_gib, self.max_duration)
