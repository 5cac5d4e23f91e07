"""A real single-node Slurm cluster for the Slurm platform's tests: munged, slurmctld, slurmd and slurmrestd.

Each cluster is private to the test process that starts it: its own munge key and socket, ClusterName, node
name, free ports and directories under one temporary base directory. So the two pytest-xdist workers can each
run one at the same time on one host (they do not share a port, a socket, a spool or a state directory).

The daemons need root (slurmd starts jobs as other users; munged and slurmrestd are started as ``munge`` and
``nobody`` through ``runuser``). slurmrestd runs with ``rest_auth/local``, so every job submitted through it
runs as ``nobody``: the workdirs handed out by :meth:`SlurmCluster.workdir` are world-writable for that reason,
inside a base directory that ``nobody`` and ``munge`` can traverse.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "slurmrestd", "sbatch", "scontrol", "squeue", "sinfo")
START_TIMEOUT = 60.0
REST_USER = "nobody"


def missing_requirements() -> str | None:
    """Why a cluster cannot be started on this machine, or None."""
    if not sys.platform.startswith("linux"):
        return "Slurm runs on Linux only"
    if os.geteuid() != 0:
        return "starting slurmd and munged needs root"
    absent = [name for name in (*DAEMONS, "runuser") if _which(name) is None]
    if absent:
        return f"not installed: {', '.join(absent)} (.ci/slurm.sh installs them)"
    for user in ("munge", REST_USER):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"there is no user {user!r}"
    return None


def _which(name: str) -> str | None:
    # The daemons live in sbin, which a non-login root shell may not have on its PATH.
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


class ClusterError(RuntimeError):
    pass


class SlurmCluster:
    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="ecliptic-slurm-"))
        # munge and nobody must reach their files in here; mkdtemp makes it private to root.
        self.base.chmod(0o755)
        self.name = f"ec{uuid.uuid4().hex[:8]}"
        self.node = f"{self.name}n1"
        self.host = socket.gethostname().split(".", 1)[0]
        self.conf = self.base / "slurm.conf"
        self.munge_dir = self.base / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.rest_dir = self.base / "rest"
        self.rest_socket = self.rest_dir / "slurmrestd.socket"
        self.logs = self.base / "log"
        self.work = self.base / "work"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._wrapped: set[str] = set()
        """Daemons started through runuser."""
        self._workdirs = 0

    # -- the environment the tests and the platform use ------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    @property
    def rest_url(self) -> str:
        return f"unix:{self.rest_socket}"

    def run(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def job_fields(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict; {} once Slurm no longer knows the job."""
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        fields: dict[str, str] = {}
        for token in out.split():
            key, sep, value = token.partition("=")
            if sep:
                fields[key] = value
        return fields

    def workdir(self, label: str) -> Path:
        """A fresh session workdir that the jobs' users (root and nobody) can write."""
        self._workdirs += 1
        path = self.work / f"{self._workdirs:03d}-{label}"
        _mkdir(path, 0o777)
        return path

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        for path in (self.logs, self.work, self.base / "state", self.base / "spool"):
            _mkdir(path)
        self._start_munge()
        self._write_conf()
        self._start_slurmctld()
        self._start_slurmd()
        self.wait_idle()
        self._start_slurmrestd()

    def _start_munge(self) -> None:
        _mkdir(self.munge_dir)
        shutil.chown(self.munge_dir, "munge", "munge")
        key = self.munge_dir / "munge.key"
        subprocess.run(
            ["runuser", "-u", "munge", "--", _need("mungekey"), "--create", f"--keyfile={key}"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self._start(
            "munged",
            [
                "runuser",
                "-u",
                "munge",
                "--",
                _need("munged"),
                "--foreground",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.munge_dir / 'munged.pid'}",
                f"--log-file={self.munge_dir / 'munged.log'}",
                f"--seed-file={self.munge_dir / 'munged.seed'}",
            ],
        )
        self._wait("munged's socket", lambda: self.munge_socket.exists(), "munged")

    def _write_conf(self) -> None:
        ctld_port, slurmd_port = free_port(), free_port()
        while slurmd_port == ctld_port:
            slurmd_port = free_port()
        base = self.base
        self.conf.write_text(
            f"""\
ClusterName={self.name}
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=2
MinJobAge=300
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={self.logs}/slurmctld.log
SlurmdLogFile={self.logs}/slurmd.log
NodeName={self.node} NodeHostname={self.host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=4096 State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        )
        self.conf.chmod(0o644)

    def _start_slurmctld(self, *extra: str) -> None:
        self._start("slurmctld", [_need("slurmctld"), "-D", *extra, "-f", str(self.conf)])

    def _start_slurmd(self) -> None:
        self._start("slurmd", [_need("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])

    def _start_slurmrestd(self) -> None:
        _mkdir(self.rest_dir)
        shutil.chown(self.rest_dir, REST_USER)
        self._start(
            "slurmrestd",
            [
                "runuser",
                "-u",
                REST_USER,
                "--",
                "env",
                f"SLURM_CONF={self.conf}",
                _need("slurmrestd"),
                "-a",
                "rest_auth/local",
                "-s",
                "openapi/v0.0.38",
                f"unix:{self.rest_socket}",
            ],
        )

        def answers() -> bool:
            if not self.rest_socket.exists():
                return False
            try:
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.rest_socket))) as client:
                    return client.get("http://slurmrestd/slurm/v0.0.38/ping", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        self._wait("slurmrestd to answer", answers, "slurmrestd")

    def wait_idle(self) -> None:
        def idle() -> bool:
            out = self.run(
                "sinfo", "--noheader", "--Node", f"--nodes={self.node}", "--format=%T", check=False
            )
            return out.strip() == "idle"

        self._wait(f"node {self.node} to be idle", idle, "slurmd")

    def forget_jobs(self) -> None:
        """Restart slurmctld with its state cleared, as after a controller rebuilt from nothing.

        It then knows no job at all and numbers new jobs from 1 again. slurmd is restarted too (its running
        jobs carry on under their slurmstepd) because it registers with a new controller at once, where
        waiting for the controller to ping it takes seconds.
        """
        self._kill("slurmctld")
        self._kill("slurmd", with_children=False)
        # -c alone keeps the job id sequence: the state files go too.
        shutil.rmtree(self.base / "state")
        _mkdir(self.base / "state")
        self._start_slurmctld("-c")
        self._start_slurmd()
        self.wait_idle()

    def stop(self) -> None:
        # Jobs first, through Slurm: slurmstepd detaches from slurmd, so no job is below a daemon we started.
        with contextlib.suppress(Exception):
            self._cancel_all_jobs()
        for name in reversed(list(self._procs)):
            self._kill(name)
        shutil.rmtree(self.base, ignore_errors=True)

    def _cancel_all_jobs(self) -> None:
        if "slurmctld" not in self._procs:
            return
        jobs = self.run("squeue", "--noheader", "--format=%i", check=False).split()
        if not jobs:
            return
        self.run("scancel", *jobs, check=False)
        until = time.monotonic() + 15
        while self.run("squeue", "--noheader", "--format=%i", check=False).split():
            if time.monotonic() > until:
                return
            time.sleep(0.2)

    # -- processes -------------------------------------------------------------------------------------------
    def _start(self, name: str, argv: list[str]) -> None:
        with open(self.logs / f"{name}.out", "ab") as out:
            if argv[0] == "runuser":
                self._wrapped.add(name)
            self._procs[name] = subprocess.Popen(
                argv,
                env=self.env,
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _kill(self, name: str, *, with_children: bool = True) -> None:
        """The daemon, the runuser in front of it, and whatever is still below them (slurmctld's slurmscriptd).

        Behind runuser the daemon goes first: runuser forwards a TERM and then sleeps before a KILL, and a
        child that outlives runuser is left to an init that may not reap it. A Slurm daemon goes first
        itself, because it shuts its own helpers down.
        """
        proc = self._procs.pop(name, None)
        if proc is None:
            return
        children = _descendants(proc.pid) if with_children else []
        if name in self._wrapped:
            _terminate(children)
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        _terminate(children)

    def _wait(self, what: str, condition: Callable[[], bool], daemon: str) -> None:
        until = time.monotonic() + START_TIMEOUT
        while not condition():
            proc = self._procs.get(daemon)
            if proc is not None and proc.poll() is not None:
                raise ClusterError(
                    f"{daemon} exited with {proc.returncode} while waiting for {what}{self.tail()}"
                )
            if time.monotonic() > until:
                raise ClusterError(f"timed out after {START_TIMEOUT:g} s waiting for {what}{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 15) -> str:
        parts = []
        for log in sorted(self.logs.glob("*")):
            text = log.read_text(errors="replace").strip().splitlines()[-lines:]
            if text:
                parts.append(f"\n--- {log.name}\n" + "\n".join(text))
        return "".join(parts)


def _mkdir(path: Path, mode: int = 0o755) -> None:
    # chmod, not mkdir's mode, which the umask (077 on some CI runners) would narrow.
    path.mkdir()
    path.chmod(mode)


def _need(name: str) -> str:
    path = _which(name)
    if path is None:
        raise ClusterError(f"{name} is not installed")
    return path


def _start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot: with the pid, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _descendants(pid: int) -> list[tuple[int, int]]:
    """Every process below ``pid`` now, each with its start time so that a reused pid is never signalled."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        tree.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found: list[tuple[int, int]] = []
    todo = [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            ticks = _start_ticks(child)
            if ticks is not None:
                found.append((child, ticks))
            todo.append(child)
    return found


def _terminate(processes: list[tuple[int, int]], grace: float = 5.0) -> None:
    def signal_alive(signum: int) -> None:
        for pid, ticks in processes:
            if _start_ticks(pid) == ticks:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

    signal_alive(signal.SIGTERM)
    until = time.monotonic() + grace
    while any(_start_ticks(pid) == ticks for pid, ticks in processes) and time.monotonic() < until:
        time.sleep(0.05)
    signal_alive(signal.SIGKILL)


def running_cluster() -> Iterator[SlurmCluster]:
    """The body of a cluster fixture: skips where Slurm cannot run, but fails under CI, which must run it."""
    reason = missing_requirements()
    cluster: SlurmCluster | None = None
    # A second try, because a free port found by binding it may be taken again before slurmctld binds it.
    for _ in range(2 if reason is None else 0):
        cluster = SlurmCluster()
        try:
            cluster.start()
        except (ClusterError, OSError, subprocess.SubprocessError) as exc:
            reason = f"the test Slurm cluster did not start: {exc}"
            cluster.stop()
            cluster = None
        else:
            reason = None
            break
    if reason is not None or cluster is None:
        if os.environ.get("CI"):
            pytest.fail(reason or "no cluster")
        pytest.skip(reason or "no cluster")
    try:
        yield cluster
    finally:
        cluster.stop()
