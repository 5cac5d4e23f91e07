"""SKA SRCNet data (the ``skao-data-resource`` kind) staged by a CANSRC-style "prepareData" gatekeeper.

Nothing is copied by the broker: the gatekeeper at the platform's site copies the file out of its Rucio
storage into the user's home there, as an asynchronous task the broker submits and then polls. What this
relies on (platforms.md C1, C2; the prepareData paths come from a validation notebook, not a specification):

- ``POST {gatekeeper}/preparedata`` with ``Authorization: Bearer <token>`` and a JSON array of triples
  ``[[<did scope:name>, <path inside the RSE>, <destination relative to the home>]]`` answers ``{"task_id"}``.
- ``GET {gatekeeper}/preparedata/{task_id}`` answers ``{"status"}``, a Celery state: PENDING (also what
  Celery says of a task it does not know), RECEIVED, STARTED and RETRY mean wait; SUCCESS; FAILURE or REVOKED,
  with the reason in ``result`` (or ``message``, ``error``, ``detail``).
- Where the data is comes from the spec's own ``replicas`` or the SRCNet Data Management API:
  ``GET {dm}/data/locate/{namespace}/{name}`` answers ``[{"identifier": <RSE>, "associated_storage_area_id",
  "replicas": [<access URL>, …], "is_dataset"}, …]``, nearest site first. The path inside the RSE is the
  access URL's path from the namespace on (``davs://host/skadata/daac/08/06/f.bin`` → ``daac/08/06/f.bin``):
  names in the RSE need not be the DID's, so it cannot be computed from the DID.

The data lands at ``<home>/<destination_root>/<key>/<file name>``, ``key`` derived from ``dest_dir`` so that
every storage has its own place and a repeated fetch asks for the same one. The task is recorded before it is
polled, in ``dest_dir/.preparedata-task/<digest of the DID>.json`` (several data components may share one
storage directory): a fetch that runs again after a crash or a timeout polls that task instead of submitting
another. A crash between the submission and its record costs one repeated copy, nothing worse. When the broker sees the home (``local_home``) the result is checked against
the spec's size and checksum and hashed; otherwise ``StagedFile.sha256`` is empty, since nothing here has
read the bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx

from ecliptic.durable import write_json_atomic
from ecliptic.staging.download import CHUNK, StagedFile, StagingError, filename_for, http_errors
from ecliptic.staging.sources import Progress, Replica, Resolved

log = logging.getLogger(__name__)

SKAO_KIND = "https://www.purl.org/ivoa.net/Calycopis-openapi/schema/v1.0/kinds/data/skao-data-resource.yaml"
TASK_DIR = ".preparedata-task"
WAITING = frozenset({"PENDING", "RECEIVED", "STARTED", "RETRY"})
FAILED = frozenset({"FAILURE", "REVOKED"})
_RETRYABLE_STATUS = frozenset({408, 425, 429})

Token = str | Callable[[], str]
"""A bearer token, or a callable returning a current one (called for every request, so it may refresh)."""
Rank = Callable[[Replica], float]
"""Lower is better; replicas the key ties keep the order they came in."""


@dataclass(frozen=True)
class PrepareDataConfig:
    gatekeeper_url: str
    """Where ``/preparedata`` is, e.g. ``https://src.canfar.net``."""
    token: Token
    home: str
    """The user's home as the platform sees it, e.g. ``/cavern/home/alice``: staged paths are under it."""
    local_home: Path | None = None
    """The same home as this broker sees it, when it does; the staged data is then verified."""
    dm_url: str | None = None
    """The SRCNet Data Management API, e.g. ``https://data-management.srcnet.skao.int/api/v1``; needed only
    for specs that list no replicas."""
    dm_token: Token | None = None
    """A token for the DM API (its own audience); ``token`` when not given."""
    locate_sort: str | None = "nearest_by_ip"
    destination_root: str = "ecliptic"
    poll_interval: float = 1.0
    """The first wait between polls; each next one is half as long again, up to ``max_poll_interval``."""
    max_poll_interval: float = 30.0
    timeout: float = 3600.0
    """How long one fetch waits for the task; the task is still recorded, so the next fetch waits on."""
    request_timeout: float = 30.0

    def __post_init__(self) -> None:
        # Settings files give paths as strings.
        if self.local_home is not None and not isinstance(self.local_home, Path):
            object.__setattr__(self, "local_home", Path(self.local_home))
        for name in ("poll_interval", "max_poll_interval", "timeout", "request_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"prepareData {name} must be positive, not {getattr(self, name)!r}")


@dataclass(frozen=True)
class _Object:
    namespace: str
    name: str
    type: str
    size: int | None
    checksum: tuple[str, str] | None
    replicas: tuple[tuple[str, str], ...]
    """``(rse, access URL)`` from the spec itself."""

    @property
    def did(self) -> str:
        return f"{self.namespace}:{self.name}"


def parse_spec(spec: Mapping[str, Any]) -> _Object:
    """The object of an SKAO data resource spec: ``{"skao": {"namespace", "objectname", "objecttype",
    "datasize", "checksum": {"type", "value"}, "replicas": [{"rsename", "dataurl"}]}}`` (or the bare block)."""
    block = spec.get("skao", spec)
    if not isinstance(block, Mapping):
        raise StagingError("the SKAO data resource has no 'skao' block")
    namespace, name = block.get("namespace"), block.get("objectname")
    if not isinstance(namespace, str) or not namespace.strip():
        raise StagingError("the SKAO data resource names no namespace")
    if not isinstance(name, str) or not name.strip():
        raise StagingError("the SKAO data resource names no objectname")
    kind = str(block.get("objecttype") or "FILE").strip().upper()
    size = block.get("datasize")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise StagingError(f"the SKAO datasize {size!r} is not a number of bytes")
    checksum = None
    raw = block.get("checksum")
    if isinstance(raw, Mapping) and raw.get("type") and raw.get("value"):
        checksum = (str(raw["type"]).strip().lower(), str(raw["value"]).strip().lower())
    replicas = []
    for entry in block.get("replicas") or []:
        if isinstance(entry, Mapping) and entry.get("rsename") and entry.get("dataurl"):
            replicas.append((str(entry["rsename"]), str(entry["dataurl"])))
    return _Object(
        namespace=namespace.strip(),
        name=name.strip(),
        type=kind,
        size=size,
        checksum=checksum,
        replicas=tuple(replicas),
    )


def rse_path(url: str, namespace: str) -> str:
    """The path inside the RSE of the copy at ``url``: from the namespace's directory on.

    ``url`` may be an access URL or already such a path. Anything that could climb out of the RSE is refused.
    """
    parsed = urlsplit(url)
    path = unquote(parsed.path if parsed.scheme else url)
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise StagingError(f"the SKAO replica {url!r} has '..' in its path")
    directories = parts[:-1]
    if len(parts) >= 4 and parts[-4] == namespace:
        # Rucio's hash layout, <scope>/<h1>/<h2>/<name>: right even when the RSE prefix repeats the name.
        return "/".join(parts[-4:])
    if namespace in directories:
        start = len(directories) - 1 - directories[::-1].index(namespace)
        return "/".join(parts[start:])
    raise StagingError(
        f"cannot tell the path inside the RSE of {url!r}: it has no directory named after namespace {namespace}"
    )


class PrepareDataSource:
    """Stages SKAO data resources through a prepareData gatekeeper (module docstring)."""

    kinds = frozenset({SKAO_KIND})

    def __init__(self, config: PrepareDataConfig, *, rank: Rank | None = None) -> None:
        self.config = config
        self.rank = rank
        self._gatekeeper = config.gatekeeper_url.rstrip("/")

    # -- DataSource ------------------------------------------------------------------------------------------

    def resolve(self, spec: dict[str, Any]) -> Resolved:
        obj = parse_spec(spec)
        if obj.type != "FILE":
            raise StagingError(f"prepareData stages files; {obj.did} is a {obj.type}")
        located = list(obj.replicas) if obj.replicas else self._locate(obj)
        replicas = [Replica(source=f"rse:{rse}", url=url, size=obj.size, site=rse) for rse, url in located]
        if self.rank is not None:
            replicas.sort(key=self.rank)
        if not replicas:
            raise StagingError(f"SKAO data {obj.did} has no replicas")
        return Resolved(
            replicas=replicas,
            size=obj.size,
            checksum=obj.checksum,
            details={"did": obj.did, "rses": [replica.site for replica in replicas]},
        )

    def fetch(
        self, spec: dict[str, Any], replica: Replica, dest_dir: Path, progress: Progress | None = None
    ) -> StagedFile:
        obj = parse_spec(spec)
        if obj.type != "FILE":
            raise StagingError(f"prepareData stages files; {obj.did} is a {obj.type}")
        source = rse_path(replica.url, obj.namespace)
        destination = self._destination(obj, dest_dir)
        task_file = task_record(dest_dir, obj.did)
        record = _read_record(task_file)
        if record is not None and (record.get("did"), record.get("destination")) != (obj.did, destination):
            record = None  # a digest collision, or a record from before a change of destination_root
        if progress is not None:
            progress(0, obj.size)
        if record is not None and record.get("status") == "SUCCESS":
            staged = self._result(obj, destination, task_file, check=True)
            if staged is not None:
                return self._done(staged, obj, progress)
            record = None  # the copy in the home has gone or changed since: stage it again
        if record is None:
            task_id = self._submit(obj, source, destination)
            record = {"task_id": task_id, "did": obj.did, "source": source, "destination": destination}
            _write_record(task_file, record)
        else:
            log.info("prepareData %s: polling task %s again", obj.did, record["task_id"])
        task_id = str(record["task_id"])
        self._wait(obj, task_id, task_file)
        _write_record(task_file, {**record, "status": "SUCCESS"})
        staged = self._result(obj, destination, task_file, check=False)
        assert staged is not None
        return self._done(staged, obj, progress)

    # -- gatekeeper ------------------------------------------------------------------------------------------

    def _submit(self, obj: _Object, source: str, destination: str) -> str:
        body = [[obj.did, source, destination]]
        response = self._call("POST", f"{self._gatekeeper}/preparedata", self.config.token, json=body)
        self._raise_for("prepareData", response, obj)
        task_id = _field(response, "task_id")
        if not task_id:
            raise StagingError(f"the prepareData gatekeeper accepted {obj.did} but named no task_id")
        log.info("prepareData %s: task %s copies %s to %s", obj.did, task_id, source, destination)
        return task_id

    def _wait(self, obj: _Object, task_id: str, task_file: Path) -> None:
        deadline = time.monotonic() + self.config.timeout
        interval = self.config.poll_interval
        while True:
            url = f"{self._gatekeeper}/preparedata/{quote(task_id, safe='')}"
            response = self._call("GET", url, self.config.token)
            self._raise_for(f"prepareData task {task_id}", response, obj)
            status = (_field(response, "status") or "").upper()
            if status == "SUCCESS":
                return
            if status in FAILED:
                # A later attempt must submit afresh rather than poll a task that cannot succeed.
                with contextlib.suppress(FileNotFoundError):
                    task_file.unlink()
                reason = _reason(response) or status
                raise StagingError(f"prepareData task {task_id} for {obj.did} failed: {reason}")
            if status and status not in WAITING:
                log.warning("prepareData task %s: unknown status %s, waiting on", task_id, status)
            left = deadline - time.monotonic()
            if left <= 0:
                raise StagingError(
                    f"prepareData task {task_id} for {obj.did} is still {status or 'unreported'} after "
                    f"{self.config.timeout:g} s",
                    retryable=True,
                )
            time.sleep(min(interval, left))
            interval = min(interval * 1.5, self.config.max_poll_interval)

    # -- Data Management API ---------------------------------------------------------------------------------

    def _locate(self, obj: _Object) -> list[tuple[str, str]]:
        if not self.config.dm_url:
            raise StagingError(
                f"SKAO data {obj.did} lists no replicas and no Data Management API is configured"
            )
        url = f"{self.config.dm_url.rstrip('/')}/data/locate/{quote(obj.namespace, safe='')}/{quote(obj.name, safe='')}"
        params = {"sort": self.config.locate_sort} if self.config.locate_sort else None
        token = self.config.dm_token if self.config.dm_token is not None else self.config.token
        response = self._call("GET", url, token, params=params)
        self._raise_for("the Data Management API", response, obj)
        try:
            sites = response.json()
        except ValueError as exc:
            raise StagingError(f"the Data Management API answered locate {obj.did} with no JSON") from exc
        if not isinstance(sites, list):
            raise StagingError(
                f"the Data Management API answered locate {obj.did} with {type(sites).__name__}"
            )
        located = []
        for site in sites:
            if not isinstance(site, Mapping):
                continue
            if site.get("is_dataset"):
                raise StagingError(f"prepareData stages files; {obj.did} is a dataset")
            urls = [url for url in site.get("replicas") or [] if isinstance(url, str)]
            if site.get("identifier") and urls:
                # The sites come nearest first; within one, any access URL names the same copy.
                located.append((str(site["identifier"]), urls[0]))
        return located

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _call(self, method: str, url: str, token: Token, **kwargs: Any) -> httpx.Response:
        bearer = token() if callable(token) else token
        headers = {"Authorization": f"Bearer {bearer}", "Accept": "application/json"}
        with (
            http_errors(f"{url} timed out", f"cannot reach {url}"),
            httpx.Client(
                timeout=self.config.request_timeout, headers={"User-Agent": "ecliptic-staging"}
            ) as client,
        ):
            return client.request(method, url, headers=headers, **kwargs)

    def _raise_for(self, who: str, response: httpx.Response, obj: _Object) -> None:
        code = response.status_code
        if code < 400:
            return
        detail = _reason(response) or response.reason_phrase
        if code in (401, 403):
            raise StagingError(f"{who} refused the token (HTTP {code}) for {obj.did}: {detail}")
        if code == 404:
            raise StagingError(f"{who}: {obj.did} not found ({detail})")
        retryable = code >= 500 or code in _RETRYABLE_STATUS
        raise StagingError(f"{who} answered HTTP {code} for {obj.did}: {detail}", retryable=retryable)

    # -- results ---------------------------------------------------------------------------------------------

    def _destination(self, obj: _Object, dest_dir: Path) -> str:
        key = hashlib.sha256(str(dest_dir.resolve()).encode()).hexdigest()[:16]
        root = PurePosixPath(self.config.destination_root.strip("/") or "ecliptic")
        return str(root / key / filename_for("", obj.name))

    def _result(self, obj: _Object, destination: str, task_file: Path, *, check: bool) -> StagedFile | None:
        """The staged file, verified where the home is visible; None (when ``check``) if it no longer
        matches."""
        path = Path(self.config.home) / destination
        if self.config.local_home is None:
            return StagedFile(path=path, size=obj.size or 0, sha256="")
        local = self.config.local_home / destination
        try:
            problem, size, sha256, digest = _inspect(local, obj)
        except FileNotFoundError:
            problem, size, sha256, digest = f"{local} is missing", 0, "", None
        if problem is not None:
            if check:
                return None
            with contextlib.suppress(FileNotFoundError):
                task_file.unlink()
            raise StagingError(f"prepareData reported {obj.did} staged, but {problem}")
        algorithm = obj.checksum[0] if obj.checksum else None
        return StagedFile(path=path, size=size, sha256=sha256, algorithm=algorithm, digest=digest)

    @staticmethod
    def _done(staged: StagedFile, obj: _Object, progress: Progress | None) -> StagedFile:
        if progress is not None:
            progress(staged.size, obj.size if obj.size is not None else staged.size)
        return staged


def task_record(dest_dir: Path, did: str) -> Path:
    """Where the prepareData task staging ``did`` into ``dest_dir`` is recorded."""
    return dest_dir / TASK_DIR / f"{hashlib.sha256(did.encode()).hexdigest()[:16]}.json"


def _inspect(path: Path, obj: _Object) -> tuple[str | None, int, str, str | None]:
    """``(problem or None, size, sha256, digest of the spec's algorithm)`` of the file at ``path``."""
    sha256 = hashlib.sha256()
    algorithm = obj.checksum[0] if obj.checksum else None
    adler = 1
    other: Any = None
    if algorithm is not None and algorithm != "adler32":
        try:
            other = hashlib.new(algorithm.replace("-", ""))
        except ValueError as exc:
            raise StagingError(f"unsupported checksum algorithm {algorithm!r} for {obj.did}") from exc
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sha256.update(chunk)
            size += len(chunk)
            if algorithm == "adler32":
                adler = zlib.adler32(chunk, adler)
            elif other is not None:
                other.update(chunk)
    digest = None
    if algorithm == "adler32":
        digest = f"{adler & 0xFFFFFFFF:08x}"
    elif other is not None:
        digest = str(other.hexdigest())
    if obj.size is not None and size != obj.size:
        return f"{path} has {size} bytes, not {obj.size}", size, sha256.hexdigest(), digest
    if obj.checksum is not None and digest is not None and not _same(algorithm, obj.checksum[1], digest):
        return (
            f"{path} has {algorithm} {digest}, not {obj.checksum[1]}",
            size,
            sha256.hexdigest(),
            digest,
        )
    return None, size, sha256.hexdigest(), digest


def _same(algorithm: str | None, expected: str, actual: str) -> bool:
    if algorithm == "adler32":
        # Catalogues sometimes drop the leading zeros of the eight hex digits.
        with contextlib.suppress(ValueError):
            return int(expected, 16) == int(actual, 16)
        return False
    return expected == actual


def _field(response: httpx.Response, name: str) -> str | None:
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, Mapping) and body.get(name) is not None:
            return str(body[name])
    return None


def _reason(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or None
    if isinstance(body, Mapping):
        for key in ("result", "message", "error", "detail", "traceback"):
            value = body.get(key)
            if value:
                return value if isinstance(value, str) else json.dumps(value)[:300]
    return None


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(loaded, dict) and isinstance(loaded.get("task_id"), str):
        return loaded
    return None


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """Durably: the record is what stops a second submission, so it must survive the crash it is for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
