"""Fakes of the SKA SRCNet staging services the prepareData data source talks to, on a real HTTP server.

One FastAPI app under uvicorn, in a thread, on a free 127.0.0.1 port, serves two services:

The CANSRC prepareData gatekeeper (platforms.md C1, from shinybrar/prepare-data ``e2e.py``):

- ``POST /preparedata`` takes ``Authorization: Bearer <token>`` and a JSON array of triples
  ``[[<did scope:name>, <path inside the RSE>, <destination relative to the home>], …]`` and answers
  ``{"task_id": …}``; ``GET /preparedata/{task_id}`` answers ``{"task_id", "status"}``.
- The statuses are Celery's, as the reference infers: PENDING, then STARTED, then SUCCESS or FAILURE. As
  in Celery, a task id it does not know is reported PENDING, not 404.
- Tasks really copy: from this site's RSE directory (``rse/``, Rucio's hash layout
  ``<scope>/<h1>/<h2>/<name>``) into the token owner's home (``home/<user>/`` stands for
  ``/cavern/home/<user>/``), after ``pending_delay`` and ``started_delay`` seconds.

What the reference does not say, and the fake therefore decides (the real service may differ): 401
``{"detail"}`` for a missing or unknown bearer; 400 ``{"detail"}`` for a body that is not JSON, an empty
array, a DID that is not ``scope:name`` with a Rucio-style scope, or a source or destination that is absolute
or climbs with ``..``; 422 ``{"detail": [pydantic errors]}`` for a body of the wrong shape; a FAILURE carries
its reason in ``result`` (Celery keeps a task's exception there).

The SRCNet Data Management API (platforms.md C2, from ska-telescope/ska-src-clients), under ``/api/v1``:

- ``GET /api/v1/data/locate/{namespace}/{name}`` (query ``sort`` = ``nearest_by_ip`` | ``random``,
  ``ip_address``) with its own bearer token answers
  ``[{"identifier", "associated_storage_area_id", "replicas": [<davs URL>], "is_dataset": false}, …]``,
  this site first. An unknown DID is 404 ``{"detail"}`` (invented, FastAPI's usual shape), a missing or
  unknown token 401.
- The ``davs://127.0.0.1:1094/<prefix>/…`` URLs are names only: nothing listens there, and nothing reads them
  (the gatekeeper reads its RSE directory).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pydantic
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

_SCOPE = re.compile(r"^[A-Za-z0-9._-]{1,25}$")
_TRIPLES = pydantic.TypeAdapter(list[tuple[pydantic.StrictStr, pydantic.StrictStr, pydantic.StrictStr]])


@dataclass(frozen=True)
class StoredFile:
    namespace: str
    name: str
    data: bytes
    path_in_rse: str
    url: str
    """This site's access URL for it, as the DM API lists it."""

    @property
    def did(self) -> str:
        return f"{self.namespace}:{self.name}"

    @property
    def adler32(self) -> str:
        return f"{zlib.adler32(self.data) & 0xFFFFFFFF:08x}"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def spec(self, *, replicas: bool = True, **overrides: Any) -> dict[str, Any]:
        """An SKAO data resource spec for this file (``replicas`` from the spec, else the DM API's)."""
        block: dict[str, Any] = {
            "namespace": self.namespace,
            "objectname": self.name,
            "objecttype": "FILE",
            "datasize": len(self.data),
            "checksum": {"type": "adler32", "value": self.adler32},
        }
        if replicas:
            block["replicas"] = [{"rsename": FakeSrcnet.SITE, "dataurl": self.url}]
        block.update(overrides)
        return {"skao": block}


@dataclass
class FakeTask:
    task_id: str
    user: str
    triples: list[tuple[str, str, str]]
    status: str = "PENDING"
    result: str | None = None
    polls: int = 0


@dataclass
class FakeSrcnet:
    """The gatekeeper and the DM API over ``root`` (``rse/`` and ``home/<user>/`` beneath it)."""

    root: Path
    tokens: Mapping[str, str] = field(default_factory=lambda: {"alice-token": "alice"})
    """Gatekeeper bearer token → the user whose home it writes to."""
    dm_tokens: frozenset[str] = frozenset({"dm-token"})
    pending_delay: float = 0.05
    started_delay: float = 0.05

    SITE = "FAKE-SRC-RSE"
    PREFIX = "skadata"

    def __post_init__(self) -> None:
        self.rse = self.root / "rse"
        self.homes = self.root / "home"
        self.rse.mkdir(parents=True, exist_ok=True)
        self.homes.mkdir(parents=True, exist_ok=True)
        self.submissions: list[list[tuple[str, str, str]]] = []
        self.tasks: dict[str, FakeTask] = {}
        self.locate_calls = 0
        self._catalogue: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        self.app = self._build()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- set-up ----------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The gatekeeper's base URL (``/preparedata`` is under it)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dm_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def home(self, user: str = "alice") -> Path:
        return self.homes / user

    def add_file(
        self,
        namespace: str,
        name: str,
        data: bytes,
        *,
        stored_as: str | None = None,
        elsewhere: Iterable[str] = (),
    ) -> StoredFile:
        """Put ``data`` into this site's RSE and the catalogue; ``elsewhere`` lists further sites said to hold
        it (after this one). ``stored_as`` gives the file a name in the RSE other than the DID's, as in C1's
        example."""
        digest = hashlib.md5(f"{namespace}:{name}".encode(), usedforsecurity=False).hexdigest()
        path_in_rse = f"{namespace}/{digest[0:2]}/{digest[2:4]}/{stored_as or name}"
        target = self.rse / path_in_rse
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        sites = [self.SITE, *elsewhere]
        self._catalogue[(namespace, name)] = [
            {
                "identifier": site,
                "associated_storage_area_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, site)),
                "replicas": [f"davs://127.0.0.1:1094/{self.PREFIX}-{site.lower()}/{path_in_rse}"],
                "is_dataset": False,
            }
            for site in sites
        ]
        url = self._catalogue[(namespace, name)][0]["replicas"][0]
        return StoredFile(namespace=namespace, name=name, data=data, path_in_rse=path_in_rse, url=url)

    # -- server ----------------------------------------------------------------------------------------------

    def __enter__(self) -> FakeSrcnet:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake SRCNet server did not start")
            time.sleep(0.01)
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        for worker in self._workers:
            worker.join(timeout=10)
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)

    # -- behaviour -------------------------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/preparedata")
        async def submit(request: Request) -> JSONResponse:
            user = self._user(request)
            if user is None:
                return _unauthorised()
            try:
                body = json.loads(await request.body())
            except ValueError:
                return JSONResponse({"detail": "the request body is not JSON"}, status_code=400)
            try:
                triples = _TRIPLES.validate_python(body)
            except pydantic.ValidationError as exc:
                return JSONResponse({"detail": json.loads(exc.json(include_url=False))}, status_code=422)
            problem = _check(triples)
            if problem:
                return JSONResponse({"detail": problem}, status_code=400)
            task = FakeTask(task_id=str(uuid.uuid4()), user=user, triples=list(triples))
            with self._lock:
                self.submissions.append(list(triples))
                self.tasks[task.task_id] = task
            worker = threading.Thread(target=self._run, args=(task,), daemon=True)
            self._workers.append(worker)
            worker.start()
            return JSONResponse({"task_id": task.task_id})

        @app.get("/preparedata/{task_id}")
        async def status(task_id: str, request: Request) -> JSONResponse:
            user = self._user(request)
            if user is None:
                return _unauthorised()
            with self._lock:
                task = self.tasks.get(task_id)
                if task is None or task.user != user:
                    return JSONResponse({"task_id": task_id, "status": "PENDING", "result": None})
                task.polls += 1
                return JSONResponse({"task_id": task_id, "status": task.status, "result": task.result})

        @app.get("/api/v1/data/locate/{namespace}/{name}")
        async def locate(
            namespace: str, name: str, request: Request, sort: str = "nearest_by_ip"
        ) -> JSONResponse:
            if _bearer(request) not in self.dm_tokens:
                return _unauthorised()
            self.locate_calls += 1
            sites = self._catalogue.get((namespace, name))
            if sites is None:
                return JSONResponse({"detail": f"{namespace}:{name} not found"}, status_code=404)
            answer = [dict(site) for site in sites]
            if sort == "random":
                random.shuffle(answer)
            return JSONResponse(answer)

        return app

    def _user(self, request: Request) -> str | None:
        return self.tokens.get(_bearer(request) or "")

    def _run(self, task: FakeTask) -> None:
        if self._stopping.wait(self.pending_delay):
            return
        with self._lock:
            task.status = "STARTED"
        if self._stopping.wait(self.started_delay):
            return
        try:
            for _did, source, destination in task.triples:
                origin = self.rse / source
                if not origin.is_file():
                    raise FileNotFoundError(f"{source} is not in {self.SITE}")
                target = self.home(task.user) / PurePosixPath(destination.removeprefix("./"))
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".copying")
                shutil.copyfile(origin, partial)
                partial.replace(target)
        except OSError as exc:
            with self._lock:
                task.status, task.result = "FAILURE", str(exc)
            return
        with self._lock:
            task.status = "SUCCESS"


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _unauthorised() -> JSONResponse:
    return JSONResponse(
        {"detail": "missing or invalid bearer token"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def _check(triples: list[tuple[str, str, str]]) -> str | None:
    if not triples:
        return "no data to prepare: the body is an empty array"
    for did, source, destination in triples:
        scope, colon, name = did.partition(":")
        if not colon or not _SCOPE.match(scope) or not name:
            return f"invalid DID {did!r}: expected scope:name"
        for what, path in (("source", source), ("destination", destination)):
            parts = PurePosixPath(path).parts
            if not path or path.startswith("/") or ".." in parts:
                return f"invalid {what} {path!r}: it must be a relative path without '..'"
    return None
