"""Pods as real processes on loopback: create, join, read everywhere, leave, restart, import."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ecliptic.mesh.wire import MeshError
from tests.mesh.harness import Network, PodProcess, cli, settled, wait_for


def _cat(pod: PodProcess, path: str) -> bytes | None:
    result = pod.cli("cat", path, check=False)
    return result.stdout if result.returncode == 0 else None


def test_write_on_one_pod_read_on_the_others(network: Network, tmp_path: Path) -> None:
    a = network.pod("a", join=False)
    b = network.pod("b")
    c = network.pod("c")
    data = os.urandom(9 * 1024 * 1024 + 123)
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    a.cli("mkdir", "/in")
    a.cli("put", str(source), "/in")
    for pod in (b, c):
        wait_for(lambda pod=pod: _cat(pod, "/in/data.bin") == data, what=f"/in/data.bin on {pod.name}")
    listing = c.cli("ls", "-l", "/in").stdout.decode()
    assert "data.bin" in listing and str(len(data)) in listing
    pods = b.cli("pods").stdout.decode()
    assert pods.count("active") == 3
    # c read the blocks from a, verified them and kept them in its cache, not as a holder
    with c.client() as client:
        info = client.pod_info()
    assert info["stats"]["blocks_fetched"] >= 3 and info["held_bytes"] == 0


def test_cli_file_commands(network: Network, tmp_path: Path) -> None:
    a = network.pod("a", join=False)
    b = network.pod("b")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "one.txt").write_text("one\n")
    (tree / "sub" / "two.txt").write_text("two\n")
    a.cli("put", str(tree), "/")
    wait_for(lambda: _cat(b, "/tree/sub/two.txt") == b"two\n", what="the tree on b")
    b.cli("mv", "/tree/one.txt", "/tree/sub")
    wait_for(lambda: _cat(a, "/tree/sub/one.txt") == b"one\n", what="the rename on a")
    assert a.cli("ls", "-R", "/tree").stdout.decode().split() == [
        "/tree/sub/",
        "/tree/sub/one.txt",
        "/tree/sub/two.txt",
    ]
    listing = a.cli("ls", "/tree/sub").stdout.decode().split()
    assert listing == ["one.txt", "two.txt"]
    out = tmp_path / "out"
    b.cli("get", "/tree", str(out))
    assert (out / "sub" / "one.txt").read_text() == "one\n"
    refused = a.cli("rm", "/tree", check=False)
    assert refused.returncode == 2 and "rm -r" in refused.stderr.decode()
    a.cli("rm", "-r", "/tree")
    wait_for(lambda: b.cli("ls", "/").stdout.decode().strip() == "", what="the removal on b")
    missing = b.cli("cat", "/tree/sub/one.txt", check=False)
    assert missing.returncode == 1 and "no such file" in missing.stderr.decode()


def test_leaving_pod_hands_over_every_file(network: Network, tmp_path: Path) -> None:
    a = network.pod("a", join=False)
    b = network.pod("b")
    c = network.pod("c")
    contents = {f"/f{i}.bin": os.urandom(i * 700_000 + 1) for i in range(8)}
    with a.client() as client:
        for path, data in contents.items():
            client.write_bytes(path, data)
    settled([a, b, c])
    result = a.cli("leave")
    assert "8 files moved" in result.stdout.decode()
    assert a.wait_exit(30) == 0
    with b.client() as on_b, c.client() as on_c:
        for path, data in contents.items():
            assert on_b.read_bytes(path) == data and on_c.read_bytes(path) == data
    with b.client() as client:
        rows = {row["name"]: row for row in client.pods()}
    assert rows["a"]["state"] == "left" and rows["a"]["files"] == 0
    assert rows["b"]["files"] + rows["c"]["files"] == 8
    # A pod that left cannot come back on the same directory by accident
    relaunch = cli("start", "--root", str(a.root), "--listen", a.address, check=False, timeout=60)
    assert relaunch.returncode == 2 and "has left its network" in relaunch.stderr.decode()


def test_last_pod_with_files_refuses_to_leave(network: Network, tmp_path: Path) -> None:
    a = network.pod("a", join=False)
    (tmp_path / "x").write_text("x")
    a.cli("put", str(tmp_path / "x"), "/x")
    refused = a.cli("leave", check=False)
    assert refused.returncode == 1 and "no other active pod" in refused.stderr.decode()
    assert a.alive() and _cat(a, "/x") == b"x"


def test_restart_keeps_the_tree_and_fetches_only_what_changed(network: Network, tmp_path: Path) -> None:
    a = network.pod("a", join=False)
    b = network.pod("b")
    with a.client() as client:
        for i in range(40):
            client.write_bytes(f"/early{i}", f"early {i}".encode())
    settled([a, b])
    b.stop()
    with a.client() as client:
        for i in range(3):
            client.write_bytes(f"/late{i}", f"late {i}".encode())
    b.start()
    settled([a, b])
    with b.client() as client:
        names = {entry.name for entry in client.listdir("/")}
        received = client.pod_info()["stats"]["rows_received"]
    assert names == {f"early{i}" for i in range(40)} | {f"late{i}" for i in range(3)}
    # the 3 new files (and a's refreshed pod record) — not the 40 it already had
    assert received <= 10, received
    a.kill()  # no chance to tidy up
    a.start()
    with a.client() as client:
        assert len(client.listdir("/")) == 43
        assert client.read_bytes("/late2") == b"late 2"


def test_wrong_token_is_refused(network: Network) -> None:
    a = network.pod("a", join=False)
    good = a.token()
    network_id = good.split("_")[1]
    forged = f"ecm1_{network_id}_{'A' * 43}"
    intruder = network.pod("intruder", join=a, start=False, join_token=forged)
    intruder.start(wait=False)
    assert intruder.wait_exit(60) == 2
    assert "wrong or missing join token" in intruder.log.read_text()
    assert [row["name"] for row in a.client().pods()] == ["a"]
    damaged = cli(
        "start", "--root", str(intruder.root), "--join", a.address, "--token", "nonsense", check=False
    )
    assert damaged.returncode == 2 and "not a join token" in damaged.stderr.decode()


@pytest.mark.parametrize("choice", ["network", "local", "newest"])
def test_join_with_a_non_empty_directory(network: Network, tmp_path: Path, choice: str) -> None:
    a = network.pod("a", join=False)
    old, new = time.time() - 3600, time.time() + 60
    with a.client() as client:
        client.write_bytes("/both-newer-in-network.txt", b"network")
        client.write_bytes("/both-older-in-network.txt", b"network")
        client.mkdir("/dir")
        client.write_bytes("/dir/inside.txt", b"network")
    with a.client() as client:
        entry = client.stat("/both-older-in-network.txt")
        client.call("setattr", entry=entry.id, mtime_ns=int(old * 1e9))
    b_root = tmp_path / "b"
    (b_root / "dir").mkdir(parents=True)
    (b_root / "both-newer-in-network.txt").write_text("local")
    os.utime(b_root / "both-newer-in-network.txt", (old, old))
    (b_root / "both-older-in-network.txt").write_text("local")
    os.utime(b_root / "both-older-in-network.txt", (new, new))
    (b_root / "dir" / "inside.txt").write_text("local")
    (b_root / "dir" / "only-local.txt").write_text("mine")
    (b_root / "only-local.txt").write_text("mine")
    b = network.pod("b", conflict=choice)
    settled([a, b])
    expected = {
        "network": ("network", "network", "network"),
        "local": ("local", "local", "local"),
        # newest: the local inside.txt was written after the network's
        "newest": ("network", "local", "local"),
    }[choice]
    with a.client() as client:
        assert client.read_bytes("/both-newer-in-network.txt").decode() == expected[0]
        assert client.read_bytes("/both-older-in-network.txt").decode() == expected[1]
        assert client.read_bytes("/dir/inside.txt").decode() == expected[2]
        assert client.read_bytes("/only-local.txt") == b"mine"
        assert client.read_bytes("/dir/only-local.txt") == b"mine"
    # the originals are left as they were
    assert (b_root / "both-newer-in-network.txt").read_text() == "local"


def test_join_refused_when_the_files_do_not_fit(network: Network, tmp_path: Path) -> None:
    a = network.pod("a", join=False)
    b_root = tmp_path / "b"
    (b_root / ".ecliptic-mesh").mkdir(parents=True)
    (b_root / ".ecliptic-mesh" / "pod.toml").write_text('max_disk = "1MiB"\n')
    (b_root / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    b = network.pod("b", start=False)
    b.start(wait=False)
    assert b.wait_exit(60) == 2
    log = b.log.read_text()
    assert "holds 2097152 bytes to import" in log and "max_disk" in log
    assert [row["name"] for row in a.client().pods()] == ["a"]  # nothing joined


def test_relocate_moves_blocks_between_pods(network: Network, tmp_path: Path) -> None:
    a = network.pod("a", join=False)
    b = network.pod("b")
    data = os.urandom(3 * 1024 * 1024)
    (tmp_path / "d").write_bytes(data)
    a.cli("put", str(tmp_path / "d"), "/d")
    settled([a, b])
    out = a.cli("relocate", "/d", "--to", "b").stdout.decode()
    assert "moved 1 files" in out
    wait_for(lambda: b.client().stat("/d").holders == (b.node_id,), what="b as the holder")
    a.stop()
    assert _cat(b, "/d") == data  # b has every block itself now


def test_a_corrupt_block_is_refused_on_receipt(network: Network) -> None:
    a = network.pod("a", join=False)
    b = network.pod("b")
    data = os.urandom(300_000)
    with a.client() as client:
        entry = client.write_bytes("/precious", data)
    digest = entry.blocks[0][0]
    held = a.root / ".ecliptic-mesh" / "blocks" / digest[:2] / digest
    held.write_bytes(b"\0" * len(data))  # bit rot on a's disk
    with b.client() as client:
        wait_for(lambda: client.exists("/precious"), what="/precious on b")
        with pytest.raises(MeshError) as failed:
            client.read_bytes("/precious")
        assert failed.value.code == "EIO" and "corrupt" in failed.value.message
        assert client.pod_info()["cached_bytes"] == 0  # nothing bad was kept
    held.write_bytes(data)  # repaired: readable again
    with b.client() as client:
        assert client.read_bytes("/precious") == data


def test_five_pods_converge_and_a_killed_one_catches_up(network: Network) -> None:
    pods = [network.pod("p0", join=False)] + [network.pod(f"p{i}") for i in range(1, 5)]
    for pod in pods:
        with pod.client() as client:
            client.write_bytes(f"/from-{pod.name}", pod.name.encode())
    settled(pods)
    victim = pods[2]
    victim.kill()
    with pods[0].client() as client:
        client.write_bytes("/while-away", b"news")
        client.remove("/from-p1")
    victim.start()
    settled(pods)
    for pod in pods:
        with pod.client() as client:
            names = sorted(entry.name for entry in client.listdir("/"))
            assert names == ["from-p0", "from-p2", "from-p3", "from-p4", "while-away"], (pod.name, names)
            assert client.read_bytes("/from-p4") == b"p4"
