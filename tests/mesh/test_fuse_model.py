"""The mount against a plain directory: the same random operations on both give the same results.

Every step runs on the plain directory first, then on the mount, and compares what came back: data, sizes
and modes, or the errno. Blocks are 64 KiB here, so a few hundred kilobytes already span several blocks,
holes and partial blocks. One mount serves the whole test; each example gets a fresh directory in both.
"""

from __future__ import annotations

import itertools
import os
import random
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ecliptic.mesh.client import MeshClient
from tests.mesh.harness import Network
from tests.mesh.mounts import Mount, fuse_available

# CI installs all three (.ci/run), so there a missing piece fails the tests instead of skipping them.
pytestmark = pytest.mark.skipif(
    not fuse_available() and not os.environ.get("CI"),
    reason="needs /dev/fuse, fusermount3 and pyfuse3 (pip install -e '.[fuse]')",
)

BLOCK = 64 * 1024
PATHS = ["a", "b", "d", "d/a", "d/b", "d/e", "d/e/a"]
FOLDERS = ["", "d", "d/e"]
TARGETS = ["a", "b", "e", "nowhere"]  # relative to the link's folder, so links never leave the example
MODES = [0o644, 0o600, 0o755, 0o444, 0o700]

paths = st.sampled_from(PATHS)
offsets = st.integers(0, 4 * BLOCK + 100) | st.sampled_from([0, BLOCK - 1, BLOCK, 2 * BLOCK + 1])
lengths = st.integers(0, 2 * BLOCK + 50) | st.integers(0, 300)
seeds = st.integers(0, 2**32 - 1)

Outcome = tuple[str, Any]


def attempt(action: Callable[[Path], Any], root: Path) -> Outcome:
    try:
        return "ok", action(root)
    except OSError as exc:
        return "error", exc.errno


def shown(outcome: Outcome) -> str:
    kind, value = outcome
    if isinstance(value, bytes) and len(value) > 32:
        zero_runs = value.count(bytes(64))
        return f"({kind!r}, {len(value)} bytes starting {value[:16]!r}, {zero_runs} runs of 64 zeros)"
    return repr(outcome)


def content(length: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(length)


def describe(path: Path, *, follow: bool = False) -> Any:
    info = os.stat(path) if follow else os.lstat(path)
    kind = stat.S_IFMT(info.st_mode)
    size = None if stat.S_ISDIR(info.st_mode) else info.st_size  # a directory's size is the file system's own
    return kind, stat.S_IMODE(info.st_mode), size


def snapshot(root: Path) -> dict[str, Any]:
    """Everything visible under ``root``: kinds, modes, sizes, contents, link targets."""
    tree: dict[str, Any] = {}
    for folder, directories, files in os.walk(root):
        for name in directories + files:
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            kind, mode, size = describe(path)
            if stat.S_ISLNK(kind):
                tree[relative] = ("link", os.readlink(path))
            elif stat.S_ISREG(kind):
                tree[relative] = ("file", mode, size, path.read_bytes())
            else:
                tree[relative] = ("dir", mode)
    return tree


class Places:
    """The directories the examples run in (set by the test before running the machine)."""

    plain: Path
    mount: Path
    pod: str
    numbers = itertools.count()


class MountMatchesPlainDirectory(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        name = f"example-{next(Places.numbers)}"
        self.plain = Places.plain / name
        self.mount = Places.mount / name
        self.plain.mkdir()
        self.mount.mkdir()
        self.steps = 0

    def same(self, action: Callable[[Path], Any]) -> Outcome:
        self.steps += 1
        expected = attempt(action, self.plain)
        actual = attempt(action, self.mount)
        assert actual == expected, f"mount gave {shown(actual)}, a plain directory {shown(expected)}"
        return actual

    @initialize(sizes=st.tuples(lengths, lengths, st.integers(0, 4 * BLOCK)), seed=seeds)
    def populate(self, sizes: tuple[int, int, int], seed: int) -> None:
        """Start from a few files and folders, or most steps would only meet ENOENT."""

        def action(root: Path) -> None:
            (root / "d" / "e").mkdir(parents=True)
            for path, size in zip(("a", "d/a", "d/e/a"), sizes, strict=True):
                (root / path).write_bytes(content(size, seed))

        self.same(action)

    @rule(
        path=paths,
        offset=offsets,
        length=lengths,
        seed=seeds,
        flags=st.sampled_from([os.O_WRONLY, os.O_RDWR]),
    )
    def write(self, path: str, offset: int, length: int, seed: int, flags: int) -> None:
        data = content(length, seed)

        def action(root: Path) -> int:
            fd = os.open(root / path, flags | os.O_CREAT, 0o644)
            try:
                return os.pwrite(fd, data, offset)
            finally:
                os.close(fd)

        self.same(action)

    @rule(path=paths, length=lengths, seed=seeds)
    def append(self, path: str, length: int, seed: int) -> None:
        data = content(length, seed)

        def action(root: Path) -> int:
            fd = os.open(root / path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)

        self.same(action)

    @rule(path=paths, size=st.integers(0, 5 * BLOCK) | st.sampled_from([0, 1, BLOCK, BLOCK + 1]))
    def truncate(self, path: str, size: int) -> None:
        self.same(lambda root: os.truncate(root / path, size))

    @rule(path=paths, size=st.integers(0, 3 * BLOCK), offset=offsets, length=lengths, seed=seeds)
    def truncate_open_file_then_write(
        self, path: str, size: int, offset: int, length: int, seed: int
    ) -> None:
        data = content(length, seed)

        def action(root: Path) -> bytes:
            fd = os.open(root / path, os.O_RDWR)
            try:
                os.ftruncate(fd, size)
                os.pwrite(fd, data, offset)
                return os.pread(fd, 2 * BLOCK, max(offset - BLOCK, 0))  # before closing: the unsaved state
            finally:
                os.close(fd)

        self.same(action)

    @rule(
        path=paths,
        offset=offsets,
        length=lengths,
        seed=seeds,
        flags=st.sampled_from([os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC]),
    )
    def write_while_another_reads(self, path: str, offset: int, length: int, seed: int, flags: int) -> None:
        data = content(length, seed)

        def action(root: Path) -> tuple[bytes, bytes]:
            reader = os.open(root / path, os.O_RDONLY)
            try:
                before = os.pread(reader, 3 * BLOCK, 0)  # now in the kernel's page cache
                writer = os.open(root / path, flags)
                try:
                    os.pwrite(writer, data, offset)
                    return before, os.pread(reader, 3 * BLOCK, max(offset - BLOCK, 0))
                finally:
                    os.close(writer)
            finally:
                os.close(reader)

        self.same(action)

    @rule(path=paths, offset=offsets, length=st.integers(0, 3 * BLOCK))
    def read(self, path: str, offset: int, length: int) -> None:
        def action(root: Path) -> bytes:
            fd = os.open(root / path, os.O_RDONLY)
            try:
                return os.pread(fd, length, offset)
            finally:
                os.close(fd)

        self.same(action)

    @rule(path=paths)
    def read_whole(self, path: str) -> None:
        self.same(lambda root: (root / path).read_bytes())

    @rule(source=paths, destination=paths)
    def rename(self, source: str, destination: str) -> None:
        self.same(lambda root: os.rename(root / source, root / destination))

    @rule(path=paths)
    def unlink(self, path: str) -> None:
        self.same(lambda root: os.unlink(root / path))

    @rule(path=paths)
    def mkdir(self, path: str) -> None:
        self.same(lambda root: os.mkdir(root / path))

    @rule(path=paths)
    def rmdir(self, path: str) -> None:
        self.same(lambda root: os.rmdir(root / path))

    @rule(folder=st.sampled_from(FOLDERS))
    def listdir(self, folder: str) -> None:
        self.same(lambda root: sorted(os.listdir(root / folder)))

    @rule(path=paths)
    def lstat(self, path: str) -> None:
        self.same(lambda root: describe(root / path))

    @rule(path=paths)
    def stat_following_links(self, path: str) -> None:
        self.same(lambda root: describe(root / path, follow=True))

    @rule(path=paths, mode=st.sampled_from(MODES))
    def chmod(self, path: str, mode: int) -> None:
        self.same(lambda root: os.chmod(root / path, mode))

    @rule(pointing_to=st.sampled_from(TARGETS), path=paths)
    def symlink(self, pointing_to: str, path: str) -> None:
        self.same(lambda root: os.symlink(pointing_to, root / path))

    @rule(path=paths)
    def readlink(self, path: str) -> None:
        self.same(lambda root: os.readlink(root / path))

    @precondition(lambda self: self.steps >= 5)
    @rule()
    def whole_tree(self) -> None:
        assert snapshot(self.mount) == snapshot(self.plain)

    def teardown(self) -> None:
        assert snapshot(self.mount) == snapshot(self.plain)


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    base = tmp_path_factory.mktemp("fuse-model")
    network = Network(base)
    try:
        pod = network.pod("model", join=False)
        with MeshClient(pod.address) as client:
            client.set_network_config('block_size = "64KiB"\n')
        Places.pod = pod.address
        with Mount(pod, base / "mnt") as mount:
            plain = base / "plain"
            plain.mkdir()
            yield plain, mount.path
    finally:
        network.close()


def test_the_mount_behaves_like_a_plain_directory(places: tuple[Path, Path]) -> None:
    Places.plain, Places.mount = places
    probe = Places.mount / "probe.bin"
    probe.write_bytes(os.urandom(3 * BLOCK + 5))
    with MeshClient(Places.pod) as client:
        assert [length for _, length in client.stat("/probe.bin").blocks] == [BLOCK, BLOCK, BLOCK, 5]
    run_state_machine_as_test(
        MountMatchesPlainDirectory,
        settings=settings(
            max_examples=25,
            stateful_step_count=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
