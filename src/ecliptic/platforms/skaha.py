"""The CANFAR Skaha platform: sessions run as Skaha sessions (headless jobs, notebooks, desktops, CARTA, …).

Skaha's REST API (``<url>/v1/session``) is called with httpx and a bearer token from
:mod:`ecliptic.platforms.tokens` (static, a file, or an OIDC refresh grant kept fresh in the background).

Everything a later call needs is in Skaha itself or in ``<workdir>/.ecliptic/skaha/``, so any broker process
can poll or stop a session, also after a crash:

* ``intent.json`` — written before the session is created, with the name it gets. The name is derived from
  the session UUID, so a launch that died between Skaha's answer and the record finds its session by name
  in Skaha's list instead of creating a second one.
* ``session.json`` — the Skaha session ID, once known.
* ``deleted`` — written before we DELETE, so a session that then disappears counts as released, not lost.
* ``renew.json`` — when we last renewed, so a Skaha that does not move the expiry (it may cap it) is not
  asked again at every poll, only every half ``renew_margin``.

The ``max_sessions`` setting, or Skaha's own ``maxInteractiveSessions``, bounds interactive (non-headless)
sessions per user, as the server does. The planner can call :meth:`SkahaPlatform.has_room` (or
:meth:`SkahaPlatform.active_sessions` and :meth:`SkahaPlatform.session_limit`) to answer NO before offering;
a launch that still runs into the limit raises :class:`SkahaSessionLimitError`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import logging
import re
import threading
import time
from collections.abc import Generator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

import ecliptic
from ecliptic.broker import kinds
from ecliptic.config import IsoDuration
from ecliptic.durable import write_json_atomic, write_text_atomic
from ecliptic.isotime import IsoTimeError, format_instant, parse_instant, utcnow
from ecliptic.platforms.base import (
    COMMAND_KIND,
    Connector,
    LaunchSpec,
    PlatformInfo,
    RunState,
    RunStatus,
)
from ecliptic.platforms.config import PlatformConfig
from ecliptic.platforms.supervisor import (
    CONTROL_DIR,
    LOGS_DIR,
    STDOUT_LOG,
    read_json,
)
from ecliptic.platforms.tokens import StaticToken, TokenError, TokenSource, token_source

log = logging.getLogger(__name__)

SESSION_TYPES = frozenset(
    {"carta", "contributed", "desktop", "notebook", "headless", "desktop-app", "firefly"}
)
"""What Skaha accepts as ``type``; anything else is a 400 there, so it is refused here first."""

PENDING_STATUSES = frozenset({"Pending"})
RUNNING_STATUSES = frozenset({"Running"})
ENDING_STATUSES = frozenset({"Terminating"})
SUCCEEDED_STATUSES = frozenset({"Succeeded", "Completed"})
FAILED_STATUSES = frozenset({"Failed", "Error"})
"""Current servers say Completed and Failed; older ones (and the OpenAPI text) Succeeded and Error."""

PULL_FAILURES = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
"""Container states that keep a session Pending for ever. Kubelet reports them in Warning events (reason
``Failed``, message ``Error: ErrImagePull``); after ``image_pull_grace`` they count as failure."""

CONNECTOR_KINDS = {
    "notebook": "urn:jupyter-notebook",
    "desktop": "urn:ecliptic:connector:desktop",
    "carta": "urn:ecliptic:connector:carta",
    "contributed": "urn:ecliptic:connector:contributed",
    "firefly": "urn:ecliptic:connector:firefly",
    "desktop-app": "urn:ecliptic:connector:desktop-app",
}
PORTAL_CONNECTOR = "urn:ecliptic:connector:science-portal"

NAME_LIMIT = 40
"""Skaha copies the name into Kubernetes labels (at most 63 characters); this leaves room for its own parts."""

SKAHA_DIR = "skaha"
INTENT_FILE = "intent.json"
SESSION_FILE = "session.json"
DELETED_FILE = "deleted"
RENEW_FILE = "renew.json"
LOCK_FILE = "launch.lock"

REDELETE_AFTER = 30.0
"""Skaha logs and swallows deletion errors (DELETE always answers 200): a session still Running this many
seconds after our DELETE is deleted again."""

DETAIL_LIMIT = 4000
LOG_TAIL_LINES = 20


# -- errors --------------------------------------------------------------------------------------------------


class SkahaError(RuntimeError):
    """Skaha refused or could not be reached; ``retryable`` says whether the same call may succeed later."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable


class SkahaAuthError(SkahaError):
    """The credentials were refused (401) or the account may not use Skaha (403)."""


class SkahaSessionLimitError(SkahaError):
    """The account already has as many interactive sessions as Skaha (or ``max_sessions``) allows."""


# -- configuration -------------------------------------------------------------------------------------------


class SkahaConfig(PlatformConfig):
    type: Literal["skaha"] = "skaha"
    url: str = Field(description="Skaha's service root, with /skaha: e.g. https://ws-uv.canfar.net/skaha.")
    api: str = Field(default="v1", pattern=r"^v[0-9]+$")
    session_type: str = Field(
        default="headless",
        description="The Skaha session type for container executables that do not ask for one.",
    )
    default_image: str | None = Field(
        default=None,
        description="The image command executables run in (headless); without it the platform offers "
        "container and notebook executables only.",
    )
    notebook_image: str = Field(
        default="images.canfar.net/skaha/base-notebook:latest",
        description="The image for jupyter-notebook executables that name none.",
    )
    token: SecretStr | None = None
    token_file: Path | None = Field(
        default=None, description="A file holding the token, kept fresh by something else; re-read on change."
    )
    oidc_token_url: str | None = Field(
        default=None, description="An OIDC token endpoint for the refresh-token grant."
    )
    client_id: str | None = None
    client_secret: SecretStr | None = None
    refresh_token: SecretStr | None = None
    refresh_margin: IsoDuration = Field(
        default=timedelta(seconds=60),
        description="Refresh the access token this long before it expires (at most halfway through its life).",
    )
    registry_auth: SecretStr | None = Field(
        default=None,
        description="Credentials for a private image registry, as user:secret or its base64 "
        "(sent as X-Skaha-Registry-Auth when a session is created).",
    )
    max_sessions: int | None = Field(
        default=None,
        ge=0,
        description="Interactive sessions this account may have at once; defaults to Skaha's own limit.",
    )
    renew_margin: IsoDuration = Field(
        default=timedelta(hours=1),
        description="Renew a session whose Skaha expiry is this close and earlier than the booked end.",
    )
    image_pull_grace: IsoDuration = Field(
        default=timedelta(minutes=5),
        description="A session Pending this long with image-pull failure events counts as failed.",
    )
    portal_url: str | None = Field(
        default=None, description="The science portal; defaults to /science-portal/ on Skaha's host."
    )
    timeout: float = Field(default=30.0, gt=0, description="Seconds for one HTTP request to Skaha.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.strip().rstrip("/")

    @field_validator("session_type")
    @classmethod
    def _check_type(cls, value: str) -> str:
        if value not in SESSION_TYPES:
            raise ValueError(f"{value!r} is not a Skaha session type ({', '.join(sorted(SESSION_TYPES))})")
        return value

    @model_validator(mode="after")
    def _check_tokens(self) -> SkahaConfig:
        chosen = [
            name
            for name, value in (
                ("token", self.token),
                ("token_file", self.token_file),
                ("oidc_token_url", self.oidc_token_url),
            )
            if value
        ]
        if len(chosen) != 1:
            raise ValueError(
                "configure exactly one of token, token_file, or oidc_token_url (with client_id and "
                "refresh_token)" + (f"; got {' and '.join(chosen)}" if chosen else "")
            )
        if self.oidc_token_url and not (self.client_id and self.refresh_token):
            raise ValueError("oidc_token_url needs client_id and refresh_token")
        return self

    def tokens(self) -> TokenSource:
        return token_source(
            token=self.token.get_secret_value() if self.token else None,
            token_file=self.token_file,
            oidc_token_url=self.oidc_token_url,
            client_id=self.client_id,
            client_secret=self.client_secret.get_secret_value() if self.client_secret else None,
            refresh_token=self.refresh_token.get_secret_value() if self.refresh_token else None,
            refresh_margin=self.refresh_margin,
        )

    def registry_header(self) -> str | None:
        """The X-Skaha-Registry-Auth value: base64 of ``user:secret``, whichever form was configured."""
        if self.registry_auth is None:
            return None
        value = self.registry_auth.get_secret_value().strip()
        if ":" in value:
            return base64.b64encode(value.encode()).decode()
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError("registry_auth is neither user:secret nor its base64") from exc
        if ":" not in decoded:
            raise ValueError("registry_auth is neither user:secret nor its base64")
        return value


def build(name: str, config: SkahaConfig) -> SkahaPlatform:
    return SkahaPlatform(name, config)


# -- the platform --------------------------------------------------------------------------------------------


class _BearerAuth(httpx.Auth):
    """Sends the current token; a 401 makes the source drop it, and the request is sent once more if a
    different token is to be had (a token that expired in flight, or one rotated in the file)."""

    def __init__(self, tokens: TokenSource) -> None:
        self.tokens = tokens

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.tokens.bearer()
        request.headers["Authorization"] = f"Bearer {token}"
        # What Skaha's own clients send with a bearer token.
        request.headers["X-Skaha-Authentication-Type"] = "RUNTIME-TOKEN"
        response = yield request
        if response.status_code != 401:
            return
        self.tokens.invalidate(token)
        try:
            fresh = self.tokens.bearer()
        except TokenError:
            return
        if fresh != token:
            request.headers["Authorization"] = f"Bearer {fresh}"
            yield request


class SkahaPlatform:
    def __init__(
        self,
        name: str,
        config: SkahaConfig,
        *,
        tokens: TokenSource | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.tokens = tokens or config.tokens()
        self._registry_header = config.registry_header()
        self._http = httpx.Client(
            base_url=f"{config.url}/{config.api}/",
            auth=_BearerAuth(self.tokens),
            headers={"Accept": "application/json", "User-Agent": f"ecliptic/{ecliptic.__version__}"},
            timeout=config.timeout,
            transport=transport,
        )
        prepare = {"executable": 0.0, "compute": 120.0, "storage": 0.0}
        prepare.update(config.prepare_seconds)
        self._info = PlatformInfo(
            name=name,
            capacity=config.capacity(),
            # Command executables need an image to run in: without default_image only containers are offered.
            executable_kinds=frozenset(
                {kinds.DOCKER, kinds.JUPYTER} | ({COMMAND_KIND} if config.default_image else set())
            ),
            # Skaha took about two minutes from Pending to Running on a real site, although the pull took 1 s.
            prepare_seconds=prepare,
            site=config.site,
            # Data reaches a Skaha session only through the user's home, where prepareData stages it.
            data_kinds=frozenset({kinds.DATA_SKAO}),
        )
        self._context_lock = threading.Lock()
        self._context: dict[str, Any] | None = None
        parts = urlsplit(config.url)
        self.portal_url = config.portal_url or f"{parts.scheme}://{parts.netloc}/science-portal/"

    @property
    def info(self) -> PlatformInfo:
        return self._info

    def close(self) -> None:
        self._http.close()
        self.tokens.close()

    # -- what the planner may ask ----------------------------------------------------------------------------
    def active_sessions(self) -> int:
        """This account's interactive sessions that count against Skaha's limit (Pending or Running, not
        headless), whoever started them. One GET per call: ask once per offer set, not per offer."""
        return sum(
            1
            for item in self._list()
            if item.get("type") != "headless" and item.get("status") in PENDING_STATUSES | RUNNING_STATUSES
        )

    def session_limit(self) -> int | None:
        """``max_sessions`` if configured, else the ``maxInteractiveSessions`` Skaha's context announces."""
        if self.config.max_sessions is not None:
            return self.config.max_sessions
        value = self._context_data().get("maxInteractiveSessions")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def has_room(self, session_type: str = "notebook") -> bool:
        """Whether one more session of ``session_type`` may start now; headless sessions are not limited."""
        if session_type == "headless":
            return True
        limit = self.session_limit()
        return limit is None or self.active_sessions() < limit

    # -- launch ----------------------------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        """Create the Skaha session, unless this session already has one.

        Under a lock file in the workdir (one launch at a time per session on this host), the recorded ID is
        used if there is one; otherwise Skaha's list is searched for the name derived from the session UUID,
        so a launch that crashed after Skaha created the session adopts it; only then is a session created.
        """
        control = _control(spec.workdir)
        name = session_name(spec)
        with _locked(control / LOCK_FILE):
            record = read_json(control / SESSION_FILE)
            if record is not None and isinstance(record.get("id"), str):
                return self._handle(spec, record)
            stopped = read_json(control / DELETED_FILE)
            if stopped is not None:
                raise SkahaError(
                    f"session {spec.session_uuid} was stopped ({stopped.get('reason') or 'on request'}) "
                    "before its Skaha session was recorded; not starting one now"
                )
            params, session_type = self._create_params(spec, name)
            write_json_atomic(
                control / INTENT_FILE,
                {
                    "session": spec.session_uuid,
                    "name": name,
                    "type": session_type,
                    "deadline": format_instant(spec.deadline),
                    "written": format_instant(utcnow()),
                },
            )
            existing = self._find(name)
            if existing is not None:
                session_id = str(existing["id"])
                session_type = str(existing.get("type") or session_type)
                log.info("adopting Skaha session %s (%s) created by an earlier launch", session_id, name)
            else:
                self._check_limit(session_type)
                session_id = self._create(params)
                log.info("created Skaha %s session %s (%s)", session_type, session_id, name)
            record = {
                "id": session_id,
                "name": name,
                "type": session_type,
                "session": spec.session_uuid,
                "deadline": format_instant(spec.deadline),
                "created": format_instant(utcnow()),
            }
            write_json_atomic(control / SESSION_FILE, record)
        return self._handle(spec, record)

    def _handle(self, spec: LaunchSpec, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "platform": self.name,
            "session": spec.session_uuid,
            "id": record["id"],
            "name": record.get("name"),
            "type": record.get("type"),
            "deadline": record.get("deadline") or format_instant(spec.deadline),
        }

    def _create_params(self, spec: LaunchSpec, name: str) -> tuple[list[tuple[str, str]], str]:
        kind = kinds.normalise(spec.executable_kind)
        image = spec.image.locations[0] if spec.image and spec.image.locations else None
        if kind == kinds.JUPYTER:
            session_type = "notebook"
            image = image or self.config.notebook_image
        elif kind == kinds.DOCKER:
            if image is None:
                raise SkahaError("a docker-container executable needs an image")
            session_type = spec.session_type if spec.session_type != "headless" else self.config.session_type
        elif kind == COMMAND_KIND:
            if not spec.command:
                raise SkahaError("a command executable needs at least the program to run")
            session_type = "headless"
            image = image or self.config.default_image
            if image is None:
                raise SkahaError(
                    f"platform {self.name} runs command executables in its default_image, and none is set"
                )
        else:
            raise SkahaError(f"platform {self.name} cannot run executables of kind {spec.executable_kind}")
        if session_type not in SESSION_TYPES:
            raise SkahaError(f"{session_type!r} is not a Skaha session type")
        if spec.image is not None and spec.image.digest:
            image = self._pinned(image, spec.image.digest)
        cores, ram = self._resources(spec.cores, spec.memory_gib)
        params: list[tuple[str, str]] = [
            ("name", name),
            ("image", image),
            ("cores", str(cores)),
            ("ram", str(ram)),
            ("type", session_type),
        ]
        if session_type == "headless":
            if kind == kinds.DOCKER:
                cmd, args = spec.entrypoint, list(spec.command)
            else:
                cmd, args = spec.command[0], list(spec.command[1:])
            if cmd:
                params.append(("cmd", _plain_word(cmd, "the command")))
            if args:
                params.append(("args", " ".join(_plain_word(arg, "an argument") for arg in args)))
            for key, value in sorted(spec.environment.items()):
                params.append(("env", _env_pair(key, value)))
        elif spec.environment or spec.command:
            # Skaha applies cmd, args and env to headless sessions only; an interactive one runs its image.
            log.info("Skaha %s session %s: command and environment are not passed", session_type, name)
        if spec.mounts or spec.ports:
            # A Skaha session sees the user's /arc storage, where prepareData stages data, and is reached
            # through its connectURL; host directories and published ports have no meaning there.
            log.info("Skaha session %s: mounts and ports are not passed", name)
        return params, session_type

    def _pinned(self, image: str, digest: str) -> str:
        """The image reference to launch so that its content is the one with ``digest``."""
        listed = next((item for item in self._images() if item.get("id") == image), None)
        known = listed.get("digest") if listed else None
        if isinstance(known, str) and known:
            if known != digest:
                raise SkahaError(f"the image {image} has digest {known} in Skaha, not the requested {digest}")
            return image
        # Not in Skaha's list: let the cluster pull by digest, which guarantees the content.
        return image if "@" in image else f"{image}@{digest}"

    def _resources(self, cores: int, memory_gib: int) -> tuple[int, int]:
        context = self._context_data()
        return (
            _round_up(cores, _options(context, "cores"), "cores"),
            _round_up(memory_gib, _options(context, "memoryGB"), "GB of RAM"),
        )

    def _check_limit(self, session_type: str) -> None:
        if session_type == "headless" or self.config.max_sessions is None:
            return
        active = self.active_sessions()
        if active >= self.config.max_sessions:
            raise SkahaSessionLimitError(
                f"platform {self.name} allows {self.config.max_sessions} interactive Skaha sessions at once, "
                f"and {active} are active",
                status=None,
            )

    def _create(self, params: list[tuple[str, str]]) -> str:
        headers = {"X-Skaha-Registry-Auth": self._registry_header} if self._registry_header else None
        # The query string, as the canfar client sends them; Skaha reads query and form parameters alike.
        response = self._request("POST", "session", "create a session", params=params, headers=headers)
        session_id = response.text.strip()
        if not re.fullmatch(r"[A-Za-z0-9-]+", session_id):
            raise SkahaError(f"Skaha answered the create with {session_id[:80]!r}, not a session ID")
        return session_id

    # -- poll ------------------------------------------------------------------------------------------------
    def poll(self, workdir: Path, handle: dict[str, Any]) -> RunStatus:
        control = _control(workdir)
        session_id = self._session_id(control, handle)
        deleted = read_json(control / DELETED_FILE)
        if session_id is None:
            if deleted is not None:
                return RunStatus(
                    RunState.LOST, detail=f"stopped before Skaha started it: {deleted.get('reason')}"
                )
            return RunStatus(RunState.LOST, detail="no Skaha session was created for this session")
        data = self._get_session(session_id)
        if data is None:
            if deleted is not None:
                reason = deleted.get("reason") or "deleted"
                session_type = handle.get("type") or (read_json(control / SESSION_FILE) or {}).get("type")
                if deleted.get("deadline") and session_type == "headless":
                    # A batch job cut off by the booked end did not finish; an interactive one simply ended.
                    return RunStatus(RunState.FAILED, detail=f"stopped: {reason} before the job finished")
                return RunStatus(RunState.SUCCEEDED, detail=f"released: {reason}")
            return RunStatus(
                RunState.LOST,
                detail=f"session vanished: Skaha no longer knows session {session_id} "
                "(it was deleted outside the broker, or it ended and Skaha cleaned it up)",
            )
        status = str(data.get("status") or "")
        now = utcnow()
        deadline = _instant(handle.get("deadline")) or _instant(
            (read_json(control / SESSION_FILE) or {}).get("deadline")
        )
        active = status in PENDING_STATUSES | RUNNING_STATUSES
        if active and deleted is None and deadline is not None and now >= deadline:
            reason = "the booked time is over"
            self._delete(control, session_id, reason, deadline=True)
            return RunStatus(RunState.RUNNING, detail=f"stopping Skaha session {session_id}: {reason}")
        if active and deleted is not None:
            self._delete_again(control, session_id, deleted)
            return RunStatus(RunState.RUNNING, detail=f"Skaha session {session_id} is being deleted")
        if status in PENDING_STATUSES:
            failure = self._pull_failure(control, session_id, now)
            if failure is not None:
                self._save_logs(workdir, session_id)
                return RunStatus(RunState.FAILED, detail=failure)
            self._renew(control, session_id, data, deadline, now)
            return RunStatus(RunState.PENDING, detail=f"Skaha session {session_id} is pending")
        if status in RUNNING_STATUSES:
            self._renew(control, session_id, data, deadline, now)
            return RunStatus(RunState.RUNNING, connectors=self._connectors(data))
        if status in ENDING_STATUSES:
            return RunStatus(RunState.RUNNING, detail=f"Skaha session {session_id} is terminating")
        if status in SUCCEEDED_STATUSES:
            self._save_logs(workdir, session_id)
            return RunStatus(RunState.SUCCEEDED, exit_code=0, detail=f"Skaha session {session_id} completed")
        if status in FAILED_STATUSES:
            self._save_logs(workdir, session_id)
            return RunStatus(RunState.FAILED, detail=self._failure_detail(session_id, status))
        return RunStatus(RunState.PENDING, detail=f"Skaha session {session_id} has status {status!r}")

    def _connectors(self, data: dict[str, Any]) -> tuple[Connector, ...]:
        url = data.get("connectURL")
        session_type = str(data.get("type") or "")
        if not isinstance(url, str) or not url.strip() or session_type == "headless":
            return ()
        kind = CONNECTOR_KINDS.get(session_type, f"urn:ecliptic:connector:{session_type or 'session'}")
        return (
            Connector(kind=kind, protocol=_protocol(url), location=url.strip()),
            Connector(kind=PORTAL_CONNECTOR, protocol=_protocol(self.portal_url), location=self.portal_url),
        )

    def _renew(
        self,
        control: Path,
        session_id: str,
        data: dict[str, Any],
        deadline: datetime | None,
        now: datetime,
    ) -> None:
        expiry_text = data.get("expiryTime")
        expiry = _instant(expiry_text)
        if expiry is None or deadline is None or expiry >= deadline:
            return
        if expiry - now > self.config.renew_margin:
            return
        last = read_json(control / RENEW_FILE) or {}
        renewed = _instant(last.get("renewed"))
        if renewed is not None and now - renewed < self.config.renew_margin / 2:
            return  # renewed lately: a Skaha that did not move the expiry is not asked at every poll
        try:
            self._request("POST", f"session/{session_id}", "renew the session", params={"action": "renew"})
        except SkahaError as exc:
            log.warning("renewing Skaha session %s (expires %s) failed: %s", session_id, expiry_text, exc)
            return
        count = int(last.get("count", 0)) + 1
        write_json_atomic(
            control / RENEW_FILE,
            {"expiry": expiry_text, "renewed": format_instant(now), "count": count},
        )
        log.info("renewed Skaha session %s, which was to expire at %s", session_id, expiry_text)

    def _pull_failure(self, control: Path, session_id: str, now: datetime) -> str | None:
        record = read_json(control / SESSION_FILE) or {}
        created = _instant(record.get("created"))
        if created is None or now - created < self.config.image_pull_grace:
            return None
        events = self._text(session_id, "events")
        found = {
            word
            for row in _event_rows(events)
            if row and row[0] == "Warning"
            for word in PULL_FAILURES
            if re.search(rf"\b{word}\b", " ".join(row[1:3]))
        }
        if not found:
            return None
        return _clip(
            f"Skaha session {session_id} cannot start its container ({', '.join(sorted(found))}); "
            f"events:\n{events.strip()}"
        )

    def _failure_detail(self, session_id: str, status: str) -> str:
        parts = [f"Skaha session {session_id} {status.lower()}"]
        events = self._text(session_id, "events").strip()
        if events and events != "<none>":
            parts.append(f"events:\n{events}")
        logs = self._text(session_id, "logs").rstrip()
        if logs:
            parts.append("last log lines:\n" + "\n".join(logs.splitlines()[-LOG_TAIL_LINES:]))
        return _clip("\n".join(parts))

    def _save_logs(self, workdir: Path, session_id: str) -> None:
        """Keep the log where the broker's log endpoint reads it: Skaha forgets a session an hour after it ends."""
        text = self._text(session_id, "logs")
        if not text:
            return
        target = workdir / LOGS_DIR / STDOUT_LOG
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(target, text)
        except OSError as exc:
            log.warning("cannot keep the log of Skaha session %s in %s: %s", session_id, target, exc)

    # -- stop, logs ------------------------------------------------------------------------------------------
    def stop(self, workdir: Path, handle: dict[str, Any], reason: str, *, wait: float = 10.0) -> None:
        """DELETE the session and wait up to ``wait`` seconds for Skaha to start removing it.

        Skaha answers 200 even when the deletion failed inside it, so the session is looked at until it is
        Terminating or gone, and deleted again if it is not. Safe to repeat, also after it is gone.
        """
        control = _control(workdir)
        reason = reason.strip() or "on request"
        # Under the launch lock: a launch in flight either records its session first (and it is deleted
        # here) or finds the marker written here and starts nothing.
        with _locked(control / LOCK_FILE):
            session_id = self._session_id(control, handle)
            if session_id is None:
                if not (control / DELETED_FILE).exists():
                    write_json_atomic(
                        control / DELETED_FILE, {"id": None, "reason": reason, "at": format_instant(utcnow())}
                    )
                return
            self._delete(control, session_id, reason)
        until = time.monotonic() + wait
        deleted_at = time.monotonic()
        again = min(2.0, wait / 4)
        while time.monotonic() < until:
            data = self._get_session(session_id)
            status = None if data is None else data.get("status")
            if status is None or status in ENDING_STATUSES:
                return
            if time.monotonic() - deleted_at >= again:
                self._request("DELETE", f"session/{session_id}", "delete the session")
                deleted_at = time.monotonic()
            time.sleep(min(0.25, max(0.0, until - time.monotonic())))
        log.warning("Skaha session %s is still there %.0f s after DELETE", session_id, wait)

    def logs(self, workdir: Path, handle: dict[str, Any]) -> str:
        session_id = self._session_id(_control(workdir), handle)
        text = self._text(session_id, "logs", quiet=False) if session_id else ""
        if text:
            return text
        try:
            return (workdir / LOGS_DIR / STDOUT_LOG).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _delete(self, control: Path, session_id: str, reason: str, *, deadline: bool = False) -> None:
        if not (control / DELETED_FILE).exists():
            # Before the DELETE: a crash after it must still find that the session's end was ours.
            write_json_atomic(
                control / DELETED_FILE,
                {"id": session_id, "reason": reason, "deadline": deadline, "at": format_instant(utcnow())},
            )
        self._request("DELETE", f"session/{session_id}", "delete the session")
        log.info("deleted Skaha session %s: %s", session_id, reason)

    def _delete_again(self, control: Path, session_id: str, deleted: dict[str, Any]) -> None:
        since = _instant(deleted.get("again") or deleted.get("at"))
        if since is not None and (utcnow() - since).total_seconds() < REDELETE_AFTER:
            return
        log.warning("Skaha session %s is still there after DELETE; deleting it again", session_id)
        write_json_atomic(control / DELETED_FILE, {**deleted, "again": format_instant(utcnow())})
        try:
            self._request("DELETE", f"session/{session_id}", "delete the session")
        except SkahaError as exc:
            log.warning("deleting Skaha session %s again failed: %s", session_id, exc)

    # -- Skaha calls -----------------------------------------------------------------------------------------
    def _session_id(self, control: Path, handle: dict[str, Any]) -> str | None:
        value = handle.get("id")
        if isinstance(value, str) and value:
            return value
        record = read_json(control / SESSION_FILE)
        if record is not None and isinstance(record.get("id"), str):
            return str(record["id"])
        # The broker may hold no handle when a launch died before answering: the intent names the session.
        intent = read_json(control / INTENT_FILE)
        if intent is None or not isinstance(intent.get("name"), str):
            return None
        found = self._find(str(intent["name"]))
        return str(found["id"]) if found is not None else None

    def _list(self) -> list[dict[str, Any]]:
        body = self._request("GET", "session", "list sessions").json()
        if not isinstance(body, list):
            raise SkahaError("Skaha's session list is not a JSON array", retryable=True)
        return [item for item in body if isinstance(item, dict)]

    def _find(self, name: str) -> dict[str, Any] | None:
        matches = [item for item in self._list() if item.get("name") == name and item.get("id")]
        if len(matches) > 1:
            log.warning("Skaha has %d sessions named %s; using the oldest", len(matches), name)
        matches.sort(key=lambda item: (str(item.get("startTime") or ""), str(item["id"])))
        return matches[0] if matches else None

    def _get_session(self, session_id: str) -> dict[str, Any] | None:
        response = self._lookup(f"session/{session_id}", "look at the session")
        if response is None:
            return None
        body = response.json()
        if not isinstance(body, dict):
            raise SkahaError(f"Skaha's answer for session {session_id} is not a JSON object", retryable=True)
        return body

    def _text(self, session_id: str, view: str, *, quiet: bool = True) -> str:
        """A text view (``logs``, ``events``); empty when there is none or, if ``quiet``, when it fails."""
        try:
            response = self._lookup(
                f"session/{session_id}", f"read the session's {view}", params={"view": view}
            )
        except SkahaError as exc:
            if not quiet:
                raise
            log.debug("reading the %s of Skaha session %s failed: %s", view, session_id, exc)
            return ""
        return response.text if response is not None else ""

    def _images(self) -> list[dict[str, Any]]:
        body = self._request("GET", "image", "list images").json()
        return [item for item in body if isinstance(item, dict)] if isinstance(body, list) else []

    def _context_data(self) -> dict[str, Any]:
        with self._context_lock:
            if self._context is None:
                body = self._request("GET", "context", "read the resource context").json()
                self._context = body if isinstance(body, dict) else {}
            return self._context

    def _request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        response = self._send(method, path, what, params=params, headers=headers)
        if not response.is_success:
            raise self._error(response, what)
        return response

    def _lookup(self, path: str, what: str, *, params: Any = None) -> httpx.Response | None:
        """A GET for something that may be gone: None on 404."""
        response = self._send("GET", path, what, params=params, headers=None)
        if response.status_code == 404:
            return None
        if not response.is_success:
            raise self._error(response, what)
        return response

    def _send(
        self, method: str, path: str, what: str, *, params: Any, headers: dict[str, str] | None
    ) -> httpx.Response:
        try:
            return self._http.request(method, path, params=params, headers=headers)
        except TokenError as exc:
            raise SkahaAuthError(
                f"no token for Skaha (platform {self.name}): {exc}", retryable=exc.retryable
            ) from exc
        except httpx.HTTPError as exc:
            raise SkahaError(
                f"cannot reach Skaha at {self.config.url} to {what}: {exc}", retryable=True
            ) from exc

    def _error(self, response: httpx.Response, what: str) -> SkahaError:
        code = response.status_code
        message = response.text.strip()[:500] or response.reason_phrase
        where = f"Skaha at {self.config.url}"
        if code == 401:
            # A token that can change (a file, a refresh grant) may be fixed without touching the broker.
            return SkahaAuthError(
                f"{where} refused the credentials of platform {self.name} (401: {message}); "
                "check its token, token_file or OIDC settings",
                status=code,
                retryable=not isinstance(self.tokens, StaticToken),
            )
        if code == 403:
            return SkahaAuthError(
                f"{where} does not allow this account to {what} (403: {message}); "
                "it may not be in a group that may use Skaha",
                status=code,
            )
        if code == 400 and "has reached the maximum of" in message:
            return SkahaSessionLimitError(f"{where} cannot {what}: {message}", status=code)
        retryable = code >= 500 or code == 429
        return SkahaError(f"{where} could not {what} ({code}: {message})", status=code, retryable=retryable)


# -- helpers -------------------------------------------------------------------------------------------------


def session_name(spec: LaunchSpec) -> str:
    """A Skaha name (``[A-Za-z0-9-]+``) that is the same at every launch of one session: readable part first,
    then the UUID's first twelve hex digits, which is what makes it ours."""
    suffix = re.sub(r"[^A-Za-z0-9]", "", spec.session_uuid)[:12].lower()
    base = re.sub(r"[^A-Za-z0-9]+", "-", spec.name).strip("-")[: NAME_LIMIT - len(suffix) - 1].strip("-")
    if not base or suffix.startswith(base.lower()):
        base = "ecliptic"
    return f"{base}-{suffix}" if suffix else base


def _control(workdir: Path) -> Path:
    control = workdir.absolute() / CONTROL_DIR / SKAHA_DIR
    control.mkdir(parents=True, exist_ok=True)
    return control


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _options(context: dict[str, Any], key: str) -> list[int]:
    section = context.get(key)
    values = section.get("options") if isinstance(section, dict) else None
    if not isinstance(values, list):
        return []
    return sorted(int(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool))


def _round_up(value: int, options: list[int], what: str) -> int:
    """The smallest size Skaha offers that is at least ``value`` (it refuses sizes not in its options)."""
    if not options:
        return value
    for option in options:
        if option >= value:
            return option
    raise SkahaError(f"{value} {what} is more than Skaha offers (at most {options[-1]})")


def _plain_word(text: str, what: str) -> str:
    # Skaha joins args with spaces and splits them again on spaces: nothing with whitespace survives.
    if not text or re.search(r"\s", text):
        raise SkahaError(
            f"{what} {text!r} cannot be passed to Skaha, which splits arguments on spaces; "
            "put the command in a script in the image or the user's home and run that"
        )
    return text


def _env_pair(key: str, value: str) -> str:
    # Skaha splits each env on "=" and keeps it only if that gives exactly two non-empty parts.
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise SkahaError(f"{key!r} is not an environment variable name Skaha can set")
    if not value or "=" in value:
        raise SkahaError(f"Skaha drops environment variables whose value is empty or contains '=': {key}")
    return f"{key}={value}"


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value.strip() or value.strip() == "<none>":
        return None
    try:
        return parse_instant(value)
    except IsoTimeError:
        return None


def _protocol(url: str) -> str:
    return (urlsplit(url).scheme or "https").upper()


def _event_rows(table: str) -> list[list[str]]:
    """The rows of ``?view=events`` (kubectl custom columns ``TYPE REASON MESSAGE FIRST-TIME LAST-TIME``),
    split on runs of two or more spaces, as kubectl pads its columns; the message may hold single spaces."""
    rows = []
    for line in table.splitlines():
        if not line.strip() or line.startswith("TYPE ") or line.strip() == "<none>":
            continue
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def _clip(text: str) -> str:
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 1] + "…"
