"""The broker's data sources, transfer estimator and result pusher, from its settings."""

from __future__ import annotations

from typing import Any

from ecliptic.config import Settings, SettingsError
from ecliptic.staging.estimates import TransferEstimator
from ecliptic.staging.http import HttpSource
from ecliptic.staging.ivoa import IvoaSource
from ecliptic.staging.mesh import MeshSource
from ecliptic.staging.preparedata import PrepareDataConfig, PrepareDataSource
from ecliptic.staging.results import ResultPusher
from ecliptic.staging.router import DataSources
from ecliptic.staging.rucio import RucioConfig, RucioSource
from ecliptic.staging.s3 import S3Config, S3Credentials, S3Source
from ecliptic.staging.sources import DataSource
from ecliptic.store.database import Database


def _config(cls: type[Any], table: str, raw: dict[str, Any]) -> Any:
    try:
        return cls(**raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"[{table}] in the settings: {exc}") from exc


def s3_config(settings: Settings) -> S3Config:
    raw = dict(settings.s3 or {})
    credentials = {
        endpoint: _config(S3Credentials, f"s3.credentials.{endpoint}", dict(values))
        for endpoint, values in dict(raw.pop("credentials", {}) or {}).items()
    }
    return S3Config.from_env(**raw, credentials=credentials) if credentials else S3Config.from_env(**raw)


def build_data_sources(settings: Settings) -> DataSources:
    http = HttpSource(settings.file_data_roots)
    sources: list[DataSource] = [http, IvoaSource(http), S3Source(s3_config(settings))]
    pod = settings.mesh_address()
    if pod is not None:
        sources.append(MeshSource(pod))
    if settings.rucio is not None:
        sources.append(RucioSource(_config(RucioConfig, "rucio", dict(settings.rucio))))
    if settings.preparedata is not None:
        sources.append(
            PrepareDataSource(_config(PrepareDataConfig, "preparedata", dict(settings.preparedata)))
        )
    return DataSources(sources)


MESH_RATE = {"rate": "100 MB/s", "latency": 0.5}
"""Pods of one mesh are in one network: until history exists, a pod elsewhere is guessed at LAN speed, not at
the pessimistic default for unknown sources."""


def build_estimator(db: Database, settings: Settings) -> TransferEstimator:
    try:
        return TransferEstimator(db, {"mesh:*": MESH_RATE, **settings.transfer_rates})
    except ValueError as exc:
        raise SettingsError(f"transfer_rates: {exc}") from exc


def build_results(settings: Settings) -> ResultPusher:
    return ResultPusher(
        file_roots=settings.result_roots, mesh_pod=settings.mesh_address(), s3=s3_config(settings)
    )
