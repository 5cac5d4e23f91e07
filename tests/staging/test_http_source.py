"""HttpSource against a real HTTP server on 127.0.0.1 and real files under allowed roots."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ecliptic.staging import StagedFile, StagingError
from ecliptic.staging.http import HttpSource, TreeFile, relative_path, stage_tree, tree_digest
from ecliptic.staging.sources import Replica
from tests.conftest import free_port

CONTENT = random.Random(7).randbytes(3 * 2**20 + 4321)
SHA256 = hashlib.sha256(CONTENT).hexdigest()


@dataclass
class Server:
    """A small HTTP server: ranged GET, HEAD (refused under /nohead), PUT, MKCOL, and a few bad routes.

    ``put_needs_parent`` makes it answer PUT like WebDAV does when the parent collection is missing.
    """

    files: dict[str, bytes] = field(default_factory=lambda: {"/data/file.bin": CONTENT})
    etag: str = '"v1"'
    port: int = 0
    truncate_next: bool = False
    put_needs_parent: bool = False
    report_digest: bool = True
    collections: set[str] = field(default_factory=set)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def methods(self, method: str) -> list[str]:
        return [path for verb, path, _ in self.log if verb == method]


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _reply(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def _entity(self) -> tuple[str, bytes | None]:
            path = self.path.removeprefix("/nohead")
            if path == "/busy":
                return path, None
            return path, server.files.get(path)

        def _headers(self, body: bytes) -> dict[str, str]:
            headers = {"ETag": server.etag, "Accept-Ranges": "bytes"}
            if server.report_digest:
                digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
                headers["Repr-Digest"] = f"sha-256=:{digest}:"
            return headers

        def do_HEAD(self) -> None:
            server.log.append(("HEAD", self.path, None))
            if self.path.startswith("/nohead"):
                return self._reply(405)
            if self.path == "/busy":
                return self._reply(503)
            _, body = self._entity()
            if body is None:
                return self._reply(404)
            self.send_response(200)
            for name, value in self._headers(body).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return None

        def do_GET(self) -> None:
            ranged = self.headers.get("Range")
            server.log.append(("GET", self.path, ranged))
            if self.path == "/busy" or self.path == "/nohead/busy":
                return self._reply(503)
            if self.path == "/forbidden":
                return self._reply(403)
            _, body = self._entity()
            if body is None:
                return self._reply(404)
            start, end = 0, len(body) - 1
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", ranged or "")
            if_range = self.headers.get("If-Range")
            status = 200
            if match and if_range in (None, server.etag):
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else end
                if start >= len(body):
                    return self._reply(416, {"Content-Range": f"bytes */{len(body)}"})
                status = 206
            payload = body[start : end + 1]
            self.send_response(status)
            for name, value in self._headers(body).items():
                self.send_header(name, value)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if server.truncate_next:
                server.truncate_next = False
                payload = payload[: len(payload) // 2]
                self.close_connection = True
            self.wfile.write(payload)
            return None

        def do_PUT(self) -> None:
            server.log.append(("PUT", self.path, None))
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self.path.startswith("/busy/"):
                return self._reply(503)
            parent = self.path.rsplit("/", 1)[0]
            if server.put_needs_parent and parent and parent not in server.collections:
                return self._reply(409)
            created = self.path not in server.files
            server.files[self.path] = body
            return self._reply(201 if created else 204, self._headers(body))

        def do_MKCOL(self) -> None:
            server.log.append(("MKCOL", self.path, None))
            if self.path in server.collections:
                return self._reply(405)
            server.collections.add(self.path)
            return self._reply(201)

    return Handler


@contextmanager
def serve(server: Server) -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def web() -> Iterator[Server]:
    with serve(Server()) as server:
        yield server


def _spec(url: str, checksum: str | None = None) -> dict[str, object]:
    spec: dict[str, object] = {"location": url}
    if checksum is not None:
        spec["checksum"] = {"type": "sha256", "value": checksum}
    return spec


# -- http ----------------------------------------------------------------------------------------------------


def test_resolve_asks_head_for_size_and_validators(web: Server) -> None:
    resolved = HttpSource().resolve(_spec(web.url("/data/file.bin"), SHA256))
    assert resolved.replicas == [
        Replica(f"http:127.0.0.1:{web.port}", web.url("/data/file.bin"), len(CONTENT))
    ]
    assert resolved.size == len(CONTENT)
    assert resolved.checksum == ("sha256", SHA256)
    assert resolved.details["etag"] == '"v1"' and resolved.details["ranges"] is True
    assert web.methods("HEAD") == ["/data/file.bin"] and web.methods("GET") == []


def test_resolve_falls_back_to_a_ranged_get(web: Server) -> None:
    resolved = HttpSource().resolve(_spec(web.url("/nohead/data/file.bin")))
    assert resolved.size == len(CONTENT) and resolved.details["ranges"] is True
    assert [entry for entry in web.log if entry[0] == "GET"] == [
        ("GET", "/nohead/data/file.bin", "bytes=0-0")
    ]


def test_resolve_missing_is_not_retryable(web: Server) -> None:
    with pytest.raises(StagingError, match="does not exist") as info:
        HttpSource().resolve(_spec(web.url("/nothing")))
    assert not info.value.retryable


def test_resolve_forbidden_is_not_retryable(web: Server) -> None:
    with pytest.raises(StagingError, match="no permission") as info:
        HttpSource().resolve(_spec(web.url("/forbidden")))
    assert not info.value.retryable


def test_resolve_busy_server_is_retryable(web: Server) -> None:
    with pytest.raises(StagingError, match="503") as info:
        HttpSource().resolve(_spec(web.url("/busy")))
    assert info.value.retryable


def test_resolve_server_down_is_retryable() -> None:
    with pytest.raises(StagingError, match="cannot reach") as info:
        HttpSource(timeout=5).resolve(_spec(f"http://127.0.0.1:{free_port()}/x.bin"))
    assert info.value.retryable


def test_fetch_verifies_the_checksum(web: Server, tmp_path: Path) -> None:
    source = HttpSource()
    spec = _spec(web.url("/data/file.bin"), SHA256)
    replica = source.resolve(spec).replicas[0]
    staged = source.fetch(spec, replica, tmp_path)
    assert staged.path == tmp_path / "file.bin" and staged.path.read_bytes() == CONTENT
    assert (staged.size, staged.sha256, staged.digest) == (len(CONTENT), SHA256, SHA256)
    bad = _spec(web.url("/data/file.bin"), "0" * 64)
    with pytest.raises(StagingError, match="checksum mismatch") as info:
        source.fetch(bad, replica, tmp_path / "other")
    assert not info.value.retryable
    assert not (tmp_path / "other" / "file.bin").exists()


def test_interrupted_fetch_resumes_with_a_range(web: Server, tmp_path: Path) -> None:
    source = HttpSource()
    spec = _spec(web.url("/data/file.bin"), SHA256)
    replica = source.resolve(spec).replicas[0]
    web.truncate_next = True
    with pytest.raises(StagingError) as info:
        source.fetch(spec, replica, tmp_path)
    assert info.value.retryable
    kept = (tmp_path / "file.bin.part").stat().st_size
    assert 0 < kept < len(CONTENT)
    staged = source.fetch(spec, replica, tmp_path, filename="renamed.bin")
    assert staged.path.name == "renamed.bin" and staged.sha256 == SHA256
    # a different final name is a different staging, so that one started afresh; the original resumes:
    web.log.clear()
    resumed = source.fetch(spec, replica, tmp_path)
    assert resumed.sha256 == SHA256 and resumed.path.read_bytes() == CONTENT
    assert web.log == [("GET", "/data/file.bin", f"bytes={kept}-")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin", "renamed.bin"]


# -- file ----------------------------------------------------------------------------------------------------


def test_file_urls_under_an_allowed_root(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    (root / "sub").mkdir(parents=True)
    data = os.urandom(50_000)
    (root / "sub" / "x.fits").write_bytes(data)
    source = HttpSource([root])
    url = (root / "sub" / "x.fits").as_uri()
    resolved = source.resolve(_spec(url))
    assert resolved.replicas == [Replica("file:local", url, len(data))]
    staged = source.fetch(_spec(url), resolved.replicas[0], tmp_path / "session")
    assert staged.path.read_bytes() == data
    assert staged.sha256 == hashlib.sha256(data).hexdigest()


def test_file_urls_outside_the_roots_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("not for clients")
    (root / "link.txt").symlink_to(secret)
    source = HttpSource([root])
    for url in (secret.as_uri(), (root / "link.txt").as_uri(), (root / ".." / "secret.txt").as_uri()):
        with pytest.raises(StagingError, match="outside the directories") as info:
            source.resolve(_spec(url))
        assert not info.value.retryable
        with pytest.raises(StagingError, match="outside the directories"):
            source.fetch(_spec(url), Replica("file:local", url), tmp_path / "session")
    with pytest.raises(StagingError, match="serves no files"):
        HttpSource().resolve(_spec(secret.as_uri()))
    with pytest.raises(StagingError, match="not there"):
        source.resolve(_spec((root / "absent.txt").as_uri()))
    with pytest.raises(StagingError, match="a directory"):
        source.resolve(_spec(root.as_uri()))


def test_unsupported_scheme_and_missing_location() -> None:
    with pytest.raises(StagingError, match="unsupported URL scheme 'ftp'"):
        HttpSource().resolve(_spec("ftp://127.0.0.1/x"))
    with pytest.raises(StagingError, match="no location"):
        HttpSource().resolve({})
    with pytest.raises(StagingError, match="needs a type and a value"):
        HttpSource().resolve({"location": "http://127.0.0.1/x", "checksum": {"type": "sha256"}})


# -- shared helpers ------------------------------------------------------------------------------------------


def test_tree_digest_is_order_independent_and_content_sensitive() -> None:
    lines = [("b/c.txt", "1" * 64), ("a.txt", "2" * 64)]
    expected = hashlib.sha256(f"a.txt\0{'2' * 64}\nb/c.txt\0{'1' * 64}\n".encode()).hexdigest()
    assert tree_digest(lines) == tree_digest(reversed(lines)) == expected
    assert tree_digest([("a.txt", "3" * 64)]) != tree_digest([("a.txt", "2" * 64)])
    assert tree_digest([]) == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("bad", [[".."], ["a", ".", "b"], [""], ["a\0b"], ["x" * 300], []])
def test_relative_path_refuses_names_that_escape(bad: list[str]) -> None:
    with pytest.raises(StagingError):
        relative_path(bad, "the thing")


def test_relative_path_keeps_names_as_they_are() -> None:
    assert relative_path(["my data", "x y.fits"], "the thing") == "my data/x y.fits"


def _tree_file(relative: str, body: bytes, fetched: list[str]) -> TreeFile:
    def fetch(dest: Path, part: Path, meta: Path, progress: object) -> StagedFile:
        fetched.append(relative)
        part.write_bytes(body)
        os.replace(part, dest)
        return StagedFile(dest, len(body), hashlib.sha256(body).hexdigest())

    return TreeFile(relative, len(body), fetch)


def test_stage_tree_follows_the_collection_from_version_to_version(tmp_path: Path) -> None:
    fetched: list[str] = []
    first = stage_tree(
        tmp_path / "c", [_tree_file("a", b"1", fetched), _tree_file("b/c", b"22", fetched)], directories=["d"]
    )
    assert (first.size, sorted(fetched)) == (3, ["a", "b/c"])
    assert (tmp_path / "c" / "d").is_dir()
    fetched.clear()
    # "a" became a directory, "b" a file, "d" went away; what did not change is not fetched again.
    second = stage_tree(
        tmp_path / "c",
        [
            _tree_file("a/x", b"333", fetched),
            _tree_file("b", b"4444", fetched),
            _tree_file("keep", b"", fetched),
        ],
    )
    assert sorted(fetched) == ["a/x", "b", "keep"]
    layout = sorted(p.relative_to(tmp_path / "c").as_posix() for p in (tmp_path / "c").rglob("*"))
    assert layout == ["a", "a/x", "b", "keep"]
    assert second.sha256 == tree_digest(
        [
            ("a/x", hashlib.sha256(b"333").hexdigest()),
            ("b", hashlib.sha256(b"4444").hexdigest()),
            ("keep", hashlib.sha256(b"").hexdigest()),
        ]
    )
    fetched.clear()
    assert stage_tree(tmp_path / "c", [_tree_file("b", b"4444", fetched)]).size == 4
    assert fetched == [] and sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_stage_tree_refuses_clashing_names(tmp_path: Path) -> None:
    with pytest.raises(StagingError, match="both a file and a directory"):
        stage_tree(tmp_path / "c", [_tree_file("a", b"1", []), _tree_file("a/b", b"2", [])])
    with pytest.raises(StagingError, match="both a file and a directory"):
        stage_tree(tmp_path / "c", [_tree_file("a", b"1", [])], directories=["a"])
    with pytest.raises(StagingError, match="more than once"):
        stage_tree(tmp_path / "c", [_tree_file("a", b"1", []), _tree_file("a", b"1", [])])
