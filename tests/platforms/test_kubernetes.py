"""KubernetesPlatform through the official client against the fake API server: real HTTP on loopback.

The fake's kubelet runs each container's command as a local process, so output, exit codes, working
directories and environments are real; other outcomes (image pull failures, OOM kills) are scripted.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest

pytest.importorskip("kubernetes")

from ecliptic.platforms.base import (
    COMMAND_KIND,
    Capacity,
    Connector,
    Image,
    LaunchSpec,
    Mount,
    Port,
    RunState,
    RunStatus,
)
from ecliptic.platforms.kubernetes import (
    DOCKER_KIND,
    PORT_CONNECTOR,
    SESSION_LABEL,
    KubernetesConfig,
    KubernetesError,
    KubernetesPlatform,
    build,
)
from tests.fakes.kubernetes import Exit, FakeKubernetes, PullFailure, Run
from tests.platforms.runs import launch_spec
from tests.processes import wait_until_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake kubelet needs POSIX")

NAMESPACE = "sessions"
JOBS = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The client honours proxy variables; the tests must talk to the loopback fake directly.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes(namespaces=(NAMESPACE,), service_accounts=("default", "runner")) as server:
        yield server


def make_config(fake: FakeKubernetes, **overrides: Any) -> KubernetesConfig:
    values: dict[str, Any] = {"api_url": fake.url, "token": fake.token, "namespace": NAMESPACE}
    values.update(overrides)
    return KubernetesConfig(**values)


@pytest.fixture
def platform(fake: FakeKubernetes) -> Iterator[KubernetesPlatform]:
    platform = build("k8s", make_config(fake))
    yield platform
    platform.close()


def make_spec(
    workdir: Path,
    command: list[str],
    *,
    session: str | None = None,
    deadline: timedelta = timedelta(minutes=5),
    **fields: Any,
) -> LaunchSpec:
    return launch_spec(workdir, command, session_uuid=session, deadline=deadline, **fields)


def wait_for(
    platform: KubernetesPlatform,
    workdir: Path,
    handle: dict[str, Any],
    condition: Callable[[RunStatus], bool],
    timeout: float = 15,
) -> list[RunStatus]:
    """Poll until ``condition`` holds; every status seen, the last one satisfying it."""
    seen: list[RunStatus] = []
    until = time.monotonic() + timeout
    while True:
        seen.append(platform.poll(workdir, handle))
        if condition(seen[-1]):
            return seen
        assert time.monotonic() < until, f"still {seen[-1]} after {timeout} s"
        time.sleep(0.03)


def finished(platform: KubernetesPlatform, workdir: Path, handle: dict[str, Any]) -> RunStatus:
    return wait_for(platform, workdir, handle, lambda s: s.finished)[-1]


def eventually(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    until = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < until, f"timed out waiting for {what}"
        time.sleep(0.03)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- configuration -------------------------------------------------------------------------------------------


def test_info(fake: FakeKubernetes) -> None:
    config = make_config(fake, cores=16, memory_gib=64, site="cluster-a", prepare_seconds={"executable": 5})
    platform = KubernetesPlatform(config, name="k8s")
    info = platform.info
    assert info.name == "k8s"
    assert info.capacity == Capacity(16, 64, 100, timedelta(hours=24))
    assert info.executable_kinds == frozenset({DOCKER_KIND, COMMAND_KIND})
    assert DOCKER_KIND.endswith("/kinds/executable/docker-container.yaml")
    assert info.prepare_seconds == {"executable": 5, "compute": 5, "storage": 0}
    assert info.site == "cluster-a"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"storage": "pvc", "pvc_name": "data"}, "pvc_name and pvc_root"),
        ({"storage": "pvc", "pvc_name": "data", "pvc_root": "relative"}, "absolute"),
        ({"token": "t"}, "token is used with api_url"),
        ({"api_url": "https://k8s:6443", "kubeconfig": "kc"}, "not both"),
        ({"namespace": "Not_A_Namespace"}, "namespace"),
        ({"storage": "nfs"}, "storage"),
        ({"namespaec": "typo"}, "namespaec"),
    ],
)
def test_config_errors(values: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        KubernetesConfig(**values)


def test_kubeconfig_and_context(fake: FakeKubernetes, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
                "users": [{"name": "broker", "user": {"token": fake.token}}, {"name": "nobody", "user": {}}],
                "contexts": [
                    {
                        "name": "ecliptic",
                        "context": {"cluster": "fake", "user": "broker", "namespace": "ignored"},
                    },
                    {"name": "anonymous", "context": {"cluster": "fake", "user": "nobody"}},
                ],
                "current-context": "anonymous",
            }
        )
    )
    before = kubeconfig.read_text()
    config = KubernetesConfig(kubeconfig=str(kubeconfig), context="ecliptic", namespace=NAMESPACE)
    platform = KubernetesPlatform(config)
    workdir = tmp_path / "work"
    handle = platform.launch(make_spec(workdir, ["sh", "-c", "echo via kubeconfig"]))
    assert finished(platform, workdir, handle).state is RunState.SUCCEEDED
    assert platform.logs(workdir, handle) == "via kubeconfig\n"
    assert kubeconfig.read_text() == before

    anonymous = KubernetesPlatform(KubernetesConfig(kubeconfig=str(kubeconfig), namespace=NAMESPACE))
    with pytest.raises(KubernetesError, match="401"):
        anonymous.launch(make_spec(tmp_path / "other", ["true"]))
    with pytest.raises(KubernetesError, match="cannot configure the Kubernetes client"):
        KubernetesPlatform(KubernetesConfig(kubeconfig=str(kubeconfig), context="missing"))


# -- running -------------------------------------------------------------------------------------------------


def test_success_saves_the_log(platform: KubernetesPlatform, fake: FakeKubernetes, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    script = (
        'echo "hello $GREETING"; echo oops >&2; pwd; echo "home $HOME"; echo "session $ECLIPTIC_SESSION"; '
        "printf '%s\\n' 'kept: $(HOME) $$'"
    )
    spec = make_spec(
        workdir, ["sh", "-c", script], environment={"GREETING": "world", "ECLIPTIC_SESSION": "spoof"}
    )
    handle = platform.launch(spec)
    assert handle["job"] == f"ecliptic-{spec.session_uuid[:8]}"
    status = finished(platform, workdir, handle)
    assert status == RunStatus(RunState.SUCCEEDED, exit_code=0, detail="exited with code 0")
    expected = (
        f"hello world\noops\n{workdir}\nhome {workdir}\nsession {spec.session_uuid}\nkept: $(HOME) $$\n"
    )
    assert (workdir / "logs" / "stdout.txt").read_text() == expected
    assert platform.logs(workdir, handle) == expected
    # Finished: the recorded result answers without asking the API server again.
    asked = len(fake.requests)
    assert platform.poll(workdir, handle) == status
    assert len(fake.requests) == asked


def test_running_reports_connectors_and_stop_deletes_job_and_pods(
    platform: KubernetesPlatform, fake: FakeKubernetes, tmp_path: Path
) -> None:
    port = free_port()
    workdir = tmp_path / "work"
    server = [sys.executable, "-u", "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    spec = make_spec(workdir, server, ports=(Port(port, "HTTP", "/"), Port(port, "TCP")))
    handle = platform.launch(spec)
    seen = wait_for(platform, workdir, handle, lambda s: s.state is RunState.RUNNING)
    assert seen[-1].connectors == (
        Connector(PORT_CONNECTOR, "HTTP", f"http://127.0.0.1:{port}/"),
        Connector(PORT_CONNECTOR, "TCP", f"127.0.0.1:{port}"),
    )
    url = seen[-1].connectors[0].location

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    eventually(answers, "the session's web server")
    eventually(lambda: "GET / HTTP" in platform.logs(workdir, handle), "the request in the live log")
    pids = fake.pod_pids(NAMESPACE)
    assert len(pids) == 1

    platform.stop(workdir, handle, "cancelled by the user")
    assert fake.jobs(NAMESPACE) == []
    assert fake.pods(NAMESPACE) == []
    wait_until_gone(pids[0], "the container's process")
    assert fake.count("DELETE", f"{JOBS}/{handle['job']}") == 1
    assert any("propagationPolicy=Background" in path for method, path in fake.requests if method == "DELETE")
    status = platform.poll(workdir, handle)
    assert status == RunStatus(RunState.FAILED, detail="stopped: cancelled by the user")
    assert "GET / HTTP" in (workdir / "logs" / "stdout.txt").read_text()
    platform.stop(workdir, handle, "again")
    assert platform.poll(workdir, handle) == status


def test_stop_while_pending_and_before_launch(fake: FakeKubernetes, tmp_path: Path) -> None:
    fake.schedule_delay = 30
    platform = KubernetesPlatform(make_config(fake))
    workdir = tmp_path / "work"
    handle = platform.launch(make_spec(workdir, ["sh", "-c", "echo never"]))
    eventually(lambda: len(fake.pods(NAMESPACE)) == 1, "the Job controller's pod")
    status = platform.poll(workdir, handle)
    assert status.state is RunState.PENDING
    assert status.detail == "waiting to be scheduled"
    platform.stop(workdir, handle, "expired")
    assert fake.jobs(NAMESPACE) == [] and fake.pods(NAMESPACE) == []
    assert platform.poll(workdir, handle) == RunStatus(RunState.FAILED, detail="stopped: expired")

    never = tmp_path / "never"
    platform.stop(never, {}, "nothing to stop")
    assert platform.poll(never, {}) == RunStatus(RunState.LOST, detail="the run was never launched")


def test_failure_reports_exit_code(platform: KubernetesPlatform, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    handle = platform.launch(make_spec(workdir, ["sh", "-c", "echo about to fail; exit 3"]))
    status = finished(platform, workdir, handle)
    assert status == RunStatus(RunState.FAILED, exit_code=3, detail="exited with code 3")
    assert platform.logs(workdir, handle) == "about to fail\n"


def test_oom_killed(platform: KubernetesPlatform, fake: FakeKubernetes, tmp_path: Path) -> None:
    fake.behaviour = lambda pod: Exit(137, "allocating\n", seconds=0.1, reason="OOMKilled")
    workdir = tmp_path / "work"
    handle = platform.launch(make_spec(workdir, ["python", "-c", "x = ' ' * 2**40"], memory_gib=2))
    status = finished(platform, workdir, handle)
    assert status == RunStatus(RunState.FAILED, exit_code=137, detail="exited with code 137 (OOMKilled)")
    assert (workdir / "logs" / "stdout.txt").read_text() == "allocating\n"


def test_program_not_found(platform: KubernetesPlatform, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    handle = platform.launch(make_spec(workdir, ["ecliptic-no-such-program", "--help"]))
    status = finished(platform, workdir, handle)
    assert status.state is RunState.FAILED
    assert status.exit_code == 128
    assert status.detail is not None
    assert status.detail.startswith("exited with code 128 (StartError): failed to create containerd task")
    assert 'exec: "ecliptic-no-such-program": executable file not found in $PATH' in status.detail
    assert "events: Failed: Error: failed to create containerd task" in status.detail


def test_image_pull_failure_detail_from_events(
    platform: KubernetesPlatform, fake: FakeKubernetes, tmp_path: Path
) -> None:
    image = "registry.example.org/astro/missing:1.0"
    fake.behaviour = lambda pod: PullFailure() if pod["spec"]["containers"][0]["image"] == image else Run()
    workdir = tmp_path / "work"
    spec = make_spec(
        workdir,
        ["--help"],
        executable_kind=DOCKER_KIND,
        image=Image((image,)),
        deadline=timedelta(seconds=1.5),
    )
    handle = platform.launch(spec)
    pending = wait_for(platform, workdir, handle, lambda s: "ImagePullBackOff" in (s.detail or ""))[-1]
    assert pending.state is RunState.PENDING
    assert pending.detail == (
        f'ImagePullBackOff: Back-off pulling image "{image}": ErrImagePull: '
        "rpc error: code = NotFound desc = failed to pull and unpack image: not found"
    )
    assert platform.logs(workdir, handle) == ""
    status = finished(platform, workdir, handle)
    assert status.state is RunState.FAILED
    assert status.exit_code is None
    assert status.detail == (
        "stopped: deadline reached after PT2S (Job was active longer than specified deadline); events: "
        f'Failed: Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull and unpack '
        "image: not found; Failed: Error: ErrImagePull; Failed: Error: ImagePullBackOff"
    )
    assert fake.pods(NAMESPACE) == []


def test_deadline_stops_the_run(platform: KubernetesPlatform, fake: FakeKubernetes, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    spec = make_spec(
        workdir, ["sh", "-c", "echo $$ > pid; echo started; exec sleep 30"], deadline=timedelta(seconds=1.2)
    )
    handle = platform.launch(spec)
    wait_for(platform, workdir, handle, lambda s: s.state is RunState.RUNNING)
    eventually(
        lambda: (workdir / "pid").exists() and (workdir / "pid").read_text().strip() != "", "the pid file"
    )
    pid = int((workdir / "pid").read_text())
    status = finished(platform, workdir, handle)
    assert status.state is RunState.FAILED
    assert status.detail is not None
    assert status.detail.startswith(
        "stopped: deadline reached after PT2S (Job was active longer than specified deadline)"
    )
    # The pod may already be gone when the Job is marked failed; if it is not, SIGTERM ended the container.
    assert status.exit_code in (None, 143)
    wait_until_gone(pid, "the container's process")
    # The pod and its log are gone with the deadline; polls near it kept a copy.
    assert (workdir / "logs" / "stdout.txt").read_text() == "started\n"
    job = fake.job(NAMESPACE, handle["job"])
    assert job is not None
    assert [(c["type"], c["reason"]) for c in job["status"]["conditions"]] == [
        ("FailureTarget", "DeadlineExceeded"),
        ("Failed", "DeadlineExceeded"),
    ]


def test_repeated_launch_creates_one_job(
    platform: KubernetesPlatform, fake: FakeKubernetes, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    spec = make_spec(workdir, ["sh", "-c", "echo ran >> runs.txt"])
    handles: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def launch() -> None:
        try:
            handles.append(platform.launch(spec))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=launch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({json.dumps(h, sort_keys=True) for h in handles}) == 1
    # Another broker process, after a crash that lost the workdir's record: the 409 leads it to the same Job.
    (workdir / ".ecliptic" / "kubernetes.json").unlink()
    posts = fake.count("POST", JOBS)
    other = KubernetesPlatform(make_config(fake), name="k8s")
    assert other.launch(spec) == handles[0]
    assert fake.count("POST", JOBS) == posts + 1
    assert platform.launch(spec) == handles[0]
    assert fake.count("POST", JOBS) == posts + 1
    assert len(fake.jobs(NAMESPACE)) == 1
    assert finished(platform, workdir, handles[0]).state is RunState.SUCCEEDED
    # Launching again after the run finished starts nothing, even once the Job is gone.
    platform.stop(workdir, handles[0], "released")
    assert platform.launch(spec) == handles[0]
    assert fake.jobs(NAMESPACE) == []
    assert (workdir / "runs.txt").read_text() == "ran\n"


def test_job_name_taken_by_another_session(
    platform: KubernetesPlatform, fake: FakeKubernetes, tmp_path: Path
) -> None:
    first = make_spec(tmp_path / "a", ["true"], session="12345678-aaaa-4aaa-8aaa-aaaaaaaaaaaa")
    second = make_spec(tmp_path / "b", ["true"], session="12345678-bbbb-4bbb-8bbb-bbbbbbbbbbbb")
    assert platform.launch(first)["job"] == "ecliptic-12345678"
    assert platform.launch(second)["job"] == "ecliptic-12345678bbbb4bbb8bbbbbbbbbbbbbbb"
    assert finished(platform, tmp_path / "b", platform.launch(second)).state is RunState.SUCCEEDED
    assert len(fake.jobs(NAMESPACE)) == 2


def test_auth_failure_is_clear(fake: FakeKubernetes, tmp_path: Path) -> None:
    platform = KubernetesPlatform(make_config(fake, token="not-the-token"))
    with pytest.raises(KubernetesError) as caught:
        platform.launch(make_spec(tmp_path / "work", ["true"]))
    assert caught.value.status == 401
    assert str(caught.value) == (
        f"the Kubernetes API at {fake.url} rejected the platform's credentials (401 Unauthorized) when asked "
        "to create the Job: check the platform's token or kubeconfig"
    )
    assert fake.jobs(NAMESPACE) == []
    assert not (tmp_path / "work" / ".ecliptic" / "kubernetes.json").exists()


def test_unreachable_api_is_clear(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    platform = KubernetesPlatform(KubernetesConfig(api_url=url, token="t", request_timeout=2))
    with pytest.raises(KubernetesError, match=f"cannot reach the Kubernetes API at {url} to create the Job"):
        platform.launch(make_spec(tmp_path / "work", ["true"]))


def test_api_validation_errors_are_reported(
    platform: KubernetesPlatform, fake: FakeKubernetes, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    with pytest.raises(KubernetesError) as caught:
        platform.launch(make_spec(workdir, ["true"], ports=(Port(70000),)))
    assert caught.value.status == 422
    assert caught.value.reason == "Invalid"
    assert "spec.template.spec.containers[0].ports[0].containerPort: Invalid value: 70000" in str(
        caught.value
    )
    assert fake.jobs(NAMESPACE) == []


def test_specs_the_platform_refuses(platform: KubernetesPlatform, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot run executables of kind urn:x"):
        platform.launch(make_spec(tmp_path / "a", ["true"], executable_kind="urn:x"))
    with pytest.raises(ValueError, match="needs an image"):
        platform.launch(make_spec(tmp_path / "b", [], executable_kind=DOCKER_KIND))
    with pytest.raises(ValueError, match="at least the program"):
        platform.launch(make_spec(tmp_path / "c", []))
    with pytest.raises(ValueError, match="not sha256"):
        platform.launch(make_spec(tmp_path / "d", ["true"], image=Image(("alpine",), "md5:00")))
    with pytest.raises(ValueError, match="another digest"):
        platform.launch(
            make_spec(
                tmp_path / "e", ["true"], image=Image((f"alpine@sha256:{'1' * 64}",), f"sha256:{'2' * 64}")
            )
        )


# -- what is sent ----------------------------------------------------------------------------------------------


def test_job_body(fake: FakeKubernetes, tmp_path: Path) -> None:
    fake.behaviour = lambda pod: Exit(0)
    config = make_config(
        fake,
        service_account="runner",
        image_pull_policy="IfNotPresent",
        run_as_user=1000,
        run_as_group=1000,
        ttl_after_finished=600,
    )
    platform = KubernetesPlatform(config, name="k8s")
    workdir = tmp_path / "work"
    catalogue, outputs = tmp_path / "catalogue", tmp_path / "outputs"
    catalogue.mkdir()
    outputs.mkdir()
    digest = f"sha256:{'a' * 64}"
    spec = make_spec(
        workdir,
        ["--in", "data/x.fits", "--cost=$(RATE)"],
        executable_kind=DOCKER_KIND,
        image=Image(("registry.example.org:5000/astro/tool:2.1", "mirror.example.org/tool:2.1"), digest),
        entrypoint="/opt/run",
        environment={"A": "1", "ECLIPTIC_SESSION": "spoof"},
        cores=2,
        memory_gib=3,
        mounts=(Mount(catalogue, "/data/catalogue"), Mount(outputs, "out", read_only=False)),
        ports=(Port(8080, "HTTP", "/ui"), Port(5353, "UDP")),
        name="Crab nebula, run 2",
        deadline=timedelta(minutes=10),
    )
    handle = platform.launch(spec)
    job = fake.job(NAMESPACE, handle["job"])
    assert job is not None
    labels = {
        SESSION_LABEL: spec.session_uuid,
        "app.kubernetes.io/managed-by": "ecliptic",
        "ecliptic.io/platform": "k8s",
    }
    assert job["metadata"]["labels"] == labels
    assert job["metadata"]["annotations"] == {"ecliptic.io/name": "Crab nebula, run 2"}
    assert job["spec"]["backoffLimit"] == 0
    assert 595 <= job["spec"]["activeDeadlineSeconds"] <= 600
    assert job["spec"]["ttlSecondsAfterFinished"] == 600
    template = job["spec"]["template"]
    assert labels.items() <= template["metadata"]["labels"].items()
    pod = template["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "runner"
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"] == {"runAsUser": 1000, "runAsGroup": 1000}
    [container] = pod["containers"]
    assert container["image"] == f"registry.example.org:5000/astro/tool@{digest}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"] == ["/opt/run"]
    assert container["args"] == ["--in", "data/x.fits", "--cost=$$(RATE)"]
    assert container["workingDir"] == str(workdir)
    assert container["env"] == [
        {"name": "A", "value": "1"},
        {"name": "ECLIPTIC_SESSION", "value": spec.session_uuid},
        {"name": "ECLIPTIC_WORKDIR", "value": str(workdir)},
    ]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "3Gi"},
        "limits": {"cpu": "2", "memory": "3Gi"},
    }
    assert container["ports"] == [
        {"containerPort": 8080, "protocol": "TCP"},
        {"containerPort": 5353, "protocol": "UDP"},
    ]
    assert container["volumeMounts"] == [
        {"name": "workdir", "mountPath": str(workdir), "readOnly": False},
        {"name": "mount-0", "mountPath": "/data/catalogue", "readOnly": True},
        {"name": "mount-1", "mountPath": f"{workdir}/out", "readOnly": False},
    ]
    assert pod["volumes"] == [
        {"name": "workdir", "hostPath": {"path": str(workdir), "type": "Directory"}},
        {"name": "mount-0", "hostPath": {"path": str(catalogue), "type": ""}},
        {"name": "mount-1", "hostPath": {"path": str(outputs), "type": ""}},
    ]
    assert fake.warnings == []
    assert finished(platform, workdir, handle).state is RunState.SUCCEEDED
    [created] = fake.pods(NAMESPACE)
    assert created["status"]["qosClass"] == "Guaranteed"
    assert any(v["name"].startswith("kube-api-access-") for v in created["spec"]["volumes"])


def test_no_api_token_in_pods_by_default(
    platform: KubernetesPlatform, fake: FakeKubernetes, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    handle = platform.launch(make_spec(workdir, ["true"]))
    assert finished(platform, workdir, handle).state is RunState.SUCCEEDED
    [pod] = fake.pods(NAMESPACE)
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["workdir"]
    assert pod["metadata"]["labels"][SESSION_LABEL] == handle["session"]
    assert pod["metadata"]["ownerReferences"][0]["name"] == handle["job"]


def test_pvc_storage(fake: FakeKubernetes, tmp_path: Path) -> None:
    root = tmp_path / "pvc"
    staged = root / "staged" / "input"
    staged.mkdir(parents=True)
    fake.pvc_paths = {"ecliptic-data": root}
    config = make_config(fake, storage="pvc", pvc_name="ecliptic-data", pvc_root=str(root))
    platform = KubernetesPlatform(config)
    workdir = root / "sessions" / "s1"
    spec = make_spec(workdir, ["sh", "-c", "pwd > where.txt; echo done"], mounts=(Mount(staged, "input"),))
    handle = platform.launch(spec)
    assert finished(platform, workdir, handle).state is RunState.SUCCEEDED
    assert (workdir / "where.txt").read_text() == f"{workdir}\n"
    assert platform.logs(workdir, handle) == "done\n"
    job = fake.job(NAMESPACE, handle["job"])
    assert job is not None
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "storage", "persistentVolumeClaim": {"claimName": "ecliptic-data"}}]
    assert pod["containers"][0]["volumeMounts"] == [
        {"name": "storage", "mountPath": str(workdir), "subPath": "sessions/s1", "readOnly": False},
        {"name": "storage", "mountPath": f"{workdir}/input", "subPath": "staged/input", "readOnly": True},
    ]
    with pytest.raises(ValueError, match="is not under pvc_root"):
        platform.launch(make_spec(tmp_path / "elsewhere", ["true"]))


def test_missing_claim_leaves_the_pod_unscheduled(fake: FakeKubernetes, tmp_path: Path) -> None:
    root = tmp_path / "pvc"
    config = make_config(fake, storage="pvc", pvc_name="absent", pvc_root=str(root))
    platform = KubernetesPlatform(config)
    workdir = root / "s1"
    handle = platform.launch(make_spec(workdir, ["true"]))
    status = wait_for(platform, workdir, handle, lambda s: (s.detail or "").startswith("not scheduled"))[-1]
    assert status == RunStatus(
        RunState.PENDING,
        detail='not scheduled: 0/1 nodes are available: persistentvolumeclaim "absent" not found.',
    )
    platform.stop(workdir, handle, "gave up")


# -- losing and keeping results ------------------------------------------------------------------------------


def test_job_deleted_by_someone_else_is_lost(
    platform: KubernetesPlatform, fake: FakeKubernetes, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    handle = platform.launch(make_spec(workdir, ["sleep", "30"]))
    wait_for(platform, workdir, handle, lambda s: s.state is RunState.RUNNING)
    headers = {"Authorization": f"Bearer {fake.token}"}
    answer = httpx.delete(f"{fake.url}{JOBS}/{handle['job']}?propagationPolicy=Background", headers=headers)
    assert answer.status_code == 200
    status = platform.poll(workdir, handle)
    assert status.state is RunState.LOST
    assert status.detail is not None and f"the Job {NAMESPACE}/{handle['job']} is gone" in status.detail
    eventually(lambda: fake.pods(NAMESPACE) == [], "the garbage collector")


def test_result_outlives_the_job(fake: FakeKubernetes, tmp_path: Path) -> None:
    platform = KubernetesPlatform(make_config(fake, ttl_after_finished=1))
    workdir = tmp_path / "work"
    handle = platform.launch(make_spec(workdir, ["sh", "-c", "echo kept"]))
    assert finished(platform, workdir, handle).state is RunState.SUCCEEDED
    eventually(lambda: fake.jobs(NAMESPACE) == [] and fake.pods(NAMESPACE) == [], "the TTL controller")
    assert platform.poll(workdir, handle) == RunStatus(
        RunState.SUCCEEDED, exit_code=0, detail="exited with code 0"
    )
    assert platform.logs(workdir, handle) == "kept\n"


# -- the fake itself -------------------------------------------------------------------------------------------


def test_fake_answers_like_the_api_server(fake: FakeKubernetes, tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {fake.token}"}
    with httpx.Client(base_url=fake.url, timeout=10) as http:
        unauthorized = http.get("/version")
        assert unauthorized.status_code == 401
        assert unauthorized.json() == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Unauthorized",
            "reason": "Unauthorized",
            "code": 401,
        }
        assert http.get("/version", headers=auth).json()["gitVersion"].startswith("v1.")
        missing = http.get(f"{JOBS}/nope", headers=auth)
        assert missing.status_code == 404
        assert missing.json() == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": 'jobs.batch "nope" not found',
            "reason": "NotFound",
            "details": {"name": "nope", "group": "batch", "kind": "jobs"},
            "code": 404,
        }
        assert (
            http.get(f"/api/v1/namespaces/{NAMESPACE}/pods/nope", headers=auth).json()["message"]
            == 'pods "nope" not found'
        )

        empty = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "empty"},
            "spec": {"template": {"spec": {"restartPolicy": "Never"}}},
        }
        invalid = http.post(JOBS, json=empty, headers=auth)
        assert invalid.status_code == 422
        assert (
            invalid.json()["message"]
            == 'Job.batch "empty" is invalid: spec.template.spec.containers: Required value'
        )
        assert invalid.json()["details"]["causes"] == [
            {
                "reason": "FieldValueRequired",
                "message": "Required value",
                "field": "spec.template.spec.containers",
            }
        ]
        always = {
            **empty,
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        }
        rejected = http.post(JOBS, json=always, headers=auth).json()
        assert rejected["code"] == 422
        assert (
            'spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", "Never"'
            in rejected["message"]
        )

        body = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "raw", "labels": {"team": "a"}},
            "spec": {
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "c",
                                "image": "busybox:1.36",
                                "command": ["sleep", "30"],
                                "imagePullPolcy": "Always",
                            }
                        ],
                    }
                }
            },
        }
        strict = http.post(JOBS, params={"fieldValidation": "Strict"}, json=body, headers=auth)
        assert strict.status_code == 400
        assert (
            'strict decoding error: unknown field "spec.template.spec.containers[0].imagePullPolcy"'
            in strict.json()["message"]
        )
        created = http.post(JOBS, json=body, headers=auth)
        assert created.status_code == 201
        assert (
            created.headers["warning"]
            == '299 - "unknown field "spec.template.spec.containers[0].imagePullPolcy""'
        )
        stored = created.json()
        assert "imagePullPolcy" not in stored["spec"]["template"]["spec"]["containers"][0]
        assert stored["spec"]["backoffLimit"] == 6
        assert stored["spec"]["template"]["metadata"]["labels"]["job-name"] == "raw"
        duplicate = http.post(JOBS, json=body, headers=auth)
        assert duplicate.status_code == 409
        assert duplicate.json()["reason"] == "AlreadyExists"
        assert duplicate.json()["message"] == 'jobs.batch "raw" already exists'

        def names(resource: str, **params: str) -> list[str]:
            listed = http.get(
                f"/api/v1/namespaces/{NAMESPACE}/{resource}" if resource != "jobs" else JOBS,
                params=params,
                headers=auth,
            )
            assert listed.status_code == 200, listed.text
            return [item["metadata"]["name"] for item in listed.json()["items"]]

        assert names("jobs", labelSelector="team=a") == ["raw"]
        assert names("jobs", labelSelector="team in (b,c)") == []
        assert names("jobs", labelSelector="!team") == []
        eventually(lambda: len(names("pods", labelSelector="job-name=raw")) == 1, "the raw Job's pod")
        [pod] = names("pods", labelSelector=f"controller-uid={stored['metadata']['uid']}")
        assert names("events", fieldSelector="involvedObject.kind=Job,involvedObject.name=raw") != []
        bad_field = http.get(
            f"/api/v1/namespaces/{NAMESPACE}/events", params={"fieldSelector": "spec.x=1"}, headers=auth
        )
        assert bad_field.status_code == 400

        # Without a propagation policy a batch/v1 Job orphans its pods, as the real server does.
        orphaning = http.delete(f"{JOBS}/raw", headers=auth)
        assert orphaning.status_code == 200
        assert "child pods are preserved by default" in orphaning.headers["warning"]
        assert names("jobs") == []
        [left] = fake.pods(NAMESPACE)
        assert left["metadata"]["name"] == pod and "ownerReferences" not in left["metadata"]
        assert http.delete(f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}", headers=auth).status_code == 200
        eventually(lambda: fake.pods(NAMESPACE) == [], "the orphaned pod's deletion")
        assert http.delete(f"{JOBS}/raw", headers=auth).status_code == 404


def test_fake_retries_up_to_the_backoff_limit(fake: FakeKubernetes) -> None:
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "flaky"},
        "spec": {
            "backoffLimit": 1,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sh", "-c", "exit 2"]}],
                }
            },
        },
    }
    auth = {"Authorization": f"Bearer {fake.token}"}
    assert httpx.post(f"{fake.url}{JOBS}", json=body, headers=auth).status_code == 201

    def failed() -> bool:
        job = fake.job(NAMESPACE, "flaky")
        return job is not None and any(c["type"] == "Failed" for c in job["status"].get("conditions", []))

    eventually(failed, "the Job to fail")
    job = fake.job(NAMESPACE, "flaky")
    assert job is not None
    assert job["status"]["failed"] == 2
    assert job["status"]["conditions"][-1]["reason"] == "BackoffLimitExceeded"
    pods = fake.pods(NAMESPACE)
    assert len(pods) == 2
    assert {p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] for p in pods} == {2}
    created = [e["message"] for e in fake.events(NAMESPACE) if e["reason"] == "SuccessfulCreate"]
    assert sorted(created) == sorted(f"Created pod: {p['metadata']['name']}" for p in pods)
