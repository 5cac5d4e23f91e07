"""Simple data resources with ``http``, ``https`` and ``file`` URLs, staged with :func:`stage`.

``resolve`` asks the server what is there without transferring it: a ``HEAD``, and when a server answers
that badly (some refuse ``HEAD``, presigned URLs are signed for ``GET`` only), a ``GET`` of the first byte.
``file:`` URLs are only served from the directories the operator allows.

This module also holds what the sources staging collections (S3 prefixes, mesh directories) share: safe
relative paths, the directory digest of the ``DataSource`` protocol, and :func:`stage_tree`, which assembles
a directory crash-safely and resumably.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import httpx

from ecliptic.durable import fsync_dir
from ecliptic.staging.download import (
    CHUNK,
    MAX_NAME_BYTES,
    Progress,
    StagedFile,
    StagingError,
    exclusive,
    filename_for,
    http_errors,
    shared_client,
    stage,
)
from ecliptic.staging.sources import Replica, Resolved

_RETRYABLE_STATUS = frozenset({408, 425, 429})
_DEFAULT_PORTS = {"http": 80, "https": 443}


# -- shared by the sources -----------------------------------------------------------------------------------


def checksum_of(spec: Mapping[str, Any]) -> tuple[str, str] | None:
    """The ``(algorithm, hex digest)`` a spec asks to verify: ``checksum: {type, value}`` or a pair."""
    raw = spec.get("checksum")
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        algorithm, value = raw.get("type"), raw.get("value")
    elif isinstance(raw, list | tuple) and len(raw) == 2:
        algorithm, value = raw
    else:
        raise StagingError(f"checksum {raw!r} is neither {{type, value}} nor a pair")
    if not isinstance(algorithm, str) or not isinstance(value, str) or not algorithm or not value:
        raise StagingError(f"checksum {raw!r} needs a type and a value, both strings")
    return algorithm, value


def host_port(url: str) -> str:
    """``host:port`` of a URL, the port defaulted from the scheme; IPv6 hosts in brackets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except ValueError as exc:
        raise StagingError(f"{url!r} has an invalid port: {exc}") from exc
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def sha256_file(path: Path) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a file's bytes."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def tree_digest(files: Iterable[tuple[str, str]]) -> str:
    """The digest of a directory: sha256 of its sorted ``<relative path>\\0<sha256>\\n`` lines."""
    digest = hashlib.sha256()
    for relative, file_digest in sorted(files):
        digest.update(f"{relative}\0{file_digest}\n".encode())
    return digest.hexdigest()


def relative_path(segments: Iterable[str], what: str) -> str:
    """A relative POSIX path made of ``segments``, refused when any of them could leave the directory.

    Names are kept as they are (a job expects the names the collection has); only those no file system
    can hold safely are refused, with the name in the message.
    """
    parts = list(segments)
    if not parts:
        raise StagingError(f"{what} has an empty name")
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\0" in part or "\\" in part:
            raise StagingError(f"{what} cannot be staged: {part!r} is not a usable file name")
        if len(part.encode()) > MAX_NAME_BYTES:
            raise StagingError(f"{what} cannot be staged: the name {part[:40]!r}… is too long")
    return "/".join(parts)


FetchInto = Callable[[Path, Path, Path, Progress | None], StagedFile]
"""``fetch(dest, part, meta, progress)``: write one file's bytes to ``part`` (remembering in ``meta`` what
they are, to resume), verify them, and rename ``part`` to ``dest``."""


@dataclass(frozen=True)
class TreeFile:
    relative: str
    """POSIX path inside the collection, from :func:`relative_path`."""
    size: int | None
    fetch: FetchInto
    verify: Callable[[Path], bool] | None = None
    """Whether a file already under its final name is this one (beyond its size); default: trust it."""


def stage_tree(
    final: Path,
    files: Sequence[TreeFile],
    *,
    directories: Iterable[str] = (),
    progress: Progress | None = None,
) -> StagedFile:
    """Assemble a collection as the directory ``final`` and describe it.

    Files are assembled under ``<final>.partdir`` and the directory is renamed to ``final`` only when every
    file is complete, so ``final`` is always whole. Each file's bytes go to ``<final>.parts/`` first (never
    beside the files, where a ``.part`` could collide with a real name). Files already in place from an
    interrupted run are kept when they still match; a ``final`` left by an earlier run is checked the same
    way, and files no longer in the collection are removed from it.

    Only one stager assembles ``final`` at a time (the lock :func:`stage` takes), so a step taken over by
    another worker after a lapsed lease cannot interleave its writes with this one's.
    """
    directories = list(directories)
    _check_tree(final, files, directories)
    work = final.with_name(final.name + ".partdir")
    parts = final.with_name(final.name + ".parts")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(final):
            return _assemble(final, work, parts, files, directories, progress)
    except OSError as exc:
        raise StagingError(f"cannot assemble {final}: {exc}") from exc


def _assemble(
    final: Path,
    work: Path,
    parts: Path,
    files: Sequence[TreeFile],
    directories: list[str],
    progress: Progress | None,
) -> StagedFile:
    if final.is_dir() and not final.is_symlink():
        if work.exists():
            shutil.rmtree(work)
        os.replace(final, work)
    elif final.is_symlink() or final.exists():
        final.unlink()  # a file staged under this name before: the collection takes its place
    work.mkdir(parents=True, exist_ok=True)
    parts.mkdir(exist_ok=True)
    for directory in directories:
        _make_dirs(work, work / directory)
    sizes = [f.size for f in files]
    total = sum(s for s in sizes if s is not None) if None not in sizes else None
    done = 0
    lines: list[tuple[str, str]] = []
    for item in files:
        target = work / item.relative
        if _usable(target, item):
            size, digest = sha256_file(target)
        else:
            _remove(target)
            _make_dirs(work, target.parent)
            key = hashlib.sha256(item.relative.encode()).hexdigest()[:32]
            staged = item.fetch(
                target, parts / f"{key}.part", parts / f"{key}.part.meta", _offset(progress, done, total)
            )
            size, digest = staged.size, staged.sha256
        done += size
        lines.append((item.relative, digest))
        if progress is not None:
            progress(done, total)
    _prune(work, {f.relative for f in files}, set(directories))
    os.replace(work, final)
    shutil.rmtree(parts, ignore_errors=True)
    fsync_dir(final.parent)
    return StagedFile(path=final, size=done, sha256=tree_digest(lines))


def _check_tree(final: Path, files: Sequence[TreeFile], directories: Sequence[str]) -> None:
    names = [f.relative for f in files]
    seen = set(names)
    if len(seen) != len(names):
        raise StagingError(f"cannot stage {final.name}: the collection names a file more than once")
    folders = {"/".join(name.split("/")[:depth]) for name in names for depth in range(1, name.count("/") + 1)}
    folders.update(directories)
    clash = sorted(seen & folders)
    if clash:
        raise StagingError(
            f"cannot stage {final.name}: {clash[0]!r} is both a file and a directory in the collection"
        )


def _make_dirs(work: Path, folder: Path) -> None:
    """Make ``folder`` under ``work``, replacing files an earlier version of the collection left in its way."""
    current = work
    for segment in folder.relative_to(work).parts:
        current = current / segment
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            current.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def _usable(target: Path, item: TreeFile) -> bool:
    if target.is_symlink() or not target.is_file():
        return False
    if item.size is not None and target.stat().st_size != item.size:
        return False
    return item.verify is None or item.verify(target)


def _remove(target: Path) -> None:
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)


def _prune(work: Path, keep_files: set[str], keep_dirs: set[str]) -> None:
    """Remove what an earlier version of the collection left that this one does not have."""
    keep = set(keep_files) | set(keep_dirs)
    for name in keep_files | keep_dirs:
        segments = name.split("/")
        keep.update("/".join(segments[:depth]) for depth in range(1, len(segments)))
    for path in sorted(work.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        relative = path.relative_to(work).as_posix()
        if relative not in keep:
            _remove(path)


def _offset(progress: Progress | None, done: int, total: int | None) -> Progress | None:
    if progress is None:
        return None
    return lambda current, _total: progress(done + current, total)


# -- the source ----------------------------------------------------------------------------------------------


class HttpSource:
    """Simple data at ``http(s)://`` and ``file://`` URLs (``spec["location"]``).

    ``file_roots`` are the directories ``file:`` URLs may name (none: ``file:`` URLs are refused). A file
    is accepted only when its real path, symlinks followed, is inside one of them.
    """

    kinds = frozenset({"http:", "https:", "file:"})

    def __init__(self, file_roots: Sequence[Path] = (), *, timeout: float = 60.0) -> None:
        self.file_roots = [Path(root).resolve() for root in file_roots]
        self.timeout = timeout

    def resolve(self, spec: dict[str, Any]) -> Resolved:
        url = _location(spec)
        checksum = checksum_of(spec)
        scheme = urlsplit(url).scheme.lower()
        if scheme == "file":
            path, _ = self._allowed_file(url)
            try:
                size = path.stat().st_size
            except OSError as exc:
                raise StagingError(f"cannot read {url}: {exc.strerror or exc}") from exc
            return Resolved([Replica("file:local", url, size)], size=size, checksum=checksum)
        if scheme not in ("http", "https"):
            raise StagingError(
                f"cannot stage {url!r}: unsupported URL scheme {scheme or '(none)'!r} (supported: http, https, file)"
            )
        length, details = self._probe(url)
        return Resolved(
            [Replica(f"http:{host_port(url)}", url, length)], size=length, checksum=checksum, details=details
        )

    def fetch(
        self,
        spec: dict[str, Any],
        replica: Replica,
        dest_dir: Path,
        progress: Progress | None = None,
        *,
        filename: str | None = None,
    ) -> StagedFile:
        """Stage ``replica.url`` as ``dest_dir/<filename>``, by default the last segment of its path."""
        url = replica.url
        base: Path | None = None
        if urlsplit(url).scheme.lower() == "file":
            _, base = self._allowed_file(url)
        dest = dest_dir / (filename or filename_for(url, "data"))
        return stage(
            url,
            dest,
            checksum=checksum_of(spec),
            timeout=self.timeout,
            progress=progress,
            base_dir_for_file_urls=base,
        )

    # -- file: -----------------------------------------------------------------------------------------------

    def _allowed_file(self, url: str) -> tuple[Path, Path]:
        """The file a ``file:`` URL names and the allowed root it is under."""
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise StagingError(
                f"cannot stage {url!r}: file URLs naming a host ({parts.netloc}) are not supported"
            )
        raw = url2pathname(unquote(parts.path))
        if not raw or not Path(raw).is_absolute():
            raise StagingError(f"cannot stage {url!r}: a file URL must name an absolute path")
        if not self.file_roots:
            raise StagingError(
                f"cannot stage {url!r}: this broker serves no files (no file data roots are set)"
            )
        path = Path(raw).resolve()
        for root in self.file_roots:
            if path.is_relative_to(root):
                if not path.is_file():
                    what = "a directory" if path.is_dir() else "not there"
                    raise StagingError(f"cannot stage {url!r}: it is {what}, not a file")
                return path, root
        roots = ", ".join(str(root) for root in self.file_roots)
        raise StagingError(
            f"cannot stage {url!r}: it is outside the directories files are served from ({roots})"
        )

    # -- http(s): --------------------------------------------------------------------------------------------

    def _probe(self, url: str) -> tuple[int | None, dict[str, Any]]:
        """Size and validators of the entity at ``url``: ``HEAD``, else a ``GET`` of its first byte."""
        client = shared_client(self.timeout)
        identity = {"Accept-Encoding": "identity"}
        with http_errors(f"timed out asking {url}", f"cannot fetch {url}", f"cannot reach {url}"):
            response = client.head(url, headers=identity)
            if response.status_code < 400 and _plain(response):
                length = response.headers.get("Content-Length", "")
                return (int(length) if length.isdigit() else None), _details(response, ranges=None)
            with client.stream("GET", url, headers={**identity, "Range": "bytes=0-0"}) as ranged:
                raise_for_status(url, ranged)
                return _ranged_size(ranged), _details(ranged, ranges=ranged.status_code == 206)


def _location(spec: Mapping[str, Any]) -> str:
    url = spec.get("location")
    if not isinstance(url, str) or not url.strip():
        raise StagingError("the data resource has no location URL")
    return url.strip()


def _plain(response: httpx.Response) -> bool:
    # A HEAD answered for an encoded representation says nothing about the bytes an identity GET returns.
    return str(response.headers.get("Content-Encoding", "identity")).lower() == "identity"


def _ranged_size(response: httpx.Response) -> int | None:
    if response.status_code == 206:
        total = response.headers.get("Content-Range", "").rpartition("/")[2].strip()
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() and _plain(response) else None


def _details(response: httpx.Response, *, ranges: bool | None) -> dict[str, Any]:
    headers = response.headers
    details: dict[str, Any] = {"final_url": str(response.url)}
    for key, header in (
        ("etag", "ETag"),
        ("last_modified", "Last-Modified"),
        ("content_type", "Content-Type"),
    ):
        if header in headers:
            details[key] = headers[header]
    details["ranges"] = ranges if ranges is not None else headers.get("Accept-Ranges", "").lower() == "bytes"
    return details


def raise_for_status(url: str, response: httpx.Response) -> None:
    code = response.status_code
    if code < 400:
        return
    reason = f"HTTP {code} {response.reason_phrase}".rstrip()
    if code in (404, 410):
        raise StagingError(f"{url} does not exist ({reason})")
    if code in (401, 403):
        raise StagingError(f"no permission to read {url} ({reason})")
    retryable = code >= 500 or code in _RETRYABLE_STATUS
    raise StagingError(f"cannot fetch {url}: {reason}", retryable=retryable)
