"""Pushing result directories to a real mesh pod, moto's S3, a local HTTP server and directories."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ecliptic.staging import StagingError
from ecliptic.staging.results import PushedFile, ResultPusher, push_results
from tests.conftest import free_port
from tests.mesh.harness import Network, PodProcess
from tests.staging.moto_s3 import moto_endpoint
from tests.staging.test_http_source import Server, serve

MiB = 1024 * 1024


def _results(root: Path) -> dict[str, bytes]:
    files = {
        "summary.txt": b"all good\n",
        "images/a.fits": os.urandom(300_000),
        "images/deep/b.fits": os.urandom(70_000),
        "empty.log": b"",
    }
    for relative, body in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(body)
    return files


def _expected(files: dict[str, bytes]) -> list[tuple[str, int, str]]:
    return sorted((rel, len(body), hashlib.sha256(body).hexdigest()) for rel, body in files.items())


def _described(pushed: list[PushedFile]) -> list[tuple[str, int, str]]:
    return [(p.path, p.size, p.sha256) for p in pushed]


@pytest.fixture
def results(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "results"
    return root, _results(root)


# -- mesh ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodProcess]:
    network = Network(tmp_path_factory.mktemp("mesh"))
    try:
        first = network.pod("a", join=False)
        with first.client() as client:
            client.set_network_config('block_size = "64KiB"\n')
        yield first
    finally:
        network.close()


def test_push_to_the_mesh_is_idempotent(pod: PodProcess, results: tuple[Path, dict[str, bytes]]) -> None:
    root, files = results
    pusher = ResultPusher(mesh_pod=pod.address)
    seen: list[tuple[int, int]] = []
    pushed = pusher.push(
        root, "mesh:///out/session-1", progress=lambda done, total: seen.append((done, total))
    )
    assert _described(pushed) == _expected(files)
    assert all(p.transferred for p in pushed)
    assert pushed[0].url == "mesh:///out/session-1/empty.log"
    total = sum(len(b) for b in files.values())
    assert seen[-1] == (total, total)
    with pod.client() as client:
        for relative, body in files.items():
            assert client.read_bytes(f"/out/session-1/{relative}") == body
        versions = {rel: client.stat(f"/out/session-1/{rel}").version for rel in files}
    again = pusher.push(root, "mesh:///out/session-1")
    assert _described(again) == _expected(files) and not any(p.transferred for p in again)
    (root / "summary.txt").write_bytes(b"changed\n")
    third = pusher.push(root, f"mesh://{pod.address}/out/session-1")
    assert [p.path for p in third if p.transferred] == ["summary.txt"]
    with pod.client() as client:
        assert client.read_bytes("/out/session-1/summary.txt") == b"changed\n"
        for relative in ("images/a.fits", "images/deep/b.fits", "empty.log"):
            assert client.stat(f"/out/session-1/{relative}").version == versions[relative]


def test_mesh_push_errors(pod: PodProcess, results: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = results
    with pod.client() as client:
        client.mkdir("/taken/summary.txt", parents=True)
    with pytest.raises(StagingError, match="is a dir") as info:
        ResultPusher(mesh_pod=pod.address).push(root, "mesh:///taken")
    assert not info.value.retryable
    with pytest.raises(StagingError, match="no mesh pod"):
        ResultPusher().push(root, "mesh:///x")
    with pytest.raises(StagingError) as info:
        ResultPusher(mesh_pod=f"127.0.0.1:{free_port()}", timeout=5).push(root, "mesh:///x")
    assert info.value.retryable


# -- s3 ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_endpoint() as url:
        yield url


def _s3(endpoint: str) -> tuple[Any, Any]:
    from ecliptic.staging.s3 import S3Config, S3Credentials, s3_client

    config = S3Config(
        endpoint=endpoint, credentials={"*": S3Credentials("test", "test")}, part_size=5 * MiB, max_attempts=1
    )
    return config, s3_client(config, endpoint)


def test_push_to_s3_is_idempotent(s3_endpoint: str, results: tuple[Path, dict[str, bytes]]) -> None:
    root, files = results
    files["big.bin"] = os.urandom(5 * MiB + 123)  # sent in parts
    (root / "big.bin").write_bytes(files["big.bin"])
    config, client = _s3(s3_endpoint)
    bucket = f"results-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    pusher = ResultPusher(s3=config)
    pushed = pusher.push(root, f"s3://{bucket}/sessions/1")
    assert _described(pushed) == _expected(files) and all(p.transferred for p in pushed)
    for relative, body in files.items():
        answer = client.get_object(Bucket=bucket, Key=f"sessions/1/{relative}")
        assert answer["Body"].read() == body
        assert answer["Metadata"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert client.head_object(Bucket=bucket, Key="sessions/1/big.bin")["ETag"].endswith('-2"')
    again = pusher.push(root, f"s3://{bucket}/sessions/1")
    assert not any(p.transferred for p in again)
    # An object with the same size but other bytes (or no recorded digest) is replaced.
    client.put_object(Bucket=bucket, Key="sessions/1/summary.txt", Body=b"all bad\n\n")
    third = pusher.push(root, f"s3://{bucket}/sessions/1/")
    assert [p.path for p in third if p.transferred] == ["summary.txt"]
    assert client.get_object(Bucket=bucket, Key="sessions/1/summary.txt")["Body"].read() == b"all good\n"


def test_s3_push_errors(s3_endpoint: str, results: tuple[Path, dict[str, bytes]]) -> None:
    from ecliptic.staging.s3 import S3Config, S3Credentials

    root, _ = results
    config, _ = _s3(s3_endpoint)
    with pytest.raises(StagingError, match="no such bucket") as info:
        ResultPusher(s3=config).push(root, "s3://no-such-results-bucket/x")
    assert not info.value.retryable
    down = S3Config(
        endpoint=f"http://127.0.0.1:{free_port()}", credentials={"*": S3Credentials("t", "t")}, max_attempts=1
    )
    with pytest.raises(StagingError) as info:
        ResultPusher(s3=down).push(root, "s3://bucket/x")
    assert info.value.retryable
    with pytest.raises(StagingError, match="names no bucket"):
        ResultPusher(s3=config).push(root, "s3:///x")


# -- file ----------------------------------------------------------------------------------------------------


def test_push_to_a_directory_is_idempotent(tmp_path: Path, results: tuple[Path, dict[str, bytes]]) -> None:
    root, files = results
    allowed = tmp_path / "exports"
    allowed.mkdir()
    outside = tmp_path / "secret.txt"
    outside.write_text("broker's own")
    (root / "leak.txt").symlink_to(outside)
    destination = (allowed / "s1").as_uri()
    pushed = push_results(root, destination, file_roots=[allowed])
    assert _described(pushed) == _expected(files)  # the symlink was not followed
    for relative, body in files.items():
        assert (allowed / "s1" / relative).read_bytes() == body
    assert not (allowed / "s1" / "leak.txt").exists()
    inodes = {rel: (allowed / "s1" / rel).stat().st_ino for rel in files}
    again = push_results(root, destination, file_roots=[allowed])
    assert not any(p.transferred for p in again)
    assert {rel: (allowed / "s1" / rel).stat().st_ino for rel in files} == inodes
    assert sorted(p.name for p in (allowed / "s1").iterdir()) == ["empty.log", "images", "summary.txt"]


def test_directory_push_stays_under_the_roots(tmp_path: Path, results: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = results
    allowed = tmp_path / "exports"
    (tmp_path / "elsewhere").mkdir()
    allowed.mkdir()
    (allowed / "sneaky").symlink_to(tmp_path / "elsewhere")
    for destination in ((tmp_path / "elsewhere").as_uri(), (allowed / "sneaky").as_uri()):
        with pytest.raises(StagingError, match="outside the directories") as info:
            push_results(root, destination, file_roots=[allowed])
        assert not info.value.retryable
    (allowed / "out" / "images").mkdir(parents=True)
    (allowed / "out" / "images" / "deep").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StagingError, match="leads outside"):
        push_results(root, (allowed / "out").as_uri(), file_roots=[allowed])
    assert list((tmp_path / "elsewhere").iterdir()) == []
    with pytest.raises(StagingError, match="writes results to no directories"):
        push_results(root, (allowed / "x").as_uri())


# -- http ----------------------------------------------------------------------------------------------------


@pytest.fixture
def uploads() -> Iterator[Server]:
    with serve(Server(files={})) as server:
        yield server


def test_push_over_http_is_idempotent(uploads: Server, results: tuple[Path, dict[str, bytes]]) -> None:
    root, files = results
    pusher = ResultPusher(headers={"Authorization": "Bearer t"})
    pushed = pusher.push(root, uploads.url("/upload/s1/"))
    assert _described(pushed) == _expected(files) and all(p.transferred for p in pushed)
    assert {path: body for path, body in uploads.files.items()} == {
        f"/upload/s1/{rel}": body for rel, body in files.items()
    }
    uploads.log.clear()
    again = pusher.push(root, uploads.url("/upload/s1"))
    assert not any(p.transferred for p in again)
    assert uploads.methods("PUT") == [] and len(uploads.methods("HEAD")) == len(files)
    # A server that reports no digest cannot show the file is already there: it is sent again.
    uploads.report_digest = False
    third = pusher.push(root, uploads.url("/upload/s1"))
    assert all(p.transferred for p in third)


def test_http_push_makes_webdav_collections(uploads: Server, tmp_path: Path) -> None:
    root = tmp_path / "results"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "c.txt").write_bytes(b"c")
    (root / "name with space.txt").write_bytes(b"s")
    uploads.put_needs_parent = True
    uploads.collections.add("/dav")
    pushed = ResultPusher().push(root, uploads.url("/dav"))
    assert [p.url for p in pushed] == [
        uploads.url("/dav/a/b/c.txt"),
        uploads.url("/dav/name%20with%20space.txt"),
    ]
    assert uploads.methods("MKCOL") == ["/dav/a", "/dav/a/b"]
    assert uploads.files["/dav/a/b/c.txt"] == b"c"


def test_http_push_errors(uploads: Server, results: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = results
    with pytest.raises(StagingError, match="503") as info:
        ResultPusher().push(root, uploads.url("/busy/s1"))
    assert info.value.retryable
    with pytest.raises(StagingError, match="cannot reach") as info:
        ResultPusher(timeout=5).push(root, f"http://127.0.0.1:{free_port()}/x")
    assert info.value.retryable


def test_bad_destinations_and_sources(tmp_path: Path, results: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = results
    with pytest.raises(StagingError, match="unsupported scheme 'ftp'"):
        ResultPusher().push(root, "ftp://127.0.0.1/x")
    with pytest.raises(StagingError, match="does not exist or is not a directory"):
        ResultPusher().push(tmp_path / "absent", "mesh:///x")
