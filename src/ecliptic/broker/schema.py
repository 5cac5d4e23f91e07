"""Pydantic models of the ExecutionBroker wire format (Calycopis-openapi schema v1.0.7), in and out.

Input models validate what the broker understands and keep unknown fields (``extra="allow"``) so that the
validator can warn about them instead of silently dropping a misspelt field. Output models are what the API
serialises, to JSON or YAML, with empty fields left out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ecliptic.broker import kinds
from ecliptic.broker.phases import ComponentPhase, SessionPhase

Level = Literal["DEBUG", "INFO", "WARN", "ERROR", "OTHER"]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# -- shared parts --------------------------------------------------------------------------------------------
class Message(BaseModel):
    kind: str
    time: datetime
    level: Level
    template: str
    values: dict[str, str] = Field(default_factory=dict)
    message: str


class EnumValueOption(BaseModel):
    kind: str = kinds.ENUM_OPTION
    path: str = "phase"
    values: list[str]


class Meta(BaseModel):
    uuid: str | None = None
    name: str | None = None
    url: str | None = None
    description: str | None = None
    created: datetime | None = None
    modified: datetime | None = None
    messages: list[Message] = Field(default_factory=list)
    options: list[EnumValueOption] = Field(default_factory=list)


class MetaIn(WireModel):
    name: str | None = None
    description: str | None = None


class MinMax(WireModel):
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)


class Checksum(WireModel):
    type: str
    value: str

    @field_validator("value", mode="before")
    @classmethod
    def _digest_not_number(cls, value: Any) -> Any:
        # An unquoted all-digit digest is a number in YAML, and has lost any leading zeros on the way.
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError("a checksum is text: the digest was read as a number, so put it in quotes")
        return value


class StartDuration(BaseModel):
    start: str | None = None
    duration: str | None = None


class ComponentSchedule(BaseModel):
    preparing: StartDuration | None = None
    available: StartDuration | None = None
    releasing: StartDuration | None = None


# -- request -------------------------------------------------------------------------------------------------
class ComponentIn(WireModel):
    kind: str
    meta: MetaIn | None = None
    name: str | None = None  # older models carried the name at top level

    @field_validator("kind")
    @classmethod
    def _normalise_kind(cls, value: str) -> str:
        return kinds.normalise(value)

    @property
    def display_name(self) -> str | None:
        return (self.meta.name if self.meta else None) or self.name


class CommandExecutableIn(ComponentIn):
    """``urn:ecliptic:executable:command``: an argv list run on the platform, as docker-container's ``command``."""

    command: list[str] = Field(min_length=1)
    environment: dict[str, str] = Field(default_factory=dict)

    @field_validator("command")
    @classmethod
    def _non_empty_program(cls, value: list[str]) -> list[str]:
        if not value[0].strip():
            raise ValueError("the first element of command (the program) must not be empty")
        return value


class ImagePlatformIn(WireModel):
    architecture: str = "amd64"
    os: str = "linux"


class ImageIn(WireModel):
    locations: list[str] = Field(min_length=1)
    digest: str | None = Field(default=None, pattern=r"^(sha256:)?[0-9a-fA-F]{64}$")
    platform: ImagePlatformIn | None = None


class PortNumberIn(WireModel):
    port: int = Field(ge=1, le=65535)


class NetworkPortIn(WireModel):
    access: bool = True
    internal: PortNumberIn
    external: dict[str, Any] | None = None
    """Filled in by the broker on output; ignored on input."""
    protocol: Literal["UDP", "TCP", "HTTP", "HTTPS"] = "TCP"
    path: str = ""


class NetworkIn(WireModel):
    ports: list[NetworkPortIn] = Field(default_factory=list)


class DockerExecutableIn(ComponentIn):
    """``…/kinds/executable/docker-container.yaml``."""

    image: ImageIn
    privileged: bool = False
    entrypoint: str | None = None
    command: list[str] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict)
    network: NetworkIn | None = None


class JupyterExecutableIn(ComponentIn):
    """``…/kinds/executable/jupyter-notebook.yaml``: an interactive notebook session; ``location`` is the
    notebook to open, when there is one."""

    location: str | None = None
    environment: dict[str, str] = Field(default_factory=dict)


class VolumeMountIn(WireModel):
    kind: str | None = None
    path: str
    mode: Literal["READONLY", "READWRITE"] = "READONLY"
    resource: str


class ComputeIn(ComponentIn):
    cores: MinMax | None = None
    memory: MinMax | None = None
    volumes: list[VolumeMountIn] = Field(default_factory=list)


class StorageIn(ComponentIn):
    size: MinMax | None = None
    data: list[str] = Field(default_factory=list)
    destination: str | None = None
    """Ecliptic extension: where the storage's contents are pushed when the session is released (a
    ``mesh:``, ``s3:``, ``file:`` or ``http(s):`` URL), before compute and storage are freed."""


class SimpleDataIn(ComponentIn):
    location: str
    storage: str | None = None
    checksum: Checksum | None = None


class S3DataIn(ComponentIn):
    endpoint: str
    template: str | None = None
    bucket: str = Field(min_length=1)
    object: str | None = None
    """Blank: the whole bucket."""
    storage: str | None = None


class RucioBlockIn(WireModel):
    endpoint: str | None = None
    scope: str = Field(min_length=1)
    object: str = Field(min_length=1)
    type: Literal["FILE", "DATASET", "CONTAINER"] = "FILE"


class RucioDataIn(ComponentIn):
    rucio: RucioBlockIn
    storage: str | None = None


class ObscoreIn(WireModel):
    access_url: str | None = None
    access_format: str | None = None


class DatalinkIn(WireModel):
    access_url: str | None = None
    content_length: int | None = None


class IvoaBlockIn(WireModel):
    ivoid: str | None = None
    obscore: ObscoreIn | None = None
    datalink: DatalinkIn | None = None


class IvoaDataIn(ComponentIn):
    ivoa: IvoaBlockIn
    storage: str | None = None


class SkaoReplicaIn(WireModel):
    rsename: str
    dataurl: str


class SkaoBlockIn(WireModel):
    namespace: str = Field(min_length=1)
    objectname: str = Field(min_length=1)
    objecttype: str | None = None
    datasize: int | None = Field(default=None, ge=0)
    checksum: Checksum | None = None
    replicas: list[SkaoReplicaIn] = Field(default_factory=list)


class SkaoDataIn(ComponentIn):
    ivoa: IvoaBlockIn | None = None
    skao: SkaoBlockIn
    storage: str | None = None


class RequestedSchedule(WireModel):
    start: str | list[str] | None = None
    duration: str | None = None


class ScheduleIn(WireModel):
    requested: RequestedSchedule | None = None


class ExecutionRequest(WireModel):
    """The body of ``POST /requests`` and ``POST /direct``. Components stay raw until their kind is known."""

    name: str | None = None
    meta: MetaIn | None = None
    executable: dict[str, Any] | None = None
    compute: dict[str, Any] | None = None
    storage: list[dict[str, Any]] = Field(default_factory=list)
    data: list[dict[str, Any]] = Field(default_factory=list)
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    schedule: ScheduleIn | None = None
    costs: list[dict[str, Any]] = Field(default_factory=list)
    metrics: list[dict[str, Any]] = Field(default_factory=list)


class PhaseUpdate(WireModel):
    """``uri:enum-value-update`` on path ``phase``; the only update the broker implements."""

    kind: str = kinds.ENUM_UPDATE
    path: str = "phase"
    value: str
    reason: str | None = None


# -- response ------------------------------------------------------------------------------------------------
class ComponentOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    kind: str
    meta: Meta
    phase: ComponentPhase
    schedule: ComponentSchedule | None = None


class Connector(BaseModel):
    kind: str
    status: Literal["PREPARING", "AVAILABLE", "FINISHED"]
    protocol: str
    location: str


class SessionOut(BaseModel):
    kind: str = kinds.SESSION
    meta: Meta
    phase: SessionPhase
    expires: datetime | None = None
    schedule: ComponentSchedule | None = None
    executable: ComponentOut | None = None
    compute: ComponentOut | None = None
    storage: list[ComponentOut] = Field(default_factory=list)
    data: list[ComponentOut] = Field(default_factory=list)
    connectors: list[Connector] = Field(default_factory=list)


class OfferSetOut(BaseModel):
    kind: str = kinds.OFFERSET
    meta: Meta
    result: Literal["YES", "NO"]
    description: str | None = None
    offers: list[SessionOut] = Field(default_factory=list)


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every 4xx body: what is wrong, where, and (for 409) the resource as it is now."""

    status: int
    error: str
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)
    session: SessionOut | None = None
