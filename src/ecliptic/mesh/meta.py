"""A pod's metadata replica in SQLite (WAL): entries, pods, network config, and the version vector.

Every pod holds the whole tree on disk, so a restart needs no download, only the changes made while it
was away: ``changes_since(vector)`` is the anti-entropy query (rows whose last change a peer has not
seen, per origin, in sequence order), ``apply`` merges rows received from a peer. Local changes take the
next sequence number of this pod in the same transaction as the row they write.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from ecliptic.mesh.entries import ROOT_ID, ConfigRecord, Entry, PodRecord, merge
from ecliptic.mesh.wire import MeshError

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY, parent TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
    mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, blocks TEXT NOT NULL, target TEXT NOT NULL,
    deleted INTEGER NOT NULL, hlc INTEGER NOT NULL, origin TEXT NOT NULL,
    holders TEXT NOT NULL, loc_hlc INTEGER NOT NULL, loc_origin TEXT NOT NULL,
    chg_origin TEXT NOT NULL, chg_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_name ON entries (parent, name);
CREATE INDEX IF NOT EXISTS entries_by_change ON entries (chg_origin, chg_seq);
CREATE TABLE IF NOT EXISTS pods (
    node_id TEXT PRIMARY KEY, public_key BLOB NOT NULL, name TEXT NOT NULL, address TEXT NOT NULL,
    state TEXT NOT NULL, capacity INTEGER NOT NULL, free INTEGER NOT NULL, joined_ns INTEGER NOT NULL,
    hlc INTEGER NOT NULL, origin TEXT NOT NULL, chg_origin TEXT NOT NULL, chg_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS config (
    key TEXT PRIMARY KEY, text TEXT NOT NULL, hlc INTEGER NOT NULL, origin TEXT NOT NULL,
    chg_origin TEXT NOT NULL, chg_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vector (origin TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""

_ENTRY_COLUMNS = [f.name for f in fields(Entry)]
_POD_COLUMNS = [f.name for f in fields(PodRecord)]
_CONFIG_COLUMNS = ["key", *(f.name for f in fields(ConfigRecord))]

ROOT = Entry(id=ROOT_ID, parent="", name="", kind="dir", mode=0o755)


def _entry_row(entry: Entry) -> tuple[Any, ...]:
    values = []
    for name in _ENTRY_COLUMNS:
        value = getattr(entry, name)
        if name == "blocks":
            value = json.dumps([list(block) for block in value], separators=(",", ":"))
        elif name == "holders":
            value = json.dumps(list(value), separators=(",", ":"))
        elif name == "deleted":
            value = int(value)
        values.append(value)
    return tuple(values)


def _entry_of(row: sqlite3.Row) -> Entry:
    values = dict(zip(_ENTRY_COLUMNS, row, strict=True))
    values["blocks"] = tuple((h, n) for h, n in json.loads(values["blocks"]))
    values["holders"] = tuple(json.loads(values["holders"]))
    values["deleted"] = bool(values["deleted"])
    return Entry(**values)


def split_path(path: str) -> list[str]:
    parts = [part for part in path.split("/") if part and part != "."]
    if any(part == ".." for part in parts):
        raise MeshError("EINVAL", f"{path!r}: '..' is not allowed in mesh paths")
    return parts


class MetaStore:
    def __init__(self, path: Path, node_id: str) -> None:
        self.path = path
        self.node_id = node_id
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against a crash of the process (the case that matters for a daemon); a power
        # loss may drop the last transactions, which anti-entropy then fetches again from the peers.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()
        self._seq = int(self.get_state("seq") or 0)
        if self.entry(ROOT_ID) is None:
            # The root is the same row on every pod and never shipped; its times are this pod's start.
            now = time.time_ns()
            self._write_entry(ROOT.evolve(mtime_ns=now, ctime_ns=now))

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- local state -------------------------------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, value))

    def _next_seq(self) -> int:
        self._seq += 1
        self._db.execute("INSERT OR REPLACE INTO state (key, value) VALUES ('seq', ?)", (str(self._seq),))
        self._db.execute(
            "INSERT INTO vector (origin, seq) VALUES (?, ?) ON CONFLICT (origin) DO UPDATE SET seq = ?",
            (self.node_id, self._seq, self._seq),
        )
        return self._seq

    # -- entries -----------------------------------------------------------------------------------
    def entry(self, entry_id: str) -> Entry | None:
        row = self._db.execute("SELECT * FROM entries WHERE id = ?", (entry_id,)).fetchone()
        return None if row is None else _entry_of(row)

    def live(self, entry_id: str) -> Entry:
        entry = self.entry(entry_id)
        if entry is None or entry.deleted:
            raise MeshError("ENOENT", f"no entry {entry_id}")
        return entry

    def child(self, parent: str, name: str) -> Entry | None:
        row = self._db.execute(
            "SELECT * FROM entries WHERE parent = ? AND name = ? AND deleted = 0 "
            "ORDER BY hlc DESC, origin DESC LIMIT 1",
            (parent, name),
        ).fetchone()
        return None if row is None else _entry_of(row)

    def children(self, parent: str) -> list[Entry]:
        """The visible children: of several live entries with one name (concurrent creates), the newest."""
        rows = self._db.execute(
            "SELECT * FROM entries WHERE parent = ? AND deleted = 0 ORDER BY name, hlc DESC, origin DESC",
            (parent,),
        ).fetchall()
        seen: set[str] = set()
        result = []
        for row in rows:
            entry = _entry_of(row)
            if entry.name not in seen and entry.id != ROOT_ID:
                seen.add(entry.name)
                result.append(entry)
        return result

    def resolve(self, path: str) -> Entry:
        entry = self.live(ROOT_ID)
        walked = ""
        for part in split_path(path):
            if entry.kind != "dir":
                raise MeshError("ENOTDIR", f"/{walked} is not a directory")
            found = self.child(entry.id, part)
            walked = f"{walked}/{part}".lstrip("/")
            if found is None:
                raise MeshError("ENOENT", f"/{walked}: no such file or directory")
            entry = found
        return entry

    def path_of(self, entry: Entry) -> str:
        parts = []
        current: Entry | None = entry
        hops = 0
        while current is not None and current.id != ROOT_ID and hops < 4096:
            parts.append(current.name)
            current = self.entry(current.parent)
            hops += 1
        return "/" + "/".join(reversed(parts))

    def is_visible(self, entry: Entry) -> bool:
        """Reachable from the root through live directories, and the winner of its name."""
        current = entry
        for _ in range(4096):
            if current.id == ROOT_ID:
                return True
            if current.deleted:
                return False
            winner = self.child(current.parent, current.name)
            if winner is None or winner.id != current.id:
                return False
            parent = self.entry(current.parent)
            if parent is None:
                return False
            current = parent
        return False

    def is_ancestor(self, ancestor_id: str, entry_id: str) -> bool:
        current = self.entry(entry_id)
        for _ in range(4096):
            if current is None:
                return False
            if current.id == ancestor_id:
                return True
            if current.id == ROOT_ID:
                return False
            current = self.entry(current.parent)
        return False

    def _write_entry(self, entry: Entry) -> None:
        marks = ",".join("?" * len(_ENTRY_COLUMNS))
        self._db.execute(f"INSERT OR REPLACE INTO entries VALUES ({marks})", _entry_row(entry))

    def put_local(self, *entries: Entry) -> list[Entry]:
        """Write changes made on this pod, each with the next sequence number."""
        written = []
        with self.transaction():
            for entry in entries:
                stamped = entry.evolve(chg_origin=self.node_id, chg_seq=self._next_seq())
                self._write_entry(stamped)
                written.append(stamped)
        return written

    def entries_held_by(self, node_id: str) -> list[Entry]:
        pattern = f'%"{node_id}"%'
        rows = self._db.execute(
            "SELECT * FROM entries WHERE deleted = 0 AND kind = 'file' AND holders LIKE ?", (pattern,)
        ).fetchall()
        return [entry for entry in map(_entry_of, rows) if node_id in entry.holders]

    def live_files(self) -> list[Entry]:
        rows = self._db.execute("SELECT * FROM entries WHERE deleted = 0 AND kind = 'file'").fetchall()
        return [_entry_of(row) for row in rows]

    def counts(self) -> dict[str, int]:
        row = self._db.execute(
            "SELECT SUM(deleted = 0 AND kind = 'file'), SUM(deleted = 0 AND kind = 'dir'), SUM(deleted), "
            "COALESCE(SUM(CASE WHEN deleted = 0 THEN size END), 0) FROM entries"
        ).fetchone()
        return {"files": row[0] or 0, "dirs": (row[1] or 1) - 1, "tombstones": row[2] or 0, "bytes": row[3]}

    # -- pods and config ---------------------------------------------------------------------------
    def pods(self) -> list[PodRecord]:
        rows = self._db.execute("SELECT * FROM pods ORDER BY joined_ns, node_id").fetchall()
        return [PodRecord(**dict(zip(_POD_COLUMNS, row, strict=True))) for row in rows]

    def pod(self, node_id: str) -> PodRecord | None:
        row = self._db.execute("SELECT * FROM pods WHERE node_id = ?", (node_id,)).fetchone()
        return None if row is None else PodRecord(**dict(zip(_POD_COLUMNS, row, strict=True)))

    def _write_pod(self, record: PodRecord) -> None:
        values = [getattr(record, name) for name in _POD_COLUMNS]
        self._db.execute(f"INSERT OR REPLACE INTO pods VALUES ({','.join('?' * len(values))})", values)

    def put_pod_local(self, record: PodRecord) -> PodRecord:
        with self.transaction():
            stamped = PodRecord(
                **{**record.to_wire(), "chg_origin": self.node_id, "chg_seq": self._next_seq()}
            )
            self._write_pod(stamped)
        return stamped

    def network_config(self) -> ConfigRecord:
        row = self._db.execute("SELECT * FROM config WHERE key = 'network'").fetchone()
        if row is None:
            return ConfigRecord()
        values = dict(zip(_CONFIG_COLUMNS, row, strict=True))
        values.pop("key")
        return ConfigRecord(**values)

    def _write_config(self, record: ConfigRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO config VALUES ('network', ?, ?, ?, ?, ?)",
            (record.text, record.hlc, record.origin, record.chg_origin, record.chg_seq),
        )

    def put_config_local(self, text: str, hlc: int) -> ConfigRecord:
        with self.transaction():
            record = ConfigRecord(text=text, hlc=hlc, origin=self.node_id, chg_origin=self.node_id)
            record = ConfigRecord(**{**record.to_wire(), "chg_seq": self._next_seq()})
            self._write_config(record)
        return record

    # -- anti-entropy ------------------------------------------------------------------------------
    def vector(self) -> dict[str, int]:
        return {origin: seq for origin, seq in self._db.execute("SELECT origin, seq FROM vector")}

    def changes_since(self, seen: dict[str, int], limit: int = 2000) -> tuple[list[dict[str, Any]], bool]:
        """Rows whose last change the peer has not seen, in sequence order per origin; ``more`` if cut.

        The receiver records the highest sequence it got per origin, so what is sent of one origin must be
        a gap-free prefix: when a table's query is cut by the limit, rows of the other tables past that
        point wait for the next round.
        """
        out: list[dict[str, Any]] = []
        more = False
        tables = (("entries", _ENTRY_COLUMNS), ("pods", _POD_COLUMNS), ("config", _CONFIG_COLUMNS))
        for origin, mine in sorted(self.vector().items()):
            theirs = int(seen.get(origin, 0))
            if mine <= theirs:
                continue
            rows_of_origin: list[dict[str, Any]] = []
            cutoff = mine
            for table, columns in tables:
                rows = self._db.execute(
                    f"SELECT * FROM {table} WHERE chg_origin = ? AND chg_seq > ? ORDER BY chg_seq LIMIT ?",
                    (origin, theirs, limit),
                ).fetchall()
                if len(rows) == limit:
                    cutoff = min(cutoff, int(rows[-1][columns.index("chg_seq")]))
                    more = True
                for row in rows:
                    if table == "entries":
                        rows_of_origin.append({"t": table, **_entry_of(row).to_wire()})
                    else:
                        rows_of_origin.append({"t": table, **dict(zip(columns, row, strict=True))})
            rows_of_origin = [row for row in rows_of_origin if row["chg_seq"] <= cutoff]
            rows_of_origin.sort(key=lambda change: int(change["chg_seq"]))
            out.extend(rows_of_origin)
            if len(out) >= limit:
                more = True
                break
        return out, more

    def apply(self, changes: Iterable[dict[str, Any]]) -> list[Entry]:
        """Merge rows from a peer; returns the entries whose visible state changed here."""
        changed: list[Entry] = []
        top: dict[str, int] = {}
        with self.transaction():
            for change in changes:
                row = dict(change)
                table = row.pop("t")
                origin, seq = str(row["chg_origin"]), int(row["chg_seq"])
                top[origin] = max(top.get(origin, 0), seq)
                if table == "entries":
                    incoming = Entry.from_wire(row)
                    kept = merge(self.entry(incoming.id), incoming)
                    if kept is not None:
                        self._write_entry(kept)
                        changed.append(kept)
                elif table == "pods":
                    record = PodRecord.from_wire(row)
                    current = self.pod(record.node_id)
                    if current is None or (record.hlc, record.origin) > (current.hlc, current.origin):
                        self._write_pod(record)
                elif table == "config":
                    row.pop("key", None)
                    config = ConfigRecord.from_wire(row)
                    current_config = self.network_config()
                    if (config.hlc, config.origin) > (current_config.hlc, current_config.origin):
                        self._write_config(config)
            for origin, seq in top.items():
                if origin == self.node_id:
                    continue
                self._db.execute(
                    "INSERT INTO vector (origin, seq) VALUES (?, ?) "
                    "ON CONFLICT (origin) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                    (origin, seq),
                )
        return changed

    def max_hlc(self) -> int:
        row = self._db.execute(
            "SELECT MAX(m) FROM (SELECT MAX(hlc) AS m FROM entries UNION ALL SELECT MAX(loc_hlc) FROM entries "
            "UNION ALL SELECT MAX(hlc) FROM pods UNION ALL SELECT MAX(hlc) FROM config)"
        ).fetchone()
        return int(row[0] or 0)
