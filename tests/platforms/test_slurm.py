"""SlurmPlatform against a real single-node Slurm cluster, through both slurmrestd and the Slurm commands.

The cluster (``slurm_cluster.py``) is started once per test process. Jobs submitted through slurmrestd run as
``nobody`` (rest_auth/local), those through sbatch as root; the workdirs are world-writable for that reason.
"""

from __future__ import annotations

import os
import pwd
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest

from ecliptic.platforms.base import COMMAND_KIND, LaunchSpec, RunState, RunStatus
from ecliptic.platforms.slurm import SlurmConfig, SlurmPlatform, SlurmUnavailable, build
from tests.platforms.runs import launch_spec, poll_until
from tests.platforms.slurm_cluster import SlurmCluster, running_cluster

TIMEOUT = 60.0
"""Generous: Slurm schedules in passes, and CI machines are busy."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    yield from running_cluster()


def make_platform(cluster: SlurmCluster, submit: str, **overrides: Any) -> SlurmPlatform:
    values: dict[str, Any] = {
        "type": "slurm",
        "submit": submit,
        "slurm_conf": str(cluster.conf),
        "cores": 2,
        "memory_gib": 4,
    }
    if submit != "cli":
        values["rest_url"] = cluster.rest_url
    values.update(overrides)
    return build("hpc", SlurmConfig(**values))


@pytest.fixture(params=["rest", "cli"])
def platform(request: pytest.FixtureRequest, cluster: SlurmCluster) -> Iterator[SlurmPlatform]:
    slurm = make_platform(cluster, request.param)
    yield slurm
    slurm.close()


@pytest.fixture
def cli(cluster: SlurmCluster) -> Iterator[SlurmPlatform]:
    slurm = make_platform(cluster, "cli")
    yield slurm
    slurm.close()


def make_spec(
    workdir: Path,
    command: list[str],
    *,
    environment: dict[str, str] | None = None,
    cores: int = 1,
    memory_gib: int = 1,
    deadline: timedelta = timedelta(minutes=10),
) -> LaunchSpec:
    return launch_spec(
        workdir, command, environment=environment, cores=cores, memory_gib=memory_gib, deadline=deadline
    )


def wait_for_status(
    platform: SlurmPlatform,
    workdir: Path,
    handle: dict[str, Any],
    done: Callable[[RunStatus], bool] = lambda status: status.finished,
) -> RunStatus:
    return poll_until(platform, workdir, handle, done, TIMEOUT)


def running(status: RunStatus) -> bool:
    assert not status.finished, status
    return status.state == RunState.RUNNING


def jobs_named(cluster: SlurmCluster, spec: LaunchSpec) -> list[str]:
    out = cluster.run(
        "squeue", "--noheader", "--states=all", f"--name=ecliptic-{spec.session_uuid[:8]}", "-o", "%i"
    )
    return out.split()


# -- configuration -------------------------------------------------------------------------------------------


def test_info_and_config() -> None:
    slurm = build(
        "hpc",
        SlurmConfig(
            type="slurm", cores=64, memory_gib=256, max_duration="PT12H", prepare_seconds={"compute": 90}
        ),
    )
    assert slurm.info.name == "hpc"
    assert slurm.info.executable_kinds == frozenset({COMMAND_KIND})
    assert (slurm.info.capacity.cores, slurm.info.capacity.memory_gib) == (64, 256)
    assert slurm.info.capacity.max_duration == timedelta(hours=12)
    assert slurm.info.prepare_seconds["compute"] == 90
    assert SlurmConfig(type="slurm").api_version == "v0.0.38"
    with pytest.raises(pydantic.ValidationError, match="rest_url"):
        SlurmConfig(type="slurm", submit="rest")
    with pytest.raises(pydantic.ValidationError, match="rest_url"):
        SlurmConfig(type="slurm", rest_url="ftp://127.0.0.1/")
    with pytest.raises(pydantic.ValidationError):
        SlurmConfig.model_validate({"type": "slurm", "partitoin": "debug"})


# -- running ---------------------------------------------------------------------------------------------------


def test_command_runs_with_its_arguments_environment_and_resources(
    platform: SlurmPlatform, cluster: SlurmCluster
) -> None:
    workdir = cluster.workdir("ok")
    spec = make_spec(
        workdir,
        [
            "sh",
            "-c",
            'printf "%s|" "$@" "$GREETING" "$PWD"; echo; echo to-stderr >&2',
            "sh",
            "a b",
            "it's",
            "$HOME",
            "*",
        ],
        environment={"GREETING": "hello, world"},
        cores=2,
        memory_gib=2,
    )
    handle = platform.launch(spec)
    assert handle["via"] == platform.config.submit
    fields = cluster.job_fields(str(handle["job_id"]))
    assert fields["JobName"] == f"ecliptic-{spec.session_uuid[:8]}"
    assert fields["Comment"] == f"ecliptic:{spec.session_uuid}"
    assert fields["CPUs/Task"] == "2"
    assert fields["MinMemoryNode"] == "2G"
    assert fields["StdOut"] == str(workdir / "logs" / "stdout.txt")

    status = wait_for_status(platform, workdir, handle)
    assert status.state == RunState.SUCCEEDED, status
    assert status.exit_code == 0
    stdout = (workdir / "logs" / "stdout.txt").read_text()
    assert stdout == f"a b|it's|$HOME|*|hello, world|{workdir}|\n"
    assert (workdir / "logs" / "stderr.txt").read_text() == "to-stderr\n"
    assert platform.logs(workdir, handle) == stdout + "to-stderr\n"
    assert (workdir / ".ecliptic" / "slurm" / "job.sh").exists()
    # rest_auth/local: slurmrestd submits as its own user, so the job ran as nobody and not as us.
    owner = pwd.getpwnam("nobody").pw_uid if handle["via"] == "rest" else os.geteuid()
    assert (workdir / "logs" / "stdout.txt").stat().st_uid == owner


def test_nonzero_exit_fails_with_the_code(platform: SlurmPlatform, cluster: SlurmCluster) -> None:
    workdir = cluster.workdir("exit3")
    handle = platform.launch(make_spec(workdir, ["sh", "-c", "echo failing; exit 3"]))
    status = wait_for_status(platform, workdir, handle)
    assert status.state == RunState.FAILED, status
    assert status.exit_code == 3
    assert status.detail is not None
    assert "FAILED" in status.detail and "NonZeroExitCode" in status.detail and "code 3" in status.detail
    assert platform.logs(workdir, handle) == "failing\n"


def test_missing_program_fails(cli: SlurmPlatform, cluster: SlurmCluster) -> None:
    workdir = cluster.workdir("missing")
    handle = cli.launch(make_spec(workdir, ["no-such-program-here"]))
    status = wait_for_status(cli, workdir, handle)
    assert status.state == RunState.FAILED
    assert status.exit_code == 127


# -- stopping --------------------------------------------------------------------------------------------------


def test_stop_cancels_the_job(platform: SlurmPlatform, cluster: SlurmCluster) -> None:
    workdir = cluster.workdir("stop")
    handle = platform.launch(make_spec(workdir, ["sleep", "60"]))
    wait_for_status(platform, workdir, handle, running)
    platform.stop(workdir, handle, "cancelled by the user")
    assert cluster.job_fields(str(handle["job_id"]))["JobState"] == "CANCELLED"
    assert not cluster.run("squeue", "--noheader", "--jobs", str(handle["job_id"])).strip()
    status = platform.poll(workdir, handle)
    assert status.state == RunState.FAILED, status
    assert status.detail is not None and status.detail.startswith("stopped: cancelled by the user")
    platform.stop(workdir, handle, "again")
    assert platform.poll(workdir, handle) == status


def test_cancel_outside_ecliptic_fails_the_run(cli: SlurmPlatform, cluster: SlurmCluster) -> None:
    workdir = cluster.workdir("scancel")
    handle = cli.launch(make_spec(workdir, ["sleep", "60"]))
    wait_for_status(cli, workdir, handle, running)
    cluster.run("scancel", str(handle["job_id"]))
    status = wait_for_status(cli, workdir, handle)
    assert status.state == RunState.FAILED
    assert status.detail is not None and status.detail.startswith("cancelled:")
    assert "outside ecliptic" in status.detail


def test_stop_before_launch_means_nothing_is_submitted(cli: SlurmPlatform, cluster: SlurmCluster) -> None:
    workdir = cluster.workdir("early-stop")
    spec = make_spec(workdir, ["true"])
    cli.stop(workdir, {"session": spec.session_uuid}, "deadline")
    handle = cli.launch(spec)
    assert handle["job_id"] is None
    assert jobs_named(cluster, spec) == []
    status = cli.poll(workdir, handle)
    assert status.state == RunState.FAILED
    assert status.detail == "stopped before it was submitted: deadline"


# -- idempotency -----------------------------------------------------------------------------------------------


def test_repeated_launch_submits_once(platform: SlurmPlatform, cluster: SlurmCluster) -> None:
    workdir = cluster.workdir("repeat")
    spec = make_spec(workdir, ["sleep", "30"])
    first = platform.launch(spec)
    assert platform.launch(spec) == first
    # A crash between the submission and its record: the job is found in Slurm by the session's comment.
    (workdir / ".ecliptic" / "slurm" / "job.json").unlink()
    again = platform.launch(spec)
    assert again["job_id"] == first["job_id"]
    assert jobs_named(cluster, spec) == [str(first["job_id"])]
    platform.stop(workdir, first, "done")


def test_concurrent_launches_submit_once(cli: SlurmPlatform, cluster: SlurmCluster) -> None:
    workdir = cluster.workdir("concurrent")
    spec = make_spec(workdir, ["sleep", "30"])
    handles: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda: handles.append(cli.launch(spec))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({str(h["job_id"]) for h in handles}) == 1 and len(handles) == 4
    assert jobs_named(cluster, spec) == [str(handles[0]["job_id"])]
    cli.stop(workdir, handles[0], "done")


def test_auto_uses_rest_when_it_answers_else_sbatch(cluster: SlurmCluster) -> None:
    good = make_platform(cluster, "auto")
    bad = make_platform(cluster, "auto", rest_url=f"unix:{cluster.base / 'no-such.socket'}")
    try:
        for slurm, via in ((good, "rest"), (bad, "cli")):
            workdir = cluster.workdir(f"auto-{via}")
            handle = slurm.launch(make_spec(workdir, ["true"]))
            assert handle["via"] == via
            assert wait_for_status(slurm, workdir, handle).state == RunState.SUCCEEDED
    finally:
        good.close()
        bad.close()


def test_unreachable_slurm_raises_unless_the_job_recorded_its_end(
    cluster: SlurmCluster, cli: SlurmPlatform
) -> None:
    ended, busy = cluster.workdir("ended"), cluster.workdir("busy")
    ended_handle = cli.launch(make_spec(ended, ["true"]))
    busy_handle = cli.launch(make_spec(busy, ["sleep", "30"]))
    assert wait_for_status(cli, ended, ended_handle).state == RunState.SUCCEEDED
    cut_off = make_platform(cluster, "rest", rest_url=f"unix:{cluster.base / 'no-such.socket'}")
    try:
        assert cut_off.poll(ended, ended_handle).state == RunState.SUCCEEDED
        with pytest.raises(SlurmUnavailable):
            cut_off.poll(busy, busy_handle)
        with pytest.raises(SlurmUnavailable):
            cut_off.launch(make_spec(cluster.workdir("never"), ["true"]))
    finally:
        cut_off.close()
    cli.stop(busy, busy_handle, "done")


# -- deadline --------------------------------------------------------------------------------------------------


def test_deadline_sets_the_time_limit(cli: SlurmPlatform, cluster: SlurmCluster) -> None:
    workdir = cluster.workdir("limit")
    handle = cli.launch(make_spec(workdir, ["sleep", "30"], deadline=timedelta(hours=2)))
    limit = cluster.job_fields(str(handle["job_id"]))["TimeLimit"]
    hours, minutes, seconds = (int(part) for part in limit.split(":"))
    assert 120 <= hours * 60 + minutes <= 122 and seconds == 0, limit
    cli.stop(workdir, handle, "done")


def test_deadline_stops_the_command(platform: SlurmPlatform, cluster: SlurmCluster) -> None:
    workdir = cluster.workdir("deadline")
    handle = platform.launch(make_spec(workdir, ["sleep", "60"], deadline=timedelta(seconds=3)))
    status = wait_for_status(platform, workdir, handle)
    assert status.state == RunState.FAILED, status
    assert status.exit_code == 124
    assert status.detail is not None and status.detail.startswith("stopped: deadline reached")


# -- when Slurm forgets --------------------------------------------------------------------------------------


def test_results_outlive_slurm_forgetting_the_jobs(cli: SlurmPlatform, cluster: SlurmCluster) -> None:
    cluster.forget_jobs()
    failed, succeeded, running_job, queued = (
        cluster.workdir(label) for label in ("failed", "succeeded", "running", "queued")
    )
    failed_handle = cli.launch(make_spec(failed, ["sh", "-c", "exit 3"]))
    succeeded_handle = cli.launch(make_spec(succeeded, ["true"]))
    assert failed_handle["job_id"] == "1"
    assert wait_for_status(cli, failed, failed_handle).exit_code == 3
    assert wait_for_status(cli, succeeded, succeeded_handle).state == RunState.SUCCEEDED
    running_handle = cli.launch(make_spec(running_job, ["sleep", "60"], cores=2))
    wait_for_status(cli, running_job, running_handle, running)
    # The node's two cores are taken, so this one waits in the queue.
    queued_handle = cli.launch(make_spec(queued, ["true"], cores=2))
    assert cli.poll(queued, queued_handle).state == RunState.PENDING

    cluster.forget_jobs()

    status = cli.poll(failed, failed_handle)
    assert status.state == RunState.FAILED and status.exit_code == 3, status
    assert status.detail is not None and "Slurm no longer knows job 1" in status.detail
    status = cli.poll(succeeded, succeeded_handle)
    assert status.state == RunState.SUCCEEDED and status.exit_code == 0, status
    # The new controller aborts the job it does not know with SIGKILL: no exit record.
    status = cli.poll(running_job, running_handle)
    assert status.state == RunState.LOST
    assert status.detail is not None and "it had started" in status.detail
    status = cli.poll(queued, queued_handle)
    assert status.state == RunState.LOST
    assert status.detail is not None and "never started" in status.detail

    # Job ids start again from 1: the new job 1 is another session's and must not be taken for the old one.
    other = cluster.workdir("other")
    other_handle = cli.launch(make_spec(other, ["sleep", "30"]))
    assert other_handle["job_id"] == failed_handle["job_id"]
    wait_for_status(cli, other, other_handle, running)
    status = cli.poll(failed, failed_handle)
    assert status.state == RunState.FAILED and status.exit_code == 3, status
    cli.stop(other, other_handle, "done")
