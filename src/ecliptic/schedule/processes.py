"""Process groups for scheduled runs: start in a session of their own, wait, stop the whole group, kill orphans.

Every run's process leads a new session, so its process group id is its pid and everything it starts (that
does not deliberately leave) can be signalled at once. A pid alone is not a safe handle after a crash, because
the kernel reuses pids; :func:`process_identity` adds the process' start time and the boot id, which together
name one process over the machine's lifetime, and :func:`kill_orphan` signals only a process that still has
the recorded identity.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from ecliptic.platforms.supervisor import boot_id, live_group_members, process_info, signal_group

ORPHAN_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL when :func:`kill_orphan` stops a group left by a crashed scheduler."""

GONE_WAIT = 2.0
"""How long to wait, after SIGKILL, for the last members of a group to disappear."""

POLL_INTERVAL = 0.05
"""The longest a waiting run sleeps before looking at its cancel event and deadline again."""

_PR_SET_CHILD_SUBREAPER = 36


def process_identity(pid: int) -> str | None:
    """``<boot id>:<start time in clock ticks>`` of a live process; None if it is gone (or only a zombie).

    The start time is field 22 of ``/proc/<pid>/stat``. A later process given the same pid has a later start
    time, and one after a reboot has another boot id, so equal identities mean the very same process. Without
    ``/proc`` there is no way to tell, and the answer is None.
    """
    if pid <= 0 or not os.path.exists(f"/proc/{pid}/stat"):
        return None
    info = process_info(pid)
    if info is None or info.dead:
        return None
    return f"{boot_id()}:{info.start_ticks}"


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in the group."""
    return bool(live_group_members(pgid))


def reap_group(pgid: int) -> None:
    """Collect zombies of the group that are children of this process.

    Members orphaned when the group's leader died are adopted by init, or by this process when it is a child
    subreaper (:func:`become_subreaper`); in the second case nobody else will ever reap them. Waiting on them by
    pid is safe: a pid in this group belongs to this run, never to another thread's child. The leader itself
    (pid == pgid) is skipped: whoever started it waits for it, and taking its exit status would rob them.
    """
    if not os.path.exists("/proc/self/stat"):
        return
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        info = process_info(int(entry))
        if info is not None and info.dead and info.pgid == pgid and info.pid != pgid and info.ppid == me:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(info.pid, os.WNOHANG)


def become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``); True if it worked.

    A run's processes that outlive their parent are then re-parented here instead of to init, so
    :func:`reap_group` can collect them. Useful where init does not reap (some containers); it affects the
    whole process, so it is the caller's decision, never made by a run.
    """
    return _set_subreaper(1)


def stop_being_subreaper() -> bool:
    return _set_subreaper(0)


def _set_subreaper(value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def wait_group_gone(pgid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds until no live process is left in the group, reaping our zombies."""
    until = time.monotonic() + timeout
    while True:
        reap_group(pgid)
        if not group_alive(pgid):
            reap_group(pgid)
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(0.02)


def kill_orphan(pid: int, identity: str) -> bool:
    """Stop the process group led by ``pid`` if ``pid`` is still the process recorded as ``identity``.

    SIGTERM to the group, then SIGKILL after :data:`ORPHAN_GRACE` seconds if any member is still alive. A pid
    that is gone, or now belongs to another process, is left alone. True if something was signalled.
    """
    if not identity or process_identity(pid) != identity:
        return False
    info = process_info(pid)
    # A run's process leads its own group; should it have moved (setpgid), stop the process alone.
    pgid = pid if info is None or info.pgid == pid else None
    if pgid is not None:
        signal_group(pgid, signal.SIGTERM)
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)

    def alive() -> bool:
        if pgid is not None:
            reap_group(pgid)
            return group_alive(pgid)
        return process_identity(pid) == identity

    deadline = time.monotonic() + ORPHAN_GRACE
    while alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if alive():
        if pgid is not None:
            signal_group(pgid, signal.SIGKILL)
        elif process_identity(pid) == identity:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        until = time.monotonic() + GONE_WAIT
        while alive() and time.monotonic() < until:
            time.sleep(0.02)
    return True


# -- waiting on a run ----------------------------------------------------------------------------------------


@dataclass
class Ending:
    """How a supervised process ended: its return code and whether (and how hard) it was stopped."""

    returncode: int
    stopped: str | None
    """``"timeout"`` or ``"cancel"`` if the run was stopped, else None."""
    escalated: bool
    """SIGKILL was needed: something ignored SIGTERM for the whole grace period."""
    leftovers: int
    """Processes of the group still alive when the leader exited (they were stopped too)."""


def supervise(
    proc: subprocess.Popen[bytes],
    *,
    cancel: threading.Event,
    deadline: float | None,
    grace: float,
) -> Ending:
    """Wait for ``proc`` (a session leader) and everything in its group.

    At the ``deadline`` (a :func:`time.monotonic` value) or when ``cancel`` is set, the group gets SIGTERM and,
    ``grace`` seconds later, SIGKILL. Processes the leader leaves behind when it exits are stopped the same
    way: the run is its process group. Returns once no live member is left (or, failing that, shortly after
    SIGKILL). ``cancel`` and the deadline are checked at least every :data:`POLL_INTERVAL` seconds.
    """
    pgid = proc.pid
    stopped: str | None = None
    kill_at: float | None = None
    escalated = False
    pidfd = _pidfd(proc.pid)
    poller: select.poll | None = None
    if pidfd is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if stopped is None:
                if cancel.is_set():
                    stopped = "cancel"
                elif deadline is not None and now >= deadline:
                    stopped = "timeout"
                if stopped is not None:
                    signal_group(pgid, signal.SIGTERM)
                    kill_at = now + grace
            elif kill_at is not None and not escalated and now >= kill_at:
                signal_group(pgid, signal.SIGKILL)
                escalated = True
            step = POLL_INTERVAL
            for moment in (deadline if stopped is None else None, kill_at if not escalated else None):
                if moment is not None:
                    step = min(step, max(moment - now, 0.001))
            if poller is not None:
                poller.poll(step * 1000)
            else:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=step)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    returncode = proc.returncode
    assert returncode is not None

    leftovers = len(live_group_members(pgid))
    if leftovers:
        if kill_at is None:
            signal_group(pgid, signal.SIGTERM)
            kill_at = time.monotonic() + grace
        if not escalated:
            while group_alive(pgid) and time.monotonic() < kill_at:
                reap_group(pgid)
                time.sleep(0.02)
            if group_alive(pgid):
                signal_group(pgid, signal.SIGKILL)
                escalated = True
    wait_group_gone(pgid, GONE_WAIT)
    return Ending(returncode=returncode, stopped=stopped, escalated=escalated, leftovers=leftovers)


def _pidfd(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError:
        return None
    return fd
