"""A faithful fake of CANFAR Skaha's session API (reference: platforms.md Part B), on a loopback port.

It is a real HTTP server (FastAPI under uvicorn in a thread) with Skaha's paths, parameters, validation
messages, status codes and text/plain error bodies, and sessions that move through Skaha's statuses on
wall-clock timings:

    Pending (pending_for) → Running (run_for, headless only) → Completed | Failed
    interactive sessions run until deleted or until their expiryTime passes (then Failed, DeadlineExceeded)
    DELETE → Terminating (terminating_for) → gone: 404 ``session <id> not found``

What a headless session does is scripted: :meth:`FakeSkaha.script_image` and :meth:`FakeSkaha.script_command`
give an :class:`Outcome` per image or command; without a script, ``exit N`` in the command line fails with
code N, ``sleep S`` runs for S seconds, ``echo …`` logs its arguments, and anything else completes.

Bearer tokens are checked on every ``/v1`` request: the static ``tokens``, or any unexpired token issued by
the attached :class:`~tests.fakes.oidc.FakeOidc` (served by this same server under ``/oidc``).
"""

from __future__ import annotations

import base64
import copy
import re
import secrets
import string
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from tests.fakes.oidc import FakeOidc, LoopbackServer

SESSION_TYPES = ("carta", "contributed", "desktop", "notebook", "headless", "desktop-app", "firefly")

DEFAULT_CONTEXT: dict[str, Any] = {
    "cores": {"default": 2, "defaultRequest": 1, "defaultLimit": 8, "options": list(range(1, 17))},
    "memoryGB": {
        "default": 8,
        "defaultRequest": 4,
        "defaultLimit": 32,
        "options": [
            1,
            2,
            4,
            6,
            8,
            10,
            12,
            14,
            16,
            20,
            24,
            26,
            28,
            30,
            32,
            36,
            40,
            44,
            48,
            56,
            64,
            80,
            92,
            112,
            128,
            140,
            170,
            192,
        ],
    },
    "gpus": {"options": list(range(1, 29))},
    "maxInteractiveSessions": 3,
}

DEFAULT_IMAGES: list[dict[str, Any]] = [
    {
        "id": "images.canfar.net/skaha/terminal:1.1.1",
        "types": ["headless", "contributed"],
        "digest": "sha256:" + "1" * 64,
    },
    {
        "id": "images.canfar.net/skaha/base-notebook:latest",
        "types": ["notebook", "headless"],
        "digest": "sha256:" + "2" * 64,
    },
    {"id": "images.canfar.net/skaha/desktop:1.0", "types": ["desktop"], "digest": "sha256:" + "3" * 64},
    {"id": "images.canfar.net/skaha/carta:4.1", "types": ["carta"], "digest": "sha256:" + "4" * 64},
]

CAPABILITIES = """<?xml version="1.0" encoding="UTF-8"?>
<vosi:capabilities xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0"
    xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <capability standardID="ivo://ivoa.net/std/VOSI#capabilities">
    <interface xsi:type="vs:ParamHTTP" role="std"><accessURL use="full">{base}/capabilities</accessURL></interface>
  </capability>
  <capability standardID="ivo://ivoa.net/std/VOSI#availability">
    <interface xsi:type="vs:ParamHTTP" role="std"><accessURL use="full">{base}/availability</accessURL></interface>
  </capability>
  <capability standardID="http://www.opencadc.org/std/platform#session-1">
    <interface xsi:type="vs:ParamHTTP" role="std"><accessURL use="base">{base}/v1/session</accessURL></interface>
  </capability>
  <capability standardID="http://www.opencadc.org/std/platform#context-1">
    <interface xsi:type="vs:ParamHTTP" role="std"><accessURL use="base">{base}/v1/context</accessURL></interface>
  </capability>
  <capability standardID="vos://cadc.nrc.ca~vospace/CADC/std/Proc#sessions-1.0">
    <interface xsi:type="vs:ParamHTTP" role="std"><accessURL use="base">{base}/v0</accessURL></interface>
  </capability>
</vosi:capabilities>
"""

AVAILABILITY = """<?xml version="1.0" encoding="UTF-8"?>
<vosi:availability xmlns:vosi="http://www.ivoa.net/xml/VOSIAvailability/v1.0">
  <vosi:available>true</vosi:available>
  <vosi:note>skaha fake is available</vosi:note>
</vosi:availability>
"""

Event = tuple[str, str, str]
"""(TYPE, REASON, MESSAGE) of a pod event."""


@dataclass(frozen=True)
class Outcome:
    """What a session does once Running. ``status`` None: it runs until deleted or expired."""

    status: str | None = "Completed"
    after: float | None = None
    """Seconds Running before it ends (default: the fake's ``run_for``)."""
    logs: str | None = None
    events: tuple[Event, ...] = ()
    stuck_pending: bool = False
    """Never reaches Running (an image that cannot be pulled): Pending with pull-failure events."""


@dataclass
class FakeSession:
    id: str
    userid: str
    name: str
    image: str
    type: str
    cores: int | None
    ram: int | None
    cmd: str | None
    args: list[str]
    env: dict[str, str]
    created: float
    expiry: float
    outcome: Outcome
    deleted: float | None = None
    renewals: int = 0
    registry_auth: str | None = None
    params: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(body: str, status: int = 200, **headers: str) -> PlainTextResponse:
    return PlainTextResponse(body, status_code=status, headers=headers or None)


class FakeSkaha:
    def __init__(
        self,
        *,
        user: str = "alice",
        tokens: set[str] | None = None,
        oidc: FakeOidc | None = None,
        pending_for: float = 0.2,
        run_for: float = 0.3,
        terminating_for: float = 0.3,
        session_lifetime: float = 4 * 86400.0,
        ttl_after_finished: float = 3600.0,
        max_interactive: int = 3,
        harbor_hosts: tuple[str, ...] = ("images.canfar.net",),
        context: dict[str, Any] | None = None,
        images: list[dict[str, Any]] | None = None,
        public_url: str | None = None,
    ) -> None:
        self._made_with: dict[str, Any] = {
            "user": user,
            "tokens": {"test-token"} if tokens is None else set(tokens),
            "pending_for": pending_for,
            "run_for": run_for,
            "terminating_for": terminating_for,
            "session_lifetime": session_lifetime,
            "ttl_after_finished": ttl_after_finished,
            "max_interactive": max_interactive,
            "harbor_hosts": harbor_hosts,
            "context": DEFAULT_CONTEXT if context is None else context,
            "images": DEFAULT_IMAGES if images is None else images,
            "public_url": public_url,
        }
        self.oidc = oidc
        self._lock = threading.RLock()
        self._server: LoopbackServer | None = None
        self.reset()

    def reset(self) -> None:
        """Back to the settings it was made with, with no sessions, scripts or records (for a shared server)."""
        made = copy.deepcopy(self._made_with)
        with self._lock:
            self.user: str = made["user"]
            self.tokens: set[str] = made["tokens"]
            self.pending_for: float = made["pending_for"]
            self.run_for: float = made["run_for"]
            self.terminating_for: float = made["terminating_for"]
            self.session_lifetime: float = made["session_lifetime"]
            self.ttl_after_finished: float = made["ttl_after_finished"]
            self.max_interactive: int = made["max_interactive"]
            self.harbor_hosts: tuple[str, ...] = made["harbor_hosts"]
            self.context: dict[str, Any] = made["context"]
            self.context["maxInteractiveSessions"] = self.max_interactive
            self.images: list[dict[str, Any]] = made["images"]
            self.public_url: str | None = made["public_url"]
            self.sessions: dict[str, FakeSession] = {}
            self.requests: list[Recorded] = []
            self.unauthorized = 0
            self.created = 0
            self._image_scripts: dict[str, Outcome] = {}
            self._command_scripts: list[tuple[re.Pattern[str], Outcome]] = []
            self._swallow_deletes = 0
            self._failures: list[tuple[str | None, int]] = []

    # -- test controls ---------------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        assert self._server is not None, "serve() the fake first"
        return self._server.base

    @property
    def url(self) -> str:
        """Skaha's service root, as a platform is configured with it."""
        return f"{self.base}/skaha"

    def script_image(self, image: str, outcome: Outcome) -> None:
        self._image_scripts[image] = outcome

    def script_command(self, pattern: str, outcome: Outcome) -> None:
        """Sessions whose ``cmd args`` line matches ``pattern`` (a regular expression) end this way."""
        self._command_scripts.append((re.compile(pattern), outcome))

    def swallow_deletes(self, count: int = 1) -> None:
        """The next ``count`` DELETEs answer 200 and do nothing, as Skaha does when deletion fails inside it."""
        self._swallow_deletes += count

    def fail_next(self, count: int = 1, status: int = 503, method: str | None = None) -> None:
        """The next ``count`` authenticated requests (of ``method``, if given) answer ``status``."""
        with self._lock:
            self._failures.extend([(method, status)] * count)

    def forget(self, session_id: str) -> None:
        """The session disappears without a DELETE (cleaned up by Kubernetes, or deleted by someone else)."""
        with self._lock:
            self.sessions.pop(session_id, None)

    def add_session(
        self, *, name: str, type: str = "notebook", userid: str | None = None, image: str | None = None
    ) -> str:
        """A session made outside the client under test (the user's own, or another user's)."""
        with self._lock:
            session = self._new_session(
                name=name,
                image=image or "images.canfar.net/skaha/base-notebook:latest",
                type=type,
                cores=1,
                ram=2,
                cmd=None,
                args=[],
                env={},
                userid=userid or self.user,
            )
            return session.id

    def status(self, session_id: str) -> str | None:
        with self._lock:
            session = self.sessions.get(session_id)
            return self._status(session, time.time()) if session else None

    def named(self, name: str) -> list[FakeSession]:
        with self._lock:
            return [s for s in self.sessions.values() if s.name == name]

    def count(self, method: str, path_end: str) -> int:
        return sum(1 for r in self.requests if r.method == method and r.path.endswith(path_end))

    @contextmanager
    def serve(self) -> Iterator[FakeSkaha]:
        app = self.app()
        self._server = LoopbackServer(app)
        self._server.start()
        if self.oidc is not None:
            self.oidc.attach(f"{self._server.base}/oidc")
        try:
            yield self
        finally:
            self._server.stop()

    # -- the model -------------------------------------------------------------------------------------------
    def _new_session(
        self,
        *,
        name: str,
        image: str,
        type: str,
        cores: int | None,
        ram: int | None,
        cmd: str | None,
        args: list[str],
        env: dict[str, str],
        userid: str,
        registry_auth: str | None = None,
        params: dict[str, list[str]] | None = None,
    ) -> FakeSession:
        alphabet = string.ascii_lowercase + string.digits
        while True:
            session_id = "".join(secrets.choice(alphabet) for _ in range(8))
            if session_id not in self.sessions:
                break
        now = time.time()
        session = FakeSession(
            id=session_id,
            userid=userid,
            name=name,
            image=image,
            type=type,
            cores=cores,
            ram=ram,
            cmd=cmd,
            args=args,
            env=env,
            created=now,
            expiry=now + self.session_lifetime,
            outcome=self._outcome(image, type, cmd, args),
            registry_auth=registry_auth,
            params=params or {},
        )
        self.sessions[session_id] = session
        return session

    def _outcome(self, image: str, type: str, cmd: str | None, args: list[str]) -> Outcome:
        if image in self._image_scripts:
            return self._image_scripts[image]
        line = " ".join(part for part in [cmd or "", *args] if part)
        for pattern, outcome in self._command_scripts:
            if pattern.search(line):
                return outcome
        if type != "headless":
            return Outcome(status=None)
        if match := re.search(r"\bexit (\d+)", line):
            code = int(match[1])
            if code:
                return Outcome(
                    status="Failed",
                    logs=f"starting {line}\ncommand exited with code {code}\n",
                    events=(
                        ("Warning", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
                    ),
                )
        if match := re.search(r"\bsleep (\d+(?:\.\d+)?)", line):
            return Outcome(after=float(match[1]))
        if cmd == "echo":
            return Outcome(logs=" ".join(args) + "\n")
        return Outcome(logs=f"ran {line}\n" if line else "")

    def _started(self, session: FakeSession) -> float:
        return session.created + self.pending_for

    def _ended(self, session: FakeSession) -> tuple[float, str, bool] | None:
        """(when, status, by_deadline) once the session has finished on its own."""
        if session.outcome.stuck_pending:
            return None
        started = self._started(session)
        end = None
        if session.outcome.status is not None:
            end = started + (session.outcome.after if session.outcome.after is not None else self.run_for)
        if end is not None and end <= session.expiry:
            return end, session.outcome.status or "Completed", False
        return session.expiry, "Failed", True

    def _status(self, session: FakeSession, now: float) -> str | None:
        """Skaha's status now; None when the session is gone."""
        if session.deleted is not None:
            return "Terminating" if now < session.deleted + self.terminating_for else None
        ended = self._ended(session)
        if ended is not None and now >= ended[0]:
            return None if now >= ended[0] + self.ttl_after_finished else ended[1]
        if session.outcome.stuck_pending or now < self._started(session):
            return "Pending"
        return "Running"

    def _live(self, now: float) -> list[tuple[FakeSession, str]]:
        result = []
        for session_id, session in list(self.sessions.items()):
            status = self._status(session, now)
            if status is None:
                del self.sessions[session_id]
                continue
            result.append((session, status))
        return result

    def _connect_url(self, session: FakeSession) -> str:
        base = (self.public_url or self.base).rstrip("/")
        sid = session.id
        return {
            "notebook": f"{base}/session/notebook/{sid}/lab/tree/arc/home/{session.userid}?token={sid}",
            "desktop": f"{base}/session/desktop/{sid}/?password={sid}&path=session/desktop/{sid}/",
            "carta": f"{base}/session/carta/{sid}/",
            "contributed": f"{base}/session/contrib/{sid}/",
            "firefly": f"{base}/session/firefly/{sid}/firefly/",
        }.get(session.type, "")

    def _json(self, session: FakeSession, status: str) -> dict[str, Any]:
        running = status == "Running"
        return {
            "id": session.id,
            "userid": session.userid,
            "runAsUID": "1001",
            "runAsGID": "1001",
            "supplementalGroups": [],
            "appid": None,
            "image": session.image,
            "type": session.type,
            "status": status,
            "name": session.name,
            "startTime": _iso(session.created),
            "expiryTime": _iso(session.expiry),
            "connectURL": self._connect_url(session),
            "requestedRAM": f"{session.ram}G" if session.ram else "<none>",
            "requestedCPUCores": str(session.cores) if session.cores else "<none>",
            "requestedGPUCores": "<none>",
            "ramInUse": "412Mi" if running else "<none>",
            "gpuRAMInUse": "<none>",
            "cpuCoresInUse": "0.015" if running else "<none>",
            "gpuUtilization": "<none>",
            "isFixedResources": session.cores is not None and session.ram is not None,
        }

    def _events(self, session: FakeSession, now: float) -> str:
        pod = f"skaha-{session.type}-{session.userid}-{session.id}"
        created, started = session.created, self._started(session)
        rows: list[tuple[str, str, str, float]] = [
            (
                "Normal",
                "Scheduled",
                f"Successfully assigned skaha-workload/{pod}-x7k2p to fake-node-1",
                created,
            )
        ]
        if session.outcome.stuck_pending:
            if now >= started:
                rows += [
                    ("Normal", "Pulling", f'Pulling image "{session.image}"', started),
                    (
                        "Warning",
                        "Failed",
                        f'Failed to pull image "{session.image}": rpc error: code = NotFound desc = failed to '
                        f'pull and unpack image "{session.image}": not found',
                        started,
                    ),
                    ("Warning", "Failed", "Error: ErrImagePull", started),
                    ("Normal", "BackOff", f'Back-off pulling image "{session.image}"', started),
                    ("Warning", "Failed", "Error: ImagePullBackOff", started),
                ]
        elif now >= started:
            rows += [
                (
                    "Normal",
                    "Pulled",
                    f'Container image "{session.image}" already present on machine',
                    started,
                ),
                ("Normal", "Created", f"Created container {session.type}-{session.id}", started),
                ("Normal", "Started", f"Started container {session.type}-{session.id}", started),
            ]
            ended = self._ended(session)
            if ended is not None and now >= ended[0]:
                if ended[2]:
                    rows.append(
                        (
                            "Warning",
                            "DeadlineExceeded",
                            "Job was active longer than specified deadline",
                            ended[0],
                        )
                    )
                rows += [
                    (kind, reason, message, ended[0]) for kind, reason, message in session.outcome.events
                ]
        if session.deleted is not None:
            rows.append(
                ("Normal", "Killing", f"Stopping container {session.type}-{session.id}", session.deleted)
            )
        header = ("TYPE", "REASON", "MESSAGE", "FIRST-TIME", "LAST-TIME")
        table = [header] + [(k, r, m, _iso(t), _iso(t)) for k, r, m, t in rows]
        # kubectl -o custom-columns pads every column but the last to its widest cell plus three spaces.
        widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
        lines = [
            "".join(cell.ljust(widths[i] + 3) for i, cell in enumerate(row[:-1])) + row[-1] for row in table
        ]
        return "\n".join(lines) + "\n"

    def _logs(self, session: FakeSession, now: float) -> str:
        if session.outcome.stuck_pending or now < self._started(session):
            return ""
        if session.outcome.logs is not None:
            return session.outcome.logs
        if session.type != "headless":
            return f"[I {_iso(self._started(session))} ServerApp] Jupyter Server is running at /session/{session.id}\n"
        return ""

    # -- HTTP ------------------------------------------------------------------------------------------------
    def _authenticate(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if token and (token in self.tokens or (self.oidc is not None and self.oidc.valid(token))):
            return None
        with self._lock:
            self.unauthorized += 1
        if token and self.oidc is not None and self.oidc.expired(token):
            return _text("Token has expired", 401)
        return _text("Unauthorized", 401)

    def _injected_failure(self, method: str) -> Response | None:
        with self._lock:
            for index, (wanted, status) in enumerate(self._failures):
                if wanted is None or wanted == method:
                    del self._failures[index]
                    return _text("Service is temporarily unavailable", status, **{"Retry-After": "1"})
        return None

    def app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.middleware("http")
        async def record(request: Request, call_next: Any) -> Response:
            response: Response = await call_next(request)
            query: dict[str, list[str]] = {}
            for key, value in request.query_params.multi_items():
                query.setdefault(key, []).append(value)
            with self._lock:
                self.requests.append(
                    Recorded(
                        request.method, request.url.path, query, dict(request.headers), response.status_code
                    )
                )
            return response

        if self.oidc is not None:
            app.include_router(self.oidc.router(), prefix="/oidc")

        @app.get("/skaha/capabilities")
        def capabilities() -> Response:
            return Response(CAPABILITIES.format(base=self.url), media_type="text/xml")

        @app.get("/skaha/availability")
        def availability() -> Response:
            return Response(AVAILABILITY, media_type="text/xml")

        @app.api_route("/skaha/{api}/{resource}", methods=["GET", "POST", "DELETE", "PUT"])
        async def collection(api: str, resource: str, request: Request) -> Response:
            failure = self._gate(api, request)
            if failure is not None:
                return failure
            if resource == "session":
                if request.method == "GET":
                    return self._list(request)
                if request.method == "POST":
                    return self._create(request, await _params(request))
            elif resource == "context" and request.method == "GET":
                return JSONResponse(self.context)
            elif resource == "image" and request.method == "GET":
                wanted = request.query_params.get("type")
                return JSONResponse([i for i in self.images if not wanted or wanted in i["types"]])
            elif resource == "repository" and request.method == "GET":
                return JSONResponse(list(self.harbor_hosts))
            else:
                return _text(f"not found: {resource}", 404)
            return _text(f"method not allowed: {request.method}", 405)

        @app.api_route("/skaha/{api}/session/{session_id}", methods=["GET", "POST", "DELETE"])
        async def one(api: str, session_id: str, request: Request) -> Response:
            failure = self._gate(api, request)
            if failure is not None:
                return failure
            params = await _params(request)
            now = time.time()
            with self._lock:
                session = self.sessions.get(session_id)
                status = self._status(session, now) if session else None
                if session is not None and status is None:
                    del self.sessions[session_id]
                    session = None
                if request.method == "DELETE":
                    # Skaha logs and swallows deletion errors: 200 whether or not there was anything to delete.
                    if session is not None and session.deleted is None:
                        if self._swallow_deletes:
                            self._swallow_deletes -= 1
                        else:
                            session.deleted = now
                    return _text("")
                if session is None or status is None:
                    return _text(f"session {session_id} not found", 404)
                if request.method == "POST":
                    actions = params.get("action")
                    action = actions[0] if actions else None
                    if action is None:
                        return _text("Cannot modify an existing session", 400)
                    if action != "renew":
                        return _text("unrecognized action", 400)
                    session.expiry = max(session.expiry, now + self.session_lifetime)
                    session.renewals += 1
                    return _text("")
                view = request.query_params.get("view")
                if view == "logs":
                    return _text(self._logs(session, now))
                if view == "events":
                    return _text(self._events(session, now))
                return JSONResponse(self._json(session, status))

        return app

    def _gate(self, api: str, request: Request) -> Response | None:
        if api not in ("v0", "v1"):
            return _text(f"not found: /skaha/{api}", 404)
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        return self._injected_failure(request.method)

    def _list(self, request: Request) -> Response:
        wanted_type = request.query_params.get("type")
        wanted_status = request.query_params.get("status")
        view = request.query_params.get("view")
        now = time.time()
        with self._lock:
            live = self._live(now)
            if view == "stats":
                cores = sum(s.cores or 1 for s, status in live if status in ("Pending", "Running"))
                ram = sum(s.ram or 1 for s, status in live if status in ("Pending", "Running"))
                return JSONResponse(
                    {
                        "cores": {
                            "requestedCPUCores": cores,
                            "cpuCoresAvailable": 64,
                            "maxCPUCores": {"cpuCores": 16, "withRam": "192G"},
                        },
                        "ram": {
                            "requestedRAM": f"{ram}G",
                            "ramAvailable": "256G",
                            "maxRAM": {"ram": "192G", "withCPUCores": 16},
                        },
                    }
                )
            items = []
            for session, status in live:
                if view != "all" and session.userid != self.user:
                    continue
                if wanted_type and session.type != wanted_type:
                    continue
                if session.type == "desktop-app" and wanted_type != "desktop-app":
                    continue
                if wanted_status and status.lower() != wanted_status.lower():
                    continue
                if view == "interactive" and session.type == "headless":
                    continue
                if view == "all":
                    items.append(
                        {
                            "userid": session.userid,
                            "type": session.type,
                            "status": status,
                            "startTime": _iso(session.created),
                        }
                    )
                else:
                    items.append(self._json(session, status))
        return JSONResponse(items)

    def _create(self, request: Request, params: dict[str, list[str]]) -> Response:
        def one(key: str) -> str | None:
            values = params.get(key)
            return values[0] if values else None

        image = one("image")
        name = one("name")
        session_type = one("type") or "headless"
        if not image:
            return _text("Missing parameter 'image'", 400)
        if not name:
            return _text("Missing parameter 'name'", 400)
        if session_type not in SESSION_TYPES:
            return _text(f"Invalid session type: {session_type}", 400)
        if not re.fullmatch(r"[A-Za-z0-9-]+", name):
            return _text(f"name must only contain alpha-numeric chars and '-': {name}", 400)
        registry_auth = request.headers.get("x-skaha-registry-auth")
        host = image.split("/")[0] if "/" in image else ""
        if host not in self.harbor_hosts:
            # A private registry is allowed only with credentials for it.
            try:
                decoded = base64.b64decode(registry_auth or "", validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            if ":" not in decoded:
                return _text("image not in a trusted repository", 400)
        sizes: dict[str, int | None] = {}
        for key, section in (("cores", "cores"), ("ram", "memoryGB")):
            raw = one(key)
            if raw is None:
                sizes[key] = None
                continue
            try:
                value = int(float(raw))
            except ValueError:
                return _text(f"Invalid value for '{key}': {raw}", 400)
            if value not in self.context[section]["options"]:
                return _text(f"Invalid value for '{key}': {raw}", 400)
            sizes[key] = value
        env: dict[str, str] = {}
        for pair in params.get("env", []):
            parts = pair.split("=")
            if len(parts) == 2 and parts[0] and parts[1]:
                env[parts[0]] = parts[1]
        args_text = one("args")
        with self._lock:
            if session_type != "headless":
                active = [
                    s
                    for s, status in self._live(time.time())
                    if s.userid == self.user and s.type != "headless" and status in ("Pending", "Running")
                ]
                if len(active) >= self.max_interactive:
                    return _text(
                        f"User {self.user} has reached the maximum of {self.max_interactive} active sessions.",
                        400,
                    )
            session = self._new_session(
                name=name,
                image=image,
                type=session_type,
                cores=sizes["cores"],
                ram=sizes["ram"],
                cmd=one("cmd") if session_type == "headless" else None,
                args=[a for a in args_text.split(" ") if a]
                if args_text and session_type == "headless"
                else [],
                env=env if session_type == "headless" else {},
                userid=self.user,
                registry_auth=registry_auth,
                params=params,
            )
            self.created += 1
        return _text(f"{session.id}\n")


async def _params(request: Request) -> dict[str, list[str]]:
    """Query and form parameters together, as cadc ``SyncInput`` reads them."""
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        # Parsed here rather than with request.form(), which needs python-multipart.
        body = (await request.body()).decode("utf-8", errors="replace")
        for key, value in parse_qsl(body, keep_blank_values=True):
            params.setdefault(key, []).append(value)
    return params
