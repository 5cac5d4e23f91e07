"""The FUSE mount with real pods and real mounts: files go through the kernel, the pods and back."""

from __future__ import annotations

import ctypes
import errno
import filecmp
import os
import shutil
import signal
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.mesh.harness import Network, PodProcess, wait_for
from tests.mesh.mounts import Mount, fuse_available, mounted

# CI installs all three (.ci/run), so there a missing piece fails the tests instead of skipping them.
pytestmark = pytest.mark.skipif(
    not fuse_available() and not os.environ.get("CI"),
    reason="needs /dev/fuse, fusermount3 and pyfuse3 (pip install -e '.[fuse]')",
)

MiB = 1024 * 1024


@dataclass
class Pair:
    a: PodProcess
    b: PodProcess
    mount_a: Mount
    mount_b: Mount


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Two pods of one network, each with a mount; shared by the tests, each in its own directory."""
    base = tmp_path_factory.mktemp("fuse")
    network = Network(base)
    try:
        a = network.pod("a", join=False)
        b = network.pod("b")
        with Mount(a, base / "mnt-a") as mount_a, Mount(b, base / "mnt-b") as mount_b:
            yield Pair(a, b, mount_a, mount_b)
    finally:
        network.close()


def test_a_file_written_on_one_mount_reads_back_on_the_other(pair: Pair) -> None:
    data = os.urandom(20 * MiB)
    (pair.mount_a.path / "big").mkdir()
    written = pair.mount_a.path / "big" / "data.bin"
    with written.open("wb") as handle:
        for start in range(0, len(data), MiB):
            handle.write(data[start : start + MiB])
    assert written.stat().st_size == len(data)
    assert written.read_bytes() == data

    seen = pair.mount_b.path / "big" / "data.bin"
    wait_for(lambda: seen.stat().st_size == len(data), timeout=30, what="the file on mount B")
    assert seen.read_bytes() == data

    patch = os.urandom(100_000)
    at = 10 * MiB - 50_000  # across a block boundary (4 MiB blocks), inside blocks of pod a
    with seen.open("r+b") as handle:
        handle.seek(at)
        handle.write(patch)
    expected = data[:at] + patch + data[at + len(patch) :]
    assert seen.read_bytes() == expected

    wait_for(lambda: written.read_bytes() == expected, timeout=15, what="mount A to see B's change")
    assert written.stat().st_size == len(data)


def test_posix_operations(pair: Pair, tmp_path: Path) -> None:
    root = pair.mount_a.path / "posix"
    root.mkdir()
    assert stat.S_ISDIR(root.stat().st_mode)

    path = root / "notes.txt"
    path.write_bytes(b"hello world")
    assert path.read_bytes() == b"hello world"
    with path.open("r+b") as handle:
        handle.seek(6)
        handle.write(b"there")
        handle.seek(0)
        assert handle.read() == b"hello there"  # the open file sees its own unsaved writes
    with path.open("ab") as handle:
        handle.write(b"!")
    assert path.read_bytes() == b"hello there!"
    assert path.stat().st_size == 12
    assert path.stat().st_blocks == 1

    os.truncate(path, 5)
    assert path.read_bytes() == b"hello"
    os.truncate(path, 8)
    assert path.read_bytes() == b"hello\0\0\0"
    with path.open("r+b") as handle:
        handle.truncate(2)
        handle.seek(4)
        handle.write(b"xy")  # past the end: the gap reads as zeros
    assert path.read_bytes() == b"he\0\0xy"

    sparse = root / "sparse.bin"
    with sparse.open("wb") as handle:
        handle.seek(9 * MiB + 3)
        handle.write(b"tail")
    assert sparse.stat().st_size == 9 * MiB + 7
    with sparse.open("rb") as handle:
        handle.seek(4 * MiB - 2)
        assert handle.read(4) == b"\0\0\0\0"
        handle.seek(9 * MiB)
        assert handle.read() == b"\0\0\0tail"

    os.chmod(path, 0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_ISREG(path.stat().st_mode)
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_500_000_000_123_456_789))
    assert path.stat().st_mtime_ns == 1_500_000_000_123_456_789
    with path.open("r+b") as handle:
        handle.write(b"H")
        handle.flush()
        os.utime(
            path, ns=(1_400_000_000_000_000_000, 1_400_000_000_000_000_000)
        )  # before the commit at close
    assert path.stat().st_mtime_ns == 1_400_000_000_000_000_000
    assert path.read_bytes() == b"He\0\0xy"
    os.chown(path, 1234, 5678)
    assert (path.stat().st_uid, path.stat().st_gid) == (1234, 5678)

    (root / "sub").mkdir()
    os.rename(path, root / "renamed.txt")
    assert not path.exists()
    assert (root / "renamed.txt").read_bytes() == b"He\0\0xy"
    (root / "other.txt").write_bytes(b"other")
    os.rename(root / "other.txt", root / "renamed.txt")  # replaces the target
    assert (root / "renamed.txt").read_bytes() == b"other"
    os.rename(root / "renamed.txt", root / "sub" / "moved.txt")  # between directories
    assert (root / "sub" / "moved.txt").read_bytes() == b"other"
    assert sorted(os.listdir(root)) == ["sparse.bin", "sub"]

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        (root / "keep.txt").write_bytes(b"keep")
        rename_noreplace = 1
        source, target = os.fsencode(root / "sub" / "moved.txt"), os.fsencode(root / "keep.txt")
        result = renameat2(-100, source, -100, target, rename_noreplace)
        assert result == -1 and ctypes.get_errno() == errno.EEXIST
        assert (root / "keep.txt").read_bytes() == b"keep"
        os.unlink(root / "keep.txt")

    with pytest.raises(OSError) as info:
        os.rmdir(root / "sub")
    assert info.value.errno == errno.ENOTEMPTY
    os.unlink(root / "sub" / "moved.txt")
    with pytest.raises(FileNotFoundError):
        (root / "sub" / "moved.txt").stat()
    os.rmdir(root / "sub")
    assert not (root / "sub").exists()

    scratch = root / "scratch.bin"
    with scratch.open("w+b") as handle:
        handle.write(b"temporary")
        handle.flush()
        os.unlink(scratch)  # still usable through the open file, and closing it is no error
        handle.write(b" data")
        handle.flush()
        handle.seek(0)
        assert handle.read() == b"temporary data"
        assert os.fstat(handle.fileno()).st_size == 14
    assert not scratch.exists()

    os.symlink("sparse.bin", root / "link")
    assert os.readlink(root / "link") == "sparse.bin"
    assert stat.S_ISLNK(os.lstat(root / "link").st_mode)
    assert os.lstat(root / "link").st_size == len("sparse.bin")
    assert (root / "link").stat().st_size == 9 * MiB + 7  # followed by the kernel

    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "top.txt").write_text("top\n")
    (tree / "a" / "middle.bin").write_bytes(os.urandom(300_000))
    (tree / "a" / "b" / "deep.txt").write_text("deep\n" * 1000)
    (tree / "a" / "empty").write_bytes(b"")
    os.chmod(tree / "top.txt", 0o640)
    copied = root / "tree"
    shutil.copytree(tree, copied)
    comparison = filecmp.dircmp(tree, copied)
    assert not comparison.left_only and not comparison.right_only and not comparison.diff_files
    for relative in ("top.txt", "a/middle.bin", "a/b/deep.txt", "a/empty"):
        assert filecmp.cmp(tree / relative, copied / relative, shallow=False), relative
    assert stat.S_IMODE((copied / "top.txt").stat().st_mode) == 0o640
    assert (copied / "a" / "middle.bin").stat().st_mtime_ns == (tree / "a" / "middle.bin").stat().st_mtime_ns

    assert pair.a.cli("cat", "/posix/tree/a/b/deep.txt").stdout == b"deep\n" * 1000
    local = tmp_path / "put.bin"
    local.write_bytes(os.urandom(5 * MiB + 17))
    pair.a.cli("put", str(local), "/posix/put.bin")
    assert (root / "put.bin").read_bytes() == local.read_bytes()

    usage = os.statvfs(pair.mount_a.path)
    assert usage.f_blocks > 0 and 0 < usage.f_bavail <= usage.f_blocks


def test_a_change_elsewhere_reaches_a_reader_that_opens_again(pair: Pair, tmp_path: Path) -> None:
    pair.a.cli("mkdir", "/remote")
    local = tmp_path / "file.txt"
    mtime_ns = 1_700_000_000_000_000_000

    def put(content: bytes) -> None:
        local.write_bytes(content)
        os.utime(local, ns=(mtime_ns, mtime_ns))  # `put` keeps it: the kernel cannot tell the versions apart
        pair.a.cli("put", str(local), "/remote/file.txt")

    first = b"first version\n" * 1000
    put(first)
    seen = pair.mount_b.path / "remote" / "file.txt"
    wait_for(lambda: seen.read_bytes() == first, timeout=30, what="the file on mount B")
    assert seen.read_bytes() == first  # now in mount B's page cache
    assert seen.stat().st_mtime_ns == mtime_ns

    # Same size, same mtime: only the mount's own bookkeeping of versions can drop the cached pages.
    second = b"other version\n" * 1000
    put(second)
    wait_for(lambda: seen.read_bytes() == second, timeout=10, what="mount B to drop its cached pages")

    longer = b"a longer third version\n" * 2000
    put(longer)
    wait_for(lambda: seen.read_bytes() == longer, timeout=10, what="mount B to see the new size")
    assert seen.stat().st_size == len(longer)

    pair.a.cli("mv", "/remote/file.txt", "/remote/renamed.txt")
    wait_for(lambda: not seen.exists(), timeout=10, what="the old name to go on mount B")
    assert (pair.mount_b.path / "remote" / "renamed.txt").read_bytes() == longer


def test_sigterm_unmounts(pair: Pair, tmp_path: Path) -> None:
    mount = Mount(pair.a, tmp_path / "mnt").start()
    try:
        assert os.statvfs(mount.path).f_blocks > 0  # served by the mount, not the empty directory under it
        assert mount.process is not None
        mount.process.send_signal(signal.SIGTERM)
        assert mount.process.wait(30) == 0
        assert not mounted(mount.path)
    finally:
        mount.stop()


def test_changes_survive_a_pod_that_is_down_until_fsync_can_commit_them(network: Network) -> None:
    pod = network.pod("solo", join=False)
    with Mount(pod, network.base / "mnt") as mount:
        path = mount.path / "kept.bin"
        data = os.urandom(3 * MiB + 5)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            pod.kill()
            with pytest.raises(OSError):
                os.fsync(fd)  # the blocks and the commit have nowhere to go
            assert os.pread(fd, 100, 3 * MiB) == data[3 * MiB : 3 * MiB + 100]  # still held by the mount
            pod.start()
            os.fsync(fd)
        finally:
            os.close(fd)
        assert pod.cli("cat", "/kept.bin").stdout == data
        assert path.read_bytes() == data
