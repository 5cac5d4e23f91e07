"""S3 data resources: one object, or a whole bucket or prefix as a directory (needs the ``s3`` extra: boto3).

The spec is the S3DataResource's ``endpoint``, ``template``, ``bucket`` and ``object``. A blank ``object``
stages the whole bucket, one ending in ``/`` (or naming no object but objects under ``<object>/``) that
prefix, as a directory named after it. ``template`` only chooses the addressing style: a URL template with
``{bucket}`` in its host name (``https://{bucket}.s3.example.org/{object}``), or the word ``virtual``, means
virtual-hosted requests; anything else path-style requests, which every S3 implementation serves. When the
spec has no ``endpoint``, it comes from such a template, else from the configuration.

Objects are read in ranges of ``part_size`` bytes, each with ``If-Match`` on the ETag seen first, into
``<name>.part``; a ``.part.meta`` remembers which object version the bytes are of, so an interrupted fetch
continues from where it stopped only for the same object. The result is checked against the object's size
and, where the ETag is an MD5 (single-part uploads, or multipart ones whose part size S3 reports), against
that, and against the spec's ``checksum`` if it has one.

Credentials: those configured for the endpoint (``host:port``, or ``*`` for any), then
``ECLIPTIC_S3_ACCESS_KEY_ID``/``ECLIPTIC_S3_SECRET_ACCESS_KEY``/``ECLIPTIC_S3_SESSION_TOKEN``, then boto3's own
chain (``AWS_*`` variables, ``~/.aws``); with none, requests are unsigned, as public buckets expect.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from ecliptic.broker.kinds import DATA_S3
from ecliptic.staging.download import (
    CHUNK,
    Hashes,
    Progress,
    StagedFile,
    StagingError,
    complete_part,
    discard_part,
    exclusive,
    filename_for,
    open_part,
    part_paths,
)
from ecliptic.staging.http import FetchInto, TreeFile, checksum_of, host_port, relative_path, stage_tree
from ecliptic.staging.sources import Replica, Resolved

DEFAULT_PART_SIZE = 8 * 1024 * 1024

_NOT_FOUND = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})
_DENIED = frozenset(
    {
        "403",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccountProblem",
    }
)
_TRANSIENT = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "ServiceUnavailable",
        "InternalError",
        "Throttling",
        "RequestTimeTooSkewed",
    }
)
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART = re.compile(r"^([0-9a-f]{32})-(\d+)$")
_AWS_REGION = re.compile(r"(?:^|\.)s3[.-]([a-z0-9-]+)\.amazonaws\.com$")


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"S3Credentials(access_key_id={self.access_key_id!r}, secret_access_key=…)"


@dataclass(frozen=True)
class S3Config:
    endpoint: str | None = None
    """The endpoint for specs (and ``s3://`` result destinations) that name none."""
    region: str | None = None
    """Signing region; default from an AWS endpoint's host name, else ``us-east-1``."""
    credentials: Mapping[str, S3Credentials] = field(default_factory=dict)
    """By endpoint ``host:port``; ``*`` for any endpoint."""
    environment: bool = True
    """Also look in ``ECLIPTIC_S3_*`` and boto3's default chain when ``credentials`` has none."""
    part_size: int = DEFAULT_PART_SIZE
    timeout: float = 60.0
    max_attempts: int = 3
    """boto3's own retries of one request (connection errors, throttling) before staging sees the error."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> S3Config:
        """``ECLIPTIC_S3_ENDPOINT``, ``_REGION`` and ``_ACCESS_KEY_ID``/``_SECRET_ACCESS_KEY``/``_SESSION_TOKEN``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "endpoint": env.get("ECLIPTIC_S3_ENDPOINT") or None,
            "region": env.get("ECLIPTIC_S3_REGION") or None,
        }
        values.update(overrides)
        return cls(**values)

    def credentials_for(self, endpoint: str) -> S3Credentials | None:
        found = self.credentials.get(host_port(endpoint)) or self.credentials.get("*")
        if found is not None or not self.environment:
            return found
        key, secret = (
            os.environ.get("ECLIPTIC_S3_ACCESS_KEY_ID"),
            os.environ.get("ECLIPTIC_S3_SECRET_ACCESS_KEY"),
        )
        if key and secret:
            return S3Credentials(key, secret, os.environ.get("ECLIPTIC_S3_SESSION_TOKEN") or None)
        return None


# -- boto3 ---------------------------------------------------------------------------------------------------


def _boto3() -> Any:
    try:
        import boto3  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as exc:
        raise StagingError(
            "S3 data needs boto3, which is not installed (pip install 'ecliptic[s3]')"
        ) from exc
    return boto3


_SESSION_LOCK = threading.Lock()
_SESSION: Any = None


def s3_client(config: S3Config, endpoint: str, *, virtual: bool = False) -> Any:
    """A boto3 S3 client for ``endpoint`` with the configured credentials, timeouts and retries."""
    global _SESSION
    boto3 = _boto3()
    from botocore import UNSIGNED  # type: ignore[import-untyped, import-not-found, unused-ignore]
    from botocore.config import Config  # type: ignore[import-untyped, import-not-found, unused-ignore]

    # One session for the process: it caches the service model a new client would otherwise load again
    # (a quarter of a second each), and its client creation is not thread-safe, hence the lock.
    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = boto3.session.Session()
        return _make_client(_SESSION, config, endpoint, virtual, UNSIGNED, Config)


def _make_client(
    session: Any, config: S3Config, endpoint: str, virtual: bool, unsigned: Any, settings_type: Any
) -> Any:
    keys: dict[str, Any] = {}
    signature: Any = None
    credentials = config.credentials_for(endpoint)
    if credentials is not None:
        keys = {
            "aws_access_key_id": credentials.access_key_id,
            "aws_secret_access_key": credentials.secret_access_key,
            "aws_session_token": credentials.session_token,
        }
    elif not config.environment or session.get_credentials() is None:
        signature = unsigned
    match = _AWS_REGION.search(urlsplit(endpoint).hostname or "")
    region = config.region or (match.group(1) if match else "us-east-1")
    settings = settings_type(
        signature_version=signature,
        connect_timeout=min(config.timeout, 30.0),
        read_timeout=config.timeout,
        retries={"mode": "standard", "max_attempts": max(1, config.max_attempts)},
        s3={"addressing_style": "virtual" if virtual else "path"},
    )
    return session.client("s3", endpoint_url=endpoint, region_name=region, config=settings, **keys)


def s3_error(exc: BaseException, what: str) -> StagingError:
    """A :class:`StagingError` for a boto3 failure, retryable when trying later may help."""
    from botocore import exceptions  # type: ignore[import-untyped, import-not-found, unused-ignore]

    if isinstance(exc, exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = error.get("Message") or code or "error"
        if code in _NOT_FOUND or status == 404:
            label = "no such bucket" if code == "NoSuchBucket" else "not found"
            return StagingError(f"{what}: {label} ({message})")
        if code in _DENIED or status == 403:
            return StagingError(f"{what}: access denied ({message})")
        retryable = code in _TRANSIENT or status >= 500 or status in (408, 429)
        return StagingError(f"{what}: {message} ({code or status})", retryable=retryable)
    if isinstance(exc, exceptions.NoCredentialsError | exceptions.PartialCredentialsError):
        return StagingError(f"{what}: no usable S3 credentials ({exc})")
    if isinstance(exc, exceptions.ParamValidationError):
        return StagingError(f"{what}: {exc}")
    if isinstance(exc, exceptions.BotoCoreError):
        # Connection refused or reset, timeouts, a body cut short: the service may be back later.
        return StagingError(f"{what}: {exc}", retryable=True)
    raise exc


def _client_errors() -> tuple[type[BaseException], ...]:
    from botocore import exceptions  # type: ignore[import-untyped, import-not-found, unused-ignore]

    return exceptions.ClientError, exceptions.BotoCoreError


# -- what a spec names ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    endpoint: str
    bucket: str
    key: str
    """The object key, or the prefix (empty, or ending in ``/``) of a collection."""
    virtual: bool

    @property
    def source(self) -> str:
        return f"s3:{host_port(self.endpoint)}"

    def url(self, key: str | None = None) -> str:
        return f"{self.endpoint.rstrip('/')}/{self.bucket}/{quote(self.key if key is None else key)}"

    def describe(self, key: str | None = None) -> str:
        return f"s3://{self.bucket}/{self.key if key is None else key} at {self.endpoint}"


def _target(spec: Mapping[str, Any], config: S3Config) -> _Target:
    bucket = spec.get("bucket")
    if not isinstance(bucket, str) or not _BUCKET.match(bucket.strip()):
        raise StagingError(f"the S3 data resource needs a bucket name, not {bucket!r}")
    key = spec.get("object") or ""
    if not isinstance(key, str):
        raise StagingError(f"the S3 object must be a key (a string), not {key!r}")
    template = spec.get("template") or ""
    if not isinstance(template, str):
        raise StagingError(f"the S3 template must be a string, not {template!r}")
    template = template.strip()
    virtual = template.lower() == "virtual"
    from_template = None
    if "://" in template:
        parts = urlsplit(template.replace("{bucket}", "bucket-placeholder").replace("{object}", "o"))
        if "bucket-placeholder" in parts.netloc:
            virtual = True
            netloc = parts.netloc.replace("bucket-placeholder.", "").replace("bucket-placeholder", "")
            from_template = f"{parts.scheme}://{netloc}" if netloc else None
        else:
            from_template = f"{parts.scheme}://{parts.netloc}"
    endpoint = spec.get("endpoint") or from_template or config.endpoint or "https://s3.amazonaws.com"
    if not isinstance(endpoint, str):
        raise StagingError(f"the S3 endpoint must be a URL, not {endpoint!r}")
    endpoint = endpoint.strip().rstrip("/")
    if "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    if urlsplit(endpoint).scheme.lower() not in ("http", "https") or not urlsplit(endpoint).hostname:
        raise StagingError(f"the S3 endpoint {endpoint!r} is not an http(s) URL")
    return _Target(endpoint, bucket.strip(), key.lstrip("/"), virtual)


# -- the source ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Object:
    key: str
    size: int
    etag: str
    encrypted: bool = False


class S3Source:
    """S3DataResource: an object to a file, a bucket or prefix to a directory."""

    kinds = frozenset({DATA_S3})

    def __init__(self, config: S3Config | None = None) -> None:
        self.config = config or S3Config.from_env()
        self._clients: dict[tuple[str, bool], Any] = {}
        self._lock = threading.Lock()

    def _client(self, target: _Target) -> Any:
        key = (target.endpoint, target.virtual)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = s3_client(self.config, target.endpoint, virtual=target.virtual)
            return self._clients[key]

    def resolve(self, spec: dict[str, Any]) -> Resolved:
        target = _target(spec, self.config)
        checksum = checksum_of(spec)
        client = self._client(target)
        found = self._find(client, target)
        if isinstance(found, _Object):
            details: dict[str, Any] = {"kind": "object", "etag": found.etag, "key": found.key}
            replica = Replica(target.source, target.url(found.key), found.size)
            return Resolved([replica], size=found.size, checksum=checksum, details=details)
        if checksum is not None:
            raise StagingError(
                f"{target.describe()} is a collection: a checksum can only be verified for a file"
            )
        prefix, objects = found
        total = sum(o.size for o in objects)
        details = {"kind": "prefix", "prefix": prefix, "objects": len(objects)}
        replica = Replica(target.source, target.url(prefix), total)
        return Resolved([replica], size=total, checksum=None, details=details)

    def fetch(
        self, spec: dict[str, Any], replica: Replica, dest_dir: Path, progress: Progress | None = None
    ) -> StagedFile:
        target = _target(spec, self.config)
        checksum = checksum_of(spec)
        client = self._client(target)
        found = self._find(client, target)
        dest_dir.mkdir(parents=True, exist_ok=True)
        try:
            if isinstance(found, _Object):
                dest = dest_dir / filename_for(found.key, "object")
                part, meta = part_paths(dest)
                with exclusive(dest):
                    return self._download(client, target, found, dest, part, meta, checksum, progress)
            if checksum is not None:
                raise StagingError(
                    f"{target.describe()} is a collection: a checksum can only be verified for a file"
                )
            prefix, objects = found
            name = prefix.rstrip("/").rsplit("/", 1)[-1] or target.bucket
            files: list[TreeFile] = []
            directories: list[str] = []
            for item in objects:
                relative = item.key[len(prefix) :]
                if relative.endswith("/"):
                    if relative.strip("/"):
                        directories.append(
                            relative_path(relative.rstrip("/").split("/"), target.describe(item.key))
                        )
                    continue
                files.append(
                    TreeFile(
                        relative_path(relative.split("/"), target.describe(item.key)),
                        item.size,
                        self._fetcher(client, target, item),
                        verify=self._verifier(client, target, item),
                    )
                )
            return stage_tree(
                dest_dir / filename_for(name, "bucket"), files, directories=directories, progress=progress
            )
        except OSError as exc:
            raise StagingError(f"cannot stage {target.describe()} into {dest_dir}: {exc}") from exc

    # -- finding -----------------------------------------------------------------------------------------

    def _find(self, client: Any, target: _Target) -> _Object | tuple[str, list[_Object]]:
        """The object the spec names, or the prefix and the objects under it."""
        errors = _client_errors()
        if target.key and not target.key.endswith("/"):
            try:
                head = client.head_object(Bucket=target.bucket, Key=target.key)
                return _object(target.key, head)
            except errors as exc:
                error = s3_error(exc, target.describe())
                if error.retryable or "not found" not in error.message:
                    raise error from exc
            prefix = target.key + "/"
            objects = self._list(client, target, prefix)
            if not objects:
                raise StagingError(f"{target.describe()}: no such object (and no objects under {prefix})")
            return prefix, objects
        objects = self._list(client, target, target.key)
        if not objects and target.key:
            raise StagingError(f"{target.describe()}: no objects under this prefix")
        return target.key, objects

    def _list(self, client: Any, target: _Target, prefix: str) -> list[_Object]:
        objects: list[_Object] = []
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    objects.append(_Object(item["Key"], int(item["Size"]), str(item.get("ETag", ""))))
        except _client_errors() as exc:
            raise s3_error(exc, target.describe(prefix)) from exc
        return objects

    # -- fetching ----------------------------------------------------------------------------------------

    def _fetcher(self, client: Any, target: _Target, item: _Object) -> FetchInto:
        def fetch(dest: Path, part: Path, meta: Path, progress: Progress | None) -> StagedFile:
            return self._download(client, target, item, dest, part, meta, None, progress)

        return fetch

    def _verifier(self, client: Any, target: _Target, item: _Object) -> Callable[[Path], bool]:
        def verify(path: Path) -> bool:
            check = _EtagCheck(item, self._part_length(client, target, item))
            with open(path, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    check.update(chunk)
            return check.mismatch() is None

        return verify

    def _part_length(self, client: Any, target: _Target, item: _Object) -> int | None:
        """The first part's length of a multipart upload (what its ETag is computed over), when S3 says."""
        multipart = _MULTIPART.match(item.etag.strip('"'))
        if item.encrypted or not multipart:
            return None
        try:
            head = client.head_object(Bucket=target.bucket, Key=item.key, PartNumber=1)
        except _client_errors():
            return None
        # S3 answers with the object's ETag, some implementations with the part's: the part count is the check.
        if int(head.get("PartsCount") or 0) != int(multipart.group(2)):
            return None
        return int(head["ContentLength"])

    def _download(
        self,
        client: Any,
        target: _Target,
        item: _Object,
        dest: Path,
        part: Path,
        meta: Path,
        checksum: tuple[str, str] | None,
        progress: Progress | None,
    ) -> StagedFile:
        what = target.describe(item.key)
        part_length = self._part_length(client, target, item)
        if dest.is_file() and not dest.is_symlink() and dest.stat().st_size == item.size:
            existing = Hashes(checksum)
            check = _EtagCheck(item, part_length)
            _feed(dest, existing, check)
            if existing.matches() and check.mismatch() is None:
                return existing.staged(dest)
        hashes = Hashes(checksum)
        check = _EtagCheck(item, part_length)
        identity = {"object": target.url(item.key), "etag": item.etag, "size": item.size}
        offset = _resumable(part, meta, identity, item.size)
        if offset:
            _feed(part, hashes, check)
        else:
            meta.write_text(json.dumps(identity), encoding="utf-8")
        if progress is not None:
            progress(offset, item.size)
        with open_part(part, append=offset > 0) as out:
            while offset < item.size:
                end = min(offset + self.config.part_size, item.size) - 1
                offset = self._range(
                    client, target, item, offset, end, out, hashes, check, progress, part, meta
                )
            out.flush()
        mismatch = check.mismatch()
        if mismatch is not None:
            discard_part(part, meta)
            raise StagingError(f"{what}: {mismatch}")
        complete_part(part, meta, dest, hashes, what)
        return hashes.staged(dest)

    def _range(
        self,
        client: Any,
        target: _Target,
        item: _Object,
        start: int,
        end: int,
        out: Any,
        hashes: Hashes,
        check: _EtagCheck,
        progress: Progress | None,
        part: Path,
        meta: Path,
    ) -> int:
        """Append bytes ``start..end`` of the object; the offset reached."""
        what = target.describe(item.key)
        position = start
        try:
            response = client.get_object(
                Bucket=target.bucket, Key=item.key, Range=f"bytes={start}-{end}", IfMatch=item.etag
            )
            for chunk in response["Body"].iter_chunks(CHUNK):
                out.write(chunk)
                hashes.update(chunk)
                check.update(chunk)
                position += len(chunk)
                if progress is not None:
                    progress(position, item.size)
        except _client_errors() as exc:
            out.flush()
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412"):
                discard_part(part, meta)
                raise StagingError(f"{what} changed while it was being staged", retryable=True) from exc
            raise s3_error(exc, what) from exc
        if position != end + 1:
            out.flush()
            raise StagingError(
                f"{what}: the range {start}-{end} ended after {position - start} bytes", retryable=True
            )
        return position


def _object(key: str, head: Mapping[str, Any]) -> _Object:
    encrypted = head.get("ServerSideEncryption") in ("aws:kms", "aws:kms:dsse") or bool(
        head.get("SSECustomerAlgorithm")
    )
    return _Object(key, int(head["ContentLength"]), str(head.get("ETag", "")), encrypted)


def _resumable(part: Path, meta: Path, identity: dict[str, Any], size: int) -> int:
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8"))
        length = part.stat().st_size
    except (OSError, ValueError):
        recorded, length = None, 0
    if recorded != identity or part.is_symlink() or length > size:
        discard_part(part, meta)
        return 0
    return length


def _feed(path: Path, hashes: Hashes, check: _EtagCheck) -> None:
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            hashes.update(chunk)
            check.update(chunk)


class _EtagCheck:
    """The object's size, and its MD5 where the ETag is one (whole, or per part for multipart uploads)."""

    def __init__(self, item: _Object, part_length: int | None) -> None:
        self.item = item
        self.size = 0
        etag = item.etag.strip('"')
        self.whole: Any = (
            hashlib.md5(usedforsecurity=False) if _MD5.match(etag) and not item.encrypted else None
        )
        multipart = _MULTIPART.match(etag)
        self.part_length = part_length if multipart and part_length else None
        self.parts: list[bytes] = []
        self.current: Any = hashlib.md5(usedforsecurity=False)
        self.in_part = 0
        self.etag = etag

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.whole is not None:
            self.whole.update(chunk)
        if self.part_length is None:
            return
        view = memoryview(chunk)
        while view:
            take = min(len(view), self.part_length - self.in_part)
            self.current.update(view[:take])
            self.in_part += take
            view = view[take:]
            if self.in_part == self.part_length:
                self.parts.append(self.current.digest())
                self.current = hashlib.md5(usedforsecurity=False)
                self.in_part = 0

    def mismatch(self) -> str | None:
        """Why the bytes are not the object's, or None."""
        if self.size != self.item.size:
            return f"got {self.size} bytes, the object has {self.item.size}"
        if self.whole is not None and self.whole.hexdigest() != self.etag:
            return f"the MD5 {self.whole.hexdigest()} does not match the ETag {self.etag}"
        if self.part_length is not None:
            parts = self.parts + ([self.current.digest()] if self.in_part else [])
            if f"-{len(parts)}" != self.etag[self.etag.rindex("-") :]:
                # The upload's parts were not all as long as its first: the ETag cannot be recomputed.
                return None
            combined = f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"
            if combined != self.etag:
                return f"the multipart MD5 {combined} does not match the ETag {self.etag}"
        return None
