"""The metadata replica without processes: merge rules, convergence, anti-entropy paging."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from ecliptic.mesh.clock import HybridClock
from ecliptic.mesh.entries import ROOT_ID
from ecliptic.mesh.meta import MetaStore
from ecliptic.mesh.namespace import Namespace
from ecliptic.mesh.wire import MeshError


class Replica:
    def __init__(self, tmp_path: Path, node: str) -> None:
        self.meta = MetaStore(tmp_path / f"{node}.sqlite", node)
        self.clock = HybridClock()
        self.ns = Namespace(self.meta, self.clock)

    def pull(self, other: Replica, limit: int = 2000) -> int:
        rounds = 0
        while True:
            changes, more = other.meta.changes_since(self.meta.vector(), limit=limit)
            for change in changes:
                self.clock.observe(int(change.get("hlc", 0)))
            self.meta.apply(changes)
            rounds += 1
            if not more:
                return rounds

    def tree(self) -> dict[str, tuple[str, int, tuple[tuple[str, int], ...]]]:
        out = {}
        stack = [("", ROOT_ID)]
        while stack:
            prefix, folder = stack.pop()
            for child in self.meta.children(folder):
                path = f"{prefix}/{child.name}"
                out[path] = (child.kind, child.mode, child.blocks)
                if child.kind == "dir":
                    stack.append((path, child.id))
        return out


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Replica, Replica]:
    return Replica(tmp_path, "aaaa"), Replica(tmp_path, "bbbb")


def sync(*replicas: Replica) -> None:
    for left, right in itertools.permutations(replicas, 2):
        left.pull(right)


def test_concurrent_creates_of_one_name_converge_on_the_newest(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    first = a.ns.create(ROOT_ID, "same.txt", "file", mode=0o644)
    a.ns.commit(first.id, [("a" * 64, 10)])
    second = b.ns.create(ROOT_ID, "same.txt", "file", mode=0o600)
    b.ns.commit(second.id, [("b" * 64, 20)])
    sync(a, b)
    assert a.tree() == b.tree()
    assert a.tree()["/same.txt"][2] == (("b" * 64, 20),)  # b's version came last


def test_rename_and_write_of_one_file_both_survive(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    entry = a.ns.create(ROOT_ID, "f", "file", mode=0o644)
    sync(a, b)
    a.ns.rename(entry.id, ROOT_ID, "g")
    b.ns.commit(entry.id, [("c" * 64, 5)])  # later than the rename: wins the content register
    sync(a, b)
    assert a.tree() == b.tree()
    # last writer wins the whole row: b's write carries the old name, so the rename is undone deterministically
    assert set(a.tree()) in ({"/g"}, {"/f"})


def test_delete_is_a_tombstone_that_replicates(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    folder = a.ns.create(ROOT_ID, "d", "dir", mode=0o755)
    inner = a.ns.create(folder.id, "x", "file", mode=0o644)
    sync(a, b)
    with pytest.raises(MeshError) as refused:
        b.ns.remove(folder.id)
    assert refused.value.code == "ENOTEMPTY"
    b.ns.remove(inner.id)
    b.ns.remove(folder.id)
    sync(a, b)
    assert a.tree() == b.tree() == {}
    tomb = a.meta.entry(folder.id)
    assert tomb is not None and tomb.deleted


def test_paged_anti_entropy_loses_nothing(tmp_path: Path) -> None:
    a, b, c = (Replica(tmp_path, n) for n in ("aaaa", "bbbb", "cccc"))
    for i in range(57):
        a.ns.create(ROOT_ID, f"a{i}", "file", mode=0o644)
    for i in range(23):
        b.ns.create(ROOT_ID, f"b{i}", "dir", mode=0o755)
    b.pull(a, limit=10)
    c.pull(b, limit=7)  # c learns a's changes only through b, in small pages
    assert len(c.tree()) == 80
    assert c.meta.vector() == b.meta.vector()
    # nothing more to send once caught up
    assert b.meta.changes_since(c.meta.vector()) == ([], False)


def test_rename_rules(pair: tuple[Replica, Replica]) -> None:
    a, _ = pair
    d = a.ns.create(ROOT_ID, "d", "dir", mode=0o755)
    sub = a.ns.create(d.id, "sub", "dir", mode=0o755)
    f = a.ns.create(ROOT_ID, "f", "file", mode=0o644)
    g = a.ns.create(ROOT_ID, "g", "file", mode=0o644)
    with pytest.raises(MeshError) as into_itself:
        a.ns.rename(d.id, sub.id, "d")
    assert into_itself.value.code == "EINVAL"
    with pytest.raises(MeshError) as over_dir:
        a.ns.rename(f.id, ROOT_ID, "d")
    assert over_dir.value.code == "EISDIR"
    with pytest.raises(MeshError) as no_replace:
        a.ns.rename(f.id, ROOT_ID, "g", replace=False)
    assert no_replace.value.code == "EEXIST"
    a.ns.rename(f.id, ROOT_ID, "g")
    assert set(a.tree()) == {"/d", "/d/sub", "/g"}
    replaced = a.meta.entry(g.id)
    assert replaced is not None and replaced.deleted
    with pytest.raises(MeshError) as bad:
        a.ns.create(ROOT_ID, "a/b", "file", mode=0o644)
    assert bad.value.code == "EINVAL"


def test_placement_change_never_overrides_a_newer_write(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    entry = a.ns.create(ROOT_ID, "f", "file", mode=0o644)
    entry = a.ns.commit(entry.id, [("d" * 64, 1)])
    sync(a, b)
    newer = a.ns.commit(entry.id, [("e" * 64, 2)])
    assert b.ns.place(entry, ["bbbb"]) is not None  # b has not seen the newer write yet
    sync(a, b)
    for replica in (a, b):
        row = replica.meta.entry(entry.id)
        assert row is not None and row.blocks == newer.blocks and row.holders == ("aaaa",)
    # and placing a version that is no longer current is refused
    assert b.ns.place(entry, ["bbbb"]) is None


def test_restarted_replica_keeps_its_sequence(tmp_path: Path) -> None:
    a = Replica(tmp_path, "aaaa")
    a.ns.create(ROOT_ID, "x", "file", mode=0o644)
    a.meta.close()
    again = Replica(tmp_path, "aaaa")
    again.ns.create(ROOT_ID, "y", "file", mode=0o644)
    assert again.meta.vector() == {"aaaa": 2}
    assert set(again.tree()) == {"/x", "/y"}
