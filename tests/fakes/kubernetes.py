"""A fake Kubernetes API server: a real HTTP server on loopback that the official client talks to.

No real API server can run on the test machines, so this one plays the API server, the Job controller, the
scheduler, the kubelet and the garbage collector for the few resources the Kubernetes platform uses, and
copies the behaviour a client can see:

API conventions (``community/contributors/devel/sig-architecture/api-conventions.md``):
- Errors are ``Status`` objects (``kind: Status``, ``status: Failure``, ``reason``, ``code``, ``details``) with
  the server's messages: 401 ``Unauthorized``, 404 ``NotFound`` (``jobs.batch "x" not found``), 409
  ``AlreadyExists``, 422 ``Invalid`` with one cause per field (``Job.batch "x" is invalid: [...]``), 400
  ``BadRequest``, 405 ``MethodNotAllowed``. Every request needs ``Authorization: Bearer <token>`` (a cluster
  with anonymous access switched off).
- Objects get ``uid``, ``resourceVersion``, ``creationTimestamp`` and ``generation``; lists are ``JobList``
  etc. with ``metadata.resourceVersion``. ``labelSelector`` supports ``=``, ``==``, ``!=``, ``in``,
  ``notin``, ``key`` and ``!key``; ``fieldSelector`` supports ``=``, ``==`` and ``!=`` on the fields the real
  server indexes for that resource, and answers 400 for the others.
- Unknown fields in a created object are dropped with a ``Warning: 299`` header (``fieldValidation=Warn``,
  the default since 1.27) or rejected with 400 (``Strict``). Which fields exist is read from the official
  client's generated models, which are generated from the API server's OpenAPI document.
- ``DELETE`` of a Job honours ``propagationPolicy``: the batch/v1 default is Orphan (pods stay, with a
  warning, as the real server does for Jobs); Background deletes the pods after the Job; Foreground keeps the
  Job with a ``deletionTimestamp`` until its pods are gone. Pods are deleted gracefully: SIGTERM, then SIGKILL
  after ``terminationGracePeriodSeconds`` (capped by ``max_grace``).

Validation and defaulting (``pkg/apis/batch/validation``, ``pkg/apis/core/validation``, ``.../v1/defaults.go``):
names, labels, the pod template's ``restartPolicy`` (only ``Never`` or ``OnFailure``), containers, images,
ports, env names, resource quantities (requests not above limits), volumes and volume mounts, the Job's
counts and deadlines, ``selector`` only with ``manualSelector``; then the defaults (``backoffLimit: 6``,
``completions``/``parallelism: 1``, the generated selector and the ``job-name`` / ``controller-uid`` labels,
``imagePullPolicy``, ``terminationGracePeriodSeconds: 30``, …).

The Job controller (``pkg/controller/job``): one pod at a time named ``<job>-<5 random>`` with
``ownerReferences`` and the template's labels; ``SuccessfulCreate``/``SuccessfulDelete`` events
(``Created pod: x``); status ``active``/``ready``/``terminating``/``succeeded``/``failed``/``startTime``;
success as ``SuccessCriteriaMet`` then ``Complete``; failure past ``backoffLimit`` or past
``activeDeadlineSeconds`` (its pods are deleted) as ``FailureTarget`` then, once the pods are gone, ``Failed``
with reason ``BackoffLimitExceeded`` / ``DeadlineExceeded`` and a Warning event of that reason. The TTL
controller deletes finished Jobs after ``ttlSecondsAfterFinished`` (foreground).

The kubelet: ``Scheduled``, ``Pulling``, ``Pulled``, ``Created``, ``Started`` events; the pod goes Pending
(``ContainerCreating``) → Running (Ready) → Succeeded/Failed with the container's ``terminated`` state
(``exitCode``, ``reason`` ``Completed``/``Error``/``OOMKilled``/``StartError``). The container "runs" as a
local process of the test: ``command`` + ``args`` after ``$(VAR)`` expansion, with the container's env, in
the host directory that ``workingDir`` resolves to through the pod's hostPath or PVC mounts (``pvc_paths``),
stdout and stderr into one log. The process runs on the host, so the pod's IP is the loopback address, as
with ``hostNetwork``. A ``behaviour`` hook can script the outcome instead (:class:`Exit`, :class:`PullFailure`:
``ErrImagePull`` then ``ImagePullBackOff`` with their events, the pod stays Pending). hostPath ``type`` checks
fail as ``FailedMount``; pods that do not fit the node or name a missing PVC stay unscheduled with
``FailedScheduling``.

Not copied: watches, patches, updates, other resources, admission beyond service accounts, and images (a
container without ``command`` runs its ``args``). The process sees the host's file system as it is: only
``workingDir`` is translated through the mounts, other mount targets do not appear, and read-only mounts and
resource limits are not enforced.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import posixpath
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import parse_qs, urlsplit

# -- what the container does ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Run the container's command as a local process (the default)."""


@dataclass(frozen=True)
class Exit:
    """Pretend the container ran for ``seconds``, printed ``log`` and ended so."""

    exit_code: int = 0
    log: str = ""
    seconds: float = 0.0
    reason: str | None = None
    """The terminated reason, e.g. ``OOMKilled``; by default ``Completed`` or ``Error`` from the exit code."""
    message: str | None = None


@dataclass(frozen=True)
class PullFailure:
    """The image cannot be pulled: the pod stays Pending in ErrImagePull / ImagePullBackOff."""

    message: str = "rpc error: code = NotFound desc = failed to pull and unpack image: not found"


Behaviour = Run | Exit | PullFailure

API_VERSION = {
    "major": "1",
    "minor": "34",
    "gitVersion": "v1.34.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-08-27T00:00:00Z",
    "goVersion": "go1.24.6",
    "compiler": "gc",
    "platform": "linux/amd64",
}

NODE = "fake-node"
NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
"""The alphabet of generateName suffixes (``k8s.io/apiserver/pkg/storage/names``)."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
_SUFFIXES = {
    "": 1.0,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}
_HOST_PATH_TYPES = (
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
)
_VOLUME_SOURCES = ("hostPath", "persistentVolumeClaim", "emptyDir", "configMap", "secret", "projected")
_FIELD_SELECTORS = {
    "jobs": {"metadata.name", "metadata.namespace", "status.successful"},
    "pods": {
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
    "events": {
        "metadata.name",
        "metadata.namespace",
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
}


class ApiError(Exception):
    """An answer other than success, as the API server would send it."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _not_found(resource: str, name: str) -> ApiError:
    plural, _, group = resource.partition(".")
    details: dict[str, Any] = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return ApiError(404, "NotFound", f'{resource} "{name}" not found', details)


# -- time ----------------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the fake ------------------------------------------------------------------------------------------------


@dataclass
class _JobSim:
    uid: str
    namespace: str
    name: str
    created: float
    started: float | None = None
    pods_created: int = 0
    succeeded: int = 0
    failed: int = 0
    failure: tuple[str, str] | None = None
    finished: float | None = None
    next_pod_at: float = 0.0
    sa_warned: bool = False


@dataclass
class _PodSim:
    uid: str
    namespace: str
    name: str
    job_uid: str | None
    created: float
    log_path: Path
    stage: str = "unscheduled"
    """unscheduled, creating, pull-failed, running, terminated."""
    stage_since: float = 0.0
    behaviour: Behaviour | None = None
    proc: subprocess.Popen[bytes] | None = None
    ends_at: float | None = None
    deleting_since: float | None = None
    grace: float = 30.0
    term_sent: bool = False
    kill_sent: bool = False
    counted: bool = False
    warned: set[str] = field(default_factory=set)


class FakeKubernetes:
    """``with FakeKubernetes(namespaces=("sessions",)) as fake:`` then point a client at ``fake.url``."""

    def __init__(
        self,
        *,
        token: str = "fake-token",
        namespaces: tuple[str, ...] = ("default",),
        behaviour: Callable[[dict[str, Any]], Behaviour] | None = None,
        schedule_delay: float = 0.05,
        pull_delay: float = 0.05,
        retry_delay: float = 0.1,
        max_grace: float = 2.0,
        pvc_paths: dict[str, Path] | None = None,
        service_accounts: tuple[str, ...] = ("default",),
        node_cores: float = 8,
        node_memory_gib: float = 32,
        pod_ip: str = "127.0.0.1",
    ) -> None:
        self.token = token
        self.namespaces = set(namespaces)
        self.behaviour: Callable[[dict[str, Any]], Behaviour] = behaviour or (lambda pod: Run())
        self.schedule_delay = schedule_delay
        self.pull_delay = pull_delay
        self.retry_delay = retry_delay
        self.max_grace = max_grace
        self.pvc_paths = dict(pvc_paths or {})
        self.service_accounts = set(service_accounts)
        self.node_cores = node_cores
        self.node_memory = node_memory_gib * 2**30
        self.pod_ip = pod_ip
        self.requests: list[tuple[str, str]] = []
        """Every request as (method, path with query), for tests that count calls."""
        self.errors: list[BaseException] = []
        """What went wrong inside the fake's controllers; ``close`` raises the first."""
        self.warnings: list[str] = []
        """Every ``Warning`` header sent, e.g. for unknown fields that were dropped."""
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._jobs: dict[str, _JobSim] = {}
        self._pods: dict[str, _PodSim] = {}
        self._event_keys: dict[tuple[str, str, str, str], tuple[str, str, str]] = {}
        self._version = 1
        self._scratch = Path(tempfile.mkdtemp(prefix="fake-k8s-"))
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._threads = [
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True),
            threading.Thread(target=self._control_loop, daemon=True),
        ]

    def __enter__(self) -> FakeKubernetes:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._lock:
            for sim in self._pods.values():
                _kill(sim, signal.SIGKILL)
                if sim.proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        sim.proc.wait(timeout=5)
        shutil.rmtree(self._scratch, ignore_errors=True)
        if self.errors:
            raise RuntimeError("the fake Kubernetes controllers failed") from self.errors[0]

    # -- inspection for tests ----------------------------------------------------------------------------
    def jobs(self, namespace: str) -> list[dict[str, Any]]:
        return self._list_copy("jobs", namespace)

    def pods(self, namespace: str) -> list[dict[str, Any]]:
        return self._list_copy("pods", namespace)

    def events(self, namespace: str) -> list[dict[str, Any]]:
        return self._list_copy("events", namespace)

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._objects.get(("jobs", namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def pod_pids(self, namespace: str) -> list[int]:
        """The local processes that play the namespace's containers, running or not yet reaped."""
        with self._lock:
            return [
                s.proc.pid for s in self._pods.values() if s.namespace == namespace and s.proc is not None
            ]

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and p.split("?", 1)[0] == path)

    def _list_copy(self, resource: str, namespace: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(o)
                for (r, ns, _), o in self._objects.items()
                if r == resource and ns == namespace
            ]

    # -- HTTP --------------------------------------------------------------------------------------------
    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes, list[str]]:
        """One request: (status, content type, body, warnings)."""
        with self._lock:
            self.requests.append((method, target))
        warnings: list[str] = []
        try:
            if headers.get("authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            parts = urlsplit(target)
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            if query.get("watch") in ("true", "1"):
                raise ApiError(400, "BadRequest", "the fake API server does not serve watches")
            result = self._route(method, parts.path, query, body, warnings)
        except ApiError as exc:
            return exc.code, "application/json", json.dumps(exc.status()).encode(), warnings
        if isinstance(result, str):
            return 200, "text/plain", result.encode(), warnings
        code, payload = result
        return code, "application/json", json.dumps(payload).encode(), warnings

    def _route(
        self, method: str, path: str, query: dict[str, str], body: bytes, warnings: list[str]
    ) -> tuple[int, dict[str, Any]] | str:
        if path == "/version":
            self._method(method, "GET")
            return 200, dict(API_VERSION)
        match = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?", path)
        if match:
            namespace, name = match[1], match[2]
            with self._lock:
                if name is None:
                    if method == "POST":
                        return 201, self._create_job(namespace, _json_body(body), query, warnings)
                    self._method(method, "GET", "POST")
                    return 200, self._list("jobs", "JobList", "batch/v1", namespace, query)
                if method == "DELETE":
                    return 200, self._delete_job(namespace, name, query, body, warnings)
                self._method(method, "GET", "DELETE")
                return 200, self._get("jobs", namespace, name, "jobs.batch")
        match = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods(?:/([^/]+)(/log)?)?", path)
        if match:
            namespace, name, log = match[1], match[2], match[3]
            with self._lock:
                if name is None:
                    self._method(method, "GET")
                    return 200, self._list("pods", "PodList", "v1", namespace, query)
                if log:
                    self._method(method, "GET")
                    return self._log(namespace, name, query)
                if method == "DELETE":
                    return 200, self._delete_pod(namespace, name, query, body)
                self._method(method, "GET", "DELETE")
                return 200, self._get("pods", namespace, name, "pods")
        match = re.fullmatch(r"/api/v1/namespaces/([^/]+)/events", path)
        if match:
            self._method(method, "GET")
            with self._lock:
                return 200, self._list("events", "EventList", "v1", match[1], query)
        raise ApiError(404, "NotFound", "the server could not find the requested resource", {})

    @staticmethod
    def _method(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise ApiError(
                405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {}
            )

    # -- generic storage ---------------------------------------------------------------------------------
    def _bump(self, obj: dict[str, Any]) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    def _get(self, resource: str, namespace: str, name: str, qualified: str) -> dict[str, Any]:
        found = self._objects.get((resource, namespace, name))
        if found is None:
            raise _not_found(qualified, name)
        return copy.deepcopy(found)

    def _list(
        self, resource: str, kind: str, api_version: str, namespace: str, query: dict[str, str]
    ) -> dict[str, Any]:
        labels = _label_selector(query.get("labelSelector", ""))
        fields = _field_selector(query.get("fieldSelector", ""), resource)
        items = []
        for (r, ns, _), obj in self._objects.items():
            if r != resource or ns != namespace:
                continue
            if all(test(obj["metadata"].get("labels") or {}) for test in labels) and all(
                test(obj) for test in fields
            ):
                item = copy.deepcopy(obj)
                # List items carry no kind or apiVersion of their own on the wire.
                item.pop("kind", None)
                item.pop("apiVersion", None)
                items.append(item)
        return {
            "kind": kind,
            "apiVersion": api_version,
            "metadata": {"resourceVersion": str(self._version)},
            "items": items,
        }

    def _meta(self, namespace: str, name: str, **extra: Any) -> dict[str, Any]:
        self._version += 1
        return {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": str(self._version),
            "creationTimestamp": _now(),
            **extra,
        }

    # -- Jobs --------------------------------------------------------------------------------------------
    def _create_job(
        self, namespace: str, body: Any, query: dict[str, str], warnings: list[str]
    ) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the object provided is not a Job")
        if body.get("apiVersion") not in (None, "batch/v1") or body.get("kind") not in (None, "Job"):
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({body.get('apiVersion')}) does not match the expected API version (batch/v1)",
            )
        mode = query.get("fieldValidation", "Warn")
        if mode not in ("Ignore", "Warn", "Strict"):
            raise ApiError(
                400,
                "BadRequest",
                f'fieldValidation "{mode}" is not supported: must be Ignore, Warn or Strict',
            )
        unknown: list[str] = []
        job = _prune(body, "V1Job", "", unknown)
        if unknown and mode == "Strict":
            listed = ", ".join(f'unknown field "{u}"' for u in unknown)
            raise ApiError(
                400,
                "BadRequest",
                f'Job in version "v1" cannot be handled as a Job: strict decoding error: {listed}',
            )
        if mode == "Warn":
            for name in unknown:
                text = f'unknown field "{name}"'
                warnings.append(text)
                self.warnings.append(text)
        metadata = job.setdefault("metadata", {})
        if metadata.get("namespace") not in (None, namespace):
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = str(metadata["generateName"]) + _suffix()
        name = str(metadata.get("name") or "")
        causes = _validate_job(job)
        if causes:
            raise _invalid("Job", "batch", name, causes)
        if namespace not in self.namespaces:
            raise _not_found("namespaces", namespace)
        if ("jobs", namespace, name) in self._objects:
            raise ApiError(
                409,
                "AlreadyExists",
                f'jobs.batch "{name}" already exists',
                {"name": name, "group": "batch", "kind": "jobs"},
            )
        job["apiVersion"] = "batch/v1"
        job["kind"] = "Job"
        job["metadata"] = {**metadata, **self._meta(namespace, name, generation=1)}
        _default_job(job)
        self._objects[("jobs", namespace, name)] = job
        self._jobs[job["metadata"]["uid"]] = _JobSim(
            job["metadata"]["uid"], namespace, name, time.monotonic()
        )
        return copy.deepcopy(job)

    def _delete_job(
        self, namespace: str, name: str, query: dict[str, str], body: bytes, warnings: list[str]
    ) -> dict[str, Any]:
        job = self._objects.get(("jobs", namespace, name))
        if job is None:
            raise _not_found("jobs.batch", name)
        options = _json_body(body) if body.strip() else {}
        policy = query.get("propagationPolicy") or (options or {}).get("propagationPolicy")
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise ApiError(400, "BadRequest", f'unsupported propagation policy "{policy}"')
        if policy is None:
            # pkg/registry/batch/job/strategy.go: batch/v1 Jobs orphan their pods unless told otherwise.
            policy = "Orphan"
            text = (
                "child pods are preserved by default when jobs are deleted; set propagationPolicy=Background to "
                "remove them or set propagationPolicy=Orphan to suppress this warning"
            )
            warnings.append(text)
            self.warnings.append(text)
        self._remove_job(job, policy)
        uid = job["metadata"]["uid"]
        if policy == "Foreground" and ("jobs", namespace, name) in self._objects:
            return copy.deepcopy(job)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": "batch", "kind": "jobs", "uid": uid},
        }

    def _remove_job(self, job: dict[str, Any], policy: str) -> None:
        uid = job["metadata"]["uid"]
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        owned = [s for s in self._pods.values() if s.job_uid == uid]
        if policy == "Orphan":
            for sim in owned:
                pod = self._objects.get(("pods", sim.namespace, sim.name))
                if pod is not None:
                    pod["metadata"].pop("ownerReferences", None)
                    pod["metadata"]["finalizers"] = []
                    self._bump(pod)
                sim.job_uid = None
        else:
            for sim in owned:
                self._start_pod_deletion(sim, None)
        if policy == "Foreground" and any(s.deleting_since is not None for s in owned):
            if job["metadata"].get("deletionTimestamp") is None:
                job["metadata"]["deletionTimestamp"] = _now()
                job["metadata"]["deletionGracePeriodSeconds"] = 0
                job["metadata"]["finalizers"] = ["foregroundDeletion"]
                self._bump(job)
            return
        self._objects.pop(("jobs", namespace, name), None)
        self._jobs.pop(uid, None)
        for sim in owned:
            # The GC deletes them in the background; they are no longer counted by any Job.
            sim.job_uid = None

    # -- Pods --------------------------------------------------------------------------------------------
    def _delete_pod(self, namespace: str, name: str, query: dict[str, str], body: bytes) -> dict[str, Any]:
        pod = self._objects.get(("pods", namespace, name))
        if pod is None:
            raise _not_found("pods", name)
        options = _json_body(body) if body.strip() else {}
        grace_text = query.get("gracePeriodSeconds") or (options or {}).get("gracePeriodSeconds")
        grace = float(grace_text) if grace_text not in (None, "") else None
        sim = self._pods[pod["metadata"]["uid"]]
        self._start_pod_deletion(sim, grace)
        return copy.deepcopy(pod)

    def _start_pod_deletion(self, sim: _PodSim, grace: float | None) -> None:
        pod = self._objects.get(("pods", sim.namespace, sim.name))
        if pod is None or sim.deleting_since is not None:
            return
        if grace is None:
            grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        sim.deleting_since = time.monotonic()
        sim.grace = min(grace, self.max_grace)
        pod["metadata"]["deletionTimestamp"] = _now()
        pod["metadata"]["deletionGracePeriodSeconds"] = int(grace)
        self._bump(pod)
        if sim.stage == "running":
            self._event(pod, "Normal", "Killing", f"Stopping container {_container(pod)['name']}", "kubelet")

    def _log(self, namespace: str, name: str, query: dict[str, str]) -> str:
        pod = self._objects.get(("pods", namespace, name))
        if pod is None:
            raise _not_found("pods", name)
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = query.get("container") or (containers[0] if len(containers) == 1 else None)
        if container is None:
            raise ApiError(
                400,
                "BadRequest",
                f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]",
            )
        if container not in containers:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        if query.get("follow") in ("true", "1"):
            raise ApiError(400, "BadRequest", "the fake API server does not stream logs")
        if query.get("previous") in ("true", "1"):
            raise ApiError(
                400, "BadRequest", f'previous terminated container "{container}" in pod "{name}" not found'
            )
        sim = self._pods[pod["metadata"]["uid"]]
        if not pod["spec"].get("nodeName"):
            raise ApiError(400, "BadRequest", f"pod {name} does not have a host assigned")
        if sim.stage in ("creating", "pull-failed"):
            waiting = _container_status(pod).get("state", {}).get("waiting", {})
            reason = waiting.get("reason", "ContainerCreating")
            why = (
                "trying and failing to pull image"
                if reason in ("ErrImagePull", "ImagePullBackOff")
                else reason
            )
            raise ApiError(
                400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: {why}'
            )
        try:
            text = sim.log_path.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            text = ""
        tail = query.get("tailLines")
        if tail not in (None, ""):
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(tail) :]) if int(tail) > 0 else ""
        limit = query.get("limitBytes")
        if limit not in (None, ""):
            text = text.encode()[: int(limit)].decode("utf-8", errors="ignore")
        return text

    # -- events ------------------------------------------------------------------------------------------
    def _event(self, obj: dict[str, Any], kind_type: str, reason: str, message: str, component: str) -> None:
        meta = obj["metadata"]
        namespace = meta["namespace"]
        key = (meta["uid"], kind_type, reason, message)
        now = _now()
        known = self._event_keys.get(key)
        if known is not None and known in self._objects:
            event = self._objects[known]
            event["count"] += 1
            event["lastTimestamp"] = now
            self._bump(event)
            return
        name = f"{meta['name']}.{uuid.uuid4().hex[:16]}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": self._meta(namespace, name),
            "involvedObject": {
                "kind": obj["kind"],
                "namespace": namespace,
                "name": meta["name"],
                "uid": meta["uid"],
                "apiVersion": obj["apiVersion"],
                "resourceVersion": meta["resourceVersion"],
            },
            "reason": reason,
            "message": message,
            "source": {"component": component, **({"host": NODE} if component == "kubelet" else {})},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": kind_type,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": NODE if component == "kubelet" else "",
        }
        self._objects[("events", namespace, name)] = event
        self._event_keys[key] = ("events", namespace, name)

    # -- the controllers ---------------------------------------------------------------------------------
    def _control_loop(self) -> None:
        while not self._stop.wait(0.01):
            with self._lock:
                now = time.monotonic()
                try:
                    for sim in list(self._pods.values()):
                        self._kubelet(sim, now)
                    for job_sim in list(self._jobs.values()):
                        self._job_controller(job_sim, now)
                except Exception as exc:
                    # A broken test hook or fake must fail the test, not leave it waiting for a pod.
                    self.errors.append(exc)
                    return

    def _job_controller(self, sim: _JobSim, now: float) -> None:
        job = self._objects.get(("jobs", sim.namespace, sim.name))
        if job is None:
            self._jobs.pop(sim.uid, None)
            return
        spec, status = job["spec"], job["status"]
        before = copy.deepcopy(status)
        owned = [p for p in self._pods.values() if p.job_uid == sim.uid]
        for pod_sim in owned:
            pod = self._objects.get(("pods", pod_sim.namespace, pod_sim.name))
            phase = pod["status"].get("phase") if pod is not None else None
            if not pod_sim.counted and phase in ("Succeeded", "Failed"):
                pod_sim.counted = True
                assert pod is not None
                pod["metadata"]["finalizers"] = [
                    f
                    for f in pod["metadata"].get("finalizers", [])
                    if f != "batch.kubernetes.io/job-tracking"
                ]
                self._bump(pod)
                if phase == "Succeeded":
                    sim.succeeded += 1
                else:
                    sim.failed += 1
                    sim.next_pod_at = now + self.retry_delay
        alive = [p for p in owned if p.stage != "terminated"]
        active = [p for p in alive if p.deleting_since is None]
        terminating = [p for p in alive if p.deleting_since is not None]
        if job["metadata"].get("deletionTimestamp") is not None:
            # Foreground deletion: the Job goes once every pod it owns is gone, finished ones too.
            if not any(("pods", p.namespace, p.name) in self._objects for p in owned):
                self._objects.pop(("jobs", sim.namespace, sim.name), None)
                self._jobs.pop(sim.uid, None)
            return
        if sim.started is None and not spec.get("suspend"):
            sim.started = now
            status["startTime"] = _now()
        if sim.finished is None and sim.failure is None:
            deadline = spec.get("activeDeadlineSeconds")
            if sim.started is not None and deadline is not None and now - sim.started >= deadline:
                sim.failure = ("DeadlineExceeded", "Job was active longer than specified deadline")
                for pod_sim in active:
                    self._start_pod_deletion(pod_sim, None)
                    self._event(
                        job, "Normal", "SuccessfulDelete", f"Deleted pod: {pod_sim.name}", "job-controller"
                    )
                active = []
            elif sim.succeeded >= spec.get("completions", 1):
                sim.finished = now
                self._conditions(
                    job,
                    "SuccessCriteriaMet",
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                )
                status["completionTime"] = _now()
                self._event(job, "Normal", "Completed", "Job completed", "job-controller")
            elif sim.failed > spec.get("backoffLimit", 6):
                sim.failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
            elif not spec.get("suspend") and not active and now >= sim.next_pod_at:
                self._create_pod(job, sim)
                active = [p for p in self._pods.values() if p.job_uid == sim.uid and p.stage != "terminated"]
            if sim.failure is not None and not any(
                c["type"] == "FailureTarget" for c in status.get("conditions", [])
            ):
                reason, message = sim.failure
                status.setdefault("conditions", []).append(_condition("FailureTarget", reason, message))
                self._event(job, "Warning", reason, message, "job-controller")
        if sim.failure is not None and sim.finished is None and not alive:
            reason, message = sim.failure
            status["conditions"].append(_condition("Failed", reason, message))
            sim.finished = now
        counts = {
            "active": len(active),
            "succeeded": sim.succeeded,
            "failed": sim.failed,
        }
        for key, value in counts.items():
            if value:
                status[key] = value
            else:
                status.pop(key, None)
        ready = 0
        for pod_sim in active:
            pod = self._objects.get(("pods", pod_sim.namespace, pod_sim.name))
            if pod is not None and _is_ready(pod):
                ready += 1
        if sim.started is not None:
            status["ready"] = ready
            status["terminating"] = len(terminating)
            status.setdefault("uncountedTerminatedPods", {})
        if status != before:
            self._bump(job)
        ttl = spec.get("ttlSecondsAfterFinished")
        if sim.finished is not None and ttl is not None and now - sim.finished >= ttl:
            self._remove_job(job, "Foreground")

    def _conditions(self, job: dict[str, Any], first: str, second: str, reason: str, message: str) -> None:
        conditions = job["status"].setdefault("conditions", [])
        conditions.append(_condition(first, reason, message))
        conditions.append(_condition(second, reason, message))

    def _create_pod(self, job: dict[str, Any], sim: _JobSim) -> None:
        template = job["spec"]["template"]
        spec = copy.deepcopy(template["spec"])
        service_account = spec.get("serviceAccountName") or "default"
        if service_account not in self.service_accounts:
            # The ServiceAccount admission plugin refuses the pod; the Job controller reports it and retries.
            message = (
                f'Error creating: pods "{job["metadata"]["name"]}-" is forbidden: error looking up service account '
                f'{sim.namespace}/{service_account}: serviceaccount "{service_account}" not found'
            )
            self._event(job, "Warning", "FailedCreate", message, "job-controller")
            sim.next_pod_at = time.monotonic() + 1.0
            return
        spec["serviceAccountName"] = service_account
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault(
            "tolerations",
            [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
            ],
        )
        if spec.get("automountServiceAccountToken", True):
            volume = f"kube-api-access-{_suffix()}"
            spec.setdefault("volumes", []).append(
                {
                    "name": volume,
                    "projected": {
                        "defaultMode": 420,
                        "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}],
                    },
                }
            )
            for container in spec["containers"]:
                container.setdefault("volumeMounts", []).append(
                    {
                        "name": volume,
                        "readOnly": True,
                        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                    }
                )
        name = f"{job['metadata']['name']}-{_suffix()}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": self._meta(
                sim.namespace,
                name,
                generateName=f"{job['metadata']['name']}-",
                labels=dict(template.get("metadata", {}).get("labels") or {}),
                annotations=dict(template.get("metadata", {}).get("annotations") or {}),
                ownerReferences=[
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job["metadata"]["name"],
                        "uid": sim.uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
                finalizers=["batch.kubernetes.io/job-tracking"],
            ),
            "spec": spec,
            "status": {"phase": "Pending", "qosClass": _qos(spec)},
        }
        if not pod["metadata"]["annotations"]:
            del pod["metadata"]["annotations"]
        self._objects[("pods", sim.namespace, name)] = pod
        now = time.monotonic()
        self._pods[pod["metadata"]["uid"]] = _PodSim(
            pod["metadata"]["uid"],
            sim.namespace,
            name,
            sim.uid,
            now,
            self._scratch / f"{name}.log",
            stage_since=now,
        )
        sim.pods_created += 1
        self._event(job, "Normal", "SuccessfulCreate", f"Created pod: {name}", "job-controller")

    def _kubelet(self, sim: _PodSim, now: float) -> None:
        pod = self._objects.get(("pods", sim.namespace, sim.name))
        if pod is None:
            self._pods.pop(sim.uid, None)
            return
        if sim.proc is not None and sim.stage == "running" and sim.proc.poll() is not None:
            code = sim.proc.returncode
            self._terminate(pod, sim, code if code >= 0 else 128 - code, None, None)
        if sim.stage == "running" and sim.ends_at is not None and now >= sim.ends_at:
            assert isinstance(sim.behaviour, Exit)
            self._terminate(pod, sim, sim.behaviour.exit_code, sim.behaviour.reason, sim.behaviour.message)
        if sim.deleting_since is not None:
            self._kill_for_deletion(pod, sim, now)
            return
        if sim.stage == "unscheduled" and now - sim.stage_since >= self.schedule_delay:
            self._schedule(pod, sim, now)
        elif sim.stage == "creating" and now - sim.stage_since >= self.pull_delay:
            self._start(pod, sim, now)
        elif (
            sim.stage == "pull-failed"
            and now - sim.stage_since >= self.pull_delay
            and "backoff" not in sim.warned
        ):
            sim.warned.add("backoff")
            image = _container(pod)["image"]
            self._event(pod, "Normal", "BackOff", f'Back-off pulling image "{image}"', "kubelet")
            self._event(pod, "Warning", "Failed", "Error: ImagePullBackOff", "kubelet")
            self._set_waiting(
                pod,
                "ImagePullBackOff",
                f'Back-off pulling image "{image}": ErrImagePull: {self._pull_message(sim)}',
            )

    def _pull_message(self, sim: _PodSim) -> str:
        return sim.behaviour.message if isinstance(sim.behaviour, PullFailure) else ""

    def _kill_for_deletion(self, pod: dict[str, Any], sim: _PodSim, now: float) -> None:
        assert sim.deleting_since is not None
        if sim.proc is not None and sim.proc.poll() is None:
            if not sim.term_sent:
                sim.term_sent = True
                _kill(sim, signal.SIGTERM)
            elif not sim.kill_sent and now - sim.deleting_since >= sim.grace:
                sim.kill_sent = True
                _kill(sim, signal.SIGKILL)
            return
        if sim.stage == "running":
            code = 137 if sim.proc is None or sim.proc.returncode is None else sim.proc.returncode
            self._terminate(pod, sim, code if code >= 0 else 128 - code, None, None)
        elif sim.stage != "terminated":
            # Killed before it ran: the kubelet marks such pods Failed (ContainerStatusUnknown) on deletion.
            sim.stage = "terminated"
            pod["status"]["phase"] = "Failed"
            self._bump(pod)
        owner = self._jobs.get(sim.job_uid) if sim.job_uid else None
        if owner is not None and not sim.counted:
            return  # the Job controller counts it first, then lets it go (the job-tracking finalizer)
        self._objects.pop(("pods", sim.namespace, sim.name), None)
        self._pods.pop(sim.uid, None)
        with contextlib.suppress(OSError):
            sim.log_path.unlink()

    def _schedule(self, pod: dict[str, Any], sim: _PodSim, now: float) -> None:
        problem = self._unschedulable(pod)
        if problem is not None:
            message = f"0/1 nodes are available: {problem}."
            if "scheduling" not in sim.warned:
                sim.warned.add("scheduling")
                self._event(pod, "Warning", "FailedScheduling", message, "default-scheduler")
                pod["status"]["conditions"] = [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "lastProbeTime": None,
                        "lastTransitionTime": _now(),
                        "reason": "Unschedulable",
                        "message": message,
                    }
                ]
                self._bump(pod)
            return
        pod["spec"]["nodeName"] = NODE
        sim.stage = "creating"
        sim.stage_since = now
        sim.behaviour = self.behaviour(copy.deepcopy(pod))
        self._event(
            pod,
            "Normal",
            "Scheduled",
            f"Successfully assigned {sim.namespace}/{sim.name} to {NODE}",
            "default-scheduler",
        )
        container = _container(pod)
        pod["status"].update(
            {
                "conditions": [
                    {
                        "type": "PodReadyToStartContainers",
                        "status": "False",
                        "lastProbeTime": None,
                        "lastTransitionTime": _now(),
                    },
                    {
                        "type": "Initialized",
                        "status": "True",
                        "lastProbeTime": None,
                        "lastTransitionTime": _now(),
                    },
                    {
                        "type": "Ready",
                        "status": "False",
                        "lastProbeTime": None,
                        "lastTransitionTime": _now(),
                        "reason": "ContainersNotReady",
                        "message": f"containers with unready status: [{container['name']}]",
                    },
                    {
                        "type": "ContainersReady",
                        "status": "False",
                        "lastProbeTime": None,
                        "lastTransitionTime": _now(),
                        "reason": "ContainersNotReady",
                        "message": f"containers with unready status: [{container['name']}]",
                    },
                    {
                        "type": "PodScheduled",
                        "status": "True",
                        "lastProbeTime": None,
                        "lastTransitionTime": _now(),
                    },
                ],
                "hostIP": self.pod_ip,
                "hostIPs": [{"ip": self.pod_ip}],
                "startTime": _now(),
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "state": {"waiting": {"reason": "ContainerCreating"}},
                        "lastState": {},
                        "ready": False,
                        "restartCount": 0,
                        "image": container["image"],
                        "imageID": "",
                        "started": False,
                    }
                ],
            }
        )
        self._bump(pod)

    def _unschedulable(self, pod: dict[str, Any]) -> str | None:
        for volume in pod["spec"].get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim is not None and claim not in self.pvc_paths:
                return f'persistentvolumeclaim "{claim}" not found'
        cpu, memory = _requests(pod)
        used_cpu = used_memory = 0.0
        for other in self._pods.values():
            other_pod = self._objects.get(("pods", other.namespace, other.name))
            if (
                other_pod is not None
                and other_pod is not pod
                and other_pod["spec"].get("nodeName")
                and other.stage != "terminated"
            ):
                c, m = _requests(other_pod)
                used_cpu += c
                used_memory += m
        short = []
        if cpu > self.node_cores - used_cpu:
            short.append("1 Insufficient cpu")
        if memory > self.node_memory - used_memory:
            short.append("1 Insufficient memory")
        return ", ".join(short) or None

    def _start(self, pod: dict[str, Any], sim: _PodSim, now: float) -> None:
        container = _container(pod)
        image = container["image"]
        if "pulled" not in sim.warned:
            sim.warned.add("pulled")
            self._event(pod, "Normal", "Pulling", f'Pulling image "{image}"', "kubelet")
            if isinstance(sim.behaviour, PullFailure):
                self._event(
                    pod,
                    "Warning",
                    "Failed",
                    f'Failed to pull image "{image}": {sim.behaviour.message}',
                    "kubelet",
                )
                self._event(pod, "Warning", "Failed", "Error: ErrImagePull", "kubelet")
                self._set_waiting(
                    pod, "ErrImagePull", f'failed to pull and unpack image "{image}": {sim.behaviour.message}'
                )
                sim.stage = "pull-failed"
                sim.stage_since = now
                return
            self._event(
                pod,
                "Normal",
                "Pulled",
                f'Successfully pulled image "{image}" in 52ms (52ms including waiting). Image size: 1 bytes.',
                "kubelet",
            )
        try:
            mounts = self._host_mounts(pod)
        except _MountError as exc:
            if str(exc) not in sim.warned:
                sim.warned.add(str(exc))
                self._event(pod, "Warning", "FailedMount", str(exc), "kubelet")
            return
        self._event(pod, "Normal", "Created", f"Created container: {container['name']}", "kubelet")
        environment = _container_env(pod, container)
        command = [
            _expand(a, environment) for a in (container.get("command") or []) + (container.get("args") or [])
        ]
        cwd = _host_path(container.get("workingDir"), mounts) or self._scratch
        sim.log_path.write_bytes(b"")
        if isinstance(sim.behaviour, Exit):
            sim.log_path.write_text(sim.behaviour.log, encoding="utf-8")
            sim.ends_at = now + sim.behaviour.seconds
        else:
            problem = None
            if not command:
                problem = "no command specified"
            else:
                try:
                    with open(sim.log_path, "ab") as log:
                        sim.proc = subprocess.Popen(
                            command,
                            cwd=cwd,
                            env={
                                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                "HOSTNAME": sim.name,
                                **environment,
                            },
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                except FileNotFoundError as exc:
                    missing = command[0] if exc.filename in (None, command[0]) else f"chdir to cwd ({cwd})"
                    problem = f'exec: "{missing}": executable file not found in $PATH'
                except PermissionError:
                    problem = f'exec: "{command[0]}": permission denied'
                except NotADirectoryError:
                    problem = f"chdir to cwd ({cwd}) set in config.json failed: not a directory"
            if problem is not None:
                message = (
                    "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc "
                    f"create failed: unable to start container process: {problem}: unknown"
                )
                self._event(pod, "Warning", "Failed", f"Error: {message}", "kubelet")
                sim.stage = "running"
                self._terminate(pod, sim, 128, "StartError", message)
                return
        self._event(pod, "Normal", "Started", f"Started container {container['name']}", "kubelet")
        sim.stage = "running"
        sim.stage_since = now
        status = pod["status"]
        status["phase"] = "Running"
        status["podIP"] = self.pod_ip
        status["podIPs"] = [{"ip": self.pod_ip}]
        for condition in status["conditions"]:
            if condition["type"] in ("Ready", "ContainersReady", "PodReadyToStartContainers"):
                condition.update({"status": "True", "lastTransitionTime": _now()})
                condition.pop("reason", None)
                condition.pop("message", None)
        status["containerStatuses"][0].update(
            {
                "state": {"running": {"startedAt": _now()}},
                "ready": True,
                "started": True,
                "imageID": f"docker.io/library/fake@sha256:{'0' * 64}",
                "containerID": f"containerd://{uuid.uuid4().hex}{uuid.uuid4().hex}",
            }
        )
        self._bump(pod)

    def _set_waiting(self, pod: dict[str, Any], reason: str, message: str) -> None:
        _container_status(pod)["state"] = {"waiting": {"reason": reason, "message": message}}
        self._bump(pod)

    def _terminate(
        self, pod: dict[str, Any], sim: _PodSim, code: int, reason: str | None, message: str | None
    ) -> None:
        if sim.stage == "terminated":
            return
        sim.stage = "terminated"
        sim.ends_at = None
        started = _container_status(pod).get("state", {}).get("running", {}).get("startedAt", _now())
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": reason or ("Completed" if code == 0 else "Error"),
            "startedAt": started,
            "finishedAt": _now(),
            "containerID": _container_status(pod).get("containerID") or f"containerd://{uuid.uuid4().hex}",
        }
        if message:
            terminated["message"] = message
        status = pod["status"]
        status["phase"] = "Succeeded" if code == 0 else "Failed"
        for condition in status.get("conditions", []):
            if condition["type"] in ("Ready", "ContainersReady", "PodReadyToStartContainers"):
                condition.update({"status": "False", "lastTransitionTime": _now(), "reason": "PodCompleted"})
                condition.pop("message", None)
        container_status = _container_status(pod)
        container_status.update({"state": {"terminated": terminated}, "ready": False, "started": False})
        self._bump(pod)

    def _host_mounts(self, pod: dict[str, Any]) -> list[tuple[str, Path]]:
        """(mountPath, host directory) for the container's hostPath and PVC mounts, as the kubelet sets them up."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        mounts = []
        for mount in _container(pod).get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            if "hostPath" in volume:
                source = Path(volume["hostPath"]["path"])
                kind = volume["hostPath"].get("type", "")
                if kind == "Directory" and not source.is_dir():
                    raise _MountError(
                        f'MountVolume.SetUp failed for volume "{mount["name"]}" : hostPath type check failed: {source} is not a directory'
                    )
                if kind == "File" and not source.is_file():
                    raise _MountError(
                        f'MountVolume.SetUp failed for volume "{mount["name"]}" : hostPath type check failed: {source} is not a file'
                    )
                if kind == "DirectoryOrCreate":
                    source.mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in volume:
                source = self.pvc_paths[volume["persistentVolumeClaim"]["claimName"]]
            else:
                continue
            if mount.get("subPath"):
                source = source / mount["subPath"]
                # The kubelet creates a missing subPath directory in the volume.
                if not source.exists():
                    source.mkdir(parents=True, exist_ok=True)
            mounts.append((mount["mountPath"], source))
        return mounts


class _MountError(Exception):
    pass


# -- HTTP plumbing -------------------------------------------------------------------------------------------


def _handler_class(fake: FakeKubernetes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            code, content_type, payload, warnings = fake.handle(self.command, self.path, headers, body)
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for warning in warnings:
                self.send_header("Warning", f'299 - "{warning}"')
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"json: {exc}") from None


# -- selectors -----------------------------------------------------------------------------------------------


def _split_requirements(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _label_test(key: str, values: set[str] | None, wanted: bool) -> Callable[[dict[str, str]], bool]:
    """A label requirement: ``key`` has one of ``values`` (or exists, when None), or ``not wanted`` that."""

    def test(labels: dict[str, str]) -> bool:
        present = key in labels if values is None else labels.get(key) in values
        return present is wanted

    return test


def _label_selector(text: str) -> list[Callable[[dict[str, str]], bool]]:
    tests: list[Callable[[dict[str, str]], bool]] = []
    key = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
    for requirement in _split_requirements(text):
        if m := re.fullmatch(rf"({key})\s*(==|=|!=)\s*([-A-Za-z0-9_.]*)", requirement):
            tests.append(_label_test(m[1], {m[3]}, m[2] != "!="))
        elif m := re.fullmatch(rf"({key})\s+(in|notin)\s+\(([^)]*)\)", requirement):
            tests.append(_label_test(m[1], {v.strip() for v in m[3].split(",")}, m[2] == "in"))
        elif m := re.fullmatch(rf"(!?)\s*({key})", requirement):
            tests.append(_label_test(m[2], None, not m[1]))
        else:
            raise ApiError(
                400, "BadRequest", f"unable to parse requirement: found '{requirement}', expected: identifier"
            )
    return tests


def _field_selector(text: str, resource: str) -> list[Callable[[dict[str, Any]], bool]]:
    tests: list[Callable[[dict[str, Any]], bool]] = []
    for requirement in _split_requirements(text):
        m = re.fullmatch(r"([A-Za-z.]+)\s*(==|=|!=)\s*(.*)", requirement)
        if m is None:
            raise ApiError(400, "BadRequest", f"invalid selector: '{text}'; can't understand '{requirement}'")
        path, op, value = m[1], m[2], m[3]
        if path not in _FIELD_SELECTORS[resource]:
            raise ApiError(400, "BadRequest", f"field label not supported: {path}")

        def value_of(obj: dict[str, Any], path: str = path) -> str:
            if path == "source":
                return str((obj.get("source") or {}).get("component", ""))
            current: Any = obj
            for part in path.split("."):
                current = current.get(part) if isinstance(current, dict) else None
            if isinstance(current, bool):
                return str(current).lower()
            return "" if current is None else str(current)

        tests.append(_field_test(value_of, value, op != "!="))
    return tests


def _field_test(
    value_of: Callable[[dict[str, Any]], str], value: str, wanted: bool
) -> Callable[[dict[str, Any]], bool]:
    def test(obj: dict[str, Any]) -> bool:
        return (value_of(obj) == value) is wanted

    return test


# -- the schema, from the official client's models ----------------------------------------------------------

_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
    "bytearray": (str,),
}


def _prune(value: Any, type_name: str, path: str, unknown: list[str]) -> Any:
    """``value`` without the fields the API does not know (collected in ``unknown``); wrong types are 400."""
    from kubernetes import client

    if value is None:
        return None
    if type_name.startswith("List["):
        if not isinstance(value, list):
            raise _decode_error(path, "array", value)
        return [_prune(item, type_name[5:-1], f"{path}[{i}]", unknown) for i, item in enumerate(value)]
    if type_name.startswith("Dict["):
        if not isinstance(value, dict):
            raise _decode_error(path, "object", value)
        inner = type_name[5:-1].split(",", 1)[1].strip()
        return {k: _prune(v, inner, f"{path}.{k}", unknown) for k, v in value.items()}
    if type_name == "object":
        return value
    if type_name in _PRIMITIVES:
        allowed = _PRIMITIVES[type_name]
        if not isinstance(value, allowed) or (bool not in allowed and isinstance(value, bool)):
            raise _decode_error(path, type_name, value)
        return value
    model = getattr(client, type_name)
    if not isinstance(value, dict):
        raise _decode_error(path, "object", value)
    by_wire = {wire: attr for attr, wire in model.attribute_map.items()}
    pruned = {}
    for key, item in value.items():
        attr = by_wire.get(key)
        where = f"{path}.{key}" if path else key
        if attr is None:
            unknown.append(where)
            continue
        pruned[key] = _prune(item, model.openapi_types[attr], where, unknown)
    return pruned


def _decode_error(path: str, expected: str, value: Any) -> ApiError:
    got = {str: "string", bool: "bool", int: "number", float: "number", list: "array", dict: "object"}.get(
        type(value), "value"
    )
    return ApiError(
        400,
        "BadRequest",
        f'Job in version "v1" cannot be handled as a Job: json: cannot unmarshal {got} into Go struct field {path} of type {expected}',
    )


# -- validation ----------------------------------------------------------------------------------------------


def _go(value: Any) -> str:
    return (
        json.dumps(value)
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def _required(path: str, detail: str = "") -> tuple[str, str, str]:
    return ("FieldValueRequired", path, "Required value" + (f": {detail}" if detail else ""))


def _bad(path: str, value: Any, detail: str) -> tuple[str, str, str]:
    return ("FieldValueInvalid", path, f"Invalid value: {_go(value)}: {detail}")


def _unsupported(path: str, value: Any, supported: tuple[str, ...]) -> tuple[str, str, str]:
    listed = ", ".join(json.dumps(s) for s in supported)
    return ("FieldValueNotSupported", path, f"Unsupported value: {_go(value)}: supported values: {listed}")


def _invalid(kind: str, group: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    texts = [f"{field_}: {message}" for _, field_, message in causes]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{kind}.{group} "{name}" is invalid: {summary}',
        {
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [{"reason": r, "message": m, "field": f} for r, f, m in causes],
        },
    )


def _validate_labels(labels: Any, path: str) -> list[tuple[str, str, str]]:
    causes = []
    for key, value in (labels or {}).items():
        prefix, _, name = key.rpartition("/")
        if not _LABEL_NAME.match(name) or len(name) > 63 or (prefix and not _DNS_SUBDOMAIN.match(prefix)):
            causes.append(
                _bad(path, key, "name part must consist of alphanumeric characters, '-', '_' or '.'")
            )
        if len(value) > 63:
            causes.append(_bad(f"{path}", value, "must be no more than 63 characters"))
        elif not _LABEL_VALUE.match(value):
            causes.append(
                _bad(
                    path,
                    value,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                )
            )
    return causes


def _quantity(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    m = _QUANTITY.match(text)
    if m is None:
        return None
    try:
        number = float(m[1])
    except ValueError:
        return None
    suffix = m[2]
    if suffix in _SUFFIXES:
        return number * _SUFFIXES[suffix]
    if suffix[:1] in "eE":
        try:
            return number * 10.0 ** int(suffix[1:])
        except ValueError:
            return None
    return None


def _check_unique_label(causes: list[tuple[str, str, str]], field: str, name: Any, seen: set[str]) -> None:
    """A required name that must be an RFC 1123 label, unique among its siblings (volumes, containers)."""
    if not name:
        causes.append(_required(field))
    elif not _DNS_LABEL.match(name) or len(name) > 63:
        causes.append(
            _bad(
                field,
                name,
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
            )
        )
    elif name in seen:
        causes.append(("FieldValueDuplicate", field, f"Duplicate value: {_go(name)}"))
    seen.add(name or "")


def _validate_job(job: dict[str, Any]) -> list[tuple[str, str, str]]:
    causes: list[tuple[str, str, str]] = []
    metadata = job.get("metadata") or {}
    name = metadata.get("name")
    if not name:
        causes.append(_required("metadata.name", "name or generateName is required"))
    elif not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        causes.append(
            _bad(
                "metadata.name",
                name,
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            )
        )
    elif len(name) > 63:
        # The Job controller puts the name into the job-name label of its pods.
        causes.append(_bad("metadata.name", name, "must be no more than 63 characters"))
    causes += _validate_labels(metadata.get("labels"), "metadata.labels")
    spec = job.get("spec")
    if not isinstance(spec, dict):
        return [*causes, _required("spec.template.spec.containers")]
    for key in (
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ):
        value = spec.get(key)
        if value is not None and value < 0:
            causes.append(_bad(f"spec.{key}", value, "must be greater than or equal to 0"))
    if spec.get("activeDeadlineSeconds") == 0:
        causes.append(_bad("spec.activeDeadlineSeconds", 0, "must be greater than 0"))
    if spec.get("selector") is not None and not spec.get("manualSelector"):
        causes.append(_bad("spec.selector", spec["selector"], "`selector` not auto-generated"))
    template = spec.get("template") or {}
    causes += _validate_labels(
        (template.get("metadata") or {}).get("labels"), "spec.template.metadata.labels"
    )
    pod = template.get("spec") or {}
    base = "spec.template.spec"
    restart = pod.get("restartPolicy", "Always")
    if restart not in ("OnFailure", "Never"):
        causes.append(_unsupported(f"{base}.restartPolicy", restart, ("OnFailure", "Never")))
    account = pod.get("serviceAccountName")
    if account is not None and not _DNS_SUBDOMAIN.match(account):
        causes.append(
            _bad(
                f"{base}.serviceAccountName",
                account,
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters",
            )
        )
    volumes: set[str] = set()
    for index, volume in enumerate(pod.get("volumes") or []):
        where = f"{base}.volumes[{index}]"
        _check_unique_label(causes, f"{where}.name", volume.get("name"), volumes)
        sources = [s for s in _VOLUME_SOURCES if s in volume]
        if not sources:
            causes.append(_required(where, "must specify a volume type"))
        elif len(sources) > 1:
            causes.append(
                (
                    "FieldValueForbidden",
                    f"{where}.{sources[1]}",
                    "Forbidden: may not specify more than 1 volume type",
                )
            )
        if "hostPath" in volume:
            host = volume["hostPath"] or {}
            if not host.get("path"):
                causes.append(_required(f"{where}.hostPath.path"))
            if host.get("type", "") not in _HOST_PATH_TYPES:
                causes.append(_unsupported(f"{where}.hostPath.type", host.get("type"), _HOST_PATH_TYPES))
        if "persistentVolumeClaim" in volume and not (volume["persistentVolumeClaim"] or {}).get("claimName"):
            causes.append(_required(f"{where}.persistentVolumeClaim.claimName"))
    containers = pod.get("containers") or []
    if not containers:
        causes.append(_required(f"{base}.containers"))
    names: set[str] = set()
    for index, container in enumerate(containers):
        where = f"{base}.containers[{index}]"
        _check_unique_label(causes, f"{where}.name", container.get("name"), names)
        if not container.get("image"):
            causes.append(_required(f"{where}.image"))
        policy = container.get("imagePullPolicy")
        if policy is not None and policy not in ("Always", "IfNotPresent", "Never"):
            causes.append(
                _unsupported(f"{where}.imagePullPolicy", policy, ("Always", "IfNotPresent", "Never"))
            )
        for i, port in enumerate(container.get("ports") or []):
            number = port.get("containerPort")
            if not isinstance(number, int) or not 1 <= number <= 65535:
                causes.append(
                    _bad(
                        f"{where}.ports[{i}].containerPort", number, "must be between 1 and 65535, inclusive"
                    )
                )
            protocol = port.get("protocol", "TCP")
            if protocol not in ("TCP", "UDP", "SCTP"):
                causes.append(_unsupported(f"{where}.ports[{i}].protocol", protocol, ("SCTP", "TCP", "UDP")))
        for i, env in enumerate(container.get("env") or []):
            env_name = env.get("name")
            if not env_name:
                causes.append(_required(f"{where}.env[{i}].name"))
            elif "=" in env_name or not all(" " <= c <= "~" for c in env_name):
                causes.append(
                    _bad(
                        f"{where}.env[{i}].name",
                        env_name,
                        "a valid environment variable name must consist only of printable ASCII characters other than '='",
                    )
                )
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        for kind, values in (("requests", requests), ("limits", limits)):
            for resource, text in values.items():
                if _quantity(text) is None:
                    causes.append(
                        _bad(
                            f"{where}.resources.{kind}[{resource}]",
                            text,
                            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                        )
                    )
        for resource, text in requests.items():
            request, limit = _quantity(text), _quantity(limits.get(resource))
            if request is not None and limit is not None and request > limit:
                causes.append(
                    _bad(
                        f"{where}.resources.requests",
                        text,
                        f"must be less than or equal to {resource} limit of {limits[resource]}",
                    )
                )
        paths: set[str] = set()
        for i, mount in enumerate(container.get("volumeMounts") or []):
            mount_where = f"{where}.volumeMounts[{i}]"
            if mount.get("name") not in volumes:
                causes.append(
                    ("FieldValueNotFound", f"{mount_where}.name", f"Not found: {_go(mount.get('name'))}")
                )
            mount_path = mount.get("mountPath")
            if not mount_path:
                causes.append(_required(f"{mount_where}.mountPath"))
            elif mount_path in paths:
                causes.append(_bad(f"{mount_where}.mountPath", mount_path, "must be unique"))
            paths.add(mount_path or "")
            sub_path = mount.get("subPath")
            if sub_path:
                if sub_path.startswith("/"):
                    causes.append(_bad(f"{mount_where}.subPath", sub_path, "must be a relative path"))
                elif ".." in PurePath(sub_path).parts:
                    causes.append(_bad(f"{mount_where}.subPath", sub_path, "must not contain '..'"))
    return causes


def _default_job(job: dict[str, Any]) -> None:
    """The API server's defaulting of a new Job (``pkg/apis/batch/v1/defaults.go`` and the core ones)."""
    meta, spec = job["metadata"], job["spec"]
    uid, name = meta["uid"], meta["name"]
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    spec.setdefault("manualSelector", None)
    if spec["manualSelector"] is None:
        del spec["manualSelector"]
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    template = spec["template"]
    template.setdefault("metadata", {})
    template["metadata"]["labels"] = {
        **(template["metadata"].get("labels") or {}),
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    }
    pod = template["spec"]
    pod.setdefault("dnsPolicy", "ClusterFirst")
    pod.setdefault("schedulerName", "default-scheduler")
    pod.setdefault("securityContext", {})
    pod.setdefault("terminationGracePeriodSeconds", 30)
    for container in pod["containers"]:
        image = container["image"]
        tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
        latest = image.endswith(":latest") or not tagged
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
        if container["resources"].get("limits") and not container["resources"].get("requests"):
            container["resources"]["requests"] = dict(container["resources"]["limits"])
        for port in container.get("ports") or []:
            port.setdefault("protocol", "TCP")
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            volume["hostPath"].setdefault("type", "")
    job["status"] = {}


# -- pods ----------------------------------------------------------------------------------------------------


def _suffix() -> str:
    return "".join(random.choice(NAME_SUFFIX_ALPHABET) for _ in range(5))


def _condition(kind: str, reason: str, message: str) -> dict[str, Any]:
    now = _now()
    return {
        "type": kind,
        "status": "True",
        "lastProbeTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    }


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = pod["spec"]["containers"][0]
    return container


def _container_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod["status"].get("containerStatuses") or [{}]
    status: dict[str, Any] = statuses[0]
    return status


def _is_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def _requests(pod: dict[str, Any]) -> tuple[float, float]:
    cpu = memory = 0.0
    for container in pod["spec"]["containers"]:
        requests = (container.get("resources") or {}).get("requests") or {}
        cpu += _quantity(requests.get("cpu", "0")) or 0.0
        memory += _quantity(requests.get("memory", "0")) or 0.0
    return cpu, memory


def _qos(spec: dict[str, Any]) -> str:
    guaranteed = True
    any_set = False
    for container in spec["containers"]:
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        any_set = any_set or bool(requests or limits)
        for resource in ("cpu", "memory"):
            if resource not in limits or _quantity(requests.get(resource, limits[resource])) != _quantity(
                limits[resource]
            ):
                guaranteed = False
    if guaranteed:
        return "Guaranteed"
    return "Burstable" if any_set else "BestEffort"


def _expand(text: str, environment: dict[str, str]) -> str:
    """``$(VAR)`` expansion as the kubelet does it (``third_party/forked/golang/expansion``): ``$$`` is ``$``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "$" and i + 1 < len(text):
            following = text[i + 1]
            if following == "$":
                out.append("$")
                i += 2
                continue
            if following == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(environment.get(name, f"$({name})"))
                    i = end + 1
                    continue
                out.append("$(")
                i += 2
                continue
            out.append("$" + following)
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _container_env(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    environment: dict[str, str] = {}
    for env in container.get("env") or []:
        if "value" in env and env["value"] is not None:
            environment[env["name"]] = _expand(env["value"], environment)
        elif (env.get("valueFrom") or {}).get("fieldRef"):
            path = env["valueFrom"]["fieldRef"].get("fieldPath", "")
            environment[env["name"]] = {
                "metadata.name": pod["metadata"]["name"],
                "metadata.namespace": pod["metadata"]["namespace"],
                "spec.nodeName": NODE,
                "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
            }.get(path, "")
        else:
            environment[env["name"]] = ""
    return environment


def _host_path(container_path: str | None, mounts: list[tuple[str, Path]]) -> Path | None:
    if not container_path:
        return None
    best: tuple[str, Path] | None = None
    for mount_path, source in mounts:
        normal = posixpath.normpath(mount_path)
        if (container_path == normal or container_path.startswith(normal.rstrip("/") + "/")) and (
            best is None or len(normal) > len(best[0])
        ):
            best = (normal, source)
    if best is None:
        return None
    rest = container_path[len(best[0]) :].lstrip("/")
    return best[1] / rest if rest else best[1]


def _kill(sim: _PodSim, signum: int) -> None:
    if sim.proc is None or sim.proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sim.proc.pid, signum)
