"""Which configured data source stages a data component: by its kind, and for simple data by URL scheme."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from ecliptic.broker import kinds
from ecliptic.staging.sources import DataSource


def source_key(kind: str, spec: dict[str, Any]) -> str:
    """``<kind URI>``, or ``<scheme>:`` for simple data (``http:``, ``mesh:``), as sources declare them."""
    if kind == kinds.DATA_SIMPLE:
        return urlsplit(str(spec.get("location", ""))).scheme.lower() + ":"
    return kind


class DataSources:
    def __init__(self, sources: Iterable[DataSource]) -> None:
        self._by_key: dict[str, DataSource] = {}
        for source in sources:
            for key in source.kinds:
                self._by_key.setdefault(key, source)

    def source_for(self, kind: str, spec: dict[str, Any]) -> DataSource | None:
        return self._by_key.get(source_key(kind, spec))

    def handles(self, kind: str, spec: dict[str, Any]) -> bool:
        return source_key(kind, spec) in self._by_key

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self._by_key)
