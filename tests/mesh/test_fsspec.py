"""fsspec's ``mesh://`` against two real pods: write through one, read through the other."""

from __future__ import annotations

import errno
import importlib.util
import os
import pickle
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import fsspec
import pytest

from ecliptic.mesh.client import MeshClient
from ecliptic.mesh.fsspec import MeshFileSystem, register
from tests.conftest import free_port
from tests.mesh.harness import Network, PodProcess, wait_for

BLOCK = 64 * 1024


def _block_size(pod: PodProcess) -> int:
    with pod.client() as client:
        return int(client.pod_info()["block_size"])


def _held(pod: PodProcess) -> int:
    with pod.client() as client:
        return int(client.pod_info()["held_bytes"])


def _stat(pod: PodProcess, path: str) -> Any:
    with pod.client() as client:
        return client.stat(path)


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    register()


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PodProcess, PodProcess]]:
    """One network for the whole module: starting pods is the slow part, and each test uses its own folder."""
    network = Network(tmp_path_factory.mktemp("fsspec"))
    try:
        a = network.pod("a", join=False)
        b = network.pod("b")
        with MeshClient(a.address) as client:
            client.set_network_config('block_size = "64KiB"\n')
        for pod in (a, b):
            wait_for(lambda pod=pod: _block_size(pod) == BLOCK, what=f"pod {pod.name} to use 64 KiB blocks")
        yield a, b
    finally:
        network.close()


@pytest.fixture
def fs_a(pods: tuple[PodProcess, PodProcess]) -> MeshFileSystem:
    fs = fsspec.filesystem("mesh", pod=pods[0].address)
    assert isinstance(fs, MeshFileSystem)
    return fs


@pytest.fixture
def fs_b(pods: tuple[PodProcess, PodProcess]) -> MeshFileSystem:
    fs = fsspec.filesystem("mesh", pod=pods[1].address)
    assert isinstance(fs, MeshFileSystem)
    return fs


def _synced(fs: MeshFileSystem, path: str, data: bytes) -> None:
    def same() -> bool:
        return fs.cat_file(path) == data

    wait_for(same, what=f"{path} on {fs.pod}")


# URLs and instances (no pod needed: the client connects on first use)


def test_urls_name_the_pod_and_instances_follow_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert MeshFileSystem._strip_protocol("mesh://127.0.0.1:7501/a/b/") == "/a/b"
    assert MeshFileSystem._strip_protocol("mesh:///a//b") == "/a/b"
    assert MeshFileSystem._strip_protocol("mesh://127.0.0.1:7501") == "/"
    assert MeshFileSystem._strip_protocol("a/b") == "/a/b"
    assert MeshFileSystem._strip_protocol("mesh:///a/./c/../b") == "/a/b"
    assert MeshFileSystem._strip_protocol("/../..") == "/"
    assert MeshFileSystem._strip_protocol(Path("/a/b")) == "/a/b"
    assert MeshFileSystem._get_kwargs_from_urls("mesh://127.0.0.1:7501/a") == {"pod": "127.0.0.1:7501"}
    assert MeshFileSystem._get_kwargs_from_urls("mesh:///a") == {}

    fs, path = fsspec.core.url_to_fs("mesh://127.0.0.1:7501/data/x.csv")
    assert isinstance(fs, MeshFileSystem) and fs.pod == "127.0.0.1:7501" and path == "/data/x.csv"
    assert fs.unstrip_protocol("/data/x.csv") == "mesh://127.0.0.1:7501/data/x.csv"
    assert fsspec.filesystem("mesh", pod="127.0.0.1:7501") is fs
    other = fsspec.filesystem("mesh", pod="127.0.0.1:7502")
    assert other is not fs and other.pod == "127.0.0.1:7502"

    fs, path = fsspec.core.url_to_fs("mesh:///x", pod="127.0.0.1:7503")
    assert fs.pod == "127.0.0.1:7503" and path == "/x"

    monkeypatch.setenv("ECLIPTIC_MESH_POD", "127.0.0.1:7504")
    first = fsspec.filesystem("mesh")
    assert first.pod == "127.0.0.1:7504"
    assert first.unstrip_protocol("/x") == "mesh:///x"  # an environment default stays per host
    monkeypatch.setenv("ECLIPTIC_MESH_POD", "127.0.0.1:7505")
    assert fsspec.filesystem("mesh").pod == "127.0.0.1:7505"
    monkeypatch.delenv("ECLIPTIC_MESH_POD")
    assert fsspec.filesystem("mesh").pod == "127.0.0.1:7400"

    with pytest.raises(ValueError, match="HOST:PORT"):
        fsspec.filesystem("mesh", pod="nowhere")
    with pytest.raises(ValueError, match="join token"):
        fsspec.filesystem("mesh", pod="127.0.0.1:7506", token="not-a-token")


# Metadata


def test_ls_info_exists_and_times(
    pods: tuple[PodProcess, PodProcess], fs_a: MeshFileSystem, fs_b: MeshFileSystem
) -> None:
    a, _ = pods
    fs_a.makedirs("/meta/sub")
    fs_a.pipe_file("/meta/one.txt", b"hello")
    fs_a.pipe_file("mesh:///meta/sub/two.txt", b"world!")
    _synced(fs_b, "/meta/sub/two.txt", b"world!")

    listing = fs_b.ls("/meta", refresh=True)
    assert [(i["name"], i["type"], i["size"]) for i in listing] == [
        ("/meta/one.txt", "file", 5),
        ("/meta/sub", "directory", 0),
    ]
    assert fs_b.ls("/meta", detail=False) == ["/meta/one.txt", "/meta/sub"]
    assert fs_b.ls("/meta/one.txt", detail=False) == ["/meta/one.txt"]  # ls of a file is the file

    info = fs_b.info(f"mesh://{pods[1].address}/meta/one.txt")
    assert info["name"] == "/meta/one.txt" and info["type"] == "file" and info["size"] == 5
    assert info["mode"] == 0o100644
    assert info["holders"] == [a.node_id]  # written through pod a, which holds the blocks
    assert isinstance(info["mtime"], float) and abs(info["mtime"] - info["created"]) < 60
    assert fs_b.info("/")["type"] == "directory"
    assert fs_b.isdir("/meta/sub") and fs_b.isfile("/meta/one.txt")
    assert fs_b.exists("/meta/sub/two.txt") and not fs_b.exists("/meta/nothing")
    assert not fs_b.exists("/meta/one.txt/below")  # a file on the way is "not there", as for os.path
    assert isinstance(fs_b.modified("/meta/one.txt"), datetime)
    assert fs_b.modified("/meta/one.txt").tzinfo is not None
    assert fs_b.created("/meta/one.txt") <= datetime.now(fs_b.created("/meta/one.txt").tzinfo)
    assert fs_b.size("/meta/sub/two.txt") == 6

    # ukey: a new version of the same entry gives a new key; asking again without a change does not
    before = fs_a.ukey("/meta/one.txt")
    assert fs_a.ukey("/meta/one.txt") == before
    fs_a.pipe_file("/meta/one.txt", b"hello again")
    after = fs_a.ukey("/meta/one.txt")
    assert before != after and before.split(":")[0] == after.split(":")[0]
    assert fs_a.checksum("/meta/one.txt") != 0


def test_listings_are_cached_and_writes_invalidate_them(
    monkeypatch: pytest.MonkeyPatch, fs_a: MeshFileSystem
) -> None:
    fs_a.makedirs("/cache")
    assert fs_a.ls("/cache") == []
    assert "/cache" in fs_a.dircache
    fs_a.pipe_file("/cache/new", b"x")
    assert "/cache" not in fs_a.dircache
    assert fs_a.ls("/cache", detail=False) == ["/cache/new"]
    with fs_a.open("/cache/written", "wb") as f:
        f.write(b"y")
    assert fs_a.ls("/cache", detail=False) == ["/cache/new", "/cache/written"]
    fs_a.rm_file("/cache/new")
    assert fs_a.ls("/cache", detail=False) == ["/cache/written"]
    fs_a.makedirs("/cache/deep/er")
    assert fs_a.ls("/cache", detail=False) == ["/cache/deep", "/cache/written"]
    # a cached listing answers info() and exists() without asking the pod
    fs_a.ls("/cache")

    def unreachable(path: str) -> None:
        raise AssertionError(f"stat({path}) went to the pod")

    with monkeypatch.context() as patch:
        patch.setattr(fs_a.client, "stat", unreachable)
        assert fs_a.info("/cache/written")["size"] == 1
        assert not fs_a.exists("/cache/absent")


# Reading


def test_ranged_reads_across_block_boundaries(
    monkeypatch: pytest.MonkeyPatch, fs_a: MeshFileSystem, fs_b: MeshFileSystem
) -> None:
    data = os.urandom(3 * BLOCK + 1234)
    fs_a.pipe_file("/ranged.bin", data)
    _synced(fs_b, "/ranged.bin", data)

    assert fs_b.cat_file("/ranged.bin", BLOCK - 10, BLOCK + 10) == data[BLOCK - 10 : BLOCK + 10]
    assert fs_b.cat_file("/ranged.bin", 2 * BLOCK - 5, 3 * BLOCK + 5) == data[2 * BLOCK - 5 : 3 * BLOCK + 5]
    assert fs_b.cat_file("/ranged.bin", -100) == data[-100:]
    assert fs_b.cat_file("/ranged.bin", 10, -10) == data[10:-10]
    assert fs_b.cat_file("/ranged.bin", 3 * BLOCK, 10 * BLOCK) == data[3 * BLOCK :]
    assert fs_b.cat_file("/ranged.bin", 10 * BLOCK) == b""
    assert fs_b.read_block("/ranged.bin", BLOCK, 100) == data[BLOCK : BLOCK + 100]

    # _fetch_range asks for the blocks under the range and no others
    touched: list[str] = []
    read_block = fs_b.client.read_block

    def spy(entry: Any, digest: str, offset: int, length: int) -> bytes:
        touched.append(digest)
        return read_block(entry, digest, offset, length)

    monkeypatch.setattr(fs_b.client, "read_block", spy)
    blocks = [digest for digest, _ in _stat_blocks(fs_b, "/ranged.bin")]
    with fs_b.open("/ranged.bin", "rb", cache_type="none") as f:
        f.seek(2 * BLOCK + 5)
        assert f.read(10) == data[2 * BLOCK + 5 : 2 * BLOCK + 15]
        assert touched == [blocks[2]]
        touched.clear()
        f.seek(BLOCK - 1)
        assert f.read(2) == data[BLOCK - 1 : BLOCK + 1]
        assert touched == blocks[0:2]


def _stat_blocks(fs: MeshFileSystem, path: str) -> list[tuple[str, int]]:
    return list(fs.client.stat(path).blocks)


def test_seek_and_read_on_an_open_file(fs_a: MeshFileSystem, fs_b: MeshFileSystem) -> None:
    data = os.urandom(2 * BLOCK + 777)
    fs_a.pipe_file("/seek.bin", data)
    _synced(fs_b, "/seek.bin", data)
    with fs_b.open("/seek.bin", "rb") as f:
        assert f.size == len(data) and f.seekable() and f.readable()
        assert f.read(5) == data[:5]
        f.seek(BLOCK + 7)
        assert f.tell() == BLOCK + 7
        assert f.read(100) == data[BLOCK + 7 : BLOCK + 107]
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:]
        f.seek(-BLOCK - 5, os.SEEK_CUR)
        assert f.read(BLOCK + 1) == data[-BLOCK - 5 : -4]
        f.seek(0)
        assert f.read() == data
        assert f.info()["size"] == len(data)
    # pickled like dask does: the file reopens where it was
    with fs_b.open("/seek.bin", "rb") as f:
        f.seek(BLOCK)
        clone = pickle.loads(pickle.dumps(f))
        assert clone.read(10) == data[BLOCK : BLOCK + 10]
        clone.close()


def test_an_open_file_keeps_reading_the_version_it_opened(fs_a: MeshFileSystem) -> None:
    old = os.urandom(BLOCK + 10)
    fs_a.pipe_file("/pinned.bin", old)
    with fs_a.open("/pinned.bin", "rb", cache_type="none") as f:
        fs_a.pipe_file("/pinned.bin", b"new")
        assert f.read() == old
    assert fs_a.cat_file("/pinned.bin") == b"new"


# Writing


def test_large_write_in_odd_pieces_stores_blocks_before_close(
    pods: tuple[PodProcess, PodProcess], fs_a: MeshFileSystem, fs_b: MeshFileSystem
) -> None:
    a, _ = pods
    data = os.urandom(5 * BLOCK + 12345)
    pieces = [1, 999, 70001, 3, 65536, 99999, 12]
    held = _held(a)
    with fs_a.open("/big.bin", "wb") as f:
        position = 0
        for size in pieces:
            f.write(data[position : position + size])
            position += size
        assert position > 3 * BLOCK
        # whole blocks went to the pod as the buffer filled, but the file appears only at the commit
        assert _held(a) - held >= 3 * BLOCK
        assert not fs_a.exists("/big.bin")
        f.write(data[position:])
        assert f.tell() == len(data)
    blocks = _stat(a, "/big.bin").blocks
    assert [length for _, length in blocks] == [BLOCK] * 5 + [12345]
    _synced(fs_b, "/big.bin", data)
    assert fs_b.info("/big.bin")["size"] == len(data)


def _as_remote(pod: PodProcess) -> MeshFileSystem:
    fs = MeshFileSystem(pod=pod.address, skip_instance_cache=True)
    # What a client on another host gets: no state directory, so block bytes travel in frames.
    fs.client.state_dir = None
    return fs


def test_block_bytes_in_frames_as_from_another_host(pods: tuple[PodProcess, PodProcess]) -> None:
    a, b = pods
    writer, reader = _as_remote(b), _as_remote(a)
    data = os.urandom(3 * BLOCK + 99)
    with writer.open("/framed.bin", "wb", block_size=50_000) as f:
        for start in range(0, len(data), 33_333):
            f.write(data[start : start + 33_333])
    assert [n for _, n in writer.client.stat("/framed.bin").blocks] == [BLOCK] * 3 + [99]
    _synced(reader, "/framed.bin", data)
    assert reader.cat_file("/framed.bin", BLOCK - 3, 2 * BLOCK + 3) == data[BLOCK - 3 : 2 * BLOCK + 3]
    with reader.open("/framed.bin") as f:
        f.seek(2 * BLOCK + 10)
        assert f.read(BLOCK) == data[2 * BLOCK + 10 : 3 * BLOCK + 10]
    reader.pipe_file("/framed-pipe.bin", data)
    _synced(writer, "/framed-pipe.bin", data)
    assert [n for _, n in reader.client.stat("/framed-pipe.bin").blocks] == [BLOCK] * 3 + [99]


def test_text_writes_through_fsspec_open(pods: tuple[PodProcess, PodProcess], fs_b: MeshFileSystem) -> None:
    a, b = pods
    with fsspec.open(f"mesh://{a.address}/hello.txt", "wt", encoding="utf-8") as f:
        f.write("héllo\n" * 3)
    _synced(fs_b, "/hello.txt", "héllo\n".encode() * 3)
    with fsspec.open(f"mesh://{b.address}/hello.txt", "rt", encoding="utf-8") as f:
        assert f.readlines() == ["héllo\n"] * 3
    assert fs_b.read_text("/hello.txt", encoding="utf-8").count("é") == 3


def test_append_exclusive_empty_and_transactions(fs_a: MeshFileSystem) -> None:
    first = os.urandom(BLOCK + 100)
    fs_a.pipe_file("/append.bin", first)
    more = os.urandom(BLOCK)
    with fs_a.open("/append.bin", "ab") as f:
        assert f.tell() == len(first)
        f.write(more)
    assert fs_a.cat_file("/append.bin") == first + more
    assert [n for _, n in fs_a.client.stat("/append.bin").blocks] == [BLOCK, BLOCK, 100]

    with fs_a.open("/fresh-append", "ab") as f:
        f.write(b"abc")
    assert fs_a.cat_file("/fresh-append") == b"abc"

    with pytest.raises(FileExistsError):
        fs_a.open("/append.bin", "xb")
    with fs_a.open("/exclusive", "xb") as f:
        f.write(b"only once")
    with pytest.raises(FileExistsError):
        fs_a.pipe_file("/exclusive", b"twice", mode="create")

    fs_a.touch("/empty")
    assert fs_a.info("/empty")["size"] == 0 and fs_a.cat_file("/empty") == b""

    with fs_a.transaction:
        with fs_a.open("/in-transaction", "wb") as f:
            f.write(b"later")
        assert not fs_a.exists("/in-transaction")
    assert fs_a.cat_file("/in-transaction") == b"later"


def test_an_exception_inside_with_keeps_the_old_version(
    monkeypatch: pytest.MonkeyPatch, fs_a: MeshFileSystem
) -> None:
    fs_a.pipe_file("/kept", b"old")
    with pytest.raises(RuntimeError), fs_a.open("/kept", "wb") as f:
        f.write(os.urandom(2 * BLOCK))
        raise RuntimeError("cut short")
    assert fs_a.cat_file("/kept") == b"old"

    # a block that fails to store spoils the version: closing afterwards must not commit a garbled file
    f = fs_a.open("/kept", "wb")

    def failing(data: object, path: str) -> None:
        raise OSError(errno.EIO, "the disk failed", path)

    with monkeypatch.context() as patch:
        patch.setattr(fs_a, "_store", failing)
        with pytest.raises(OSError, match="disk failed"):
            f.write(os.urandom(BLOCK + 1))
    f.close()
    assert fs_a.cat_file("/kept") == b"old"


def test_copy_put_get_and_links(tmp_path: Path, fs_a: MeshFileSystem, fs_b: MeshFileSystem) -> None:
    data = os.urandom(2 * BLOCK + 5)
    fs_a.pipe_file("/copy-src.bin", data)
    _synced(fs_b, "/copy-src.bin", data)
    fs_b.cp_file("/copy-src.bin", "/copy-dst.bin")  # the blocks live on pod a: b takes them on
    assert fs_b.cat_file("/copy-dst.bin") == data
    assert fs_b.client.stat("/copy-dst.bin").blocks == fs_b.client.stat("/copy-src.bin").blocks
    fs_a.makedirs("/tree-src/inner")
    fs_a.pipe_file("/tree-src/inner/f", b"f")
    fs_a.copy("/tree-src", "/tree-dst", recursive=True)
    assert fs_a.cat_file("/tree-dst/inner/f") == b"f"

    local = tmp_path / "local.bin"
    local.write_bytes(data)
    local.chmod(0o600)
    fs_a.put_file(str(local), "/put.bin")
    assert fs_a.cat_file("/put.bin") == data
    assert fs_a.info("/put.bin")["mode"] & 0o777 == 0o600
    fs_a.get(f"mesh://{fs_a.pod}/put.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == data

    fs_a.client.symlink("copy-src.bin", "/link")
    assert fs_a.info("/link")["type"] == "link" and fs_a.info("/link")["destination"] == "copy-src.bin"
    assert fs_a.cat_file("/link", 0, 10) == data[:10]
    with fs_a.open("/link", "rb") as f:
        assert f.size == len(data)


# Moving and removing


def test_mv_is_a_rename_on_the_pod(fs_a: MeshFileSystem, fs_b: MeshFileSystem) -> None:
    data = os.urandom(BLOCK + 1)
    fs_a.makedirs("/mv/into")
    fs_a.pipe_file("/mv/file.bin", data)
    entry_id = fs_a.info("/mv/file.bin")["id"]
    fs_a.mv("/mv/file.bin", "/mv/renamed.bin")
    assert not fs_a.exists("/mv/file.bin")
    assert fs_a.info("/mv/renamed.bin")["id"] == entry_id  # the same entry, not a copy
    fs_a.mv("/mv/renamed.bin", "/mv/into")
    assert fs_a.info("/mv/into/renamed.bin")["id"] == entry_id
    fs_a.makedirs("/mv/target")
    fs_a.mv("/mv/into", "/mv/target")  # a directory into an existing one, whole
    assert fs_a.ls("/mv/target", detail=False) == ["/mv/target/into"]
    fs_a.rename("/mv/target", "/mv/final")
    _synced(fs_b, "/mv/final/into/renamed.bin", data)
    assert fs_b.info("/mv/final/into/renamed.bin")["id"] == entry_id
    fs_a.pipe_file("/mv/a.csv", b"1")
    fs_a.pipe_file("/mv/b.csv", b"2")
    fs_a.mv("/mv/*.csv", "/mv/final")
    assert fs_a.ls("/mv/final", detail=False) == ["/mv/final/a.csv", "/mv/final/b.csv", "/mv/final/into"]


def test_rm_recursive_and_rmdir(fs_a: MeshFileSystem, fs_b: MeshFileSystem) -> None:
    fs_a.makedirs("/rm/a/b")
    fs_a.pipe_file("/rm/a/b/c.txt", b"c")
    fs_a.pipe_file("/rm/a/d.txt", b"d")
    fs_a.pipe_file("/rm/keep.txt", b"k")
    _synced(fs_b, "/rm/a/b/c.txt", b"c")
    with pytest.raises(IsADirectoryError):
        fs_a.rm("/rm/a")
    with pytest.raises(OSError) as info:
        fs_a.rmdir("/rm/a")
    assert info.value.errno == errno.ENOTEMPTY
    fs_a.rm("/rm/a", recursive=True)
    assert fs_a.ls("/rm", detail=False) == ["/rm/keep.txt"]
    wait_for(lambda: not fs_b.exists("/rm/a", refresh=True), what="/rm/a to go on pod b")
    fs_a.makedirs("/rm/empty")
    fs_a.rmdir("/rm/empty")
    fs_a.rm("/rm/keep.txt")
    assert fs_a.ls("/rm") == []
    with pytest.raises(FileNotFoundError):
        fs_a.rm("/rm/keep.txt")
    fs_a.makedirs("/rm/x/y")
    fs_a.pipe_file("/rm/x/y/z", b"z")
    fs_a.rm("/rm/x", recursive=True, maxdepth=5)
    assert not fs_a.exists("/rm/x")


# Errors


def test_errors_are_the_os_errors_callers_expect(fs_a: MeshFileSystem) -> None:
    fs_a.makedirs("/err/dir")
    fs_a.pipe_file("/err/file", b"f")
    with pytest.raises(FileNotFoundError):
        fs_a.info("/err/missing")
    with pytest.raises(FileNotFoundError):
        fs_a.cat_file("/err/missing")
    with pytest.raises(FileNotFoundError):
        fs_a.open("/err/missing")
    with pytest.raises(FileNotFoundError):
        fs_a.ls("/err/missing")
    with pytest.raises(FileNotFoundError):
        fs_a.open("/err/no/such/folder", "wb")
    with pytest.raises(FileExistsError):
        fs_a.makedirs("/err/dir", exist_ok=False)
    fs_a.makedirs("/err/dir", exist_ok=True)
    fs_a.makedirs("/", exist_ok=True)
    with pytest.raises(FileExistsError):
        fs_a.mkdir("/err/dir")
    with pytest.raises(FileExistsError):
        fs_a.makedirs("/err/file", exist_ok=True)
    with pytest.raises(IsADirectoryError):
        fs_a.open("/err/dir", "rb")
    with pytest.raises(IsADirectoryError):
        fs_a.open("/err/dir", "wb")
    with pytest.raises(IsADirectoryError):
        fs_a.cat_file("/err/dir")
    with pytest.raises(IsADirectoryError):
        fs_a.rm_file("/err/dir")
    with pytest.raises(NotADirectoryError):
        fs_a.ls("/err/file/below")
    with pytest.raises(NotADirectoryError):
        fs_a.rmdir("/err/file")
    with pytest.raises(NotADirectoryError):
        fs_a.open("/err/file/below", "wb")
    with pytest.raises(ValueError, match="not supported"):
        fs_a.open("/err/file", "r+b")
    unreachable = MeshFileSystem(pod=f"127.0.0.1:{free_port()}", skip_instance_cache=True)
    with pytest.raises(OSError) as caught:
        unreachable.exists("/x")
    assert caught.value.errno == errno.EHOSTUNREACH


# fsspec's generic walkers on top of ls


def test_find_glob_walk_du(fs_a: MeshFileSystem) -> None:
    for name in ("/g/a.csv", "/g/b.txt", "/g/sub/c.csv", "/g/sub/deeper/d.csv"):
        fs_a.makedirs(fs_a._parent(name), exist_ok=True)
        fs_a.pipe_file(name, b"12345")
    assert fs_a.find("/g") == ["/g/a.csv", "/g/b.txt", "/g/sub/c.csv", "/g/sub/deeper/d.csv"]
    assert fs_a.find("/g", maxdepth=1) == ["/g/a.csv", "/g/b.txt"]
    assert fs_a.find("/g", withdirs=True, maxdepth=1) == ["/g", "/g/a.csv", "/g/b.txt", "/g/sub"]
    assert fs_a.glob("/g/*.csv") == ["/g/a.csv"]
    assert fs_a.glob(f"mesh://{fs_a.pod}/g/**/*.csv") == ["/g/a.csv", "/g/sub/c.csv", "/g/sub/deeper/d.csv"]
    assert fs_a.glob("/g/s?b") == ["/g/sub"]
    walked = [(root, sorted(dirs), sorted(files)) for root, dirs, files in fs_a.walk("/g")]
    assert walked == [
        ("/g", ["sub"], ["a.csv", "b.txt"]),
        ("/g/sub", ["deeper"], ["c.csv"]),
        ("/g/sub/deeper", [], ["d.csv"]),
    ]
    assert fs_a.du("/g") == 20
    assert fs_a.expand_path("/g/sub", recursive=True) == [
        "/g/sub",
        "/g/sub/c.csv",
        "/g/sub/deeper",
        "/g/sub/deeper/d.csv",
    ]
    mapper = fs_a.get_mapper("/g/map")
    mapper["k"] = b"v"
    assert dict(mapper) == {"k": b"v"}


def test_a_pickled_filesystem_still_reaches_its_pod(fs_a: MeshFileSystem) -> None:
    fs_a.pipe_file("/pickled", b"p")
    clone = pickle.loads(pickle.dumps(fs_a))
    assert clone.cat_file("/pickled") == b"p" and clone.pod == fs_a.pod


# pandas and pyarrow


def test_pandas_reads_and_writes_mesh_urls(pods: tuple[PodProcess, PodProcess], fs_b: MeshFileSystem) -> None:
    pd = pytest.importorskip("pandas")
    a, b = pods
    with fsspec.open(f"mesh://{a.address}/frames/x.csv", "wt", auto_mkdir=True) as f:
        f.write("name,value\n")
        for i in range(6000):
            f.write(f"row{i},{i * 1.5}\n")
    size = _committed(pods, "/frames/x.csv")
    assert size > BLOCK  # the parser reads across block boundaries

    frame = pd.read_csv(f"mesh://{b.address}/frames/x.csv")
    assert len(frame) == 6000 and frame["value"].iloc[-1] == 5999 * 1.5
    frame = pd.read_csv("mesh:///frames/x.csv", storage_options={"pod": b.address})
    assert frame["name"].iloc[0] == "row0"

    if importlib.util.find_spec("pyarrow") is None:
        pytest.skip("pyarrow is not installed: the Parquet round trip needs it")
    frame.to_parquet(f"mesh://{a.address}/frames/x.parquet")
    _committed(pods, "/frames/x.parquet")
    back = pd.read_parquet(f"mesh://{b.address}/frames/x.parquet")
    assert back.equals(frame)
    frame.to_csv(f"mesh://{b.address}/frames/y.csv", index=False)
    assert pd.read_csv(f"mesh://{b.address}/frames/y.csv").equals(frame)


def _committed(pods: tuple[PodProcess, PodProcess], path: str) -> int:
    """Size of the file once pod b has its final version (a new file is created empty, then committed)."""
    size = int(_stat(pods[0], path).size)
    wait_for(lambda: _stat(pods[1], path).size == size, what=f"{path} on pod b")
    return size
