"""The Slurm platform: runs a command executable as a Slurm batch job, through slurmrestd or the CLI.

Everything needed to find and judge a run lives in the session's workdir under ``.ecliptic/slurm/``: the batch
script, the submitted job's id (``job.json``), the marker the job writes when it starts and the exit record it
writes when the command ends. Slurm forgets finished jobs after ``MinJobAge``; the exit record is how the
result outlives that. Any broker process can therefore poll or stop any run from the workdir and Slurm alone.

The job runs as whichever user Slurm authenticates the submission as: the broker's user on the CLI path, the
token's user with ``rest_auth/jwt``, and slurmrestd's own user with ``rest_auth/local``. That user must be able
to write the workdir; the directories made here copy the workdir's permissions so that granting it on the
workdir is enough.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
from pydantic import Field, model_validator

from ecliptic.config import IsoDuration
from ecliptic.durable import write_json_atomic, write_text_atomic
from ecliptic.isotime import format_instant, utcnow
from ecliptic.platforms.base import COMMAND_KIND, LaunchSpec, PlatformInfo, RunState, RunStatus
from ecliptic.platforms.config import PlatformConfig
from ecliptic.platforms.local import read_logs
from ecliptic.platforms.supervisor import (
    CONTROL_DIR,
    DEFAULT_PATH,
    LOGS_DIR,
    STDERR_LOG,
    STDOUT_LOG,
    describe_exit,
    read_json,
)

SLURM_DIR = "slurm"
SCRIPT_FILE = "job.sh"
RECORD_FILE = "job.json"
STARTED_FILE = "started"
EXIT_FILE = "exit"
STOP_FILE = "stop"
LOCK_FILE = "lock"

DEADLINE_GRACE = 10
"""Seconds between the TERM and the KILL when the booked time is over; Slurm's own limit comes after both."""

PING_TTL = 30.0
"""How long a slurmrestd ping answer decides the submit path in ``auto`` mode."""

STOP_POLL = 0.2

PENDING_STATES = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
)
RUNNING_STATES = frozenset(
    {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}
)
FAILED_STATES = frozenset(
    {"FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "SPECIAL_EXIT"}
)
NEVER_RAN_STATES = frozenset({"BOOT_FAIL", "DEADLINE"})
"""States whose exit code Slurm makes up: the script never ran."""

_INVALID_JOB = "Invalid job id specified"
_ESLURM_INVALID_JOB_ID = 2017
_ALREADY_DONE = ("already completing or completed", "Job/step already completing")
_UNREACHABLE = (
    "Unable to contact slurm controller",
    "Socket timed out",
    "Zero Bytes were transmitted",
    "Connection refused",
    "Communication connection failure",
)
_ENV_NAME = re.compile(r"^[^=\0]+$")
_SCONTROL_FIELD = re.compile(r"(\S+?)=(.*?)(?=\s+\S+?=|\s*$)")

T = TypeVar("T")


class SlurmError(RuntimeError):
    """Slurm refused or failed a request; the broker's engine retries the step that raised it."""


class SlurmUnavailable(SlurmError):
    """Neither slurmrestd nor the Slurm commands could reach the controller."""


class SlurmConfig(PlatformConfig):
    type: Literal["slurm"] = "slurm"
    rest_url: str | None = Field(
        default=None,
        description="slurmrestd's address: ``unix:/path/to/socket`` or ``http://127.0.0.1:6820``.",
    )
    rest_token: str | None = Field(
        default=None, repr=False, description="A Slurm JWT, for slurmrestd with rest_auth/jwt."
    )
    rest_user: str | None = Field(
        default=None, description="The user the JWT belongs to; the broker's own user by default."
    )
    api_version: str = "v0.0.38"
    partition: str | None = None
    slurm_conf: str | None = Field(default=None, description="Exported as SLURM_CONF to the Slurm commands.")
    submit: Literal["rest", "cli", "auto"] = Field(
        default="auto",
        description="auto: slurmrestd when rest_url is set and answers a ping, else the sbatch command.",
    )
    request_timeout: IsoDuration = Field(default=timedelta(seconds=30))

    @model_validator(mode="after")
    def _rest_needs_url(self) -> SlurmConfig:
        if self.submit == "rest" and not self.rest_url:
            raise ValueError("submit = 'rest' needs rest_url")
        if self.rest_url and not self.rest_url.startswith(("unix:", "http://", "https://")):
            raise ValueError("rest_url must be unix:/path, http://host:port or https://host:port")
        return self


def build(name: str, config: SlurmConfig) -> SlurmPlatform:
    return SlurmPlatform(config, name)


@dataclass(frozen=True)
class SlurmJob:
    """What poll needs of one Slurm job, the same whether it came from slurmrestd or scontrol."""

    job_id: str
    name: str
    comment: str
    state: str
    reason: str
    exit_code: int | None
    """The batch script's exit code, or minus the signal that killed it."""
    node: str

    @property
    def ran(self) -> bool:
        return bool(self.node) and self.state not in NEVER_RAN_STATES


class SlurmPlatform:
    def __init__(self, config: SlurmConfig, name: str = "slurm") -> None:
        self.config = config
        estimates = {"executable": 0.0, "compute": 30.0, "storage": 0.0}
        estimates.update(config.prepare_seconds)
        self._info = PlatformInfo(
            name=name,
            capacity=config.capacity(),
            executable_kinds=frozenset({COMMAND_KIND}),
            prepare_seconds=estimates,
            site=config.site,
        )
        self._timeout = config.request_timeout.total_seconds()
        self._rest = _Rest(config, self._timeout) if config.rest_url and config.submit != "cli" else None
        self._ping_lock = threading.Lock()
        self._ping: tuple[float, bool] | None = None

    @property
    def info(self) -> PlatformInfo:
        return self._info

    def close(self) -> None:
        if self._rest is not None:
            self._rest.close()

    # -- launch ----------------------------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        """Submit the batch job unless this session already has one.

        Under the workdir's lock, the job is looked for in three places before anything is submitted: the
        record of an earlier submission, the marker a started job writes, and Slurm's own job list (by the
        session's comment). So a repeated launch, a concurrent one, or one after a crash between sbatch and
        writing the record, all end with exactly one job.
        """
        if spec.executable_kind != COMMAND_KIND:
            raise ValueError(
                f"the Slurm platform runs {COMMAND_KIND} executables, not {spec.executable_kind}"
            )
        if not spec.command:
            raise ValueError("a command executable needs at least the program to run")
        bad = [key for key in spec.environment if not _ENV_NAME.match(key)]
        if bad:
            raise ValueError(f"environment variable names may not be empty or hold '=': {bad}")
        workdir = spec.workdir.absolute()
        state = _state_dir(workdir, create=True)
        _make_dir_like(workdir / LOGS_DIR, workdir)
        with _locked(state):
            record = read_json(state / RECORD_FILE)
            if record is not None and record.get("job_id"):
                return self._handle(spec.session_uuid, workdir, record)
            if (state / STOP_FILE).exists():
                return self._handle(spec.session_uuid, workdir, {"job_id": None, "via": None})
            job_id = _started_job(state) or self._find(spec.session_uuid)
            via = "found"
            if job_id is None:
                script = batch_script(spec, workdir)
                write_text_atomic(state / SCRIPT_FILE, script)
                job_id, via = self._submit(spec, workdir, state / SCRIPT_FILE, script)
            record = {
                "job_id": job_id,
                "via": via,
                "name": job_name(spec.session_uuid),
                "comment": job_comment(spec.session_uuid),
                "submitted": format_instant(utcnow()),
            }
            write_json_atomic(state / RECORD_FILE, record)
        return self._handle(spec.session_uuid, workdir, record)

    def _handle(self, session: str, workdir: Path, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "platform": self._info.name,
            "session": session,
            "workdir": str(workdir),
            "job_id": record.get("job_id"),
            "via": record.get("via"),
        }

    def _submit(self, spec: LaunchSpec, workdir: Path, script_path: Path, script: str) -> tuple[str, str]:
        minutes = time_limit_minutes(spec)
        if self._rest is not None and (self.config.submit == "rest" or self._rest_answers()):
            job: dict[str, Any] = {
                "name": job_name(spec.session_uuid),
                "comment": job_comment(spec.session_uuid),
                "current_working_directory": str(workdir),
                "standard_output": str(workdir / LOGS_DIR / STDOUT_LOG),
                "standard_error": str(workdir / LOGS_DIR / STDERR_LOG),
                "environment": _submit_environment(),
                "tasks": 1,
                "nodes": [1, 1],
                "cpus_per_task": spec.cores,
                "time_limit": minutes,
                "requeue": False,
                "open_mode": "truncate",
            }
            # Zero would ask Slurm for all of a node's memory: without a size, the partition's default applies.
            if spec.memory_gib > 0:
                job["memory_per_node"] = spec.memory_gib * 1024
            if self.config.partition:
                job["partition"] = self.config.partition
            return self._rest.submit(script, job), "rest"
        args = [
            "--parsable",
            f"--job-name={job_name(spec.session_uuid)}",
            f"--comment={job_comment(spec.session_uuid)}",
            f"--chdir={workdir}",
            f"--output={workdir / LOGS_DIR / STDOUT_LOG}",
            f"--error={workdir / LOGS_DIR / STDERR_LOG}",
            "--nodes=1",
            "--ntasks=1",
            f"--cpus-per-task={spec.cores}",
            f"--time={minutes}",
            "--no-requeue",
            "--open-mode=truncate",
        ]
        if spec.memory_gib > 0:
            args.append(f"--mem={spec.memory_gib}G")
        if self.config.partition:
            args.append(f"--partition={self.config.partition}")
        out = self._cli("sbatch", *args, str(script_path))
        job_id = out.strip().split(";", 1)[0]
        if not job_id.isdigit():
            raise SlurmError(f"sbatch printed no job id: {out.strip()!r}")
        return job_id, "cli"

    def _rest_answers(self) -> bool:
        assert self._rest is not None
        with self._ping_lock:
            now = time.monotonic()
            if self._ping is not None and now - self._ping[0] < PING_TTL:
                return self._ping[1]
            try:
                ok = self._rest.ping()
            except SlurmError:
                ok = False
            self._ping = (now, ok)
            return ok

    def _find(self, session: str) -> str | None:
        """The id of a job Slurm has for this session, also one it already finished (until MinJobAge)."""
        name, comment = job_name(session), job_comment(session)

        def via_rest(rest: _Rest) -> str | None:
            for job in rest.jobs():
                if job.name == name and job.comment == comment:
                    return job.job_id
            return None

        def via_cli() -> str | None:
            out = self._cli("squeue", "--noheader", "--states=all", f"--name={name}", "--format=%i|%k")
            for line in out.splitlines():
                job_id, _, found = line.strip().partition("|")
                if found == comment:
                    return job_id
            return None

        return self._either(via_rest, via_cli)

    # -- poll ------------------------------------------------------------------------------------------------
    def poll(self, workdir: Path, handle: dict[str, Any]) -> RunStatus:
        workdir = workdir.absolute()
        state = _state_dir(workdir)
        session = str(handle.get("session") or "")
        job_id = _job_id(state, handle)
        if job_id is None:
            if (state / STOP_FILE).exists():
                return RunStatus(
                    RunState.FAILED, detail=f"stopped before it was submitted: {_stop_reason(state)}"
                )
            return RunStatus(RunState.LOST, detail="no Slurm job was submitted for this session")
        result = _exit_record(state, job_id)
        try:
            job = self._job(job_id)
        except SlurmUnavailable:
            # The job's own exit record is final whatever the controller says, and it is on our disk.
            if result is not None:
                return _status_from_record(state, job_id, result, known=True)
            raise
        if job is not None and session and job.comment != job_comment(session):
            # Job ids restart when a controller loses its state: this id now names someone else's job.
            job = None
        if job is None:
            if result is not None:
                return _status_from_record(state, job_id, result, known=False)
            return RunStatus(
                RunState.LOST,
                detail=f"Slurm no longer knows job {job_id}, and the job recorded no exit status "
                f"({'it had started' if _started_job(state) == job_id else 'it never started'})",
            )
        return _status_from_job(state, job, result)

    def _job(self, job_id: str) -> SlurmJob | None:
        def via_cli() -> SlurmJob | None:
            try:
                out = self._cli("scontrol", "show", "job", "-o", job_id)
            except SlurmError as exc:
                if _INVALID_JOB in str(exc):
                    return None
                raise
            for line in out.splitlines():
                job = _parse_scontrol(line)
                if job is not None and job.job_id == job_id:
                    return job
            return None

        return self._either(lambda rest: rest.job(job_id), via_cli)

    # -- stop ------------------------------------------------------------------------------------------------
    def stop(self, workdir: Path, handle: dict[str, Any], reason: str, *, wait: float = 15.0) -> None:
        """Cancel the job and wait up to ``wait`` seconds for Slurm to have ended it.

        The stop file is written first, under no lock, so a launch still on its way to sbatch sees it and
        submits nothing; taking the lock afterwards waits for a launch already past that check to record its
        job, which is then cancelled here.
        """
        workdir = workdir.absolute()
        session = str(handle.get("session") or "")
        state = _state_dir(workdir, create=workdir.is_dir())
        if state.is_dir():
            if not (state / STOP_FILE).exists():
                write_text_atomic(state / STOP_FILE, (reason.strip() or "on request") + "\n")
            with _locked(state):
                job_id = _job_id(state, handle) or (self._find(session) if session else None)
        else:
            job_id = _job_id(state, handle)
        if job_id is None:
            return
        self._cancel(job_id)
        until = time.monotonic() + wait
        while True:
            job = self._job(job_id)
            if job is None or job.state not in PENDING_STATES | RUNNING_STATES:
                return
            if time.monotonic() >= until:
                return
            time.sleep(STOP_POLL)

    def _cancel(self, job_id: str) -> None:
        def via_cli() -> None:
            try:
                self._cli("scancel", job_id)
            except SlurmError as exc:
                if _INVALID_JOB in str(exc) or any(done in str(exc) for done in _ALREADY_DONE):
                    return
                raise

        self._either(lambda rest: rest.cancel(job_id), via_cli)

    def logs(self, workdir: Path, handle: dict[str, Any]) -> str:
        return read_logs(workdir.absolute())

    # -- transports ------------------------------------------------------------------------------------------
    def _either(self, rest_call: Callable[[_Rest], T], cli_call: Callable[[], T]) -> T:
        """slurmrestd first when configured; in ``auto`` mode the commands when it cannot be reached."""
        if self._rest is not None:
            try:
                return rest_call(self._rest)
            except SlurmUnavailable:
                if self.config.submit == "rest":
                    raise
        return cli_call()

    def _cli(self, program: str, *args: str) -> str:
        path = shutil.which(program)
        if path is None:
            raise SlurmUnavailable(f"{program} is not installed here, and slurmrestd is not configured")
        env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
        conf = self.config.slurm_conf or os.environ.get("SLURM_CONF")
        if conf:
            env["SLURM_CONF"] = conf
        try:
            # A small known environment: sbatch hands its own environment to the job, and the broker's may
            # hold credentials; and SBATCH_*/SLURM_* variables would change what the commands do.
            proc = subprocess.run(
                [path, *args],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self._timeout,
                cwd="/",
            )
        except subprocess.TimeoutExpired as exc:
            raise SlurmUnavailable(f"{program} did not answer within {self._timeout:g} s") from exc
        if proc.returncode != 0:
            message = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").strip()
            error = SlurmUnavailable if any(text in message for text in _UNREACHABLE) else SlurmError
            raise error(f"{program} {' '.join(args[:1])}: {message}")
        return proc.stdout


class _Rest:
    """A small slurmrestd client: the calls this platform makes, in the configured OpenAPI version."""

    def __init__(self, config: SlurmConfig, timeout: float) -> None:
        assert config.rest_url is not None
        url = config.rest_url
        transport: httpx.HTTPTransport | None = None
        if url.startswith("unix:"):
            path = url.removeprefix("unix:")
            transport = httpx.HTTPTransport(uds=path[2:] if path.startswith("//") else path)
            url = "http://slurmrestd"
        headers = {"Accept": "application/json"}
        if config.rest_token:
            headers["X-SLURM-USER-NAME"] = config.rest_user or getpass.getuser()
            headers["X-SLURM-USER-TOKEN"] = config.rest_token
        self._client = httpx.Client(base_url=url, transport=transport, headers=headers, timeout=timeout)
        self._prefix = f"/slurm/{config.api_version}"

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = self._client.request(method, self._prefix + path, json=body)
        except httpx.TransportError as exc:
            raise SlurmUnavailable(f"slurmrestd: {exc}") from exc
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise SlurmError(
                f"slurmrestd {method} {path}: HTTP {response.status_code}: {response.text[:200]!r}"
            )
        errors = [e for e in data.get("errors") or [] if isinstance(e, dict)]
        if errors or response.status_code >= 400:
            messages = "; ".join(str(e.get("description") or e.get("error") or e) for e in errors)
            numbers = {e.get("error_number") for e in errors}
            text = messages or f"HTTP {response.status_code}"
            if _ESLURM_INVALID_JOB_ID in numbers or _INVALID_JOB in text:
                raise _NoSuchJob(text)
            error = SlurmUnavailable if any(t in text for t in _UNREACHABLE) else SlurmError
            raise error(f"slurmrestd {method} {path}: {text}")
        return data

    def ping(self) -> bool:
        pings = self._call("GET", "/ping").get("pings") or []
        return any(isinstance(p, dict) and str(p.get("ping", "")).upper() == "UP" for p in pings)

    def submit(self, script: str, job: dict[str, Any]) -> str:
        data = self._call("POST", "/job/submit", {"script": script, "job": job})
        job_id = data.get("job_id")
        if not isinstance(job_id, int):
            raise SlurmError(f"slurmrestd accepted the job but returned no job id: {data!r:.200}")
        return str(job_id)

    def job(self, job_id: str) -> SlurmJob | None:
        try:
            data = self._call("GET", f"/job/{job_id}")
        except _NoSuchJob:
            return None
        for raw in data.get("jobs") or []:
            job = _from_rest(raw)
            if job is not None and job.job_id == job_id:
                return job
        return None

    def jobs(self) -> Iterator[SlurmJob]:
        for raw in self._call("GET", "/jobs").get("jobs") or []:
            job = _from_rest(raw)
            if job is not None:
                yield job

    def cancel(self, job_id: str) -> None:
        try:
            self._call("DELETE", f"/job/{job_id}")
        except _NoSuchJob:
            return
        except SlurmError as exc:
            if not any(done in str(exc) for done in _ALREADY_DONE):
                raise


class _NoSuchJob(SlurmError):
    pass


# -- the batch script ----------------------------------------------------------------------------------------


def job_name(session: str) -> str:
    return f"ecliptic-{session[:8]}"


def job_comment(session: str) -> str:
    # No spaces or '=': the comment is matched in `scontrol show job -o` and squeue output.
    return f"ecliptic:{session}"


def time_limit_minutes(spec: LaunchSpec) -> int:
    """Slurm's own limit: the booked time, plus room for the script to stop the command first."""
    left = (spec.deadline - utcnow()).total_seconds()
    return max(1, math.ceil((max(0.0, left) + DEADLINE_GRACE + 5) / 60))


def job_environment(spec: LaunchSpec, workdir: Path) -> dict[str, str]:
    """A small known base, as for local runs; the broker host's PATH means nothing on a compute node."""
    env = {"PATH": DEFAULT_PATH, "HOME": str(workdir), "LANG": "C.UTF-8"}
    env.update(spec.environment)
    # Set last so a client cannot make the command believe it is another session.
    env["ECLIPTIC_SESSION"] = spec.session_uuid
    env["ECLIPTIC_WORKDIR"] = str(workdir)
    return env


def _submit_environment() -> dict[str, str]:
    """What the batch script itself starts with; the command's own environment is set inside the script."""
    return {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}


def batch_script(spec: LaunchSpec, workdir: Path) -> str:
    """The batch script: runs the command until the deadline, and records how it ended in the workdir."""
    q = shlex.quote
    state = f"{CONTROL_DIR}/{SLURM_DIR}"
    assignments = " ".join(q(f"{k}={v}") for k, v in job_environment(spec, workdir).items())
    command = list(spec.command)
    if "=" in command[0]:
        # env would take a program name holding '=' for one more variable.
        command = ["/bin/sh", "-c", 'exec "$@"', "sh", *command]
    deadline = math.floor(spec.deadline.timestamp())
    return f"""#!/bin/bash
# ecliptic session {spec.session_uuid}: written by ecliptic, run by Slurm as the session's batch job.
cd -- {q(str(workdir))} || exit 111
state={q(state)}
echo "$SLURM_JOB_ID" > "$state/.started.$$" && mv -f -- "$state/.started.$$" "$state/{STARTED_FILE}"
deadline={deadline}
# A trap that does something, not '' (which the command would inherit as "ignore"): when Slurm signals the
# whole job, the shell outlives the command long enough to record how it ended.
signalled=false
trap 'signalled=true' TERM INT HUP USR1 USR2
left=$(( deadline - $(date +%s) ))
if [ "$left" -gt 0 ]; then
  timeout --kill-after={DEADLINE_GRACE} "$left" env -- {assignments} {" ".join(q(a) for a in command)}
  code=$?
else
  code=124
fi
late=false
if [ "$(date +%s)" -ge "$deadline" ] && {{ [ "$code" -eq 124 ] || [ "$code" -eq 137 ]; }}; then late=true; fi
printf '{{"job_id": "%s", "exit_code": %d, "deadline": %s, "signalled": %s, "ended": %d}}\\n' \\
  "$SLURM_JOB_ID" "$code" "$late" "$signalled" "$(date +%s)" > "$state/.exit.$$" \\
  && mv -f -- "$state/.exit.$$" "$state/{EXIT_FILE}"
exit "$code"
"""


# -- reading what Slurm says ---------------------------------------------------------------------------------


def _from_rest(raw: Any) -> SlurmJob | None:
    if not isinstance(raw, dict) or raw.get("job_id") is None:
        return None
    state = raw.get("job_state")
    if isinstance(state, list):
        state = state[0] if state else ""
    status = raw.get("exit_code")
    return SlurmJob(
        job_id=str(raw["job_id"]),
        name=str(raw.get("name") or ""),
        comment=str(raw.get("comment") or ""),
        state=_base_state(str(state or "")),
        reason=_reason(str(raw.get("state_reason") or "")),
        # slurmrestd v0.0.38 gives the raw wait status.
        exit_code=_wait_status(status) if isinstance(status, int) else None,
        node=str(raw.get("batch_host") or ""),
    )


def _parse_scontrol(line: str) -> SlurmJob | None:
    fields = {m.group(1): m.group(2) for m in _SCONTROL_FIELD.finditer(line.strip())}
    if "JobId" not in fields:
        return None
    code: int | None = None
    exit_code, _, killed_by = fields.get("ExitCode", "").partition(":")
    if exit_code.isdigit() and killed_by.isdigit():
        code = -int(killed_by) if int(killed_by) else int(exit_code)
    node = fields.get("BatchHost", "")
    return SlurmJob(
        job_id=fields["JobId"],
        name=fields.get("JobName", ""),
        comment="" if fields.get("Comment") == "(null)" else fields.get("Comment", ""),
        state=_base_state(fields.get("JobState", "")),
        reason=_reason(fields.get("Reason", "")),
        exit_code=code,
        node="" if node == "(null)" else node,
    )


def _base_state(state: str) -> str:
    return state.strip().split("+", 1)[0].split(" ", 1)[0].upper()


def _reason(reason: str) -> str:
    return "" if reason in ("None", "(null)") else reason


def _wait_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


# -- judging a run -------------------------------------------------------------------------------------------


def _status_from_job(state: Path, job: SlurmJob, result: dict[str, Any] | None) -> RunStatus:
    where = f"Slurm job {job.job_id}"
    if job.state in PENDING_STATES:
        why = f" ({job.reason})" if job.reason else ""
        return RunStatus(RunState.PENDING, detail=f"{where} is {job.state.lower()}{why}")
    if job.state in RUNNING_STATES:
        on = f" on {job.node}" if job.node else ""
        return RunStatus(RunState.RUNNING, detail=f"{where} is {job.state.lower()}{on}")
    code = _record_code(result)
    if code is None and job.ran:
        code = job.exit_code
    how = f", {_describe(code)}" if code is not None else ""
    said = f"{where} {job.state}" + (f" ({job.reason})" if job.reason else "")
    if result is not None and result.get("deadline") is True:
        return RunStatus(RunState.FAILED, exit_code=code, detail=f"stopped: deadline reached; {said}{how}")
    if job.state == "COMPLETED":
        if code == 0:
            return RunStatus(RunState.SUCCEEDED, exit_code=0, detail=_describe(0))
        return RunStatus(RunState.FAILED, exit_code=code, detail=f"{said}{how}")
    if job.state == "CANCELLED":
        if (state / STOP_FILE).exists():
            return RunStatus(
                RunState.FAILED, exit_code=code, detail=f"stopped: {_stop_reason(state)}; {said}{how}"
            )
        return RunStatus(RunState.FAILED, exit_code=code, detail=f"cancelled: {said} outside ecliptic{how}")
    if job.state in FAILED_STATES:
        return RunStatus(RunState.FAILED, exit_code=code, detail=f"{said}{how}")
    if job.state == "REVOKED":
        return RunStatus(RunState.LOST, detail=f"{said}: it moved to another cluster of the federation")
    # A state newer than this code knows: keep polling rather than judge it.
    return RunStatus(RunState.PENDING, detail=f"{said}: a state ecliptic does not know")


def _status_from_record(state: Path, job_id: str, result: dict[str, Any], *, known: bool) -> RunStatus:
    code = _record_code(result)
    source = "" if known else f" (from the job's own record: Slurm no longer knows job {job_id})"
    if result.get("deadline") is True:
        return RunStatus(RunState.FAILED, exit_code=code, detail=f"stopped: deadline reached{source}")
    if code == 0:
        return RunStatus(RunState.SUCCEEDED, exit_code=0, detail=_describe(0) + source)
    how = _describe(code) if code is not None else "ended without an exit code"
    if result.get("signalled") is True:
        why = f"stopped: {_stop_reason(state)}" if (state / STOP_FILE).exists() else "signalled by Slurm"
        return RunStatus(RunState.FAILED, exit_code=code, detail=f"{why}, {how}{source}")
    return RunStatus(RunState.FAILED, exit_code=code, detail=how + source)


def _describe(code: int) -> str:
    """As for local runs, plus what a shell's exit status says about the command."""
    text = describe_exit(code)
    if code in (126, 127):
        return f"{text} ({'command not found' if code == 127 else 'command could not be executed'})"
    if 128 < code < 128 + 65:
        try:
            name = f", {signal.Signals(code - 128).name}"
        except ValueError:
            name = ""
        return f"{text} (killed by signal {code - 128}{name})"
    return text


def _record_code(result: dict[str, Any] | None) -> int | None:
    code = result.get("exit_code") if result is not None else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


# -- files ---------------------------------------------------------------------------------------------------


def _state_dir(workdir: Path, *, create: bool = False) -> Path:
    state = workdir / CONTROL_DIR / SLURM_DIR
    if create:
        _make_dir_like(workdir / CONTROL_DIR, workdir)
        _make_dir_like(state, workdir)
    return state


def _make_dir_like(path: Path, model: Path) -> None:
    """Make ``path`` with ``model``'s permissions: the job's user may not be the broker's."""
    try:
        path.mkdir()
    except FileExistsError:
        return
    mode = model.stat().st_mode & 0o7777
    if path.stat().st_mode & 0o7777 != mode:
        path.chmod(mode)


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[None]:
    with open(state / LOCK_FILE, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _job_id(state: Path, handle: dict[str, Any]) -> str | None:
    """The recorded job id first: the handle may predate a launch that recorded a job after all."""
    record = read_json(state / RECORD_FILE)
    for source in (record or {}, handle):
        job_id = source.get("job_id")
        if job_id:
            return str(job_id)
    return _started_job(state)


def _started_job(state: Path) -> str | None:
    try:
        text = (state / STARTED_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text if text.isdigit() else None


def _exit_record(state: Path, job_id: str) -> dict[str, Any] | None:
    result = read_json(state / EXIT_FILE)
    if result is None or str(result.get("job_id")) != job_id:
        return None
    return result


def _stop_reason(state: Path) -> str:
    try:
        return (state / STOP_FILE).read_text(encoding="utf-8").strip() or "on request"
    except OSError:
        return "on request"
