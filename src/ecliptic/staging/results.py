"""Pushing a session's result directory to where the client wants it, before the session is released.

Destinations: ``mesh:///prefix`` (through the broker's pod), ``s3://bucket/prefix`` (the configured S3
endpoint), ``file:///dir`` (under the directories the operator allows) and ``http(s)://host/prefix`` (a
``PUT`` per file, as WebDAV servers and presigned-upload gateways take). Every regular file under the result
directory goes to ``<destination>/<relative path>``; symbolic links and special files are left out, so a job
cannot make the broker send files from outside its directory.

Pushing is idempotent: a file already at the destination with the same size and SHA-256 is not sent
again, so a push interrupted by a crash is simply run again. What counts as "the same" is as strong as the
destination allows: the mesh compares the BLAKE3 block list (exactly the bytes), S3 the size and the
``sha256`` metadata the push stores with each object, a directory the bytes' SHA-256, and an HTTP server the
size and a SHA-256 it reports (``Repr-Digest``, ``Digest``, ``X-Checksum-Sha256`` or an ETag that is the
hex digest); a server that reports none gets the file again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from urllib.request import url2pathname

import httpx

from ecliptic.durable import fsync_dir
from ecliptic.mesh.blocks import HOLE, hash_bytes
from ecliptic.mesh.client import MeshClient
from ecliptic.mesh.manifest import Block
from ecliptic.mesh.wire import MeshError
from ecliptic.staging.download import CHUNK, StagingError, http_errors, open_part
from ecliptic.staging.http import raise_for_status, sha256_file
from ecliptic.staging.mesh import check_pod_named, mesh_error, mesh_session, parse_mesh_url
from ecliptic.staging.s3 import S3Config, s3_client, s3_error

log = logging.getLogger(__name__)

PushProgress = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)`` over the whole push."""

SHA256_METADATA = "sha256"
"""The S3 user metadata key (``x-amz-meta-sha256``) a pushed object's digest is stored under."""


@dataclass(frozen=True)
class PushedFile:
    path: str
    """Relative POSIX path inside the result directory."""
    size: int
    sha256: str
    url: str
    """Where the file now is."""
    transferred: bool
    """False when it was already there with the same size and digest."""


@dataclass(frozen=True)
class _Local:
    relative: str
    path: Path
    size: int
    sha256: str


class ResultPusher:
    """Pushes result directories; one instance holds the broker's configuration for every destination."""

    def __init__(
        self,
        *,
        file_roots: Sequence[Path] = (),
        mesh_pod: str | None = None,
        mesh_token: str | None = None,
        s3: S3Config | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.file_roots = [Path(root).resolve() for root in file_roots]
        self.mesh_pod = mesh_pod
        self.mesh_token = mesh_token
        self.s3 = s3
        self.headers = dict(headers or {})
        """Sent with every HTTP request (an ``Authorization`` for the upload server, say)."""
        self.timeout = timeout

    def push(
        self, result_dir: Path, destination: str, *, progress: PushProgress | None = None
    ) -> list[PushedFile]:
        """Push every regular file under ``result_dir``; what is where now, sorted by path.

        Raises :class:`StagingError` (``retryable`` when trying later may help) naming the file that failed;
        the files pushed before it stay, and the next push skips them.
        """
        try:
            scheme = urlsplit(destination).scheme.lower()
        except ValueError as exc:
            raise StagingError(f"{destination!r} is not a valid URL: {exc}") from exc
        pushers: dict[str, Callable[[list[_Local], str, _Counter], list[PushedFile]]] = {
            "mesh": self._to_mesh,
            "s3": self._to_s3,
            "file": self._to_directory,
            "http": self._to_http,
            "https": self._to_http,
        }
        pusher = pushers.get(scheme)
        if pusher is None:
            raise StagingError(
                f"cannot push results to {destination!r}: unsupported scheme {scheme or '(none)'!r} "
                "(supported: mesh, s3, file, http, https)"
            )
        files = _local_files(result_dir)
        counter = _Counter(sum(f.size for f in files), progress)
        return pusher(files, destination, counter)

    # -- mesh ----------------------------------------------------------------------------------------------

    def _to_mesh(self, files: list[_Local], destination: str, counter: _Counter) -> list[PushedFile]:
        if not self.mesh_pod:
            raise StagingError(
                f"cannot push results to {destination}: this broker has no mesh pod configured"
            )
        base, named = parse_mesh_url(destination)
        pushed: list[PushedFile] = []
        with mesh_session(self.mesh_pod, destination, token=self.mesh_token, timeout=self.timeout) as client:
            if named is not None:
                check_pod_named(destination, named, client.pods())
            made: set[str] = set()
            for item in files:
                remote = f"{base.rstrip('/')}/{item.relative}"
                url = f"mesh://{remote}"
                try:
                    _mesh_dirs(client, remote.rsplit("/", 1)[0] or "/", made)
                    transferred = _mesh_put(client, item, remote, url, counter)
                except MeshError as exc:
                    raise mesh_error(url, exc) from exc
                pushed.append(_pushed(item, url, transferred))
        return pushed

    # -- s3 ------------------------------------------------------------------------------------------------

    def _to_s3(self, files: list[_Local], destination: str, counter: _Counter) -> list[PushedFile]:
        config = self.s3 or S3Config.from_env()
        parts = urlsplit(destination)
        bucket, prefix = parts.netloc, unquote(parts.path).strip("/")
        if not bucket:
            raise StagingError(f"{destination!r} names no bucket (s3://bucket/prefix)")
        endpoint = (config.endpoint or "https://s3.amazonaws.com").rstrip("/")
        client = s3_client(config, endpoint)
        pushed: list[PushedFile] = []
        for item in files:
            key = f"{prefix}/{item.relative}" if prefix else item.relative
            url = f"s3://{bucket}/{key}"
            what = f"{url} at {endpoint}"
            if _s3_same(client, bucket, key, item, what):
                counter.add(item.size)
                pushed.append(_pushed(item, url, False))
                continue
            _s3_upload(client, config, bucket, key, item, what, counter)
            if not _s3_same(client, bucket, key, item, what):
                raise StagingError(
                    f"{what}: the uploaded object does not have the file's size and digest", retryable=True
                )
            pushed.append(_pushed(item, url, True))
        return pushed

    # -- file ----------------------------------------------------------------------------------------------

    def _to_directory(self, files: list[_Local], destination: str, counter: _Counter) -> list[PushedFile]:
        parts = urlsplit(destination)
        if parts.netloc not in ("", "localhost"):
            raise StagingError(
                f"cannot push results to {destination!r}: file URLs naming a host are not supported"
            )
        raw = url2pathname(unquote(parts.path))
        if not raw or not Path(raw).is_absolute():
            raise StagingError(
                f"cannot push results to {destination!r}: a file URL must name an absolute path"
            )
        if not self.file_roots:
            raise StagingError(
                f"cannot push results to {destination!r}: this broker writes results to no directories"
            )
        base = Path(raw)
        root = _root_of(base, self.file_roots)
        if root is None:
            roots = ", ".join(str(r) for r in self.file_roots)
            raise StagingError(
                f"cannot push results to {destination!r}: it is outside the directories results may go to ({roots})"
            )
        pushed: list[PushedFile] = []
        for item in files:
            target = base / item.relative
            try:
                # A symlink planted inside the destination must not lead the write out of the allowed roots.
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.parent.resolve().is_relative_to(root):
                    raise StagingError(f"cannot push {item.relative}: {target.parent} leads outside {root}")
                transferred = _copy_if_changed(item, target, counter)
            except OSError as exc:
                raise StagingError(f"cannot push {item.relative} to {target}: {exc}") from exc
            pushed.append(_pushed(item, target.as_uri(), transferred))
        return pushed

    # -- http(s) -------------------------------------------------------------------------------------------

    def _to_http(self, files: list[_Local], destination: str, counter: _Counter) -> list[PushedFile]:
        base = destination.rstrip("/")
        pushed: list[PushedFile] = []
        try:
            with (
                http_errors(
                    f"timed out pushing to {destination}",
                    f"cannot push results to {destination}",
                    f"cannot reach {destination}",
                ),
                httpx.Client(
                    follow_redirects=False,
                    timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 30.0)),
                    headers={"User-Agent": "ecliptic-results", **self.headers},
                ) as client,
            ):
                for item in files:
                    url = f"{base}/{quote(item.relative)}"
                    if _http_same(client, url, item):
                        counter.add(item.size)
                        pushed.append(_pushed(item, url, False))
                        continue
                    _http_put(client, base, url, item, counter)
                    pushed.append(_pushed(item, url, True))
        except OSError as exc:
            raise StagingError(f"cannot read the results to push: {exc}") from exc
        return pushed


def push_results(
    result_dir: Path, destination: str, *, progress: PushProgress | None = None, **config: Any
) -> list[PushedFile]:
    """``ResultPusher(**config).push(result_dir, destination)``."""
    return ResultPusher(**config).push(result_dir, destination, progress=progress)


# -- local files ---------------------------------------------------------------------------------------------


class _Counter:
    def __init__(self, total: int, progress: PushProgress | None) -> None:
        self.done = 0
        self.total = total
        self.progress = progress
        self.add(0)

    def add(self, count: int) -> None:
        self.done += count
        if self.progress is not None:
            self.progress(self.done, self.total)


def _local_files(result_dir: Path) -> list[_Local]:
    if result_dir.is_symlink() or not result_dir.is_dir():
        raise StagingError(f"the result directory {result_dir} does not exist or is not a directory")
    found: list[_Local] = []

    def unreadable(error: OSError) -> None:
        raise StagingError(f"cannot read the result directory {error.filename}: {error.strerror or error}")

    for folder, directories, names in os.walk(result_dir, onerror=unreadable, followlinks=False):
        for name in sorted(names):
            path = Path(folder) / name
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                log.warning("not pushing %s: not a regular file", path)
                continue
            try:
                size, digest = sha256_file(path)
            except OSError as exc:
                raise StagingError(f"cannot read the result file {path}: {exc}") from exc
            found.append(_Local(path.relative_to(result_dir).as_posix(), path, size, digest))
        for name in directories:
            if (Path(folder) / name).is_symlink():
                log.warning("not pushing %s: a symbolic link", Path(folder) / name)
    return sorted(found, key=lambda f: f.relative)


def _chunks(path: Path, counter: _Counter) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            counter.add(len(chunk))
            yield chunk


def _pushed(item: _Local, url: str, transferred: bool) -> PushedFile:
    return PushedFile(item.relative, item.size, item.sha256, url, transferred)


# -- mesh ----------------------------------------------------------------------------------------------------


def _mesh_dirs(client: MeshClient, folder: str, made: set[str]) -> None:
    if folder in made or folder == "/":
        return
    client.mkdir(folder, parents=True, exist_ok=True)
    made.add(folder)


def _mesh_blocks(path: Path, block_size: int) -> list[tuple[str, int, bool]]:
    """(BLAKE3, length, all zeros) of each block the mesh would cut the file into."""
    blocks: list[tuple[str, int, bool]] = []
    with open(path, "rb") as handle:
        while data := handle.read(block_size):
            blocks.append((hash_bytes(data), len(data), not any(data)))
    return blocks


def _same_blocks(remote: Sequence[Block], local: Sequence[tuple[str, int, bool]]) -> bool:
    if len(remote) != len(local):
        return False
    for (digest, length), (local_digest, local_length, zeros) in zip(remote, local, strict=True):
        if length != local_length or (digest != local_digest and not (digest == HOLE and zeros)):
            return False
    return True


def _mesh_put(client: MeshClient, item: _Local, remote: str, url: str, counter: _Counter) -> bool:
    local = _mesh_blocks(item.path, client.block_size)
    try:
        existing = client.stat(remote)
    except MeshError as exc:
        if exc.code != "ENOENT":
            raise
        existing = None
    if existing is not None:
        if existing.kind != "file":
            raise StagingError(f"cannot push {item.relative}: {url} is a {existing.kind}")
        if existing.size == item.size and _same_blocks(existing.blocks, local):
            counter.add(item.size)
            return False
    entry = client.put_file(item.path, remote, progress=counter.add)
    if entry.size != item.size or not _same_blocks(entry.blocks, local):
        raise StagingError(f"{url}: the file changed while it was being pushed", retryable=True)
    return True


# -- s3 ------------------------------------------------------------------------------------------------------


def _s3_same(client: Any, bucket: str, key: str, item: _Local, what: str) -> bool:
    from botocore import exceptions  # type: ignore[import-untyped, import-not-found, unused-ignore]

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except (exceptions.ClientError, exceptions.BotoCoreError) as exc:
        error = s3_error(exc, what)
        if not error.retryable and "not found" in error.message:
            return False
        raise error from exc
    metadata = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
    return int(head.get("ContentLength", -1)) == item.size and metadata.get(SHA256_METADATA) == item.sha256


def _s3_upload(
    client: Any, config: S3Config, bucket: str, key: str, item: _Local, what: str, counter: _Counter
) -> None:
    from botocore import exceptions  # type: ignore[import-untyped, import-not-found, unused-ignore]

    errors = (exceptions.ClientError, exceptions.BotoCoreError)
    metadata = {SHA256_METADATA: item.sha256}
    part_size = max(config.part_size, 5 * 1024 * 1024)  # S3's smallest part but the last
    try:
        if item.size <= part_size:
            with open(item.path, "rb") as handle:
                client.put_object(
                    Bucket=bucket, Key=key, Body=handle, ContentLength=item.size, Metadata=metadata
                )
            counter.add(item.size)
            return
        upload = client.create_multipart_upload(Bucket=bucket, Key=key, Metadata=metadata)["UploadId"]
    except errors as exc:
        raise s3_error(exc, what) from exc
    except OSError as exc:
        raise StagingError(f"cannot read {item.path}: {exc}") from exc
    try:
        parts = []
        with open(item.path, "rb") as handle:
            number = 1
            while data := handle.read(part_size):
                answer = client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data
                )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                counter.add(len(data))
                number += 1
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
        )
    except BaseException as exc:
        # An unfinished upload's parts are stored (and billed) until aborted.
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        except errors:
            log.warning("could not abort the multipart upload %s of %s", upload, what)
        if isinstance(exc, errors):
            raise s3_error(exc, what) from exc
        if isinstance(exc, OSError):
            raise StagingError(f"cannot read {item.path}: {exc}") from exc
        raise


# -- file ----------------------------------------------------------------------------------------------------


def _root_of(path: Path, roots: Sequence[Path]) -> Path | None:
    resolved = path.resolve()
    for root in roots:
        if resolved.is_relative_to(root):
            return root
    return None


def _copy_if_changed(item: _Local, target: Path, counter: _Counter) -> bool:
    if target.is_dir() and not target.is_symlink():
        raise StagingError(f"cannot push {item.relative}: {target} is a directory")
    if (
        target.is_file()
        and not target.is_symlink()
        and target.stat().st_size == item.size
        and sha256_file(target)[1] == item.sha256
    ):
        counter.add(item.size)
        return False
    part = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        digest = hashlib.sha256()
        with open_part(part, append=False) as out:
            for chunk in _chunks(item.path, counter):
                out.write(chunk)
                digest.update(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != item.sha256:
            raise StagingError(f"{item.path} changed while it was being pushed", retryable=True)
        os.chmod(part, os.stat(item.path).st_mode & 0o777)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    fsync_dir(target.parent)
    return True


# -- http(s) -------------------------------------------------------------------------------------------------


def _http_same(client: httpx.Client, url: str, item: _Local) -> bool:
    response = client.head(url)
    if response.status_code in (404, 405, 410, 501):
        return False  # not there, or the server cannot say: send it
    raise_for_status(url, response)
    if response.status_code != 200:
        return False
    length = response.headers.get("Content-Length", "")
    if not length.isdigit() or int(length) != item.size:
        return False
    return _reported_sha256(response.headers) == item.sha256


def _reported_sha256(headers: httpx.Headers) -> str | None:
    for header in ("Repr-Digest", "Digest"):
        for member in headers.get(header, "").split(","):
            name, _, value = member.strip().partition("=")
            if name.strip().lower() in ("sha-256", "sha256"):
                try:
                    return base64.b64decode(value.strip().strip(":"), validate=True).hex()
                except (binascii.Error, ValueError):
                    return None
    explicit = str(headers.get("X-Checksum-Sha256", "")).strip().lower()
    if explicit:
        return explicit
    etag = headers.get("ETag", "").removeprefix("W/").strip('"').lower()
    return etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else None


def _http_put(client: httpx.Client, base: str, url: str, item: _Local, counter: _Counter) -> None:
    digest = base64.b64encode(bytes.fromhex(item.sha256)).decode()
    headers = {
        "Content-Length": str(item.size),
        "Content-Type": "application/octet-stream",
        "Content-Digest": f"sha-256=:{digest}:",
        "Repr-Digest": f"sha-256=:{digest}:",
    }
    done = counter.done
    response = client.put(url, content=_chunks(item.path, counter), headers=headers)
    if response.status_code == 409 and "/" in item.relative:
        # WebDAV answers 409 when the parent collection is missing: make it and send the file again.
        _mkcol(client, base, item.relative.rsplit("/", 1)[0])
        counter.add(done - counter.done)
        response = client.put(url, content=_chunks(item.path, counter), headers=headers)
    raise_for_status(url, response)
    if response.status_code not in (200, 201, 204):
        raise StagingError(
            f"cannot push {item.relative} to {url}: HTTP {response.status_code} {response.reason_phrase}"
        )
    reported = _reported_sha256(response.headers)
    if reported is not None and reported != item.sha256:
        raise StagingError(
            f"{url}: the server stored a file with the SHA-256 {reported}, not {item.sha256}", retryable=True
        )


def _mkcol(client: httpx.Client, base: str, folder: str) -> None:
    path = ""
    for segment in folder.split("/"):
        path = f"{path}/{quote(segment)}"
        response = client.request("MKCOL", f"{base}{path}")
        if response.status_code not in (200, 201, 204, 301, 405):  # 405: the collection is there already
            raise_for_status(f"{base}{path}", response)
