"""The replicated records: file-system entries, pods and the network's configuration.

Every record is a last-writer-wins register. An entry has two: its content (name, parent, attributes,
blocks; versioned by ``hlc``/``origin``) and its placement (which pods hold its blocks; versioned by
``loc_hlc``/``loc_origin``), so moving a file between pods never overrides a concurrent write of it.
``chg_origin``/``chg_seq`` name the last change that touched the row; anti-entropy ships rows by it.
"""

from __future__ import annotations

import stat as statmod
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from ecliptic.mesh.manifest import Block

ROOT_ID = "root"
Kind = Literal["file", "dir", "symlink"]
PodState = Literal["active", "leaving", "left"]

_TYPE_BITS = {"file": statmod.S_IFREG, "dir": statmod.S_IFDIR, "symlink": statmod.S_IFLNK}


@dataclass(frozen=True)
class Entry:
    id: str
    parent: str
    name: str
    kind: Kind
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    blocks: tuple[Block, ...] = ()
    target: str = ""
    deleted: bool = False
    hlc: int = 0
    origin: str = ""
    holders: tuple[str, ...] = ()
    loc_hlc: int = 0
    loc_origin: str = ""
    chg_origin: str = ""
    chg_seq: int = 0

    @property
    def version(self) -> tuple[int, str]:
        return self.hlc, self.origin

    @property
    def placement(self) -> tuple[int, str]:
        return self.loc_hlc, self.loc_origin

    @property
    def st_mode(self) -> int:
        return _TYPE_BITS[self.kind] | (self.mode & 0o7777)

    def to_wire(self) -> dict[str, Any]:
        data = asdict(self)
        data["blocks"] = [list(block) for block in self.blocks]
        data["holders"] = list(self.holders)
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Entry:
        values = dict(data)
        values["blocks"] = tuple((str(h), int(n)) for h, n in values.get("blocks", ()))
        values["holders"] = tuple(values.get("holders", ()))
        return cls(**values)

    def evolve(self, **changes: Any) -> Entry:
        return replace(self, **changes)


def merge(local: Entry | None, incoming: Entry) -> Entry | None:
    """The row to keep after receiving ``incoming``; None when the local row stays as it is.

    Deterministic on every pod: content versions compare by (hlc, origin); for the same content version,
    placements compare the same way.
    """
    if local is None:
        return incoming
    if incoming.version > local.version:
        return incoming
    if incoming.version == local.version and incoming.placement > local.placement:
        return incoming
    return None


@dataclass(frozen=True)
class PodRecord:
    node_id: str
    public_key: bytes
    name: str
    address: str
    state: PodState = "active"
    capacity: int = 0
    free: int = 0
    joined_ns: int = 0
    hlc: int = 0
    origin: str = ""
    chg_origin: str = ""
    chg_seq: int = 0

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> PodRecord:
        return cls(**data)


@dataclass(frozen=True)
class ConfigRecord:
    text: str = ""
    hlc: int = 0
    origin: str = ""
    chg_origin: str = ""
    chg_seq: int = 0

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ConfigRecord:
        return cls(**data)


@dataclass
class Change:
    """One row shipped by anti-entropy."""

    table: Literal["entries", "pods", "config"]
    row: dict[str, Any] = field(default_factory=dict)
