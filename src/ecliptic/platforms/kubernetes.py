"""The Kubernetes platform: each session runs as one batch/v1 Job with one pod, through the official client.

Launch creates a Job named ``ecliptic-<first 8 hex of the session UUID>`` labelled with the session, with
``backoffLimit: 0`` and ``restartPolicy: Never`` (a session runs its executable once: a retry would repeat
side effects and spend booked time), ``activeDeadlineSeconds`` up to the booked end (counted by the Job
controller from the Job's start), and requests equal to limits, so the scheduler places it only where the
booked cores and memory really are. Command, args and env values have every ``$`` doubled, because the
kubelet expands ``$(VAR)`` in them and Docker does not.

What poll learns is kept under ``<workdir>/.ecliptic/kubernetes.json``: where the Job is, and once it has
finished, its result. The pod's log is copied to ``<workdir>/logs/stdout.txt`` then (the kubelet keeps stdout
and stderr as one stream), and also by every poll in the last seconds before the deadline, because at the
deadline the Job controller deletes the pod and its log with it. So a finished run keeps its result and log
after the Job's ``ttlSecondsAfterFinished`` has removed it, and any broker process can poll or stop any run.

Storage: the session workdir is mounted at its own path inside the container, and is its working directory,
so the paths the broker hands the executable mean the same thing there. With ``storage = "hostPath"`` the
workdir and mount sources must be at the same paths on the nodes (one node, or a shared file system); with
``storage = "pvc"`` they must lie under ``pvc_root``, the broker's mount of the claim ``pvc_name``, and
become subPaths of it. A mount whose target is relative lands inside the workdir.

Connectors: for each port the run publishes, ``poll`` reports the pod's own address, ``status.podIP:port``
(``http://podIP:port/path`` for HTTP and HTTPS). That address is reachable from inside the cluster and its
nodes; clients elsewhere need a Service, an Ingress or ``kubectl port-forward``, which this platform does
not create.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import Field, model_validator

from ecliptic.config import IsoDuration
from ecliptic.durable import write_json_atomic, write_text_atomic
from ecliptic.isotime import format_duration, format_instant, utcnow
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
    LOGS_DIR,
    STDOUT_LOG,
    describe_exit,
    read_json,
)

if TYPE_CHECKING:
    from kubernetes.client import (
        ApiClient,
        CoreV1Event,
        V1ContainerStateTerminated,
        V1Job,
        V1JobCondition,
        V1ObjectMeta,
        V1Pod,
        V1Volume,
        V1VolumeMount,
    )
    from kubernetes.client.exceptions import ApiException

DOCKER_KIND = (
    "https://www.purl.org/ivoa.net/Calycopis-openapi/schema/v1.0/kinds/executable/docker-container.yaml"
)
"""The same URI as ``ecliptic.broker.kinds.DOCKER``, spelt out so that platforms do not depend on the broker."""

PORT_CONNECTOR = "urn:ecliptic:connector:port"

SESSION_LABEL = "ecliptic.io/session"
PLATFORM_LABEL = "ecliptic.io/platform"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "ecliptic"
NAME_ANNOTATION = "ecliptic.io/name"
CONTAINER = "session"
STATE_FILE = "kubernetes.json"

LOG_TAIL_LINES = 5000
DEADLINE_LOG_GUARD = timedelta(seconds=15)
"""Polls this close to the Job's deadline keep a copy of the log: more than the broker's longest poll interval."""
LOG_LIMIT = 64 * 1024
MAX_WARNINGS = 3

_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CREATED_POD = re.compile(r"^Created pod: (\S+)$")

T = TypeVar("T")


class KubernetesError(RuntimeError):
    """A Kubernetes API call failed; ``status`` is the HTTP status when the API server answered."""

    def __init__(self, message: str, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class KubernetesConfig(PlatformConfig):
    """``[platforms.<name>]`` with ``type = "kubernetes"``.

    The API server is reached, in this order of preference: ``api_url`` with ``token`` (direct); the
    kubeconfig file ``kubeconfig`` and/or its context ``context``; the pod's service account when the broker
    itself runs in the cluster; the default kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``).
    """

    type: Literal["kubernetes"] = "kubernetes"
    namespace: str = "default"
    kubeconfig: str | None = None
    context: str | None = None
    api_url: str | None = Field(default=None, description="e.g. https://k8s.example.org:6443")
    token: str | None = Field(default=None, repr=False, description="A bearer token, with api_url.")
    ca_cert: str | None = Field(default=None, description="A CA bundle file for api_url's TLS certificate.")
    verify_tls: bool = True
    default_image: str = Field(
        default="debian:bookworm-slim", description="The image that command executables run in."
    )
    storage: Literal["hostPath", "pvc"] = "hostPath"
    pvc_name: str | None = None
    pvc_root: str | None = Field(
        default=None,
        description="With storage = 'pvc': where the broker has the claim mounted; session workdirs and "
        "mount sources must be under it.",
    )
    service_account: str | None = Field(
        default=None,
        description="The pods' service account; without one no API token is mounted into them.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    run_as_user: int | None = Field(default=None, ge=0)
    run_as_group: int | None = Field(default=None, ge=0)
    ttl_after_finished: IsoDuration = Field(
        default=timedelta(hours=1),
        description="How long a finished Job stays for inspection (the broker has its result already).",
    )
    request_timeout: IsoDuration = Field(default=timedelta(seconds=30))

    @model_validator(mode="after")
    def _consistent(self) -> KubernetesConfig:
        if not _DNS_LABEL.match(self.namespace):
            raise ValueError(f"namespace {self.namespace!r} is not a valid Kubernetes namespace name")
        if self.api_url is not None and (self.kubeconfig is not None or self.context is not None):
            raise ValueError("give either api_url (with token) or kubeconfig/context, not both")
        if self.token is not None and self.api_url is None:
            raise ValueError("token is used with api_url; a kubeconfig carries its own credentials")
        if self.storage == "pvc":
            if not self.pvc_name or not self.pvc_root:
                raise ValueError("storage = 'pvc' needs pvc_name and pvc_root")
            if not Path(self.pvc_root).is_absolute():
                raise ValueError("pvc_root must be an absolute path")
        return self


def build(name: str, config: KubernetesConfig) -> KubernetesPlatform:
    return KubernetesPlatform(config, name=name)


class KubernetesPlatform:
    def __init__(self, config: KubernetesConfig, name: str = "kubernetes") -> None:
        _require_client()
        from kubernetes import client

        self.config = config
        self._name = name
        self._api = _api_client(config)
        self._batch = client.BatchV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self._timeout = max(0.1, config.request_timeout.total_seconds())
        self._info = PlatformInfo(
            name=name,
            capacity=config.capacity(),
            executable_kinds=frozenset({DOCKER_KIND, COMMAND_KIND}),
            prepare_seconds={"executable": 30, "compute": 5, "storage": 0, **config.prepare_seconds},
            site=config.site,
        )

    @property
    def info(self) -> PlatformInfo:
        return self._info

    @property
    def api_host(self) -> str:
        return str(self._api.configuration.host)

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]  # the client leaves it unannotated

    # -- launch ----------------------------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        """Create the session's Job, or find the one an earlier call created.

        The Job's name follows from the session, so a repeated or concurrent launch meets the first one's Job
        as 409 AlreadyExists and adopts it. Once the workdir records a Job, launch starts nothing again, even
        after the Job has finished and been removed.
        """
        workdir = spec.workdir.absolute()
        (workdir / CONTROL_DIR).mkdir(parents=True, exist_ok=True)
        (workdir / LOGS_DIR).mkdir(exist_ok=True)
        state = _read_state(workdir)
        if state.get("session") == spec.session_uuid and state.get("job"):
            return _handle(self._name, state)
        body = self._job_body(spec, workdir)
        job = self._create_or_adopt(body, spec.session_uuid)
        state = {
            "session": spec.session_uuid,
            "namespace": self.config.namespace,
            "job": _meta(job).name,
            "uid": _meta(job).uid,
            "ports": [_port_record(port) for port in spec.ports],
            "launched": format_instant(utcnow()),
        }
        write_json_atomic(workdir / CONTROL_DIR / STATE_FILE, state)
        return _handle(self._name, state)

    def _create_or_adopt(self, body: V1Job, session: str) -> V1Job:
        namespace = self.config.namespace
        for name in _job_names(session):
            _meta(body).name = name
            try:
                return self._call("create the Job", self._batch.create_namespaced_job, namespace, body)
            except KubernetesError as exc:
                if exc.status != 409:
                    raise
            existing = self._read_job(namespace, name)
            if existing is None:
                # Gone between the create and the read (stopped, or removed after finishing): starting it
                # again would run the session twice, so let the caller find out what happened.
                raise KubernetesError(f"Job {namespace}/{name} vanished while it was being adopted")
            if (_meta(existing).labels or {}).get(SESSION_LABEL) == session:
                return existing
        raise KubernetesError(f"Jobs for session {session} are taken by other sessions in {namespace}")

    def _job_body(self, spec: LaunchSpec, workdir: Path) -> V1Job:
        from kubernetes import client

        if not _LABEL_VALUE.match(spec.session_uuid) or not spec.session_uuid:
            raise ValueError(f"session id {spec.session_uuid!r} cannot be a Kubernetes label value")
        image, command, args = self._program(spec)
        environment = dict(spec.environment)
        if spec.executable_kind == COMMAND_KIND:
            environment["HOME"] = str(workdir)
        # Set last so that a client cannot make the executable believe it is another session.
        environment["ECLIPTIC_SESSION"] = spec.session_uuid
        environment["ECLIPTIC_WORKDIR"] = str(workdir)
        volumes, mounts = self._storage(spec, workdir)
        quantities: dict[str, str] = {}
        if spec.cores > 0:
            quantities["cpu"] = str(spec.cores)
        if spec.memory_gib > 0:
            quantities["memory"] = f"{spec.memory_gib}Gi"
        container = client.V1Container(
            name=CONTAINER,
            image=image,
            image_pull_policy=self.config.image_pull_policy,
            command=_escaped(command),
            args=_escaped(args),
            working_dir=str(workdir),
            env=[client.V1EnvVar(name=key, value=_escape(value)) for key, value in environment.items()],
            resources=client.V1ResourceRequirements(requests=dict(quantities), limits=dict(quantities)),
            volume_mounts=mounts,
            ports=[
                client.V1ContainerPort(
                    container_port=port.internal, protocol="UDP" if port.protocol.upper() == "UDP" else "TCP"
                )
                for port in spec.ports
            ]
            or None,
        )
        security = None
        if self.config.run_as_user is not None or self.config.run_as_group is not None:
            security = client.V1PodSecurityContext(
                run_as_user=self.config.run_as_user, run_as_group=self.config.run_as_group
            )
        labels = {SESSION_LABEL: spec.session_uuid, MANAGED_BY_LABEL: MANAGED_BY}
        if _LABEL_VALUE.match(self._name):
            labels[PLATFORM_LABEL] = self._name
        annotations = {NAME_ANNOTATION: spec.name} if spec.name else None
        remaining = (spec.deadline - utcnow()).total_seconds()
        return client.V1Job(
            api_version="batch/v1",
            kind="Job",
            metadata=client.V1ObjectMeta(
                name=_job_names(spec.session_uuid)[0],
                namespace=self.config.namespace,
                labels=dict(labels),
                annotations=annotations,
            ),
            spec=client.V1JobSpec(
                backoff_limit=0,
                active_deadline_seconds=max(1, math.ceil(remaining)),
                ttl_seconds_after_finished=int(self.config.ttl_after_finished.total_seconds()),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=dict(labels), annotations=annotations),
                    spec=client.V1PodSpec(
                        restart_policy="Never",
                        containers=[container],
                        volumes=volumes,
                        service_account_name=self.config.service_account,
                        # A session's executable is the client's code: it gets no API credentials
                        # unless the operator chose a service account for it.
                        automount_service_account_token=self.config.service_account is not None,
                        security_context=security,
                    ),
                ),
            ),
        )

    def _program(self, spec: LaunchSpec) -> tuple[str, list[str] | None, list[str] | None]:
        """The image, and the container's command and args, with Docker's meaning of entrypoint and command."""
        if spec.executable_kind == COMMAND_KIND:
            if not spec.command:
                raise ValueError("a command executable needs at least the program to run")
            image = _image_reference(spec.image) if spec.image else self.config.default_image
            return image, list(spec.command), None
        if spec.executable_kind == DOCKER_KIND:
            if spec.image is None:
                raise ValueError("a docker-container executable needs an image")
            args = list(spec.command) or None
            if spec.entrypoint:
                return _image_reference(spec.image), [spec.entrypoint], args
            return _image_reference(spec.image), None, args
        raise ValueError(f"the Kubernetes platform cannot run executables of kind {spec.executable_kind}")

    def _storage(self, spec: LaunchSpec, workdir: Path) -> tuple[list[V1Volume], list[V1VolumeMount]]:
        from kubernetes import client

        targets = [(workdir, str(workdir), False)]
        for mount in spec.mounts:
            target = mount.target if mount.target.startswith("/") else f"{workdir}/{mount.target}"
            targets.append((mount.source.absolute(), posixpath.normpath(target), mount.read_only))
        seen: set[str] = set()
        for _, target, _ in targets:
            if target in seen:
                raise ValueError(f"two volumes would be mounted at {target}")
            seen.add(target)
        if self.config.storage == "pvc":
            assert self.config.pvc_root is not None
            root = Path(self.config.pvc_root)
            volume = client.V1Volume(
                name="storage",
                persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                    claim_name=self.config.pvc_name
                ),
            )
            mounts = []
            for source, target, read_only in targets:
                try:
                    sub_path = source.relative_to(root).as_posix()
                except ValueError:
                    raise ValueError(
                        f"{source} is not under pvc_root {root}, so the pod cannot see it"
                    ) from None
                mounts.append(
                    client.V1VolumeMount(
                        name="storage",
                        mount_path=target,
                        sub_path=None if sub_path == "." else sub_path,
                        read_only=read_only,
                    )
                )
            return [volume], mounts
        volumes = []
        mounts = []
        for index, (source, target, read_only) in enumerate(targets):
            name = "workdir" if index == 0 else f"mount-{index - 1}"
            # The workdir must already be a directory there: if the node does not share the broker's file
            # system the pod then reports FailedMount, instead of running in an empty directory of its own.
            kind = "Directory" if index == 0 else None
            volumes.append(
                client.V1Volume(
                    name=name, host_path=client.V1HostPathVolumeSource(path=str(source), type=kind)
                )
            )
            mounts.append(client.V1VolumeMount(name=name, mount_path=target, read_only=read_only))
        return volumes, mounts

    # -- poll ------------------------------------------------------------------------------------------------
    def poll(self, workdir: Path, handle: dict[str, Any]) -> RunStatus:
        workdir = workdir.absolute()
        state = _read_state(workdir)
        recorded = _recorded(state)
        if recorded is not None:
            return recorded
        namespace, name = self._where(handle, state)
        if name is None:
            return RunStatus(RunState.LOST, detail="the run was never launched")
        job = self._read_job(namespace, name)
        if job is None:
            return RunStatus(
                RunState.LOST,
                detail=f"the Job {namespace}/{name} is gone and no result was recorded (deleted by someone "
                "else, or removed by its ttlSecondsAfterFinished before it was polled)",
            )
        status, pod = self._observe(namespace, job, _ports(handle, state))
        if status.finished:
            self._finish(workdir, namespace, pod, status)
        elif status.state is RunState.RUNNING and pod is not None and _deadline_near(job):
            # At activeDeadlineSeconds the Job controller deletes the pod, and its log goes with it.
            self._save_log(workdir, namespace, pod)
        return status

    def _observe(self, namespace: str, job: V1Job, ports: list[Port]) -> tuple[RunStatus, V1Pod | None]:
        status = job.status
        conditions: dict[str, V1JobCondition] = {}
        if status is not None:
            conditions = {c.type: c for c in status.conditions or [] if c.status == "True"}
        pods = self._pods(namespace, _pod_selector(job))
        pod = pods[-1] if pods else None
        succeeded = (status.succeeded or 0) if status is not None else 0
        failed = (status.failed or 0) if status is not None else 0
        if "Complete" in conditions or "SuccessCriteriaMet" in conditions or succeeded > 0:
            return RunStatus(RunState.SUCCEEDED, exit_code=0, detail=describe_exit(0)), pod
        failure = conditions.get("Failed") or conditions.get("FailureTarget")
        backoff_limit = job.spec.backoff_limit if job.spec is not None else None
        if failure is not None or failed > (backoff_limit or 0):
            return self._failure(namespace, job, failure, pods), pod
        running = next(
            (p for p in reversed(pods) if p.status is not None and p.status.phase == "Running"), None
        )
        if running is not None or (status is not None and (status.ready or 0) > 0):
            address = running.status.pod_ip if running is not None and running.status is not None else None
            return RunStatus(RunState.RUNNING, connectors=_connectors(address, ports)), running or pod
        return RunStatus(RunState.PENDING, detail=_pending_detail(job, pod)), pod

    def _failure(
        self, namespace: str, job: V1Job, condition: V1JobCondition | None, pods: list[V1Pod]
    ) -> RunStatus:
        parts: list[str] = []
        terminated = _terminated(pods[-1]) if pods else None
        exit_code = terminated.exit_code if terminated is not None else None
        reason = condition.reason if condition is not None else None
        message = condition.message if condition is not None else None
        if reason == "DeadlineExceeded":
            limit = job.spec.active_deadline_seconds if job.spec is not None else None
            booked = format_duration(timedelta(seconds=limit)) if limit is not None else "the booked time"
            parts.append(f"stopped: deadline reached after {booked} ({message or reason})")
        if terminated is not None:
            parts.append(_describe_terminated(terminated))
        elif reason not in (None, "DeadlineExceeded"):
            parts.append(f"{reason}: {message}" if message else str(reason))
        if not parts:
            parts.append("the Job failed")
        warnings = self._warnings(namespace, job, pods, skip={reason} if reason else set())
        if warnings:
            parts.append("events: " + "; ".join(warnings))
        return RunStatus(RunState.FAILED, exit_code=exit_code, detail="; ".join(parts))

    def _warnings(self, namespace: str, job: V1Job, pods: list[V1Pod], skip: set[str]) -> list[str]:
        """The last distinct Warning events of the Job and its pods, also of pods that are gone by now."""
        job_name = str(job.metadata.name) if job.metadata is not None else ""
        job_events = self._events(namespace, "Job", job_name)
        names = [p.metadata.name for p in pods if p.metadata is not None and p.metadata.name]
        for event in job_events:
            match = _CREATED_POD.match(event.message or "")
            if match and match[1] not in names:
                names.append(match[1])
        events = [e for e in job_events if e.reason not in skip]
        for name in names[-MAX_WARNINGS:]:
            events.extend(self._events(namespace, "Pod", name))
        warnings: list[str] = []
        for event in sorted((e for e in events if e.type == "Warning"), key=_event_time):
            text = f"{event.reason}: {event.message}" if event.message else str(event.reason)
            if text in warnings:
                warnings.remove(text)
            warnings.append(text)
        return warnings[-MAX_WARNINGS:]

    def _finish(self, workdir: Path, namespace: str, pod: V1Pod | None, status: RunStatus) -> None:
        if pod is not None:
            self._save_log(workdir, namespace, pod)
        self._record(workdir, status)

    # -- stop ------------------------------------------------------------------------------------------------
    def stop(self, workdir: Path, handle: dict[str, Any], reason: str, *, wait: float = 10.0) -> None:
        """Record how the run ended, delete its Job and pods, and wait up to ``wait`` s for the pods to go.

        The Job is deleted with propagationPolicy Background: the API's default for batch/v1 Jobs is to
        orphan their pods, which would leave the executable running.
        """
        workdir = workdir.absolute()
        state = _read_state(workdir)
        namespace, name = self._where(handle, state)
        session = handle.get("session") or state.get("session")
        if name is not None and _recorded(state) is None:
            job = self._read_job(namespace, name)
            if job is not None:
                status, pod = self._observe(namespace, job, _ports(handle, state))
                if status.finished:
                    self._finish(workdir, namespace, pod, status)
                else:
                    if pod is not None:
                        self._save_log(workdir, namespace, pod)
                    self._record(
                        workdir,
                        RunStatus(RunState.FAILED, detail=f"stopped: {reason.strip() or 'on request'}"),
                    )
        names = {name} if name is not None else set()
        if isinstance(session, str) and session:
            selector = f"{SESSION_LABEL}={session}"
            jobs = self._call(
                "list the session's Jobs", self._batch.list_namespaced_job, namespace, label_selector=selector
            )
            names.update(j.metadata.name for j in jobs.items if j.metadata is not None and j.metadata.name)
        for job_name in sorted(names):
            self._ignore_missing(
                "delete the Job",
                self._batch.delete_namespaced_job,
                job_name,
                namespace,
                propagation_policy="Background",
            )
        if not isinstance(session, str) or not session:
            return
        # The garbage collector deletes the pods in the background; deleting them here as well makes the stop
        # prompt, and also reaches pods that someone orphaned from the Job.
        until = time.monotonic() + wait
        selector = f"{SESSION_LABEL}={session}"
        for pod in self._pods(namespace, selector):
            if pod.metadata is not None and pod.metadata.name and pod.metadata.deletion_timestamp is None:
                self._ignore_missing(
                    "delete a pod", self._core.delete_namespaced_pod, pod.metadata.name, namespace
                )
        while self._pods(namespace, selector) and time.monotonic() < until:
            time.sleep(0.1)

    # -- logs ------------------------------------------------------------------------------------------------
    def logs(self, workdir: Path, handle: dict[str, Any]) -> str:
        workdir = workdir.absolute()
        state = _read_state(workdir)
        if _recorded(state) is not None and (workdir / LOGS_DIR / STDOUT_LOG).exists():
            return read_logs(workdir, LOG_LIMIT)
        namespace, _ = self._where(handle, state)
        session = handle.get("session") or state.get("session")
        pods = (
            self._pods(namespace, f"{SESSION_LABEL}={session}")
            if isinstance(session, str) and session
            else []
        )
        if pods and pods[-1].metadata is not None:
            try:
                text = self._pod_log(namespace, str(pods[-1].metadata.name), tail_lines=LOG_TAIL_LINES)
            except KubernetesError as exc:
                if exc.status not in (400, 404):
                    raise
            else:
                return text[-LOG_LIMIT:]
        return read_logs(workdir, LOG_LIMIT)

    # -- API helpers -----------------------------------------------------------------------------------------
    def _call(self, what: str, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call the API, turning the client's exceptions into a KubernetesError that says what went wrong."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return method(*args, _request_timeout=self._timeout, **kwargs)
        except ApiException as exc:
            raise _api_error(what, self.api_host, exc) from None
        except (HTTPError, OSError) as exc:
            raise KubernetesError(
                f"cannot reach the Kubernetes API at {self.api_host} to {what}: {exc}"
            ) from exc

    def _ignore_missing(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            self._call(what, method, *args, **kwargs)
        except KubernetesError as exc:
            if exc.status != 404:
                raise

    def _read_job(self, namespace: str, name: str) -> V1Job | None:
        try:
            return self._call("read the Job", self._batch.read_namespaced_job, name, namespace)
        except KubernetesError as exc:
            if exc.status == 404:
                return None
            raise

    def _pods(self, namespace: str, selector: str) -> list[V1Pod]:
        pods = self._call("list the pods", self._core.list_namespaced_pod, namespace, label_selector=selector)
        return sorted(pods.items, key=_created)

    def _events(self, namespace: str, kind: str, name: str) -> list[CoreV1Event]:
        events = self._call(
            "list events",
            self._core.list_namespaced_event,
            namespace,
            field_selector=f"involvedObject.kind={kind},involvedObject.name={name}",
        )
        return list(events.items)

    def _pod_log(self, namespace: str, pod: str, tail_lines: int | None = None) -> str:
        text = self._call(
            "read the pod log",
            self._core.read_namespaced_pod_log,
            pod,
            namespace,
            container=CONTAINER,
            tail_lines=tail_lines,
        )
        return str(text)

    def _save_log(self, workdir: Path, namespace: str, pod: V1Pod) -> None:
        if pod.metadata is None or not pod.metadata.name:
            return
        try:
            text = self._pod_log(namespace, pod.metadata.name)
        except KubernetesError as exc:
            # 400: the container never started; 404: the pod is gone. Either way there is no log to keep.
            if exc.status in (400, 404):
                return
            raise
        (workdir / LOGS_DIR).mkdir(parents=True, exist_ok=True)
        write_text_atomic(workdir / LOGS_DIR / STDOUT_LOG, text)

    def _record(self, workdir: Path, status: RunStatus) -> None:
        control = workdir / CONTROL_DIR
        control.mkdir(parents=True, exist_ok=True)
        state = _read_state(workdir)
        state["result"] = {
            "state": status.state.value,
            "exit_code": status.exit_code,
            "detail": status.detail,
            "recorded": format_instant(utcnow()),
        }
        write_json_atomic(control / STATE_FILE, state)

    def _where(self, handle: dict[str, Any], state: dict[str, Any]) -> tuple[str, str | None]:
        namespace = handle.get("namespace") or state.get("namespace") or self.config.namespace
        name = handle.get("job") or state.get("job")
        return str(namespace), str(name) if name else None


# -- helpers -------------------------------------------------------------------------------------------------


def _require_client() -> None:
    try:
        import kubernetes  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            "the Kubernetes platform needs the 'kubernetes' package: pip install 'ecliptic[kubernetes]'"
        ) from exc


def _api_client(config: KubernetesConfig) -> ApiClient:
    from kubernetes import client
    from kubernetes import config as kubeconfig

    try:
        if config.api_url is not None:
            configuration = client.Configuration(host=config.api_url.rstrip("/"))
            if config.token is not None:
                # "authorization" is the key every client generation reads the bearer token from.
                configuration.api_key = {"authorization": config.token}
                configuration.api_key_prefix = {"authorization": "Bearer"}
            configuration.verify_ssl = config.verify_tls
            configuration.ssl_ca_cert = config.ca_cert
            return client.ApiClient(configuration)
        if config.kubeconfig is None and config.context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            kubeconfig.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return client.ApiClient(configuration)
        path = os.path.expanduser(config.kubeconfig) if config.kubeconfig else None
        # persist_config=False: refreshed tokens must not be written back into the operator's kubeconfig.
        api: ApiClient = kubeconfig.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=path, context=config.context, persist_config=False
        )
        return api
    except (kubeconfig.ConfigException, OSError) as exc:
        raise KubernetesError(f"cannot configure the Kubernetes client: {exc}") from exc


def _api_error(what: str, host: str, exc: ApiException) -> KubernetesError:
    status = exc.status if isinstance(exc.status, int) else None
    reason = None
    message = str(exc.reason or "")
    with contextlib.suppress(TypeError, ValueError):
        body = json.loads(exc.body or "")
        if isinstance(body, dict):
            reason = body.get("reason") if isinstance(body.get("reason"), str) else None
            message = str(body.get("message") or message)
    if status == 401:
        text = (
            f"the Kubernetes API at {host} rejected the platform's credentials (401 Unauthorized) when asked "
            f"to {what}: check the platform's token or kubeconfig"
        )
    elif status == 403:
        text = (
            f"the Kubernetes API at {host} does not allow the platform to {what} (403 Forbidden): {message}"
        )
    else:
        text = f"cannot {what}: the Kubernetes API at {host} answered {status} {reason or ''}: {message}"
    return KubernetesError(" ".join(text.split()), status=status, reason=reason)


def _escape(text: str) -> str:
    """Kubernetes expands ``$(VAR)`` in command, args and env values and turns ``$$`` into ``$``; doubling
    every ``$`` keeps the strings as given, as Docker and the local platform run them."""
    return text.replace("$", "$$")


def _escaped(items: list[str] | None) -> list[str] | None:
    return [_escape(item) for item in items] if items is not None else None


def _job_names(session: str) -> list[str]:
    """The Job name to use, then a longer one in the unlikely case another session has the short one."""
    digits = re.sub(r"[^0-9a-z]", "", session.lower())
    if not digits:
        raise ValueError(f"session id {session!r} has no letters or digits to name a Job after")
    return [f"ecliptic-{digits[:8]}", f"ecliptic-{digits[:32]}"]


def _image_reference(image: Image) -> str:
    """The image's first location, pinned to its digest when it has one."""
    if not image.locations or not image.locations[0].strip():
        raise ValueError("the image has no location")
    location = image.locations[0].strip()
    if image.digest is None:
        return location
    if not _DIGEST.match(image.digest):
        raise ValueError(f"image digest {image.digest!r} is not sha256:<64 hex digits>")
    name, _, pinned = location.partition("@")
    if pinned and pinned != image.digest:
        raise ValueError(f"image {location} is pinned to another digest than {image.digest}")
    # The digest alone decides the content; a tag beside it would only suggest otherwise.
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return f"{name}@{image.digest}"


def _port_record(port: Port) -> dict[str, Any]:
    return {"internal": port.internal, "protocol": port.protocol, "path": port.path}


def _ports(handle: dict[str, Any], state: dict[str, Any]) -> list[Port]:
    records = handle.get("ports") or state.get("ports") or []
    ports = []
    for record in records if isinstance(records, list) else []:
        if isinstance(record, dict) and isinstance(record.get("internal"), int):
            ports.append(
                Port(
                    int(record["internal"]),
                    str(record.get("protocol") or "TCP"),
                    str(record.get("path") or ""),
                )
            )
    return ports


def _connectors(address: str | None, ports: Iterable[Port]) -> tuple[Connector, ...]:
    if not address:
        return ()
    host = f"[{address}]" if ":" in address else address
    connectors = []
    for port in ports:
        protocol = port.protocol.upper()
        if protocol in ("HTTP", "HTTPS"):
            path = port.path if port.path.startswith("/") else f"/{port.path}"
            location = f"{protocol.lower()}://{host}:{port.internal}{path}"
        else:
            location = f"{host}:{port.internal}"
        connectors.append(Connector(PORT_CONNECTOR, protocol, location))
    return tuple(connectors)


def _handle(platform: str, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "platform": platform,
        "session": state.get("session"),
        "namespace": state.get("namespace"),
        "job": state.get("job"),
        "uid": state.get("uid"),
        "ports": state.get("ports") or [],
    }


def _read_state(workdir: Path) -> dict[str, Any]:
    return read_json(workdir / CONTROL_DIR / STATE_FILE) or {}


def _recorded(state: dict[str, Any]) -> RunStatus | None:
    result = state.get("result")
    if not isinstance(result, dict):
        return None
    try:
        run_state = RunState(str(result.get("state")))
    except ValueError:
        return None
    code = result.get("exit_code")
    detail = result.get("detail")
    return RunStatus(
        run_state,
        exit_code=code if isinstance(code, int) else None,
        detail=detail if isinstance(detail, str) else None,
    )


def _meta(obj: V1Job | V1Pod) -> V1ObjectMeta:
    if obj.metadata is None:
        raise KubernetesError("the Kubernetes API returned an object without metadata")
    return obj.metadata


def _deadline_near(job: V1Job) -> bool:
    started = job.status.start_time if job.status is not None else None
    limit = job.spec.active_deadline_seconds if job.spec is not None else None
    if started is None or limit is None:
        return False
    return utcnow() >= started + timedelta(seconds=limit) - DEADLINE_LOG_GUARD


def _pod_selector(job: V1Job) -> str:
    uid = job.metadata.uid if job.metadata is not None else None
    if uid:
        return f"controller-uid={uid}"
    name = job.metadata.name if job.metadata is not None else ""
    return f"job-name={name}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _created(pod: V1Pod) -> datetime:
    created = pod.metadata.creation_timestamp if pod.metadata is not None else None
    return created or _EPOCH


def _event_time(event: CoreV1Event) -> datetime:
    moment = event.last_timestamp or event.event_time or event.first_timestamp
    if moment is None and event.metadata is not None:
        moment = event.metadata.creation_timestamp
    return moment or _EPOCH


def _terminated(pod: V1Pod) -> V1ContainerStateTerminated | None:
    if pod.status is None:
        return None
    for container in pod.status.container_statuses or []:
        if container.name != CONTAINER:
            continue
        for state in (container.state, container.last_state):
            if state is not None and state.terminated is not None:
                return state.terminated
    return None


def _describe_terminated(terminated: V1ContainerStateTerminated) -> str:
    text = describe_exit(terminated.exit_code)
    if terminated.reason and terminated.reason not in ("Error", "Completed"):
        text += f" ({terminated.reason})"
    message = (terminated.message or "").strip()
    if message:
        text += f": {message[:500]}"
    return text


def _pending_detail(job: V1Job, pod: V1Pod | None) -> str:
    if job.spec is not None and job.spec.suspend:
        return "the Job is suspended"
    if pod is None or pod.status is None:
        return "waiting for the Job controller to create the pod"
    for condition in pod.status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return f"not scheduled: {condition.message or condition.reason or 'waiting for a node'}"
    for container in pod.status.container_statuses or []:
        waiting = container.state.waiting if container.state is not None else None
        if container.name == CONTAINER and waiting is not None and waiting.reason:
            return f"{waiting.reason}: {waiting.message}" if waiting.message else waiting.reason
    if pod.spec is None or not pod.spec.node_name:
        return "waiting to be scheduled"
    return f"the pod is {pod.status.phase or 'Pending'}"


__all__ = [
    "DOCKER_KIND",
    "PORT_CONNECTOR",
    "SESSION_LABEL",
    "KubernetesConfig",
    "KubernetesError",
    "KubernetesPlatform",
    "build",
]
