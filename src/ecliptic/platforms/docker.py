"""The Docker and Podman platform: each session is one container on a Docker-API daemon (dockerd or Podman).

A container is named ``ecliptic-<session uuid>`` and labelled with the session, its workdir and its deadline,
so any broker process finds a session's container from the session alone, and the daemon's refusal of a
second container with the same name is what makes concurrent launches start only one. What must outlive the
container lives in files under ``<workdir>/.ecliptic/``:

``container.json``
    What was launched: the container's name and id, the resolved image, the deadline, the ports.
``stop``
    Written by ``stop`` (its text is the reason) before the container is touched, so a container found gone
    afterwards is known to be gone on purpose; a launch that finds it starts nothing.
``exit.json``
    The result, written once, by whoever sees the end first (a ``poll`` seeing the exit, a ``stop``, the
    deadline), and always before the container is removed, after its output has been copied to
    ``<workdir>/logs/stdout.txt`` and ``stderr.txt``.

Decisions that differ from the reference broker:

* The booked cores and memory are applied as ``NanoCpus`` and ``Memory`` and checked on the created
  container. A daemon that discards or refuses them gets the launch refused (:class:`DockerError`), never a
  container without limits.
* Containers get ``network_mode`` ``none`` or ``host``, never a bridge. With ``none`` nothing can be published,
  so a launch with ports is refused; with ``host`` the executable's ports are reported on ``127.0.0.1`` (and are
  whatever the executable binds on the host: ``host`` is for operators who trust their images).
* Docker has no deadline of its own: the container is stopped by the first ``poll`` after ``spec.deadline``
  (the broker polls at least every 10 s).
* The session workdir is mounted read-write at :data:`WORKDIR` and is the working directory of command
  executables; container executables keep their image's working directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ecliptic.broker.kinds import DOCKER as DOCKER_KIND
from ecliptic.config import IsoDuration
from ecliptic.durable import write_bytes_atomic, write_json_atomic, write_json_once, write_text_atomic
from ecliptic.isotime import format_instant, parse_instant, utcnow
from ecliptic.platforms.base import (
    COMMAND_KIND,
    Connector,
    Image,
    LaunchSpec,
    PlatformInfo,
    Port,
    RunState,
    RunStatus,
)
from ecliptic.platforms.config import PlatformConfig
from ecliptic.platforms.local import read_logs
from ecliptic.platforms.supervisor import (
    CONTROL_DIR,
    EXIT_FILE,
    LOGS_DIR,
    REASON_DEADLINE,
    REASON_EXITED,
    REASON_STOPPED,
    STDERR_LOG,
    STDOUT_LOG,
    STOP_FILE,
    describe_exit,
    read_json,
)

if TYPE_CHECKING:
    from docker import APIClient

__all__ = [
    "DOCKER_KIND",
    "WORKDIR",
    "DockerConfig",
    "DockerError",
    "DockerPlatform",
    "build",
]

WORKDIR = "/ecliptic/work"
"""Where the session's workdir is mounted in every container."""

CONTAINER_FILE = "container.json"
REASON_NOT_STARTED = "not-started"
PORT_CONNECTOR = "urn:ecliptic:connector:port"
PODMAN_SOCKET = "unix:///run/podman/podman.sock"
LIVE_LOG_LINES = 2000
NAME_WAIT = 10.0

LABEL_SESSION = "ecliptic.session"
LABEL_PLATFORM = "ecliptic.platform"
LABEL_WORKDIR = "ecliptic.workdir"
LABEL_DEADLINE = "ecliptic.deadline"

_FINISHED = frozenset({"exited", "dead", "stopped"})
_RUNNING = frozenset({"running", "paused", "restarting"})


class DockerConfig(PlatformConfig):
    """``[platforms.<name>]`` with ``type = "docker"`` or ``"podman"`` (Podman through its Docker-compatible API).

    For example ``type = "podman"``, ``network = "host"``, ``default_image = "python:3.12-slim"``, ``cores = 8``.
    """

    type: Literal["docker", "podman"]
    host: str | None = Field(
        default=None,
        description="The daemon's API URL, DOCKER_HOST-style (unix:///run/docker.sock, tcp://host:2376). "
        "Unset: DOCKER_HOST, else CONTAINER_HOST (the other way round for podman), else the usual socket.",
    )
    network: Literal["none", "host"] = Field(
        default="none",
        description="none: only loopback inside the container, no ports; host: the host's network, ports "
        "reported on 127.0.0.1. Bridge networks are never used.",
    )
    pull: bool = Field(
        default=True,
        description="Pull an image that is not on the daemon yet (else such a launch is refused).",
    )
    default_image: str | None = Field(
        default=None,
        description="The image command executables run in; without it the platform offers container "
        "executables only.",
    )
    user: str | None = Field(default=None, description="uid[:gid] to run as; the image's user when unset.")
    stop_grace: IsoDuration = Field(
        default=timedelta(seconds=5), description="How long a stopped container may take before it is killed."
    )
    pull_seconds: float = Field(
        default=60.0, ge=0, description="The estimated time to pull an image that is not on the daemon."
    )
    api_timeout: IsoDuration = Field(default=timedelta(seconds=60))


class DockerError(Exception):
    """A launch refused, or a daemon that cannot be reached; ``retryable`` says whether trying again may work."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


def build(name: str, config: DockerConfig) -> DockerPlatform:
    return DockerPlatform(name, config)


def resolve_host(config: DockerConfig) -> str | None:
    """The daemon URL to use; None means the Docker SDK's own default socket."""
    if config.host:
        return config.host
    names = (
        ("CONTAINER_HOST", "DOCKER_HOST") if config.type == "podman" else ("DOCKER_HOST", "CONTAINER_HOST")
    )
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return PODMAN_SOCKET if config.type == "podman" else None


def container_name(session_uuid: str) -> str:
    return f"ecliptic-{session_uuid}"


class DockerPlatform:
    def __init__(self, name: str, config: DockerConfig) -> None:
        import docker  # noqa: F401  (fail at configuration time when the optional extra is missing)

        self.name = name
        self.config = config
        estimates = {
            "executable": config.pull_seconds if config.pull else 1.0,
            "compute": 1.0,
            "storage": 0.0,
        }
        estimates.update(config.prepare_seconds)
        kinds = {DOCKER_KIND} | ({COMMAND_KIND} if config.default_image else set())
        self._info = PlatformInfo(
            name=name,
            capacity=config.capacity(),
            executable_kinds=frozenset(kinds),
            prepare_seconds=estimates,
            site=config.site,
            workdir_in_run=WORKDIR,
        )
        self._client: APIClient | None = None
        self._client_lock = threading.Lock()

    @property
    def info(self) -> PlatformInfo:
        return self._info

    @property
    def api(self) -> APIClient:
        """The daemon's client, made on first use: a daemon that is down when the broker starts is no error yet."""
        with self._client_lock:
            if self._client is None:
                import docker
                from docker.utils import kwargs_from_env

                kwargs = kwargs_from_env()
                host = resolve_host(self.config)
                if host:
                    kwargs["base_url"] = host
                self._client = docker.APIClient(
                    version="auto", timeout=max(1, round(self.config.api_timeout.total_seconds())), **kwargs
                )
            return self._client

    @contextlib.contextmanager
    def _daemon_errors(self) -> Iterator[None]:
        """Whatever the SDK or its HTTP layer raise about the daemon becomes a retryable :class:`DockerError`."""
        import docker
        import requests

        try:
            yield
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            where = resolve_host(self.config) or "the default socket"
            raise DockerError(
                f"the container daemon at {where} failed: {_explain(exc)}", retryable=True
            ) from exc

    def prepare_estimate(self, image: Image | None) -> float:
        """Seconds to get ``image`` ready here: about one when the daemon has it, the pull estimate if not."""
        import docker

        image = image or self._default_image()
        if image is None:
            return 1.0
        for location in image.locations:
            try:
                with self._daemon_errors():
                    details = self._inspect_image(location)
            except (DockerError, docker.errors.DockerException):
                continue
            if image.digest is None or _digest_matches(details, image.digest):
                return 1.0
        return self.config.pull_seconds

    # -- launch ----------------------------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        """Create and start the session's container, unless it exists or the session already ended or stopped.

        A container left created by a launch that died before starting it is started by the next launch.
        Raises :class:`DockerError` when it refuses the launch (``retryable`` false: the image cannot be had,
        its digest differs, the limits would not be applied, ports without a network) or cannot reach the
        daemon (``retryable`` true).
        """
        if spec.executable_kind not in self._info.executable_kinds:
            raise DockerError(f"platform {self.name} does not run executables of kind {spec.executable_kind}")
        if spec.executable_kind == COMMAND_KIND and not spec.command:
            raise DockerError("a command executable needs at least the program to run")
        with self._daemon_errors():
            return self._launch(spec)

    def _launch(self, spec: LaunchSpec) -> dict[str, Any]:
        import docker

        workdir = spec.workdir.absolute()
        control = workdir / CONTROL_DIR
        control.mkdir(parents=True, exist_ok=True)
        (workdir / LOGS_DIR).mkdir(exist_ok=True)
        name = container_name(spec.session_uuid)
        handle: dict[str, Any] = {
            "platform": self.name,
            "session": spec.session_uuid,
            "container": name,
            "workdir": str(workdir),
            "deadline": format_instant(spec.deadline),
            "network": self.config.network,
            "ports": [_port_json(p) for p in spec.ports],
        }
        if (control / EXIT_FILE).exists() or (control / STOP_FILE).exists():
            return {**(read_json(control / CONTAINER_FILE) or {}), **handle}
        if spec.ports and self.config.network == "none":
            raise DockerError(
                f"platform {self.name} runs containers without a network (network = 'none'), so the ports "
                f"{', '.join(str(p.internal) for p in spec.ports)} cannot be reached; use a platform with "
                "network = 'host'"
            )
        if spec.deadline <= utcnow():
            write_json_once(
                control / EXIT_FILE,
                {"reason": REASON_DEADLINE, "message": "the deadline passed before launch"},
            )
            return handle
        existing = self._inspect(name)
        if existing is None:
            image = self._resolve_image(spec)
            try:
                existing = self._create(spec, workdir, name, image, handle)
            except docker.errors.APIError as exc:
                if not _name_taken(exc):
                    raise
                # Another launch of the same session created it first: that one is ours too. The daemon
                # reserves the name before the container can be inspected, so give it a moment to appear.
                until = time.monotonic() + NAME_WAIT
                while (existing := self._inspect(name)) is None and time.monotonic() < until:
                    time.sleep(0.05)
                if existing is None:
                    raise DockerError(
                        f"container {name} was created and removed during this launch", retryable=True
                    ) from exc
        handle["id"] = existing["Id"]
        handle["image"] = existing.get("Image")
        record = read_json(control / CONTAINER_FILE)
        if record is not None and record.get("id") == existing["Id"]:
            if record.get("warnings"):
                handle["warnings"] = record["warnings"]
        else:
            write_json_atomic(control / CONTAINER_FILE, {**handle, "written": format_instant(utcnow())})
        if _status(existing) == "created" and not existing["State"].get("Error"):
            self._start(control, name)
        if (control / STOP_FILE).exists():
            # A stop that ran while this launch was creating the container found nothing to stop.
            self._halt(workdir, name, REASON_STOPPED, _read_text(control / STOP_FILE) or "on request")
        return handle

    def _create(
        self, spec: LaunchSpec, workdir: Path, name: str, image: str, handle: dict[str, Any]
    ) -> dict[str, Any]:
        import docker

        command: list[str] | None = list(spec.command) or None
        entrypoint: list[str] | None = [spec.entrypoint] if spec.entrypoint else None
        working_dir: str | None = None
        if spec.executable_kind == COMMAND_KIND:
            # The argv is the whole command line, so an ENTRYPOINT of the image must not wrap it.
            if entrypoint is None and command:
                entrypoint, command = command[:1], command[1:]
            working_dir = WORKDIR
        environment = dict(spec.environment)
        # Set last so a client cannot make the executable believe it is another session.
        environment["ECLIPTIC_SESSION"] = spec.session_uuid
        environment["ECLIPTIC_WORKDIR"] = WORKDIR
        mounts = [docker.types.Mount(WORKDIR, str(workdir), type="bind", read_only=False)]
        for mount in spec.mounts:
            target = PurePosixPath(WORKDIR) / mount.target
            mounts.append(
                docker.types.Mount(
                    str(target), str(mount.source.absolute()), type="bind", read_only=mount.read_only
                )
            )
        nano_cpus = int(spec.cores * 1_000_000_000)
        memory = int(spec.memory_gib) * 2**30
        host_config = self.api.create_host_config(
            mounts=mounts,
            network_mode=self.config.network,
            nano_cpus=nano_cpus,
            mem_limit=memory,
            # Equal to the memory limit: no swap on top of the memory that was booked.
            memswap_limit=memory,
        )
        labels = {
            LABEL_SESSION: spec.session_uuid,
            LABEL_PLATFORM: self.name,
            LABEL_WORKDIR: str(workdir),
            LABEL_DEADLINE: format_instant(spec.deadline),
        }
        try:
            created = self.api.create_container(
                image,
                command=command,
                entrypoint=entrypoint,
                environment=[f"{k}={v}" for k, v in environment.items()],
                working_dir=working_dir,
                user=self.config.user,
                labels=labels,
                name=name,
                host_config=host_config,
                detach=True,
                tty=False,
            )
        except docker.errors.APIError as exc:
            if _name_taken(exc):
                raise
            raise DockerError(
                f"the daemon would not create container {name}: {_explain(exc)}",
                retryable=exc.is_server_error(),
            ) from exc
        warnings = [str(w) for w in created.get("Warnings") or [] if w]
        if warnings:
            handle["warnings"] = warnings
        details = self._inspect(name)
        if details is None:
            raise DockerError(f"container {name} vanished right after it was created", retryable=True)
        applied = details.get("HostConfig") or {}
        if applied.get("NanoCpus") != nano_cpus or applied.get("Memory") != memory:
            self._remove(name)
            said = f" (the daemon said: {'; '.join(warnings)})" if warnings else ""
            raise DockerError(
                f"the daemon did not apply the limits of {spec.cores} cores and {spec.memory_gib} GiB to "
                f"container {name}: it has NanoCpus={applied.get('NanoCpus')}, Memory={applied.get('Memory')}"
                f"{said}; Ecliptic does not run containers without the limits they were booked with"
            )
        return details

    def _start(self, control: Path, name: str) -> None:
        """Start the container; a start the runtime refuses becomes the run's failed result, as for a local run."""
        import docker

        try:
            self.api.start(name)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if not exc.is_client_error() and not _is_start_failure(exc):
                raise
            message = _explain(exc)
            if "cgroup" in message:
                message = (
                    f"the container runtime refused the cpu/memory limits ({message}); Ecliptic does not run "
                    "containers without the limits they were booked with"
                )
            write_json_once(control / EXIT_FILE, {"reason": REASON_NOT_STARTED, "message": message})
            self._remove(name)

    def _resolve_image(self, spec: LaunchSpec) -> str:
        """The id of the first of the image's locations that is on the daemon (or, failing that, pulls) with the
        wanted content."""
        import docker

        image = spec.image if spec.image is not None else self._default_image()
        if image is None:
            if spec.executable_kind == COMMAND_KIND:
                raise DockerError(
                    f"platform {self.name} has no default_image for command executables, and none was given"
                )
            raise DockerError("a container executable needs an image")
        if not image.locations:
            raise DockerError("the image has no location")
        wanted = _normal_digest(image.digest) if image.digest else None
        problems: list[str] = []
        for location in image.locations:
            try:
                details = self._inspect_image(location)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                problems.append(f"{location}: {_explain(exc)}")
                continue
            if wanted is None or _digest_matches(details, wanted):
                return str(details["Id"])
            problems.append(f"{location} is on the daemon with another content ({_digests(details)})")
        if not self.config.pull:
            problems.append(f"pulling is off on platform {self.name}")
        else:
            for location in image.locations:
                reference = _pinned(location, wanted) if wanted else location
                try:
                    self._pull(reference)
                    details = self._inspect_image(reference)
                except docker.errors.DockerException as exc:
                    problems.append(f"pulling {reference} failed: {_explain(exc)}")
                    continue
                if wanted is None or _digest_matches(details, wanted):
                    return str(details["Id"])
                problems.append(f"{reference} was pulled with another content ({_digests(details)})")
        pin = f" with digest {wanted}" if wanted else ""
        raise DockerError(
            f"no location of the image{pin} could be used: {'; '.join(problems) or 'none is on the daemon'}"
        )

    def _pull(self, reference: str) -> None:
        import docker

        for event in self.api.pull(reference, stream=True, decode=True):
            if isinstance(event, dict) and event.get("error"):
                raise docker.errors.DockerException(str(event["error"]))

    def _default_image(self) -> Image | None:
        return Image((self.config.default_image,)) if self.config.default_image else None

    # -- poll ------------------------------------------------------------------------------------------------
    def poll(self, workdir: Path, handle: dict[str, Any]) -> RunStatus:
        with self._daemon_errors():
            return self._poll(workdir.absolute(), handle)

    def _poll(self, workdir: Path, handle: dict[str, Any]) -> RunStatus:
        control = workdir / CONTROL_DIR
        result = read_json(control / EXIT_FILE)
        if result is not None:
            return _status_from_result(result)
        name = self._name(control, handle)
        details = self._inspect(name) if name else None
        if details is None:
            result = read_json(control / EXIT_FILE)
            if result is not None:
                return _status_from_result(result)
            reason = _read_text(control / STOP_FILE)
            if reason is not None:
                return RunStatus(RunState.FAILED, detail=f"stopped: {reason}")
            if (control / CONTAINER_FILE).exists():
                return RunStatus(
                    RunState.LOST,
                    detail=f"container {name} is gone and recorded no result "
                    "(removed outside Ecliptic, or its daemon lost it)",
                )
            return RunStatus(RunState.LOST, detail="the run was never launched")
        status = _status(details)
        state = details.get("State") or {}
        if _ended(details):
            return _status_from_result(self._finish(control, name, details))
        deadline = _deadline(details, handle)
        if deadline is not None and utcnow() >= deadline:
            message = f"deadline {format_instant(deadline)} reached"
            self._halt(workdir, name, REASON_DEADLINE, message)
            return _status_from_result(
                read_json(control / EXIT_FILE) or {"reason": REASON_DEADLINE, "message": message}
            )
        if status in _RUNNING or state.get("Running"):
            return RunStatus(RunState.RUNNING, connectors=self._connectors(control, handle))
        return RunStatus(RunState.PENDING, detail=f"container {name} is {status or 'being set up'}")

    def _finish(self, control: Path, name: str, details: dict[str, Any]) -> dict[str, Any]:
        """Keep the output and the exit of a container that ended by itself; the first record wins."""
        self._save_logs(control.parent, name)
        state = details.get("State") or {}
        code = state.get("ExitCode")
        record: dict[str, Any] = {
            "reason": REASON_EXITED,
            "exit_code": code if isinstance(code, int) else None,
            "oom_killed": bool(state.get("OOMKilled")),
            "finished": state.get("FinishedAt"),
            "last_line": _last_line(control.parent),
        }
        if _status(details) == "created" and state.get("Error"):
            record = {"reason": REASON_NOT_STARTED, "message": str(state["Error"])}
        write_json_once(control / EXIT_FILE, record)
        return read_json(control / EXIT_FILE) or record

    def _connectors(self, control: Path, handle: dict[str, Any]) -> tuple[Connector, ...]:
        ports = handle.get("ports")
        if ports is None:
            ports = (read_json(control / CONTAINER_FILE) or {}).get("ports") or []
        if self.config.network != "host":
            return ()
        return tuple(_connector(port) for port in ports if isinstance(port, dict))

    # -- stop ------------------------------------------------------------------------------------------------
    def stop(self, workdir: Path, handle: dict[str, Any], reason: str) -> None:
        workdir = workdir.absolute()
        control = workdir / CONTROL_DIR
        name = self._name(control, handle)
        if workdir.is_dir():
            control.mkdir(exist_ok=True)
            if not (control / STOP_FILE).exists():
                write_text_atomic(control / STOP_FILE, (reason.strip() or "on request") + "\n")
        if name:
            with self._daemon_errors():
                self._halt(workdir, name, REASON_STOPPED, reason.strip() or "on request")

    def _halt(self, workdir: Path, name: str, reason: str, message: str) -> None:
        """Stop and remove the container, recording its output and how it ended first."""
        import docker

        control = workdir / CONTROL_DIR
        details = self._inspect(name)
        if details is not None and _ended(details) and workdir.is_dir():
            # It ended by itself before anyone noticed: that, not this stop, is how it ended.
            self._finish(control, name, details)
        elif details is not None and _status(details) in _RUNNING:
            try:
                self.api.stop(name, timeout=max(0, round(self.config.stop_grace.total_seconds())))
            except docker.errors.NotFound:
                details = None
            else:
                details = self._inspect(name)
        if workdir.is_dir():
            control.mkdir(exist_ok=True)
            if details is not None and not (control / EXIT_FILE).exists():
                self._save_logs(workdir, name)
            state = (details or {}).get("State") or {}
            code = state.get("ExitCode") if details is not None and _status(details) in _FINISHED else None
            write_json_once(
                control / EXIT_FILE,
                {
                    "reason": reason,
                    "message": message,
                    "exit_code": code if isinstance(code, int) else None,
                    "finished": format_instant(utcnow()),
                },
            )
        if details is not None:
            self._remove(name)

    # -- logs ------------------------------------------------------------------------------------------------
    def logs(self, workdir: Path, handle: dict[str, Any]) -> str:
        """The live container's output while it runs, the saved files once it ended (or cannot be reached)."""
        workdir = workdir.absolute()
        control = workdir / CONTROL_DIR
        name = self._name(control, handle)
        if not (control / EXIT_FILE).exists() and name:
            try:
                with self._daemon_errors():
                    parts = [
                        self.api.logs(name, stdout=True, stderr=False, tail=LIVE_LOG_LINES),
                        self.api.logs(name, stdout=False, stderr=True, tail=LIVE_LOG_LINES),
                    ]
            except DockerError:
                pass
            else:
                return "".join(_text(part) for part in parts)
        return read_logs(workdir)

    def _save_logs(self, workdir: Path, name: str) -> None:
        import docker

        logs = workdir / LOGS_DIR
        logs.mkdir(exist_ok=True)
        for file, stdout in ((STDOUT_LOG, True), (STDERR_LOG, False)):
            try:
                chunks = self.api.logs(name, stdout=stdout, stderr=not stdout, stream=True, follow=False)
                write_bytes_atomic(logs / file, chunks)
            except docker.errors.NotFound:
                return

    # -- daemon helpers --------------------------------------------------------------------------------------
    def _inspect(self, name: str) -> dict[str, Any] | None:
        import docker

        try:
            details: dict[str, Any] = self.api.inspect_container(name)
        except docker.errors.NotFound:
            return None
        return details

    def _remove(self, name: str) -> None:
        import docker

        try:
            self.api.remove_container(name, force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            # 409: the daemon is already removing it (another stop got there first).
            if exc.status_code != 409:
                raise

    def _inspect_image(self, reference: str) -> dict[str, Any]:
        details: dict[str, Any] = self.api.inspect_image(reference)  # type: ignore[no-untyped-call]
        return details

    @staticmethod
    def _name(control: Path, handle: dict[str, Any]) -> str:
        name = handle.get("container")
        if isinstance(name, str) and name:
            return name
        session = handle.get("session")
        if isinstance(session, str) and session:
            return container_name(session)
        record = read_json(control / CONTAINER_FILE) or {}
        return str(record.get("container") or "")


# -- helpers -------------------------------------------------------------------------------------------------


def _status(details: dict[str, Any]) -> str:
    return str((details.get("State") or {}).get("Status") or "").lower()


def _ended(details: dict[str, Any]) -> bool:
    """Exited, or never started because the runtime refused it (Docker keeps such a container as created)."""
    status = _status(details)
    return status in _FINISHED or (status == "created" and bool((details.get("State") or {}).get("Error")))


def _normal_digest(digest: str) -> str:
    digest = digest.strip().lower()
    return digest if ":" in digest else f"sha256:{digest}"


def _digest_matches(details: dict[str, Any], digest: str) -> bool:
    """The image's id is the digest of its config, a repo digest that of a manifest: either pins the content."""
    digest = _normal_digest(digest)
    if str(details.get("Id", "")).lower() == digest:
        return True
    return any(str(rd).split("@", 1)[-1].lower() == digest for rd in details.get("RepoDigests") or [])


def _digests(details: dict[str, Any]) -> str:
    repo = [str(rd).split("@", 1)[-1] for rd in details.get("RepoDigests") or []]
    return ", ".join([f"id {details.get('Id')}", *(f"digest {d}" for d in repo)])


def _pinned(location: str, digest: str) -> str:
    """``location`` by content: ``registry/name:tag`` becomes ``registry/name@<digest>``."""
    name = location.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return f"{name}@{digest}"


def _explain(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    text = explanation.decode("utf-8", "replace") if isinstance(explanation, bytes) else explanation
    return str(text or exc).strip()


def _name_taken(exc: Exception) -> bool:
    """Docker answers a taken name with 409, Podman with 500 and words."""
    return getattr(exc, "status_code", None) == 409 or "already in use" in _explain(exc)


def _is_start_failure(exc: Exception) -> bool:
    """A runtime error of the container itself (bad executable, refused limits), not of the daemon."""
    text = _explain(exc).lower()
    return any(word in text for word in ("oci runtime", "runc", "crun", "exec:", "executable", "cgroup"))


def _port_json(port: Port) -> dict[str, Any]:
    return {"internal": port.internal, "protocol": port.protocol, "path": port.path}


def _connector(port: dict[str, Any]) -> Connector:
    protocol = str(port.get("protocol") or "TCP").upper()
    address = f"127.0.0.1:{int(port['internal'])}"
    if protocol in ("HTTP", "HTTPS"):
        path = str(port.get("path") or "/")
        location = f"{protocol.lower()}://{address}{path if path.startswith('/') else '/' + path}"
    else:
        location = address
    return Connector(kind=PORT_CONNECTOR, protocol=protocol, location=location)


def _deadline(details: dict[str, Any], handle: dict[str, Any]) -> datetime | None:
    labels = (details.get("Config") or {}).get("Labels") or {}
    for value in (labels.get(LABEL_DEADLINE), handle.get("deadline")):
        if value:
            try:
                return parse_instant(str(value))
            except ValueError:
                continue
    return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip() or "on request"
    except OSError:
        return None


def _text(data: Any) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)


def _tail_lines(path: Path, limit: int = 4096) -> Iterator[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - limit))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return
    yield from (line.strip() for line in reversed(text.splitlines()) if line.strip())


def _last_line(workdir: Path) -> str | None:
    for name in (STDERR_LOG, STDOUT_LOG):
        for line in _tail_lines(workdir / LOGS_DIR / name):
            return line[:500]
    return None


def _describe_code(code: int) -> str:
    """Like a local exit, but a container's main process killed by signal N exits with 128 + N."""
    if 128 < code < 128 + 65:
        try:
            signame = f", {signal.Signals(code - 128).name}"
        except ValueError:
            signame = ""
        return f"{describe_exit(code)} (killed by signal {code - 128}{signame})"
    return describe_exit(code)


def _status_from_result(result: dict[str, Any]) -> RunStatus:
    code = result.get("exit_code")
    code = code if isinstance(code, int) else None
    reason = result.get("reason")
    message = result.get("message") or ""
    how = f", {_describe_code(code)}" if code is not None else ""
    if reason == REASON_EXITED and code == 0:
        return RunStatus(RunState.SUCCEEDED, exit_code=0, detail=describe_exit(0))
    if reason == REASON_EXITED:
        detail = _describe_code(code) if code is not None else "exited with an unknown code"
        if result.get("oom_killed"):
            detail = f"killed for running out of memory (over its memory limit), {detail}"
        if result.get("last_line"):
            detail += f"; last output: {result['last_line']}"
    elif reason == REASON_DEADLINE:
        detail = f"stopped: {message or 'deadline reached'}{how}"
    elif reason == REASON_STOPPED:
        detail = f"stopped: {message or 'on request'}{how}"
    elif reason == REASON_NOT_STARTED:
        detail = f"the container could not start: {message}"
    else:
        detail = f"ended ({reason}): {message}{how}"
    return RunStatus(RunState.FAILED, exit_code=code, detail=detail)
