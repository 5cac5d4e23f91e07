"""MeshSource against real pod processes on loopback: two pods, one of them killed by the last test."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ecliptic.staging import StagingError
from ecliptic.staging.http import tree_digest
from ecliptic.staging.mesh import MeshSource
from ecliptic.staging.sources import Replica
from tests.conftest import free_port
from tests.mesh.harness import Network, PodProcess, settled, wait_for

BLOCK = 64 * 1024
ON_A = os.urandom(5 * BLOCK + 321)
ON_B = os.urandom(3 * BLOCK + 7)
TREE = {
    "top.txt": b"top\n",
    "sub/one.bin": os.urandom(2 * BLOCK + 5),
    "sub/deeper/two.bin": os.urandom(BLOCK // 2),
    "empty.dat": b"",
}


@dataclass
class Mesh:
    network: Network
    a: PodProcess
    b: PodProcess

    def source(self) -> MeshSource:
        return MeshSource(self.a.address, timeout=10)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    network = Network(tmp_path_factory.mktemp("mesh"))
    try:
        a = network.pod("a", join=False)
        with a.client() as client:
            # Small blocks make small files span several; a quick "down" keeps the dead-pod test short.
            client.set_network_config(f'block_size = "{BLOCK // 1024}KiB"\ndown_after = 2\n')
            token = client.join_token()  # saves starting the CLI for it
        b = network.pod("b", join_token=token)
        with a.client() as client:
            client.mkdir("/in")
            client.write_bytes("/in/a.bin", ON_A)
            client.mkdir("/ds/sub/deeper", parents=True)
            client.mkdir("/ds/nothing")
            client.write_bytes("/ds/top.txt", TREE["top.txt"])
            client.write_bytes("/ds/empty.dat", TREE["empty.dat"])
            client.write_bytes("/ds/sub/deeper/two.bin", TREE["sub/deeper/two.bin"])
            client.symlink("/in/a.bin", "/ds/link")
        settled([a, b])
        with b.client() as client:
            client.write_bytes("/in/b.bin", ON_B)
            client.write_bytes("/ds/sub/one.bin", TREE["sub/one.bin"])
        settled([a, b])
        yield Mesh(network, a, b)
    finally:
        network.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_resolve_a_file_names_its_holder(mesh: Mesh) -> None:
    source = mesh.source()
    resolved = source.resolve({"location": "mesh:///in/b.bin"})
    assert resolved.replicas == [Replica("mesh:b", "mesh:///in/b.bin", len(ON_B), site="b")]
    assert resolved.size == len(ON_B)
    own = source.resolve({"location": f"mesh://{mesh.a.address}/in/a.bin"})
    assert own.replicas == [Replica("mesh:a", "mesh:///in/a.bin", len(ON_A), site="a")]


def test_resolve_a_directory_spread_over_pods(mesh: Mesh) -> None:
    resolved = mesh.source().resolve({"location": "mesh:///ds"})
    total = sum(len(body) for body in TREE.values())
    on_b = len(TREE["sub/one.bin"])
    assert resolved.size == total
    # b holds most of the bytes, so it comes first; neither holds all of it, so neither is "the site".
    assert resolved.replicas == [
        Replica("mesh:b", "mesh:///ds", total, site=None),
        Replica("mesh:a", "mesh:///ds", total, site=None),
    ]
    assert resolved.details["held"] == {"a": total - on_b, "b": on_b}


def test_fetch_a_file_held_elsewhere_with_checksum(mesh: Mesh, tmp_path: Path) -> None:
    source = mesh.source()
    spec = {"location": "mesh:///in/b.bin", "checksum": {"type": "sha256", "value": _sha(ON_B)}}
    progress: list[tuple[int, int | None]] = []
    staged = source.fetch(
        spec, source.resolve(spec).replicas[0], tmp_path, lambda d, t: progress.append((d, t))
    )
    assert staged.path == tmp_path / "b.bin" and staged.path.read_bytes() == ON_B
    assert (staged.size, staged.sha256, staged.digest) == (len(ON_B), _sha(ON_B), _sha(ON_B))
    assert progress[-1] == (len(ON_B), len(ON_B))
    bad = {"location": "mesh:///in/b.bin", "checksum": {"type": "sha256", "value": "0" * 64}}
    with pytest.raises(StagingError, match="checksum mismatch") as info:
        source.fetch(bad, Replica("mesh:b", "mesh:///in/b.bin"), tmp_path / "bad")
    assert not info.value.retryable
    assert list((tmp_path / "bad").iterdir()) == []


class Interrupt(Exception):
    pass


def test_interrupted_fetch_resumes_at_the_first_missing_block(mesh: Mesh, tmp_path: Path) -> None:
    source = mesh.source()
    spec = {"location": "mesh:///in/a.bin"}
    replica = source.resolve(spec).replicas[0]

    def stop(done: int, total: int | None) -> None:
        if done >= 2 * BLOCK:
            raise Interrupt

    with pytest.raises(Interrupt):
        source.fetch(spec, replica, tmp_path, stop)
    part = tmp_path / "a.bin.part"
    assert part.stat().st_size == 2 * BLOCK
    starts: list[int] = []
    staged = source.fetch(spec, replica, tmp_path, lambda done, total: starts.append(done))
    assert starts[0] == 2 * BLOCK and staged.path.read_bytes() == ON_A
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_a_damaged_part_is_fetched_again_from_the_damage(mesh: Mesh, tmp_path: Path) -> None:
    source = mesh.source()
    spec = {"location": "mesh:///in/a.bin"}
    replica = source.resolve(spec).replicas[0]

    def stop(done: int, total: int | None) -> None:
        if done >= 3 * BLOCK:
            raise Interrupt

    with pytest.raises(Interrupt):
        source.fetch(spec, replica, tmp_path, stop)
    part = tmp_path / "a.bin.part"
    damaged = bytearray(part.read_bytes())
    damaged[BLOCK + 10] ^= 0xFF
    part.write_bytes(bytes(damaged))
    starts: list[int] = []
    staged = source.fetch(spec, replica, tmp_path, lambda done, total: starts.append(done))
    assert starts[0] == BLOCK  # the first block was intact and kept; the second was not
    assert staged.sha256 == _sha(ON_A)


def test_fetch_a_directory(mesh: Mesh, tmp_path: Path) -> None:
    source = mesh.source()
    spec = {"location": "mesh:///ds/"}
    staged = source.fetch(spec, source.resolve(spec).replicas[0], tmp_path)
    assert staged.path == tmp_path / "ds"
    for relative, body in TREE.items():
        assert (staged.path / relative).read_bytes() == body
    assert (staged.path / "nothing").is_dir()
    assert not (staged.path / "link").exists()  # symbolic links are left out
    assert staged.size == sum(len(body) for body in TREE.values())
    assert staged.sha256 == tree_digest((rel, _sha(body)) for rel, body in TREE.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    # A second fetch finds it complete and describes it the same way.
    assert source.fetch(spec, Replica("mesh:a", "mesh:///ds"), tmp_path) == staged


def test_bad_urls_and_missing_paths(mesh: Mesh) -> None:
    source = mesh.source()
    with pytest.raises(StagingError, match="no such file or directory") as info:
        source.resolve({"location": "mesh:///in/none.bin"})
    assert not info.value.retryable
    with pytest.raises(StagingError, match="not in this broker's mesh network"):
        source.resolve({"location": "mesh://127.0.0.1:1/in/a.bin"})
    with pytest.raises(StagingError, match=r"'\.\.' is not allowed"):
        source.resolve({"location": "mesh:///in/../in/a.bin"})
    with pytest.raises(StagingError, match="symbolic link"):
        source.resolve({"location": "mesh:///ds/link"})
    with pytest.raises(StagingError, match="only be verified for a file"):
        source.resolve({"location": "mesh:///ds", "checksum": {"type": "sha256", "value": "0" * 64}})
    assert source.resolve({"location": "mesh://b/in/a.bin"}).size == len(ON_A)  # a pod's name works too


def test_no_pod_is_retryable() -> None:
    with pytest.raises(StagingError) as info:
        MeshSource(f"127.0.0.1:{free_port()}", timeout=5).resolve({"location": "mesh:///in/a.bin"})
    assert info.value.retryable


def test_holder_down_is_retryable(mesh: Mesh, tmp_path: Path) -> None:
    """Last in the module: it kills b, which the tests above read from."""
    with mesh.b.client() as client:
        # Not read through a before (a would serve it from its cache): only b has these blocks.
        client.write_bytes("/in/fresh.bin", os.urandom(BLOCK + 1))
    settled([mesh.a, mesh.b])
    source = mesh.source()
    replica = source.resolve({"location": "mesh:///in/fresh.bin"}).replicas[0]
    assert replica.site == "b"
    mesh.b.kill()
    with pytest.raises(StagingError, match="no reachable pod") as info:
        source.fetch({"location": "mesh:///in/fresh.bin"}, replica, tmp_path)
    assert info.value.retryable
    assert not (tmp_path / "fresh.bin").exists()

    def refused() -> StagingError | None:
        try:
            source.resolve({"location": "mesh:///in/fresh.bin"})
        except StagingError as exc:
            return exc
        return None

    error = wait_for(refused, timeout=15, what="a to see that b is down")
    assert error.retryable and "do not answer" in error.message
    # What a holds is still there.
    assert source.resolve({"location": "mesh:///in/a.bin"}).replicas[0].site == "a"
