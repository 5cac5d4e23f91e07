"""Staging against a real HTTP server on 127.0.0.1 and real files."""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ecliptic.staging import StagedFile, StagingError, filename_for, stage

CONTENT = random.Random(42).randbytes(3 * 2**20 + 12345)
SHA256 = hashlib.sha256(CONTENT).hexdigest()


@dataclass
class Seen:
    path: str
    range: str | None
    if_range: str | None
    status: int = 0
    sent: int = 0


@dataclass
class FakeArchive:
    """A small range-capable HTTP server with a few deliberately bad routes."""

    port: int = 0
    files: dict[str, bytes] = field(default_factory=lambda: {"/data.bin": CONTENT})
    etag: str = '"v1"'
    truncate_next: bool = False
    requests: list[Seen] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def make_handler(archive: FakeArchive) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen = Seen(self.path, self.headers.get("Range"), self.headers.get("If-Range"))
            archive.requests.append(seen)
            if self.path == "/missing":
                return self._empty(seen, 404)
            if self.path == "/busy":
                return self._empty(seen, 503)
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/data.bin")
                self.send_header("Content-Length", "0")
                self.end_headers()
                seen.status = 302
                return None
            ignore_ranges = self.path.startswith("/norange")
            body = archive.files.get(self.path.removeprefix("/norange"))
            if body is None:
                return self._empty(seen, 404)
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", seen.range or "")
            if match and not ignore_ranges and seen.if_range in (None, archive.etag):
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    seen.status = 416
                    return None
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                seen.status = 206
            else:
                self.send_response(200)
                seen.status = 200
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("ETag", archive.etag)
            if not ignore_ranges:
                self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if archive.truncate_next:
                archive.truncate_next = False
                payload = payload[: len(payload) // 2]
                self.close_connection = True
            self.wfile.write(payload)
            seen.sent = len(payload)
            return None

        def _empty(self, seen: Seen, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            seen.status = status

    return Handler


@pytest.fixture
def archive() -> Iterator[FakeArchive]:
    state = FakeArchive()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".part" in p.name)


def test_download_with_checksum(archive: FakeArchive, tmp_path: Path) -> None:
    dest = tmp_path / "in" / "data.bin"
    calls: list[tuple[int, int | None]] = []
    staged = stage(
        archive.url("/data.bin"),
        dest,
        checksum=("sha256", SHA256),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert staged == StagedFile(
        path=dest, size=len(CONTENT), sha256=SHA256, algorithm="sha256", digest=SHA256
    )
    assert dest.read_bytes() == CONTENT
    assert leftovers(dest.parent) == []
    assert calls[-1] == (len(CONTENT), len(CONTENT))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


@pytest.mark.parametrize(
    ("algorithm", "digest"),
    [
        ("md5", hashlib.md5(CONTENT).hexdigest()),
        ("SHA1", hashlib.sha1(CONTENT).hexdigest().upper()),
        ("sha-512", hashlib.sha512(CONTENT).hexdigest()),
        ("blake2b", hashlib.blake2b(CONTENT).hexdigest()),
    ],
)
def test_other_checksum_algorithms(archive: FakeArchive, tmp_path: Path, algorithm: str, digest: str) -> None:
    staged = stage(archive.url("/data.bin"), tmp_path / "data.bin", checksum=(algorithm, digest))
    assert staged.digest == digest.lower()
    assert staged.sha256 == SHA256


def test_checksum_mismatch_leaves_nothing(archive: FakeArchive, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    with pytest.raises(StagingError, match="checksum mismatch") as caught:
        stage(archive.url("/data.bin"), dest, checksum=("sha256", "0" * 64))
    assert not caught.value.retryable
    assert list(tmp_path.iterdir()) == []


def test_unknown_checksum_algorithm(archive: FakeArchive, tmp_path: Path) -> None:
    with pytest.raises(StagingError, match="unsupported checksum algorithm") as caught:
        stage(archive.url("/data.bin"), tmp_path / "data.bin", checksum=("crc99", "00"))
    assert not caught.value.retryable
    assert archive.requests == []


def test_not_found_is_not_retryable(archive: FakeArchive, tmp_path: Path) -> None:
    with pytest.raises(StagingError, match="404") as caught:
        stage(archive.url("/missing"), tmp_path / "x")
    assert not caught.value.retryable
    assert list(tmp_path.iterdir()) == []


def test_server_error_is_retryable(archive: FakeArchive, tmp_path: Path) -> None:
    with pytest.raises(StagingError, match="503") as caught:
        stage(archive.url("/busy"), tmp_path / "x")
    assert caught.value.retryable


def test_connection_refused_is_retryable(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(StagingError) as caught:
        stage(f"http://127.0.0.1:{port}/data.bin", tmp_path / "x", timeout=5)
    assert caught.value.retryable


def test_redirects_are_followed(archive: FakeArchive, tmp_path: Path) -> None:
    staged = stage(archive.url("/redirect"), tmp_path / "data.bin")
    assert staged.sha256 == SHA256
    assert [r.status for r in archive.requests] == [302, 200]


def test_resume_fetches_only_the_remainder(archive: FakeArchive, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    have = 2**20 + 7
    (tmp_path / "data.bin.part").write_bytes(CONTENT[:have])
    staged = stage(archive.url("/data.bin"), dest, checksum=("sha256", SHA256))
    assert staged.sha256 == SHA256
    assert dest.read_bytes() == CONTENT
    [request] = archive.requests
    assert request.range == f"bytes={have}-"
    assert (request.status, request.sent) == (206, len(CONTENT) - have)
    assert leftovers(tmp_path) == []


def test_interrupted_download_resumes_for_the_same_entity(archive: FakeArchive, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    archive.truncate_next = True
    with pytest.raises(StagingError) as caught:
        stage(archive.url("/data.bin"), dest)
    assert caught.value.retryable
    assert not dest.exists()
    have = (tmp_path / "data.bin.part").stat().st_size
    assert 0 < have < len(CONTENT)

    staged = stage(archive.url("/data.bin"), dest)
    assert staged.sha256 == SHA256
    second = archive.requests[-1]
    assert (second.range, second.if_range) == (f"bytes={have}-", archive.etag)
    assert (second.status, second.sent) == (206, len(CONTENT) - have)


def test_changed_entity_restarts_from_zero(archive: FakeArchive, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    archive.truncate_next = True
    with pytest.raises(StagingError):
        stage(archive.url("/data.bin"), dest)
    new_content = CONTENT[::-1]
    archive.files["/data.bin"] = new_content
    archive.etag = '"v2"'
    staged = stage(archive.url("/data.bin"), dest)
    assert dest.read_bytes() == new_content
    assert staged.sha256 == hashlib.sha256(new_content).hexdigest()
    assert archive.requests[-1].status == 200


def test_server_without_ranges_restarts_from_zero(archive: FakeArchive, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(b"stale bytes that must not survive")
    staged = stage(archive.url("/norange/data.bin"), dest)
    assert staged.sha256 == SHA256
    assert dest.read_bytes() == CONTENT
    assert archive.requests[-1].status == 200


def test_complete_part_is_finished_without_refetching(archive: FakeArchive, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(CONTENT)
    staged = stage(archive.url("/data.bin"), dest, checksum=("sha256", SHA256))
    assert staged.size == len(CONTENT)
    assert dest.read_bytes() == CONTENT
    assert [r.status for r in archive.requests] == [416]


def test_second_call_does_not_download_again(archive: FakeArchive, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    first = stage(archive.url("/data.bin"), dest)
    assert len(archive.requests) == 1
    assert stage(archive.url("/data.bin"), dest) == first
    checked = stage(archive.url("/data.bin"), dest, checksum=("md5", hashlib.md5(CONTENT).hexdigest()))
    assert checked.sha256 == first.sha256
    assert len(archive.requests) == 1


def test_two_stagers_of_one_destination_download_once(archive: FakeArchive, tmp_path: Path) -> None:
    """A step taken over after a lapsed lease may meet the one still running: the second waits and reuses."""
    dest = tmp_path / "data.bin"
    results: list[StagedFile | BaseException] = []

    def run() -> None:
        try:
            results.append(stage(archive.url("/data.bin"), dest, checksum=("sha256", SHA256)))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4 and all(isinstance(r, StagedFile) and r.sha256 == SHA256 for r in results), (
        results
    )
    assert len(archive.requests) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_existing_file_with_wrong_checksum_is_replaced(archive: FakeArchive, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"something else")
    staged = stage(archive.url("/data.bin"), dest, checksum=("sha256", SHA256))
    assert staged.sha256 == SHA256
    assert dest.read_bytes() == CONTENT
    assert len(archive.requests) == 1


def test_unsupported_scheme(tmp_path: Path) -> None:
    with pytest.raises(StagingError, match="unsupported URL scheme") as caught:
        stage("ftp://example.org/data.bin", tmp_path / "x")
    assert not caught.value.retryable


def test_file_url_copy(tmp_path: Path) -> None:
    source = tmp_path / "source dir" / "data.bin"
    source.parent.mkdir()
    source.write_bytes(CONTENT)
    dest = tmp_path / "session" / "data.bin"
    staged = stage(source.as_uri(), dest, checksum=("sha256", SHA256))
    assert (staged.size, staged.sha256) == (len(CONTENT), SHA256)
    assert dest.read_bytes() == CONTENT
    assert leftovers(dest.parent) == []


def test_file_urls_are_confined_to_the_base_directory(tmp_path: Path) -> None:
    base = tmp_path / "public"
    base.mkdir()
    (base / "ok.txt").write_text("fine")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy")
    (base / "link.txt").symlink_to(secret)
    session = tmp_path / "session"

    assert stage("file:ok.txt", session / "a", base_dir_for_file_urls=base).size == 4
    assert stage((base / "ok.txt").as_uri(), session / "b", base_dir_for_file_urls=base).size == 4
    for url in (secret.as_uri(), "file:../secret.txt", (base / "link.txt").as_uri()):
        with pytest.raises(StagingError, match="outside") as caught:
            stage(url, session / "c", base_dir_for_file_urls=base)
        assert not caught.value.retryable
    assert not (session / "c").exists()


def test_file_url_errors(tmp_path: Path) -> None:
    with pytest.raises(StagingError, match="no such file"):
        stage((tmp_path / "absent").as_uri(), tmp_path / "x")
    with pytest.raises(StagingError, match="directory"):
        stage(tmp_path.as_uri(), tmp_path / "x")
    with pytest.raises(StagingError, match="relative"):
        stage("file:relative.txt", tmp_path / "x")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://archive.example/data/m31.fits?format=raw#frag", "m31.fits"),
        ("https://archive.example/", "fallback.dat"),
        ("https://archive.example", "fallback.dat"),
        ("https://archive.example/a/..%2F..%2Fetc%2Fpasswd", "passwd"),
        ("https://archive.example/%2e%2e", "fallback.dat"),
        ("https://archive.example/..", "fallback.dat"),
        ("https://archive.example/.hidden", "hidden"),
        ("https://archive.example/a%00b%0Ac.txt", "a_b_c.txt"),
        ("https://archive.example/dir\\..\\win.ini", "win.ini"),
        ("https://archive.example/M%C3%A9sier%2031.fits", "Mésier_31.fits"),
        ("file:///tmp/some/file.csv", "file.csv"),
    ],
)
def test_filename_for(url: str, expected: str) -> None:
    assert filename_for(url, "fallback.dat") == expected


def test_filename_for_sanitises_the_fallback_and_limits_length() -> None:
    assert filename_for("https://x/", "../../evil") == "evil"
    assert filename_for("https://x/", "..") == "download"
    long_name = filename_for("https://x/" + "a" * 400 + ".fits", "f")
    assert long_name.endswith(".fits")
    assert len(long_name.encode()) <= 255


def test_meta_file_records_validator(archive: FakeArchive, tmp_path: Path) -> None:
    archive.truncate_next = True
    with pytest.raises(StagingError):
        stage(archive.url("/data.bin"), tmp_path / "data.bin")
    meta = json.loads((tmp_path / "data.bin.part.meta").read_text())
    assert meta == {"url": archive.url("/data.bin"), "validator": archive.etag}
