"""Before offers are made: find where the request's data is, and how long each platform needs to stage it.

Resolving asks catalogues and servers (Rucio, the mesh, an HTTP HEAD), so it runs before the booking
transaction, never inside it. Each data component then carries, per platform, the replica it would be
staged from and the estimate, so that the session records estimated against actual time when it stages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from ecliptic.broker import kinds, messages
from ecliptic.broker.plan import ComponentPlan, Plan
from ecliptic.broker.schema import Message
from ecliptic.platforms.base import Platform
from ecliptic.staging.download import StagingError
from ecliptic.staging.estimates import TransferEstimator
from ecliptic.staging.router import DataSources
from ecliptic.staging.sources import Replica, Resolved


class TransferLoad(Protocol):
    def company(self, source: str, before: datetime, size: int | None) -> float:
        """Transfers from ``source`` booked or running that start before ``before``, in transfers."""
        ...


@dataclass
class DataAssessment:
    staging_seconds: dict[str, float] = field(default_factory=dict)
    """Per platform that can take the data: the estimated time to stage all of it, one item after another."""
    unfit: dict[str, Message] = field(default_factory=dict)
    """Per platform that cannot: why."""
    refusals: list[Message] = field(default_factory=list)
    """Reasons no platform can take the request (data not found, no source configured)."""
    notes: list[Message] = field(default_factory=list)


def _visible(platform: Platform, kind: str) -> bool:
    allowed = platform.info.data_kinds
    if allowed is None:
        # SKAO data is staged by prepareData into a science-platform home: only platforms that say so see it.
        return kind != kinds.DATA_SKAO
    return kind in allowed


def describe(spec: dict[str, Any], fallback: str) -> str:
    """The data resource in a few words for messages: its URL, DID, bucket, or else its name."""
    if "location" in spec:
        return str(spec["location"])
    if "rucio" in spec:
        return f"{spec['rucio'].get('scope')}:{spec['rucio'].get('object')}"
    if "skao" in spec:
        return f"{spec['skao'].get('namespace')}:{spec['skao'].get('objectname')}"
    if "bucket" in spec:
        return f"s3 {spec.get('bucket')}/{spec.get('object') or ''}"
    return fallback


def _describe(component: ComponentPlan) -> str:
    return describe(component.spec, component.name or component.uuid)


def assess(
    plan: Plan,
    platforms: Mapping[str, Platform],
    sources: DataSources,
    estimator: TransferEstimator,
    now: datetime,
    load: TransferLoad | None = None,
) -> DataAssessment:
    result = DataAssessment()
    located: list[tuple[ComponentPlan, Resolved | None]] = []
    for index, data in enumerate(plan.data):
        source = sources.source_for(data.kind, data.spec)
        if source is None:
            result.refusals.append(
                messages.error(
                    "urn:not-supported",
                    "No data source for data[{index}] ({what}, kind {kind}) is configured on this broker",
                    index=index,
                    what=_describe(data),
                    kind=data.kind,
                )
            )
            continue
        try:
            found: Resolved | None = source.resolve(data.spec)
        except StagingError as exc:
            if not exc.retryable:
                result.refusals.append(
                    messages.error(
                        "urn:data-not-found",
                        "data[{index}] ({what}) cannot be staged: {reason}",
                        index=index,
                        what=_describe(data),
                        reason=exc.message,
                    )
                )
                continue
            found = None
            result.notes.append(
                messages.make(
                    "urn:data-not-located",
                    "WARN",
                    "data[{index}] ({what}) could not be located now ({reason}); its staging time is a guess",
                    index=index,
                    what=_describe(data),
                    reason=exc.message,
                )
            )
        if found is not None:
            data.spec["resolved"] = {
                "size": found.size,
                "replicas": [
                    {"source": r.source, "url": r.url, "size": r.size, "site": r.site} for r in found.replicas
                ],
            }
        located.append((data, found))
    if result.refusals:
        return result

    for name, platform in platforms.items():
        total = 0.0
        problem: Message | None = None
        for index, (data, found) in enumerate(located):
            if not _visible(platform, data.kind):
                problem = messages.error(
                    "urn:not-supported",
                    "Platform {platform} cannot use data of kind {kind} (data[{index}])",
                    platform=name,
                    kind=data.kind,
                    index=index,
                )
                break
            best = _best(platform, found, estimator, now, load)
            total += best["seconds"]
            data.spec.setdefault("estimates", {})[name] = best
        if problem is not None:
            result.unfit[name] = problem
        else:
            result.staging_seconds[name] = total
    return result


def _best(
    platform: Platform,
    found: Resolved | None,
    estimator: TransferEstimator,
    now: datetime,
    load: TransferLoad | None,
) -> dict[str, Any]:
    site = platform.info.site
    replicas: list[Replica] = found.replicas if found is not None else []
    if not replicas:
        guess = estimator.estimate("unknown", site, None, now=now)
        return {"source": "unknown", "seconds": guess.seconds, "basis": guess.basis, "size": None}
    best: dict[str, Any] | None = None
    for listed in replicas:
        replica = listed if listed.size is not None or found is None else replace(listed, size=found.size)
        estimate = estimator.estimate_replica(replica, site, now=now)
        if load is not None:
            # The transfers that can share this one's time are those starting before it would end alone.
            company = load.company(replica.source, now + timedelta(seconds=estimate.seconds), replica.size)
            if company:
                estimate = estimator.estimate_replica(replica, site, now=now, in_flight=company)
        if best is None or estimate.seconds < best["seconds"]:
            best = {
                "source": replica.source,
                "url": replica.url,
                "seconds": estimate.seconds,
                "basis": estimate.basis,
                "in_flight": estimate.in_flight,
                "size": replica.size,
            }
    assert best is not None
    return best
