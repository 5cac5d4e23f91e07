"""Fetch one data resource into a session's storage directory, crash-safely and resumably.

Bytes go to ``<dest>.part`` and are renamed to ``dest`` only once complete and verified, so a file under its
final name is always whole. An interrupted HTTP download keeps its ``.part`` and continues from there on the
next call when the server supports ranges; ``<dest>.part.meta`` remembers the entity's validators so the
continuation is only accepted for the same entity.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import httpx

from ecliptic.durable import fsync_dir

CHUNK = 1 << 20
MAX_NAME_BYTES = 255
_SAFE_PUNCTUATION = frozenset("._-+=@,")

Progress = Callable[[int, int | None], None]


class StagingError(Exception):
    """Staging failed; ``retryable`` says whether trying the same thing later may succeed."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class StagedFile:
    path: Path
    size: int
    sha256: str
    algorithm: str | None = None
    """The checksum algorithm the caller asked to verify, if any."""
    digest: str | None = None
    """The verified hex digest for ``algorithm``."""


# -- names ---------------------------------------------------------------------------------------------------


def filename_for(url: str, fallback: str) -> str:
    """A safe file name from the last segment of the URL's path, else from ``fallback``.

    Percent-escapes are decoded first, so ``%2F`` or ``..%2F`` cannot smuggle in a separator; the result never
    contains a separator, control character or leading dot, and is never empty.
    """
    try:
        path = urlsplit(url).path
    except ValueError:
        path = ""
    return _safe_name(_last_segment(unquote(path))) or _safe_name(_last_segment(fallback)) or "download"


def _last_segment(path: str) -> str:
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _safe_name(raw: str) -> str:
    name = unicodedata.normalize("NFC", raw)
    name = "".join(ch if ch.isalnum() or ch in _SAFE_PUNCTUATION else "_" for ch in name)
    # Leading dots would make ".", ".." or a hidden file; runs of underscores are just noise from the above.
    name = re.sub(r"_{2,}", "_", name).lstrip(".")
    return _truncate(name) if name.strip("_") else ""


def _truncate(name: str) -> str:
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    stem, dot, suffix = name.rpartition(".")
    if not dot or len(suffix.encode()) > 16:
        stem, suffix = name, ""
    keep = MAX_NAME_BYTES - len(suffix.encode()) - (1 if suffix else 0)
    stem = stem.encode()[:keep].decode(errors="ignore")
    return f"{stem}.{suffix}" if suffix else stem


# -- hashing -------------------------------------------------------------------------------------------------


class Hashes:
    """The sha256 always recorded, plus the caller's checksum when one was asked for."""

    def __init__(self, checksum: tuple[str, str] | None) -> None:
        self.sha256 = hashlib.sha256()
        self.algorithm: str | None = None
        self.expected: str | None = None
        self.extra: Any = None
        if checksum is not None:
            self.algorithm, self.expected = _normalise_checksum(checksum)
            self.extra = hashlib.new(self.algorithm)
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        if self.extra is not None:
            self.extra.update(chunk)
        self.size += len(chunk)

    def actual(self) -> str | None:
        if self.extra is None or self.expected is None:
            return None
        if self.algorithm is not None and self.algorithm.startswith("shake_"):
            # Variable-length digests: the length is whatever the caller's digest has.
            return str(self.extra.hexdigest(len(self.expected) // 2))
        return str(self.extra.hexdigest())

    def matches(self) -> bool:
        return self.expected is None or self.actual() == self.expected

    def staged(self, path: Path) -> StagedFile:
        """What was staged at ``path``, as these hashes saw it."""
        return StagedFile(
            path=path,
            size=self.size,
            sha256=self.sha256.hexdigest(),
            algorithm=self.algorithm,
            digest=self.actual(),
        )


def _normalise_checksum(checksum: tuple[str, str]) -> tuple[str, str]:
    algorithm, digest = checksum
    wanted = algorithm.strip().lower()
    available = {name.lower() for name in hashlib.algorithms_available}
    for candidate in (wanted, wanted.replace("-", ""), wanted.replace("-", "_")):
        if candidate in available:
            break
    else:
        raise StagingError(f"unsupported checksum algorithm {algorithm!r}")
    digest = digest.strip().lower()
    if not digest or not re.fullmatch(r"[0-9a-f]+", digest):
        raise StagingError(f"the {algorithm} checksum {checksum[1]!r} is not a hex digest")
    return candidate, digest


def _hash_file(path: Path, hashes: Hashes) -> None:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            hashes.update(chunk)


# -- entry point ---------------------------------------------------------------------------------------------


def stage(
    url: str,
    dest: Path,
    *,
    checksum: tuple[str, str] | None = None,
    timeout: float = 60,
    progress: Progress | None = None,
    base_dir_for_file_urls: Path | None = None,
) -> StagedFile:
    """Put the resource at ``url`` into ``dest`` and describe what is there.

    ``checksum`` is ``(algorithm, hex digest)`` with any algorithm hashlib knows. ``timeout`` bounds each
    network wait (connecting, every read), not the whole transfer, which may legitimately take hours.
    ``progress(done, total)`` is called as bytes arrive; ``total`` is None when the size is unknown.

    ``file:`` URLs name local files. With ``base_dir_for_file_urls`` a relative one (``file:data/x.fits``)
    is taken relative to it, and any that resolves outside it, symlinks followed, is refused: a client must
    not be able to stage the broker's own files into its session. Without it, only absolute paths are
    accepted, anywhere.

    If ``dest`` already exists and matches ``checksum`` (or no checksum is given) it is returned as it is.
    """
    hashes = Hashes(checksum)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise StagingError(f"{url!r} is not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(dest):
            return _stage_locked(
                url, parts.scheme, scheme, dest, hashes, checksum, timeout, progress, base_dir_for_file_urls
            )
    except OSError as exc:
        raise StagingError(f"cannot stage {url} into {dest}: {exc}") from exc


@contextlib.contextmanager
def exclusive(dest: Path) -> Iterator[None]:
    """One stager per destination, across threads and processes: a second waits, then finds the file whole.

    Two can meet when a lease lapsed on a busy machine and another worker took the same step over.
    """
    lock = dest.with_name(f".{dest.name}.lock")
    while True:
        fh = open(lock, "a+b")  # noqa: SIM115 - held across the yield below
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                same = os.fstat(fh.fileno()).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                # The holder before us removed the file as it left: lock the one that is there now.
                continue
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    lock.unlink()
            return
        finally:
            fh.close()


def _stage_locked(
    url: str,
    raw_scheme: str,
    scheme: str,
    dest: Path,
    hashes: Hashes,
    checksum: tuple[str, str] | None,
    timeout: float,
    progress: Progress | None,
    base_dir_for_file_urls: Path | None,
) -> StagedFile:
    if dest.is_file():
        existing = Hashes(checksum)
        _hash_file(dest, existing)
        if existing.matches():
            return existing.staged(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if scheme in ("http", "https"):
        _fetch_http(url, dest, hashes, timeout=timeout, progress=progress)
    elif scheme == "file":
        source = _file_url_path(url, base_dir_for_file_urls)
        _copy_file(source, dest, hashes, progress=progress)
    else:
        raise StagingError(
            f"cannot stage {url!r}: unsupported URL scheme {raw_scheme or '(none)'!r} "
            "(supported: http, https, file)"
        )
    return hashes.staged(dest)


def part_paths(dest: Path) -> tuple[Path, Path]:
    part = dest.with_name(dest.name + ".part")
    return part, dest.with_name(dest.name + ".part.meta")


def complete_part(part: Path, meta: Path, dest: Path, hashes: Hashes, url: str) -> None:
    """Verify, then move the finished ``.part`` into place durably."""
    if not hashes.matches():
        discard_part(part, meta)
        raise StagingError(
            f"checksum mismatch for {url}: expected {hashes.algorithm} {hashes.expected}, "
            f"got {hashes.actual()}"
        )
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(part, dest)
    with contextlib.suppress(OSError):
        meta.unlink()
    fsync_dir(dest.parent)


def open_part(part: Path, *, append: bool) -> IO[bytes]:
    # O_NOFOLLOW: a symlink planted under the .part name must not redirect the write elsewhere.
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC) | getattr(os, "O_NOFOLLOW", 0)
    return os.fdopen(os.open(part, flags, 0o644), "ab" if append else "wb")


def discard_part(part: Path, meta: Path) -> None:
    for path in (part, meta):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# -- file: ---------------------------------------------------------------------------------------------------


def _file_url_path(url: str, base: Path | None) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise StagingError(
            f"cannot stage {url!r}: file URLs naming a host ({parts.netloc}) are not supported"
        )
    raw = url2pathname(unquote(parts.path))
    if not raw:
        raise StagingError(f"cannot stage {url!r}: the file URL names no path")
    path = Path(raw)
    if base is None:
        if not path.is_absolute():
            raise StagingError(f"cannot stage {url!r}: a relative file URL needs a base directory")
        return path
    root = base.resolve()
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise StagingError(f"cannot stage {url!r}: it is outside the directory file URLs may read ({root})")
    return resolved


def _copy_file(source: Path, dest: Path, hashes: Hashes, *, progress: Progress | None) -> None:
    part, meta = part_paths(dest)
    url = source.as_uri() if source.is_absolute() else str(source)
    try:
        src = open(source, "rb")  # noqa: SIM115 - closed below, after errors are classified
    except FileNotFoundError as exc:
        raise StagingError(f"cannot stage {url}: no such file") from exc
    except IsADirectoryError as exc:
        raise StagingError(f"cannot stage {url}: it is a directory, not a file") from exc
    except PermissionError as exc:
        raise StagingError(f"cannot stage {url}: permission denied") from exc
    with src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise StagingError(f"cannot stage {url}: not a regular file")
        total = info.st_size
        with open_part(part, append=False) as out:
            _pump(_read_chunks(src), out, hashes, total, progress)
    complete_part(part, meta, dest, hashes, url)


def _read_chunks(src: IO[bytes]) -> Iterator[bytes]:
    while chunk := src.read(CHUNK):
        yield chunk


def _pump(
    chunks: Iterator[bytes], out: IO[bytes], hashes: Hashes, total: int | None, progress: Progress | None
) -> None:
    if progress is not None:
        progress(hashes.size, total)
    for chunk in chunks:
        out.write(chunk)
        hashes.update(chunk)
        if progress is not None:
            progress(hashes.size, total)
    out.flush()


# -- http(s): ------------------------------------------------------------------------------------------------

_RETRYABLE_STATUS = frozenset({408, 425, 429})
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


@contextlib.contextmanager
def http_errors(timed_out: str, failed: str, unreachable: str | None = None) -> Iterator[None]:
    """httpx failures as :class:`StagingError`, worded for what was being done.

    A timeout or a connection that failed (refused, reset, a body cut short) may pass, so it is retryable; a
    URL httpx cannot use, or a redirect loop, will not. ``unreachable`` words the transport failures when
    they should read otherwise than ``failed``.
    """
    try:
        yield
    except httpx.TimeoutException as exc:
        raise StagingError(f"{timed_out}: {exc or type(exc).__name__}", retryable=True) from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL, httpx.TooManyRedirects) as exc:
        raise StagingError(f"{failed}: {exc}") from exc
    except httpx.TransportError as exc:
        raise StagingError(f"{unreachable or failed}: {exc or type(exc).__name__}", retryable=True) from exc


@functools.lru_cache(maxsize=8)
def shared_client(timeout: float) -> httpx.Client:
    """One pooled client per timeout for every staging thread: a new client per file costs a TLS context and
    a connection each time, which for small files was most of their staging time."""
    return httpx.Client(
        follow_redirects=True,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
        headers={"User-Agent": "ecliptic-staging"},
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
    )


def _fetch_http(url: str, dest: Path, hashes: Hashes, *, timeout: float, progress: Progress | None) -> None:
    part, meta = part_paths(dest)
    offset, validator = _resumable(part, meta, url)
    total: int | None = None
    client = shared_client(timeout)
    # A transport failure leaves the .part for the next attempt to resume.
    with http_errors(f"timed out fetching {url}", f"cannot fetch {url}"):
        while True:
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
                if validator:
                    # Should the entity have changed since the .part was begun, the server then sends
                    # the whole new one (200) instead of a range of it.
                    headers["If-Range"] = validator
            with client.stream("GET", url, headers=headers) as response:
                if offset and response.status_code == 416 and _already_complete(response, offset):
                    # Killed between the last byte and the rename: nothing left to fetch.
                    _hash_file(part, hashes)
                    break
                if offset and response.status_code in (206, 416) and not _continues(response, offset):
                    # A range that does not continue the .part: start over without one.
                    discard_part(part, meta)
                    offset, validator = 0, None
                    continue
                _check_status(url, response)
                append = offset > 0 and response.status_code == 206
                if append:
                    _hash_file(part, hashes)
                else:
                    _write_meta(meta, url, response)
                total = _expected_total(response, offset if append else 0)
                with open_part(part, append=append) as out:
                    _pump(response.iter_bytes(CHUNK), out, hashes, total, progress)
                break
    if total is not None and hashes.size != total:
        if hashes.size > total:
            discard_part(part, meta)
        raise StagingError(f"download of {url} ended after {hashes.size} of {total} bytes", retryable=True)
    complete_part(part, meta, dest, hashes, url)


def _check_status(url: str, response: httpx.Response) -> None:
    code = response.status_code
    if code < 400:
        return
    retryable = code >= 500 or code in _RETRYABLE_STATUS
    raise StagingError(
        f"cannot fetch {url}: HTTP {code} {response.reason_phrase}".rstrip(), retryable=retryable
    )


def _resumable(part: Path, meta: Path, url: str) -> tuple[int, str | None]:
    """How many bytes of the ``.part`` may be kept, and the validator they were fetched under."""
    try:
        size = part.stat().st_size
    except FileNotFoundError:
        return 0, None
    recorded: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(meta.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            recorded = loaded
    if recorded.get("url") not in (None, url):
        # Bytes of some other resource that was to be staged under the same name.
        return 0, None
    validator = recorded.get("validator")
    return size, validator if isinstance(validator, str) else None


def _write_meta(meta: Path, url: str, response: httpx.Response) -> None:
    etag = response.headers.get("ETag")
    # If-Range only accepts a strong entity tag; a weak one would make every resumption start over.
    validator = etag if etag and not etag.startswith("W/") else response.headers.get("Last-Modified")
    meta.write_text(json.dumps({"url": url, "validator": validator}), encoding="utf-8")


def _continues(response: httpx.Response, offset: int) -> bool:
    if response.status_code != 206:
        return False
    if response.headers.get("Content-Encoding", "identity").lower() != "identity":
        # Ranges of an encoded body are ranges of the encoding, not of the file being assembled.
        return False
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    return bool(match and int(match.group(1)) == offset)


def _already_complete(response: httpx.Response, offset: int) -> bool:
    match = _UNSATISFIED_RANGE.match(response.headers.get("Content-Range", ""))
    return bool(match and int(match.group(1)) == offset)


def _expected_total(response: httpx.Response, offset: int) -> int | None:
    if response.headers.get("Content-Encoding", "identity").lower() != "identity":
        return None
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if response.status_code == 206 and match and match.group(3) != "*":
        return int(match.group(3))
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return None
    return offset + int(length)
