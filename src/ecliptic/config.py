"""Settings: ``ECLIPTIC_*`` environment variables over an optional ``ecliptic.toml``, over defaults.

The defaults are the embedded deployment: a SQLite file in the user's data directory, the local platform sized
to this machine, one process.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import platformdirs
from pydantic import BeforeValidator, Field, PlainSerializer, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ecliptic.isotime import IsoTimeError, format_duration, parse_duration


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except IsoTimeError as exc:
            raise ValueError(str(exc)) from exc
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    return value


IsoDuration = Annotated[
    timedelta, BeforeValidator(_duration), PlainSerializer(format_duration, return_type=str)
]
"""An ISO 8601 duration (``PT30S``) or a number of seconds."""


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("ecliptic", appauthor=False))


def _total_memory_gib() -> int:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
        return max(1, (pages * size) // 2**30)
    except (ValueError, OSError, AttributeError):
        return 4


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ECLIPTIC_",
        toml_file=os.environ.get("ECLIPTIC_CONFIG", "ecliptic.toml"),
        extra="ignore",
    )

    data_dir: Path = Field(
        default_factory=_default_data_dir, description="Where the store and sessions live."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default a SQLite file (WAL) in data_dir."
    )

    offer_lifetime: IsoDuration = Field(default=timedelta(minutes=5), description="How long an offer holds.")
    max_offers: int = Field(default=4, ge=1, le=64, description="Most offers in one offer set.")
    default_duration: IsoDuration = Field(default=timedelta(hours=1))
    default_start_range: IsoDuration = Field(
        default=timedelta(hours=24), description="How far ahead to look when the request names no start."
    )
    slot_step: IsoDuration = Field(
        default=timedelta(seconds=1), description="Offer starts are aligned to this."
    )
    release_margin: IsoDuration = Field(
        default=timedelta(seconds=30), description="Time booked after a session's end for releasing it."
    )

    local_platform: bool = Field(
        default=True, description="Offer the local platform (processes on this machine)."
    )
    local_site: str = Field(default="local", description="The local platform's site, for transfer estimates.")
    local_cores: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    local_memory_gib: int = Field(default_factory=_total_memory_gib, ge=1)
    local_storage_gib: int = Field(default=100, ge=1)
    local_max_duration: IsoDuration = Field(default=timedelta(hours=24))

    workers: int = Field(default=4, ge=1, le=256, description="Engine handler threads per process.")
    lease: IsoDuration = Field(default=timedelta(seconds=30), description="How long a claim holds.")
    idle_poll: IsoDuration = Field(default=timedelta(milliseconds=200), description="Queue poll when idle.")
    output_retention: IsoDuration = Field(
        default=timedelta(days=7), description="Keep session files so long."
    )

    platforms: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="More execution platforms, as [platforms.<name>] tables with a type (docker, podman, "
        "slurm, kubernetes, skaha) and that type's settings; see docs/platforms.md.",
    )
    transfer_rates: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Static transfer rates per data source pattern ('rse:FAR_*' = {rate = '20 MB/s', "
        "latency = 2}), used until measured transfers give a history.",
    )
    rucio: dict[str, Any] | None = Field(
        default=None, description="The Rucio server Rucio DIDs are resolved with (url, account, username, …)."
    )
    preparedata: dict[str, Any] | None = Field(
        default=None,
        description="The SRCNet prepareData gatekeeper SKAO data is staged with (gatekeeper_url, token, home, …).",
    )
    s3: dict[str, Any] | None = Field(
        default=None, description="S3 defaults (endpoint, region, credentials per endpoint)."
    )
    result_roots: list[Path] = Field(
        default_factory=list,
        description="Directories file:// result destinations may name (none by default).",
    )
    file_data_roots: list[Path] = Field(
        default_factory=list,
        description="Directories whose files data resources may name with file:// URLs (none by default: a "
        "client could otherwise copy any file the broker can read into its session and download it).",
    )

    scheduler: bool = Field(
        default=True, description="Run a scheduler instance in serve and worker processes."
    )
    scheduler_tick: IsoDuration = Field(
        default=timedelta(milliseconds=100),
        description="How often a scheduler looks for changes made by other processes.",
    )
    scheduler_lookahead: IsoDuration = Field(
        default=timedelta(seconds=1), description="How far ahead fire times become run rows."
    )
    scheduler_lease: IsoDuration = Field(
        default=timedelta(seconds=15),
        description="How long a scheduler's hold on its schedules outlives its last heartbeat.",
    )
    run_retention: IsoDuration = Field(default=timedelta(days=30), description="Keep finished runs so long.")
    broker_url: str | None = Field(
        default=None,
        description="The broker that broker-request jobs go to; default: this service (serve) or "
        "http://127.0.0.1:8080.",
    )

    mesh_pod: str | None = Field(
        default=None,
        description="The mesh pod this service reads the network through (HOST:PORT); default: its embedded pod.",
    )
    mesh_embedded: bool = Field(
        default=True,
        description="`serve` runs a one-pod mesh of its own in the data directory when no mesh_pod is given.",
    )
    mesh_listen: str = Field(default="127.0.0.1:7400", description="Where the embedded pod listens.")

    compat_silent_updates: bool = Field(
        default=False,
        description="Answer an illegal phase update with 200 and the unchanged session, as Calycopis does.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def mesh_address(self) -> str | None:
        """The pod the service uses: the configured one, else its embedded pod's, else none."""
        if self.mesh_pod:
            return self.mesh_pod
        return self.mesh_listen if self.mesh_embedded else None

    @property
    def sessions_dir(self) -> Path:
        return self.data_dir / "sessions"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'ecliptic.sqlite'}"


def disk_free_gib(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free // 2**30


class SettingsError(Exception):
    """Settings that cannot be used, with which variable or file key is wrong and how."""


def locate_setting(toml_file: Path, dotted: str) -> int | None:
    """The line of ``ecliptic.toml`` that sets ``platforms.hpc.cores`` (say), so an error can point at it."""
    try:
        lines = toml_file.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    parts = dotted.split(".")
    table: list[str] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if text.startswith("[") and not text.startswith("[["):
            table = [part.strip().strip('"') for part in text.strip("[]").split(".")]
            if table == parts:
                return number
            continue
        key = text.split("=", 1)[0].strip().strip('"') if "=" in text else None
        if key is not None and [*table, *key.split(".")] == parts:
            return number
    return None


def load_settings() -> Settings:
    """Settings from the environment and ``ecliptic.toml``; :class:`SettingsError` names what is wrong."""
    toml_file = os.environ.get("ECLIPTIC_CONFIG", "ecliptic.toml")
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            field = ".".join(str(part) for part in error["loc"])
            variable = f"ECLIPTIC_{field.upper()}"
            problems.append(
                f"{variable} (or {field} in {toml_file}): {error['msg'].removeprefix('Value error, ')}"
            )
        raise SettingsError("; ".join(problems)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{toml_file} is not valid TOML: {exc}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
