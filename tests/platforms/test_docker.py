"""DockerPlatform against real daemons: a private dockerd and a private Podman service (tests/platforms/dockerd.py).

Every container runs the busybox image on network ``none`` or ``host``; the only traffic is on loopback.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecliptic.isotime import utcnow
from ecliptic.platforms.base import (
    COMMAND_KIND,
    Image,
    LaunchSpec,
    Mount,
    Port,
    RunState,
    RunStatus,
)
from ecliptic.platforms.docker import (
    DOCKER_KIND,
    WORKDIR,
    DockerConfig,
    DockerError,
    DockerPlatform,
    build,
    container_name,
)
from tests.conftest import free_port
from tests.platforms.dockerd import REGISTRY, Daemon, docker_daemon, podman_daemon  # noqa: F401
from tests.platforms.runs import launch_spec, poll_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["docker", "podman"])
def daemon(request: pytest.FixtureRequest) -> Daemon:
    found: Daemon = request.getfixturevalue(f"{request.param}_daemon")
    return found


docker_only = pytest.mark.parametrize("daemon", ["docker"], indirect=True)
"""For what depends on the platform's own logic, not on the daemon: checked against Docker alone."""


def make_platform(daemon: Daemon, **overrides: Any) -> DockerPlatform:
    values: dict[str, Any] = {
        "type": daemon.kind,
        "host": daemon.host,
        "cores": 2,
        "memory_gib": 4,
        "default_image": daemon.image,
        "stop_grace": 0,
        "pull_seconds": 42,
    }
    values.update(overrides)
    return build(f"test-{daemon.kind}", DockerConfig(**values))


@pytest.fixture
def platform(daemon: Daemon) -> DockerPlatform:
    return make_platform(daemon)


def make_spec(
    workdir: Path,
    command: list[str],
    *,
    kind: str = COMMAND_KIND,
    image: Image | None = None,
    cores: int = 1,
    memory_gib: int = 1,
    deadline: timedelta = timedelta(minutes=5),
    **extra: Any,
) -> LaunchSpec:
    return launch_spec(
        workdir,
        command,
        environment={"GREETING": "hello"},
        cores=cores,
        memory_gib=memory_gib,
        deadline=deadline,
        executable_kind=kind,
        image=image,
        **extra,
    )


def wait_for_status(
    platform: DockerPlatform,
    workdir: Path,
    handle: dict[str, Any],
    done: Callable[[RunStatus], bool] = lambda s: s.finished,
    timeout: float = 30,
) -> RunStatus:
    return poll_until(platform, workdir, handle, done, timeout)


def eventually(read: Callable[[], str], wanted: str, timeout: float = 10) -> str:
    until = time.monotonic() + timeout
    while True:
        text = read()
        if wanted in text or time.monotonic() > until:
            return text
        time.sleep(0.1)


def session_containers(daemon: Daemon, session: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = daemon.api.containers(
        all=True, filters={"label": f"ecliptic.session={session}"}
    )
    return found


def test_daemons_are_private(daemon: Daemon) -> None:
    assert Path(daemon.api.info()["DockerRootDir"]).is_relative_to(daemon.root)
    if daemon.kind == "docker":
        assert Path(daemon.root / "dockerd.pid").read_text().strip() == str(daemon.pid)
        default_pid = Path("/var/run/docker.pid")
        assert not default_pid.exists() or default_pid.read_text().strip() != str(daemon.pid)
        assert {n["Name"] for n in daemon.api.networks()} <= {"host", "none"}, "a bridge network exists"


def test_info(platform: DockerPlatform, daemon: Daemon) -> None:
    info = platform.info
    assert info.executable_kinds == {DOCKER_KIND, COMMAND_KIND}
    assert (info.capacity.cores, info.capacity.memory_gib) == (2, 4)
    assert info.prepare_seconds["executable"] == 42
    assert platform.prepare_estimate(Image((daemon.image,))) == 1.0
    assert platform.prepare_estimate(Image((daemon.image,), digest=daemon.image_id)) == 1.0
    assert platform.prepare_estimate(Image((f"{REGISTRY}/ecliptic-test/absent:1",))) == 42
    without = make_platform(daemon, default_image=None, pull=False)
    assert without.info.executable_kinds == {DOCKER_KIND}
    assert without.info.prepare_seconds["executable"] == 1.0


def test_command_runs_to_exit_0_with_its_output_kept(
    platform: DockerPlatform, daemon: Daemon, tmp_path: Path
) -> None:
    spec = make_spec(
        tmp_path, ["sh", "-c", 'echo "$GREETING from $(pwd)"; echo to-stderr >&2; touch made-here']
    )
    handle = platform.launch(spec)
    status = wait_for_status(platform, tmp_path, handle)
    assert status.state == RunState.SUCCEEDED, status
    assert status.exit_code == 0
    assert (tmp_path / "logs" / "stdout.txt").read_text() == f"hello from {WORKDIR}\n"
    assert (tmp_path / "logs" / "stderr.txt").read_text() == "to-stderr\n"
    assert (tmp_path / "made-here").exists()
    assert session_containers(daemon, spec.session_uuid)
    platform.stop(tmp_path, handle, "released")
    assert not session_containers(daemon, spec.session_uuid)
    assert platform.poll(tmp_path, handle).state == RunState.SUCCEEDED
    assert platform.logs(tmp_path, handle) == f"hello from {WORKDIR}\nto-stderr\n"


def test_a_command_is_the_whole_command_line(platform: DockerPlatform, tmp_path: Path) -> None:
    # The image's CMD is /bin/sh: were it appended, echo would print it.
    spec = make_spec(tmp_path, ["echo"])
    assert wait_for_status(platform, tmp_path, platform.launch(spec)).state == RunState.SUCCEEDED
    assert (tmp_path / "logs" / "stdout.txt").read_text() == "\n"


def test_container_exit_3_fails_with_its_code_and_last_line(
    platform: DockerPlatform, daemon: Daemon, tmp_path: Path
) -> None:
    spec = make_spec(
        tmp_path,
        ["sh", "-c", "echo working; echo cannot open input >&2; exit 3"],
        kind=DOCKER_KIND,
        image=Image((daemon.image,)),
    )
    status = wait_for_status(platform, tmp_path, platform.launch(spec))
    assert status.state == RunState.FAILED
    assert status.exit_code == 3
    assert "exited with code 3" in (status.detail or "")
    assert "cannot open input" in (status.detail or "")


def test_limits_are_applied(platform: DockerPlatform, daemon: Daemon, tmp_path: Path) -> None:
    # cgroup v1 and v2 spell the limits differently; print whichever exists.
    script = (
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; "
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us 2>/dev/null"
        " || cat /sys/fs/cgroup/cpu.max"
    )
    spec = make_spec(tmp_path, ["sh", "-c", script], cores=2, memory_gib=1)
    handle = platform.launch(spec)
    config = daemon.api.inspect_container(handle["container"])["HostConfig"]
    assert (config["NanoCpus"], config["Memory"], config["MemorySwap"]) == (2_000_000_000, 2**30, 2**30)
    assert config["NetworkMode"] == "none"
    assert wait_for_status(platform, tmp_path, handle).state == RunState.SUCCEEDED
    numbers = [int(n) for n in re.findall(r"\d+", (tmp_path / "logs" / "stdout.txt").read_text())]
    memory, quota, period = numbers
    assert memory == 2**30
    assert quota / period == 2


def test_binds_are_read_only_or_read_write(platform: DockerPlatform, tmp_path: Path) -> None:
    inputs, outputs, workdir = tmp_path / "in", tmp_path / "out", tmp_path / "work"
    inputs.mkdir()
    outputs.mkdir()
    (inputs / "data.txt").write_text("input data\n")
    script = (
        "cat /data/in/data.txt > /data/out/copy.txt; "
        "if echo x > /data/in/forbidden.txt; then echo ro-writable; else echo ro-refused; fi; "
        "cat relative/data.txt"
    )
    spec = make_spec(
        workdir,
        ["sh", "-c", script],
        mounts=(
            Mount(inputs, "/data/in", read_only=True),
            Mount(outputs, "/data/out", read_only=False),
            Mount(inputs, "relative", read_only=True),
        ),
    )
    status = wait_for_status(platform, workdir, platform.launch(spec))
    assert status.state == RunState.SUCCEEDED, status
    assert (outputs / "copy.txt").read_text() == "input data\n"
    assert not (inputs / "forbidden.txt").exists()
    assert (workdir / "logs" / "stdout.txt").read_text() == "ro-refused\ninput data\n"
    assert "Read-only file system" in (workdir / "logs" / "stderr.txt").read_text()


def test_host_network_serves_http_at_the_connector(daemon: Daemon, tmp_path: Path) -> None:
    platform = make_platform(daemon, network="host")
    port = free_port()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("served from the container\n")
    spec = make_spec(
        tmp_path,
        ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", f"{WORKDIR}/www"],
        ports=(Port(port, "HTTP", "/index.html"),),
    )
    handle = platform.launch(spec)
    status = wait_for_status(platform, tmp_path, handle, lambda s: s.state != RunState.PENDING)
    assert status.state == RunState.RUNNING, status
    (connector,) = status.connectors
    assert (connector.protocol, connector.location) == ("HTTP", f"http://127.0.0.1:{port}/index.html")
    until = time.monotonic() + 10
    while True:
        try:
            response = httpx.get(connector.location, timeout=2, trust_env=False)
            break
        except httpx.TransportError:
            assert time.monotonic() < until, "httpd never answered"
            time.sleep(0.1)
    assert response.text == "served from the container\n"
    platform.stop(tmp_path, handle, "done")
    assert platform.poll(tmp_path, handle).state == RunState.FAILED


@docker_only
def test_ports_without_a_network_are_refused(
    platform: DockerPlatform, daemon: Daemon, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, ["httpd", "-f", "-p", "8080"], ports=(Port(8080, "HTTP"),))
    with pytest.raises(DockerError, match="without a network") as caught:
        platform.launch(spec)
    assert not caught.value.retryable
    assert not session_containers(daemon, spec.session_uuid)


def test_stop_ends_a_long_run_and_removes_its_container(
    platform: DockerPlatform, daemon: Daemon, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, ["sh", "-c", "echo started; exec sleep 300"])
    handle = platform.launch(spec)
    assert (
        wait_for_status(platform, tmp_path, handle, lambda s: s.state != RunState.PENDING).state
        == RunState.RUNNING
    )
    assert "started" in eventually(lambda: platform.logs(tmp_path, handle), "started")
    (container,) = session_containers(daemon, spec.session_uuid)
    assert container["Names"] == [f"/{container_name(spec.session_uuid)}"]
    began = time.monotonic()
    platform.stop(tmp_path, handle, "cancelled by the test")
    assert time.monotonic() - began < 10
    assert not session_containers(daemon, spec.session_uuid)
    status = platform.poll(tmp_path, handle)
    assert status.state == RunState.FAILED
    assert "cancelled by the test" in (status.detail or "")
    assert (tmp_path / "logs" / "stdout.txt").read_text() == "started\n"
    platform.stop(tmp_path, handle, "again")
    platform.launch(spec)
    assert not session_containers(daemon, spec.session_uuid), "a launch after stop started a container"


def test_repeated_and_concurrent_launches_make_one_container(
    platform: DockerPlatform, daemon: Daemon, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, ["sleep", "300"])
    handles: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda: handles.append(platform.launch(spec))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handles.append(platform.launch(spec))
    assert len(handles) == 4
    (container,) = session_containers(daemon, spec.session_uuid)
    assert {h["id"] for h in handles} == {container["Id"]}
    assert platform.poll(tmp_path, handles[0]).state == RunState.RUNNING
    platform.stop(tmp_path, handles[0], "done")


def test_digest_is_verified(platform: DockerPlatform, daemon: Daemon, tmp_path: Path) -> None:
    wrong = "sha256:" + "0" * 64
    spec = make_spec(tmp_path, ["true"], kind=DOCKER_KIND, image=Image((daemon.image,), digest=wrong))
    with pytest.raises(DockerError, match=f"with digest {wrong}") as caught:
        make_platform(daemon, pull=False).launch(spec)
    assert "another content" in caught.value.message
    assert not session_containers(daemon, spec.session_uuid)
    right = make_spec(
        tmp_path / "right", ["true"], kind=DOCKER_KIND, image=Image((daemon.image,), digest=daemon.image_id)
    )
    assert wait_for_status(platform, tmp_path / "right", platform.launch(right)).state == RunState.SUCCEEDED


@docker_only
def test_a_missing_image_without_a_registry_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    # Podman's pull from a closed port retries for seconds; what the platform makes of a failed pull is the same.
    absent = f"{REGISTRY}/ecliptic-test/absent:1"
    spec = make_spec(tmp_path, ["true"], kind=DOCKER_KIND, image=Image((absent,)))
    with pytest.raises(DockerError, match=re.escape(f"pulling {absent} failed")):
        make_platform(daemon).launch(spec)
    with pytest.raises(DockerError, match="pulling is off"):
        make_platform(daemon, pull=False).launch(spec)
    assert not session_containers(daemon, spec.session_uuid)


@docker_only
def test_deadline_stops_the_run(platform: DockerPlatform, daemon: Daemon, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, ["sleep", "300"], deadline=timedelta(seconds=1.5))
    handle = platform.launch(spec)
    status = wait_for_status(platform, tmp_path, handle, timeout=15)
    assert status.state == RunState.FAILED
    assert "deadline" in (status.detail or "")
    assert utcnow() >= spec.deadline
    assert not session_containers(daemon, spec.session_uuid)


def test_a_program_that_is_not_in_the_image_fails_the_run(platform: DockerPlatform, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, ["no-such-program", "--flag"])
    status = wait_for_status(platform, tmp_path, platform.launch(spec))
    assert status.state == RunState.FAILED
    assert "no-such-program" in (status.detail or ""), status


@docker_only
def test_a_container_removed_behind_our_back_is_lost(
    platform: DockerPlatform, daemon: Daemon, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, ["sleep", "300"])
    handle = platform.launch(spec)
    daemon.api.remove_container(handle["container"], force=True)
    status = platform.poll(tmp_path, handle)
    assert status.state == RunState.LOST
    assert handle["container"] in (status.detail or "")


@docker_only
def test_out_of_memory_is_called_out(platform: DockerPlatform, tmp_path: Path) -> None:
    # Podman 4.3 on cgroup v1 does not report OOMKilled, so only Docker's report is checked.
    # dd holds one block in memory: a 1.1 GB block cannot fit under a 1 GiB limit.
    spec = make_spec(tmp_path, ["dd", "if=/dev/zero", "of=/dev/null", "bs=1100M", "count=1"], memory_gib=1)
    status = wait_for_status(platform, tmp_path, platform.launch(spec))
    assert status.state == RunState.FAILED
    assert "out of memory" in (status.detail or ""), status


@docker_only
def test_a_run_that_ended_before_its_stop_keeps_its_own_result(
    platform: DockerPlatform, daemon: Daemon, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, ["sh", "-c", "echo finished"])
    handle = platform.launch(spec)
    daemon.api.wait(handle["container"], timeout=30)
    platform.stop(tmp_path, handle, "cancelled too late")
    assert not session_containers(daemon, spec.session_uuid)
    status = platform.poll(tmp_path, handle)
    assert (status.state, status.exit_code) == (RunState.SUCCEEDED, 0)
    assert platform.logs(tmp_path, handle) == "finished\n"


@docker_only
def test_a_stop_before_the_launch_keeps_it_from_starting(
    platform: DockerPlatform, daemon: Daemon, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, ["sleep", "300"])
    platform.stop(tmp_path, {"session": spec.session_uuid}, "cancelled while preparing")
    handle = platform.launch(spec)
    assert not session_containers(daemon, spec.session_uuid)
    status = platform.poll(tmp_path, handle)
    assert status.state == RunState.FAILED
    assert "cancelled while preparing" in (status.detail or "")
