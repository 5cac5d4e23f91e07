"""Turn an execution request into a :class:`Plan`, or say why not.

Two kinds of "no":
- :class:`RequestInvalid` — the body is malformed (wrong types, missing required fields, unparsable ISO 8601
  values). The API answers 400 with every problem and where it is.
- :class:`Rejection` — the request is well formed but this broker cannot satisfy it (unsupported kinds,
  unknown references, a start in the past). The API answers an offer set with ``result: NO`` and messages.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ValidationError

from ecliptic.broker import kinds, messages
from ecliptic.broker.plan import ComponentPlan, Plan, Rejection
from ecliptic.broker.schema import (
    CommandExecutableIn,
    ComponentIn,
    ComputeIn,
    DockerExecutableIn,
    ErrorDetail,
    ExecutionRequest,
    IvoaDataIn,
    JupyterExecutableIn,
    Message,
    RucioDataIn,
    S3DataIn,
    SimpleDataIn,
    SkaoDataIn,
    StorageIn,
    VolumeMountIn,
)
from ecliptic.isotime import Interval, IsoTimeError, format_instant, parse_duration, parse_interval

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

UNSUPPORTED_EXECUTABLES = {kinds.SINGULARITY}
DATA_SCHEMES = {"http", "https", "file", "mesh"}
DATA_MODELS: dict[str, type[ComponentIn]] = {
    kinds.DATA_SIMPLE: SimpleDataIn,
    kinds.DATA_S3: S3DataIn,
    kinds.DATA_RUCIO: RucioDataIn,
    kinds.DATA_IVOA: IvoaDataIn,
    kinds.DATA_SKAO: SkaoDataIn,
}
RESULT_SCHEMES = {"mesh", "s3", "file", "http", "https"}


class RequestInvalid(Exception):
    def __init__(self, details: list[ErrorDetail]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, d.loc))}: {d.msg}" for d in details))
        self.details = details


@dataclass
class Defaults:
    duration: timedelta
    now: datetime
    file_roots: tuple[Path, ...] = ()


def pydantic_details(exc: ValidationError, prefix: Loc = ()) -> list[ErrorDetail]:
    return [
        ErrorDetail(loc=[*prefix, *err["loc"]], msg=err["msg"], type=err["type"])
        for err in exc.errors(include_url=False)
    ]


class _Validator:
    def __init__(self, request: ExecutionRequest, defaults: Defaults) -> None:
        self.request = request
        self.defaults = defaults
        self.errors: list[ErrorDetail] = []
        self.refusals: list[Message] = []
        self.notes: list[Message] = []
        self.by_name: dict[str, ComponentPlan] = {}

    # -- helpers ---------------------------------------------------------------------------------------------
    def bad(self, loc: Loc, msg: str, type_: str = "value_error") -> None:
        self.errors.append(ErrorDetail(loc=list(loc), msg=msg, type=type_))

    def refuse(self, kind: str, template: str, /, **values: Any) -> None:
        self.refusals.append(messages.error(kind, template, **values))

    def unknown_kind(self, what: str, kind: str, path: str) -> None:
        self.refuse(
            "uri:unknown-type", "Unknown {what} kind {kind} (at {path})", what=what, kind=kind, path=path
        )

    def parse(self, model: type[M], raw: dict[str, Any], loc: Loc) -> M | None:
        try:
            parsed = model.model_validate(raw)
        except ValidationError as exc:
            self.errors.extend(pydantic_details(exc, loc))
            return None
        self.warn_unknown_fields(parsed, loc)
        return parsed

    def warn_unknown_fields(self, parsed: BaseModel, loc: Loc) -> None:
        for key in sorted(parsed.model_extra or {}):
            path = ".".join(map(str, (*loc, key)))
            self.notes.append(
                messages.warn("urn:ecliptic:unknown-field", "Ignored the unknown field {path}", path=path)
            )

    def register(self, component: ComponentPlan, loc: Loc) -> None:
        for ref in {component.name, component.uuid} - {None}:
            assert ref is not None
            if ref in self.by_name:
                self.refuse(
                    "urn:duplicate-resource",
                    "Two resources are named {name} (second at {path})",
                    name=ref,
                    path=".".join(map(str, loc)),
                )
            self.by_name[ref] = component

    def component(self, role: str, parsed: ComponentIn, spec: dict[str, Any]) -> ComponentPlan:
        spec = {**spec, "kind": parsed.kind}
        return ComponentPlan(str(uuid.uuid4()), role, parsed.kind, parsed.display_name, spec)

    # -- parts -----------------------------------------------------------------------------------------------
    def executable(self) -> ComponentPlan | None:
        raw = self.request.executable
        if raw is None:
            self.refuse(
                "urn:executable-required",
                "The request has no executable: add one at {path}",
                path="executable",
            )
            return None
        kind = kinds.normalise(str(raw.get("kind", "")))
        if not kind:
            self.bad(
                ("executable", "kind"),
                "Field required: the executable kind, e.g. " + kinds.COMMAND,
                "missing",
            )
            return None
        if kind in UNSUPPORTED_EXECUTABLES:
            self.refuse(
                "urn:not-supported",
                "No platform of this broker runs executables of kind {kind} (at executable)",
                kind=kind,
            )
            return None
        if kind == kinds.DOCKER:
            return self.docker_executable(raw)
        if kind == kinds.JUPYTER:
            notebook = self.parse(JupyterExecutableIn, raw, ("executable",))
            if notebook is None:
                return None
            return self.component(
                "executable",
                notebook,
                {"location": notebook.location, "environment": notebook.environment, "command": []},
            )
        if kind != kinds.COMMAND:
            self.unknown_kind("executable", kind, "executable.kind")
            return None
        parsed = self.parse(CommandExecutableIn, raw, ("executable",))
        if parsed is None:
            return None
        return self.component(
            "executable", parsed, {"command": parsed.command, "environment": parsed.environment}
        )

    def docker_executable(self, raw: dict[str, Any]) -> ComponentPlan | None:
        parsed = self.parse(DockerExecutableIn, raw, ("executable",))
        if parsed is None:
            return None
        if parsed.privileged:
            self.refuse(
                "urn:not-allowed",
                "Privileged containers are not run by this broker (at {path}); remove privileged: true",
                path="executable.privileged",
            )
            return None
        for index, location in enumerate(parsed.image.locations):
            if not location.strip() or any(ch.isspace() for ch in location):
                self.bad(
                    ("executable", "image", "locations", index),
                    f"{location!r} is not an image reference (registry/namespace/name:tag)",
                )
        digest = parsed.image.digest
        if digest is not None and not digest.startswith("sha256:"):
            digest = f"sha256:{digest}"
        ports = [
            {
                "internal": port.internal.port,
                "protocol": port.protocol,
                "path": port.path,
                "access": port.access,
            }
            for port in (parsed.network.ports if parsed.network else [])
        ]
        return self.component(
            "executable",
            parsed,
            {
                "image": {"locations": parsed.image.locations, "digest": digest.lower() if digest else None},
                "entrypoint": parsed.entrypoint,
                "command": parsed.command,
                "environment": parsed.environment,
                "ports": ports,
            },
        )

    def compute(self) -> tuple[ComponentPlan, tuple[int, int], tuple[int, int], list[VolumeMountIn]] | None:
        raw = dict(self.request.compute or {"meta": {"name": "Default compute resource"}})
        raw.setdefault("kind", kinds.COMPUTE)
        kind = kinds.normalise(str(raw["kind"]))
        if kind != kinds.COMPUTE:
            self.unknown_kind("compute", kind, "compute.kind")
            return None
        parsed = self.parse(ComputeIn, raw, ("compute",))
        if parsed is None:
            return None
        cores = self.min_max(parsed.cores, ("compute", "cores"), default=1)
        memory = self.min_max(parsed.memory, ("compute", "memory"), default=1)
        volumes = list(parsed.volumes)
        for index, extra in enumerate(self.request.volumes):
            # Volumes moved from the top level into compute in March 2026; older clients still send them there.
            try:
                volumes.append(VolumeMountIn.model_validate(extra))
            except ValidationError as exc:
                self.errors.extend(pydantic_details(exc, ("volumes", index)))
        plan = self.component("compute", parsed, {})
        return plan, cores, memory, volumes

    def min_max(self, value: Any, loc: Loc, default: int) -> tuple[int, int]:
        low = value.min if value is not None and value.min is not None else None
        high = value.max if value is not None and value.max is not None else None
        if low is None:
            low = default if high is None else min(default, high)
        if high is None:
            high = low
        if low < 1:
            self.bad((*loc, "min"), f"must be at least 1, not {low}")
        if low > high:
            self.bad((*loc, "min"), f"min ({low}) is greater than max ({high})")
        return low, high

    def storage(self) -> list[tuple[ComponentPlan, int]]:
        result = []
        for index, raw in enumerate(self.request.storage):
            raw = {"kind": kinds.STORAGE, **raw}
            kind = kinds.normalise(str(raw["kind"]))
            if kind != kinds.STORAGE:
                self.unknown_kind("storage", kind, f"storage[{index}].kind")
                continue
            parsed = self.parse(StorageIn, raw, ("storage", index))
            if parsed is None:
                continue
            low, _high = self.min_max(parsed.size, ("storage", index, "size"), default=1)
            spec: dict[str, Any] = {"size": {"min": low, "max": low}}
            if parsed.destination is not None:
                scheme = urlsplit(parsed.destination).scheme.lower()
                if scheme not in RESULT_SCHEMES:
                    self.bad(
                        ("storage", index, "destination"),
                        f"{parsed.destination!r}: results can be pushed to mesh:, s3:, file:, http: or "
                        "https: URLs",
                    )
                    continue
                spec["destination"] = parsed.destination
            plan = self.component("storage", parsed, spec)
            self.register(plan, ("storage", index))
            result.append((plan, low))
        return result

    def data(self) -> list[tuple[ComponentPlan, str | None]]:
        result = []
        for index, raw in enumerate(self.request.data):
            raw = {"kind": kinds.DATA_SIMPLE, **raw}
            kind = kinds.normalise(str(raw["kind"]))
            model = DATA_MODELS.get(kind)
            if model is None:
                self.unknown_kind("data", kind, f"data[{index}].kind")
                continue
            parsed = self.parse(model, raw, ("data", index))
            if parsed is None:
                continue
            spec = self.data_spec(index, parsed)
            if spec is None:
                continue
            plan = self.component("data", parsed, spec)
            self.register(plan, ("data", index))
            result.append((plan, getattr(parsed, "storage", None)))
        return result

    def data_spec(self, index: int, parsed: ComponentIn) -> dict[str, Any] | None:
        """The component's spec as its data source reads it (see ``ecliptic.staging.sources``)."""
        if isinstance(parsed, SimpleDataIn):
            return self.simple_data_spec(index, parsed)
        if isinstance(parsed, S3DataIn):
            return {
                "endpoint": parsed.endpoint,
                "template": parsed.template,
                "bucket": parsed.bucket,
                "object": parsed.object or None,
            }
        if isinstance(parsed, RucioDataIn):
            return {"rucio": parsed.rucio.model_dump(mode="json")}
        if isinstance(parsed, IvoaDataIn):
            block = parsed.ivoa
            access = (block.obscore.access_url if block.obscore else None) or (
                block.datalink.access_url if block.datalink else None
            )
            if not access:
                self.refuse(
                    "urn:not-supported",
                    "data[{index}] names IVOA data {ivoid} without an access URL; this broker stages IVOA "
                    "data from ivoa.obscore.access_url or ivoa.datalink.access_url",
                    index=index,
                    ivoid=block.ivoid or "(no ivoid)",
                )
                return None
            scheme = urlsplit(access).scheme.lower()
            if scheme not in ("http", "https"):
                self.refuse(
                    "uri:unknown-url",
                    "Cannot fetch data[{index}] access URL {location}: the scheme {scheme} is not http or https",
                    index=index,
                    location=access,
                    scheme=scheme or "(none)",
                )
                return None
            return {"ivoa": block.model_dump(mode="json", exclude_none=True)}
        assert isinstance(parsed, SkaoDataIn)
        spec: dict[str, Any] = {"skao": parsed.skao.model_dump(mode="json", exclude_none=True)}
        if parsed.ivoa is not None:
            spec["ivoa"] = parsed.ivoa.model_dump(mode="json", exclude_none=True)
        if parsed.skao.checksum is not None:
            spec["checksum"] = {
                "type": parsed.skao.checksum.type.lower(),
                "value": parsed.skao.checksum.value.lower(),
            }
        return spec

    def simple_data_spec(self, index: int, parsed: SimpleDataIn) -> dict[str, Any] | None:
        scheme = urlsplit(parsed.location).scheme.lower()
        if scheme not in DATA_SCHEMES:
            self.refuse(
                "uri:unknown-url",
                "Cannot fetch data[{index}].location {location}: the scheme {scheme} is not one of "
                "http, https, file, mesh",
                index=index,
                location=parsed.location,
                scheme=scheme or "(none)",
            )
            return None
        if scheme == "file" and not self.file_allowed(parsed.location):
            roots = ", ".join(str(root) for root in self.defaults.file_roots) or "none"
            self.refuse(
                "urn:not-allowed",
                "data[{index}].location {location} is not under a directory this broker serves files from "
                "({roots}); the operator can add one with ECLIPTIC_FILE_DATA_ROOTS",
                index=index,
                location=parsed.location,
                roots=roots,
            )
            return None
        spec: dict[str, Any] = {"location": parsed.location}
        if parsed.checksum is not None:
            spec["checksum"] = {
                "type": parsed.checksum.type.lower(),
                "value": parsed.checksum.value.lower(),
            }
        return spec

    def file_allowed(self, location: str) -> bool:
        path = Path(unquote(urlsplit(location).path)).resolve()
        return any(path == root or root in path.parents for root in self.defaults.file_roots)

    def schedule(self) -> tuple[list[Interval], timedelta]:
        requested = self.request.schedule.requested if self.request.schedule else None
        duration = self.defaults.duration
        starts: list[Interval] = []
        if requested is None:
            return starts, duration
        if requested.duration is not None:
            try:
                duration = parse_duration(requested.duration)
            except IsoTimeError as exc:
                self.bad(("schedule", "requested", "duration"), str(exc))
            else:
                if duration <= timedelta(0):
                    self.bad(("schedule", "requested", "duration"), "the duration must be longer than zero")
        past: list[Message] = []
        raw_starts = requested.start
        if isinstance(raw_starts, str):
            raw_starts = [raw_starts]
        for index, text in enumerate(raw_starts or []):
            loc: Loc = ("schedule", "requested", "start") + (
                (index,) if isinstance(requested.start, list) else ()
            )
            try:
                interval = parse_interval(text)
            except IsoTimeError as exc:
                self.bad(loc, str(exc))
                continue
            if interval.end < self.defaults.now:
                past.append(
                    messages.make(
                        "urn:start-in-past",
                        "ERROR",
                        "The requested start {interval} (at {path}) is over: it ended at {end}, and it is now {now}",
                        interval=text,
                        path=".".join(map(str, loc)),
                        end=format_instant(interval.end),
                        now=format_instant(self.defaults.now),
                    )
                )
                continue
            starts.append(interval)
        if past and not starts:
            self.refusals.extend(past)  # nothing left to offer in
        else:
            # Other windows are still open: offer in those, and say which ones were passed over.
            self.notes.extend(message.model_copy(update={"level": "WARN"}) for message in past)
        return starts, duration

    # -- whole request ---------------------------------------------------------------------------------------
    def run(self) -> Plan | Rejection:
        self.warn_unknown_fields(self.request, ())
        executable = self.executable()
        compute_parts = self.compute()
        storage = self.storage()
        data = self.data()
        starts, duration = self.schedule()

        storage_plans = [plan for plan, _ in storage]
        total_storage = sum(size for _, size in storage)
        data_plans = []
        for plan, ref in data:
            if ref is None:
                default = ComponentPlan(
                    str(uuid.uuid4()),
                    "storage",
                    kinds.STORAGE,
                    f"{plan.name or 'data'}-storage",
                    {"kind": kinds.STORAGE, "size": {"min": 1, "max": 1}, "data": [plan.uuid]},
                )
                storage_plans.append(default)
                total_storage += 1
                plan.spec["storage"] = default.uuid
            else:
                target = self.by_name.get(ref)
                if target is None or target.role != "storage":
                    self.refuse(
                        "urn:resource-not-found",
                        "data {data} names storage {ref}, but the request has no storage resource of that "
                        "name or UUID",
                        data=plan.name or plan.uuid,
                        ref=ref,
                    )
                    continue
                plan.spec["storage"] = target.uuid
                target.spec.setdefault("data", [])
                if plan.uuid not in target.spec["data"]:
                    target.spec["data"].append(plan.uuid)
            data_plans.append(plan)

        if compute_parts is not None:
            compute, cores, memory, volumes = compute_parts
            mounts = []
            for index, volume in enumerate(volumes):
                target = self.by_name.get(volume.resource)
                if target is None:
                    self.refuse(
                        "urn:resource-not-found",
                        "compute.volumes[{index}] mounts {ref}, but no data or storage resource has that name "
                        "or UUID",
                        index=index,
                        ref=volume.resource,
                    )
                    continue
                if ".." in volume.path.split("/") or not volume.path.strip("/"):
                    self.bad(
                        ("compute", "volumes", index, "path"),
                        f"{volume.path!r} is not a usable mount path (no '..', not the root)",
                    )
                    continue
                mounts.append({"path": volume.path, "mode": volume.mode, "resource": target.uuid})
            compute.spec["volumes"] = mounts

        if self.errors:
            raise RequestInvalid(self.errors)
        if self.refusals or executable is None or compute_parts is None:
            return Rejection(self.refusals + self.notes)
        return Plan(
            name=(self.request.meta.name if self.request.meta else None) or self.request.name,
            executable=executable,
            compute=compute,
            storage=storage_plans,
            data=data_plans,
            cores=cores,
            memory_gib=memory,
            storage_gib=total_storage,
            starts=starts,
            duration=duration,
            messages=self.notes,
        )


def validate(
    request: ExecutionRequest,
    *,
    now: datetime,
    default_duration: timedelta,
    file_roots: Sequence[Path] = (),
) -> Plan | Rejection:
    """Raises :class:`RequestInvalid` for a malformed request; returns a Plan or a Rejection otherwise."""
    roots = tuple(Path(root).resolve() for root in file_roots)
    return _Validator(request, Defaults(duration=default_duration, now=now, file_roots=roots)).run()
