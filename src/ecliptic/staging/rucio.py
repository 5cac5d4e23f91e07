"""Rucio data lake as a data source: DIDs resolved through the Rucio REST API, fetched replica by replica.

The REST API is spoken directly with httpx (the ``rucio`` client package pins too much to be a dependency).
What it relies on, read from the Rucio 41.5.1 server (``rucio/web/rest/flaskapi/v1``):

- ``GET /auth/userpass`` with ``X-Rucio-Account``, ``X-Rucio-Username``, ``X-Rucio-Password`` (and
  ``X-Rucio-VO`` on multi-VO servers) answers 200 with ``X-Rucio-Auth-Token`` and
  ``X-Rucio-Auth-Token-Expires`` (RFC 1123, ``… UTC``), or 401. Every other call sends ``X-Rucio-Auth-Token``;
  a stale token gets 401, a missing one 400.
- Errors carry ``ExceptionClass`` and ``ExceptionMessage`` in the headers and in a JSON body.
- ``GET /dids/{scope}/{name}`` gives the DID's ``type`` (FILE, DATASET, CONTAINER) or 404
  ``DataIdentifierNotFound``/``ScopeNotFound``. ``POST /replicas/list`` does not say "not found": an unknown
  DID simply has no lines, which is why the DID is looked up first.
- ``GET /dids/{scope}/{name}/files`` lists every file of a collection, however deeply nested.
- ``POST /replicas/list`` with ``{"dids": [{"scope", "name"}], "schemes": [...]}`` and
  ``Accept: application/x-json-stream`` answers one JSON object per file: ``scope``, ``name``, ``bytes``,
  ``adler32``, ``md5``, ``pfns`` (``{pfn: {"rse", "domain", "priority", …}}``, best first) and ``rses``
  (``{rse: [pfn, …]}``). Only available replicas are listed.

A FILE stages to ``dest_dir/<name>``; a DATASET or CONTAINER to the directory ``dest_dir/<name>/`` holding its
files flat. Each file is copied into a hidden name, checked against the catalogue's size, adler32 and md5, and
only then renamed into place, so whatever has its final name is verified. A copy that fails (unreachable,
missing, corrupt) is reported and the next replica tried; which replica served each file, and which failed
why, is written to ``dest_dir/.rucio-<name>.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from ecliptic.durable import fsync_dir, write_json_atomic
from ecliptic.staging.download import CHUNK, StagedFile, StagingError, filename_for, http_errors, stage
from ecliptic.staging.sources import Progress, Replica, Resolved

log = logging.getLogger(__name__)

RUCIO_KIND = "https://www.purl.org/ivoa.net/Calycopis-openapi/schema/v1.0/kinds/data/rucio-data-resource.yaml"
DID_TYPES = frozenset({"FILE", "DATASET", "CONTAINER"})
FETCHABLE_SCHEMES = ("davs", "https", "http", "file")
_TOKEN_MARGIN = 60.0
"""Seconds before its expiry a token is replaced, so it cannot expire between check and use."""
_RETRYABLE_STATUS = frozenset({408, 425, 429})

Rank = Callable[[Replica], float]
"""Lower is better; replicas the key ties keep the catalogue's order."""


@dataclass(frozen=True)
class RucioConfig:
    url: str
    """The Rucio server, e.g. ``https://rucio.example.org``."""
    account: str
    auth_url: str | None = None
    """The authentication server, when it is not ``url``."""
    username: str | None = None
    password: str | None = None
    token: str | None = None
    """A ready ``X-Rucio-Auth-Token`` instead of username and password; it cannot be renewed."""
    vo: str | None = None
    schemes: tuple[str, ...] = FETCHABLE_SCHEMES
    """PFN schemes to ask for, in no particular order (Rucio's own priorities order the answer)."""
    timeout: float = 60.0
    """Bounds each network wait, not a whole transfer."""

    def __post_init__(self) -> None:
        if self.token is None and (self.username is None or self.password is None):
            raise ValueError("a Rucio source needs a token, or a username and password")
        # Settings files give lists; PFN schemes compare in lower case.
        object.__setattr__(self, "schemes", tuple(str(scheme).lower() for scheme in self.schemes))
        unknown = sorted(set(self.schemes) - set(FETCHABLE_SCHEMES))
        if unknown:
            raise ValueError(
                f"rucio schemes {unknown} cannot be fetched (only {', '.join(FETCHABLE_SCHEMES)})"
            )


@dataclass(frozen=True)
class _Did:
    scope: str
    name: str
    type: str | None
    endpoint: str | None

    def __str__(self) -> str:
        return f"{self.scope}:{self.name}"


@dataclass(frozen=True)
class _File:
    scope: str
    name: str
    bytes: int | None
    adler32: str | None
    md5: str | None
    pfns: tuple[tuple[str, str], ...]
    """``(rse, pfn)`` pairs, Rucio's best first, one per RSE, only schemes this source can read."""

    def __str__(self) -> str:
        return f"{self.scope}:{self.name}"


@dataclass
class _Attempt:
    rse: str
    pfn: str
    error: str | None = None
    retryable: bool = False


@dataclass
class _Record:
    """What ``.rucio-<name>.json`` says: per staged file, the replica that served it and those that failed."""

    did: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)


def parse_spec(spec: Mapping[str, Any]) -> _Did:
    """The DID of a Rucio data resource spec: ``{"rucio": {"endpoint", "scope", "object", "type"}}``.

    A bare block (the inner mapping) is accepted too, and ``object`` may be ``scope:name`` when ``scope`` is
    absent.
    """
    block = spec.get("rucio", spec)
    if not isinstance(block, Mapping):
        raise StagingError("the rucio data resource has no 'rucio' block")
    scope = block.get("scope")
    name = block.get("object", block.get("name"))
    if not isinstance(name, str) or not name.strip():
        raise StagingError("the rucio data resource names no object")
    name = name.strip()
    if scope is None and ":" in name:
        scope, name = name.split(":", 1)
    if not isinstance(scope, str) or not scope.strip():
        raise StagingError(f"the rucio data resource {name!r} names no scope")
    kind = block.get("type")
    if kind is not None:
        if not isinstance(kind, str) or kind.strip().upper() not in DID_TYPES:
            raise StagingError(
                f"the rucio data resource type {kind!r} is not one of FILE, DATASET, CONTAINER"
            )
        kind = kind.strip().upper()
    endpoint = block.get("endpoint")
    if endpoint is not None and not isinstance(endpoint, str):
        raise StagingError(f"the rucio endpoint {endpoint!r} is not a URL")
    return _Did(scope=scope.strip(), name=name, type=kind, endpoint=endpoint or None)


class RucioSource:
    """Stages Rucio DIDs (the ``rucio-data-resource`` kind) from the replicas the catalogue lists.

    ``rank`` orders replicas (lower first), e.g. the platform's own RSE first and then by estimated transfer
    time; without it Rucio's order stands. Thread-safe: one instance may serve every engine worker.
    """

    kinds = frozenset({RUCIO_KIND})

    def __init__(self, config: RucioConfig, *, rank: Rank | None = None) -> None:
        self.config = config
        self.rank = rank
        self._url = config.url.rstrip("/")
        self._auth_url = (config.auth_url or config.url).rstrip("/")
        self._lock = threading.Lock()
        self._token: str | None = config.token
        self._token_expires = float("inf") if config.token is not None else 0.0

    # -- DataSource ------------------------------------------------------------------------------------------

    def resolve(self, spec: dict[str, Any]) -> Resolved:
        did = parse_spec(spec)
        kind, files = self._catalogue(did)
        replicas = self._order(
            _file_replicas(files[0]) if kind == "FILE" else _collection_replicas(did, files)
        )
        if not replicas:
            readable = ", ".join(self.config.schemes)
            raise StagingError(f"rucio DID {did} has no available replica readable here ({readable})")
        total = _total(files)
        details: dict[str, Any] = {"did": str(did), "type": kind, "files": len(files)}
        checksum: tuple[str, str] | None = None
        if kind == "FILE":
            only = files[0]
            details.update(adler32=only.adler32, md5=only.md5)
            # hashlib has md5 but not adler32, and a caller may hand this to hashlib-based verification.
            if only.md5:
                checksum = ("md5", only.md5)
            elif only.adler32:
                checksum = ("adler32", only.adler32)
        else:
            details["coverage"] = _coverage(files)
        return Resolved(replicas=replicas, size=total, checksum=checksum, details=details)

    def fetch(
        self, spec: dict[str, Any], replica: Replica, dest_dir: Path, progress: Progress | None = None
    ) -> StagedFile:
        did = parse_spec(spec)
        kind, files = self._catalogue(did)
        record = _Record(did=str(did))
        record_path = dest_dir / f".rucio-{filename_for('', did.name)}.json"
        try:
            if kind == "FILE":
                target = dest_dir / filename_for("", did.name)
                return self._fetch_file(files[0], target, replica.site, progress, record, target.name)
            return self._fetch_collection(did, files, dest_dir, replica.site, progress, record)
        finally:
            if record.files:
                write_json_atomic(record_path, {"did": record.did, "files": record.files})

    # -- catalogue -------------------------------------------------------------------------------------------

    def _catalogue(self, did: _Did) -> tuple[str, list[_File]]:
        self._check_endpoint(did)
        with self._client() as client:
            info = self._json(client, "GET", f"/dids/{_q(did.scope)}/{_q(did.name)}", did=did)
            kind = str(info.get("type", "")).upper() if isinstance(info, dict) else ""
            if kind not in DID_TYPES:
                raise StagingError(f"rucio DID {did} has an unexpected type {kind or '(none)'}")
            if did.type is not None and did.type != kind:
                raise StagingError(f"rucio DID {did} is a {kind}, not a {did.type}")
            if kind == "FILE":
                wanted = [(did.scope, did.name)]
            else:
                listing = self._lines(client, "GET", f"/dids/{_q(did.scope)}/{_q(did.name)}/files", did=did)
                wanted = [(str(entry["scope"]), str(entry["name"])) for entry in listing]
                if not wanted:
                    raise StagingError(f"rucio {kind} {did} contains no files")
            body = {
                "dids": [{"scope": scope, "name": name} for scope, name in wanted],
                "schemes": list(self.config.schemes),
            }
            lines = self._lines(client, "POST", "/replicas/list", did=did, json=body)
        found = {(str(line["scope"]), str(line["name"])): self._file(line) for line in lines}
        files = []
        missing = []
        seen: set[tuple[str, str]] = set()
        for key in wanted:
            if key in seen:
                continue  # one file in two datasets of a container is staged once
            seen.add(key)
            entry = found.get(key)
            if entry is None or not entry.pfns:
                missing.append(f"{key[0]}:{key[1]}")
            else:
                files.append(entry)
        if missing:
            readable = ", ".join(self.config.schemes)
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            what = f"rucio DID {did}" if kind == "FILE" else f"{shown} of rucio {kind} {did}"
            raise StagingError(f"{what} has no available replica readable here ({readable})")
        return kind, files

    def _file(self, line: Mapping[str, Any]) -> _File:
        pfns: list[tuple[str, str]] = []
        seen: set[str] = set()
        raw = line.get("pfns") or {}
        # The server lists PFNs best first (its own priority), and dicts keep that order through JSON.
        entries = sorted(raw.items(), key=lambda item: int(item[1].get("priority") or 0))
        for pfn, meta in entries:
            rse = str(meta.get("rse"))
            scheme = urlsplit(pfn).scheme.lower()
            if rse in seen or scheme not in self.config.schemes:
                continue
            seen.add(rse)
            pfns.append((rse, pfn))
        size = line.get("bytes")
        return _File(
            scope=str(line["scope"]),
            name=str(line["name"]),
            bytes=int(size) if size is not None else None,
            adler32=_hex(line.get("adler32")),
            md5=_hex(line.get("md5")),
            pfns=tuple(pfns),
        )

    def _order(self, replicas: list[Replica]) -> list[Replica]:
        if self.rank is None:
            return replicas
        return sorted(replicas, key=self.rank)

    def _check_endpoint(self, did: _Did) -> None:
        # The broker's credentials go to its configured Rucio only, never to a server a client names.
        if did.endpoint is not None and did.endpoint.rstrip("/") != self._url:
            raise StagingError(
                f"rucio DID {did} is at {did.endpoint}; this broker reads Rucio at {self._url}"
            )

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        return httpx.Client(
            timeout=httpx.Timeout(self.config.timeout, connect=min(self.config.timeout, 30.0)),
            headers={"User-Agent": "ecliptic-staging"},
        )

    def _json(self, client: httpx.Client, method: str, path: str, *, did: _Did, **kwargs: Any) -> Any:
        response = self._request(client, method, path, did=did, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise StagingError(f"rucio at {self._url} answered {path} with something not JSON") from exc

    def _lines(self, client: httpx.Client, method: str, path: str, *, did: _Did, **kwargs: Any) -> list[Any]:
        headers = {"Accept": "application/x-json-stream"}
        response = self._request(client, method, path, did=did, headers=headers, **kwargs)
        try:
            return [json.loads(line) for line in response.text.splitlines() if line.strip()]
        except ValueError as exc:
            raise StagingError(f"rucio at {self._url} answered {path} with lines that are not JSON") from exc

    def _request(
        self,
        client: httpx.Client,
        method: str,
        path: str,
        *,
        did: _Did,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        for attempt in (1, 2):
            token = self._current_token(client)
            sent = {**(headers or {}), "X-Rucio-Auth-Token": token, **self._vo_header()}
            response = self._send(client, method, self._url + path, headers=sent, **kwargs)
            if response.status_code == 401 and attempt == 1 and self.config.token is None:
                # Expired or revoked early (the server's clock, a restart): one fresh login, then give up.
                self._forget(token)
                continue
            break
        self._raise_for(response, did)
        return response

    def _send(self, client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
        with http_errors(f"rucio at {self._url} timed out", f"rucio at {self._url} cannot be reached"):
            return client.request(method, url, **kwargs)

    def _raise_for(self, response: httpx.Response, did: _Did) -> None:
        code = response.status_code
        if code < 400:
            return
        cls, message = _rucio_error(response)
        if code == 404 or cls in ("DataIdentifierNotFound", "ScopeNotFound"):
            raise StagingError(f"rucio DID {did} not found")
        if code == 401:
            how = "token" if self.config.token is not None else f"login of account {self.config.account}"
            raise StagingError(f"rucio at {self._url} refused the {how}: {message}")
        if code == 403:
            raise StagingError(f"rucio account {self.config.account} may not read {did}: {message}")
        retryable = code >= 500 or code in _RETRYABLE_STATUS
        raise StagingError(
            f"rucio at {self._url} answered HTTP {code} for {did}: {message}", retryable=retryable
        )

    def _vo_header(self) -> dict[str, str]:
        return {"X-Rucio-VO": self.config.vo} if self.config.vo else {}

    def _current_token(self, client: httpx.Client) -> str:
        with self._lock:
            if self._token is not None and time.time() < self._token_expires - _TOKEN_MARGIN:
                return self._token
            if self.config.token is not None:
                return self.config.token
            token, expires = self._login(client)
            self._token, self._token_expires = token, expires
            return token

    def _forget(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token, self._token_expires = None, 0.0

    def _login(self, client: httpx.Client) -> tuple[str, float]:
        headers = {
            "X-Rucio-Account": self.config.account,
            "X-Rucio-Username": self.config.username or "",
            "X-Rucio-Password": self.config.password or "",
            "X-Rucio-AppID": "ecliptic",
            **self._vo_header(),
        }
        response = self._send(client, "GET", f"{self._auth_url}/auth/userpass", headers=headers)
        if response.status_code in (401, 403):
            _cls, message = _rucio_error(response)
            raise StagingError(
                f"rucio at {self._auth_url} refused the login of account {self.config.account} "
                f"as {self.config.username}: {message}"
            )
        if response.status_code >= 400:
            _cls, message = _rucio_error(response)
            retryable = response.status_code >= 500 or response.status_code in _RETRYABLE_STATUS
            raise StagingError(
                f"rucio login at {self._auth_url} failed: HTTP {response.status_code} {message}",
                retryable=retryable,
            )
        token = response.headers.get("X-Rucio-Auth-Token")
        if not token:
            raise StagingError(f"rucio login at {self._auth_url} answered without a token")
        return token, _expiry(response.headers.get("X-Rucio-Auth-Token-Expires"))

    # -- fetching --------------------------------------------------------------------------------------------

    def _fetch_collection(
        self,
        did: _Did,
        files: list[_File],
        dest_dir: Path,
        preferred: str | None,
        progress: Progress | None,
        record: _Record,
    ) -> StagedFile:
        directory = dest_dir / filename_for("", did.name)
        total = _total(files)
        done = 0
        lines = []
        size = 0
        for entry, relative in zip(files, _member_names(files), strict=True):

            def tick(current: int, _total_of_file: int | None, base: int = done) -> None:
                if progress is not None:
                    progress(base + current, total)

            staged = self._fetch_file(entry, directory / relative, preferred, tick, record, relative)
            done += staged.size
            size += staged.size
            lines.append(f"{relative}\0{staged.sha256}\n")
        digest = hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
        return StagedFile(path=directory, size=size, sha256=digest)

    def _fetch_file(
        self,
        entry: _File,
        target: Path,
        preferred: str | None,
        progress: Progress | None,
        record: _Record,
        label: str,
    ) -> StagedFile:
        if target.is_file():
            existing = _verify_local(target, entry)
            if existing is not None:
                return existing
        incoming = target.parent / f".rucio-{hashlib.sha256(target.name.encode()).hexdigest()[:16]}"
        attempts: list[_Attempt] = []
        for rse, pfn in self._candidates(entry, preferred):
            attempt = _Attempt(rse=rse, pfn=pfn)
            attempts.append(attempt)
            try:
                staged = self._copy(entry, pfn, incoming, target, progress)
            except StagingError as exc:
                attempt.error, attempt.retryable = exc.message, exc.retryable
                log.warning("rucio %s: the replica at %s failed: %s", entry, rse, exc.message)
                continue
            record.files[label] = {"rse": rse, "pfn": pfn, "failed": _failures(attempts)}
            if len(attempts) > 1:
                log.info("rucio %s: staged from %s after %d failed replicas", entry, rse, len(attempts) - 1)
            return staged
        record.files[label] = {"rse": None, "pfn": None, "failed": _failures(attempts)}
        tried = "; ".join(f"{a.rse}: {a.error}" for a in attempts)
        retryable = any(a.retryable for a in attempts)
        raise StagingError(f"every replica of rucio {entry} failed ({tried})", retryable=retryable)

    def _candidates(self, entry: _File, preferred: str | None) -> list[tuple[str, str]]:
        pairs = list(entry.pfns)
        if self.rank is not None:
            rank = self.rank
            pairs.sort(key=lambda pair: rank(_replica(pair[0], pair[1], entry.bytes)))
        if preferred is not None:
            pairs.sort(key=lambda pair: pair[0] != preferred)
        return pairs

    def _copy(
        self, entry: _File, pfn: str, incoming: Path, target: Path, progress: Progress | None
    ) -> StagedFile:
        url = _readable_url(pfn)
        staged = stage(
            url,
            incoming,
            checksum=("md5", entry.md5) if entry.md5 else None,
            timeout=self.config.timeout,
            progress=progress,
        )
        try:
            _check(entry, incoming, staged.size, pfn)
        except StagingError:
            with contextlib.suppress(FileNotFoundError):
                incoming.unlink()
            raise
        os.replace(incoming, target)
        fsync_dir(target.parent)
        algorithm, digest = _reported(entry)
        return StagedFile(
            path=target, size=staged.size, sha256=staged.sha256, algorithm=algorithm, digest=digest
        )


# -- helpers -------------------------------------------------------------------------------------------------


def _q(part: str) -> str:
    return quote(part, safe="")


def _hex(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip().lower()


def _total(files: Iterable[_File]) -> int | None:
    sizes = [entry.bytes for entry in files]
    return None if any(size is None for size in sizes) else sum(size for size in sizes if size is not None)


def _replica(rse: str, url: str, size: int | None) -> Replica:
    return Replica(source=f"rse:{rse}", url=url, size=size, site=rse)


def _file_replicas(entry: _File) -> list[Replica]:
    return [_replica(rse, pfn, entry.bytes) for rse, pfn in entry.pfns]


def _coverage(files: list[_File]) -> dict[str, dict[str, int]]:
    coverage: dict[str, dict[str, int]] = {}
    for entry in files:
        for rse, _pfn in entry.pfns:
            held = coverage.setdefault(rse, {"files": 0, "bytes": 0})
            held["files"] += 1
            held["bytes"] += entry.bytes or 0
    return coverage


def _collection_replicas(did: _Did, files: list[_File]) -> list[Replica]:
    """One replica per RSE holding any of the files, those holding most first; files an RSE lacks are
    fetched from the others."""
    coverage = _coverage(files)
    order = sorted(coverage, key=lambda rse: (-coverage[rse]["files"], -coverage[rse]["bytes"]))
    total = _total(files)
    return [_replica(rse, f"rucio://{rse}/{did.scope}:{did.name}", total) for rse in order]


def _member_names(files: list[_File]) -> list[str]:
    """Flat, safe file names for a collection's members, made unique where two members share a name."""
    names = [filename_for("", entry.name) for entry in files]
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    unique = []
    for entry, name in zip(files, names, strict=True):
        if counts[name] > 1:
            tag = hashlib.sha256(str(entry).encode()).hexdigest()[:8]
            stem, dot, suffix = name.rpartition(".")
            name = f"{stem}-{tag}.{suffix}" if dot and stem else f"{name}-{tag}"
        unique.append(name)
    return unique


def _readable_url(pfn: str) -> str:
    scheme = urlsplit(pfn).scheme.lower()
    # davs is WebDAV over TLS: for reading a file it is plain HTTPS GET.
    if scheme == "davs":
        return "https" + pfn[len(scheme) :]
    return pfn


def _adler32(path: Path) -> str:
    value = 1
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            value = zlib.adler32(chunk, value)
    return f"{value & 0xFFFFFFFF:08x}"


def _same_adler32(expected: str, actual: str) -> bool:
    # Some catalogues drop leading zeros of the eight hex digits.
    try:
        return int(expected, 16) == int(actual, 16)
    except ValueError:
        return False


def _check(entry: _File, path: Path, size: int, pfn: str) -> None:
    if entry.bytes is not None and size != entry.bytes:
        raise StagingError(f"size mismatch for {pfn}: the catalogue says {entry.bytes} bytes, got {size}")
    if entry.adler32 is not None:
        actual = _adler32(path)
        if not _same_adler32(entry.adler32, actual):
            raise StagingError(f"checksum mismatch for {pfn}: expected adler32 {entry.adler32}, got {actual}")


def _reported(entry: _File) -> tuple[str | None, str | None]:
    if entry.adler32 is not None:
        return "adler32", entry.adler32
    if entry.md5 is not None:
        return "md5", entry.md5
    return None, None


def _verify_local(path: Path, entry: _File) -> StagedFile | None:
    """The file already in place, described, when it matches the catalogue; None when it must be fetched."""
    sha256 = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)
    adler = 1
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sha256.update(chunk)
            md5.update(chunk)
            adler = zlib.adler32(chunk, adler)
            size += len(chunk)
    if entry.bytes is not None and size != entry.bytes:
        return None
    if entry.md5 is not None and md5.hexdigest() != entry.md5:
        return None
    if entry.adler32 is not None and not _same_adler32(entry.adler32, f"{adler & 0xFFFFFFFF:08x}"):
        return None
    algorithm, digest = _reported(entry)
    return StagedFile(path=path, size=size, sha256=sha256.hexdigest(), algorithm=algorithm, digest=digest)


def _failures(attempts: list[_Attempt]) -> list[dict[str, str]]:
    return [{"rse": a.rse, "pfn": a.pfn, "error": a.error} for a in attempts if a.error is not None]


def _rucio_error(response: httpx.Response) -> tuple[str, str]:
    cls = response.headers.get("ExceptionClass", "")
    message = response.headers.get("ExceptionMessage", "")
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict):
            cls = str(body.get("ExceptionClass") or cls)
            message = str(body.get("ExceptionMessage") or message)
    if not message:
        message = response.text.strip()[:200] or response.reason_phrase
    return cls, message


def _expiry(header: str | None) -> float:
    """Epoch seconds of ``X-Rucio-Auth-Token-Expires``; an unreadable one counts as one hour, Rucio's default."""
    if header:
        with contextlib.suppress(TypeError, ValueError):
            return parsedate_to_datetime(header).timestamp()
    return time.time() + 3600
