"""SkahaPlatform against the fake Skaha server (a real HTTP server on loopback, per platforms.md Part B), and
the fake against the real ``canfar`` client, so the fake is held to what Skaha's own client sends and parses."""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecliptic.broker import kinds
from ecliptic.durable import write_json_atomic as real_write
from ecliptic.platforms import skaha as skaha_module
from ecliptic.platforms.base import COMMAND_KIND, Image, LaunchSpec, Platform, RunState, RunStatus
from ecliptic.platforms.skaha import (
    DELETED_FILE,
    SESSION_FILE,
    SkahaAuthError,
    SkahaConfig,
    SkahaError,
    SkahaPlatform,
    SkahaSessionLimitError,
    build,
    session_name,
)
from tests.fakes.oidc import FakeOidc
from tests.fakes.skaha import FakeSkaha, Outcome
from tests.platforms.runs import launch_spec, poll_until

TERMINAL = "images.canfar.net/skaha/terminal:1.1.1"
NOTEBOOK = "images.canfar.net/skaha/base-notebook:latest"


# -- fixtures and helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[FakeSkaha]:
    server = FakeSkaha()
    with server.serve():
        yield server


@pytest.fixture
def fake(shared_fake: FakeSkaha) -> FakeSkaha:
    # One server for the module (starting one costs more than most tests here); a clean state for each test.
    shared_fake.reset()
    return shared_fake


def config(fake: FakeSkaha, **overrides: Any) -> SkahaConfig:
    values: dict[str, Any] = {
        "url": fake.url,
        "token": "test-token",
        "default_image": TERMINAL,
        "cores": 16,
        "memory_gib": 64,
    }
    values.update(overrides)
    return SkahaConfig(**values)


@pytest.fixture
def make_platform(fake: FakeSkaha) -> Iterator[Callable[..., SkahaPlatform]]:
    made: list[SkahaPlatform] = []

    def make(**overrides: Any) -> SkahaPlatform:
        platform = build("canfar", config(fake, **overrides))
        made.append(platform)
        return platform

    yield make
    for platform in made:
        platform.close()


@pytest.fixture
def platform(make_platform: Callable[..., SkahaPlatform]) -> SkahaPlatform:
    return make_platform()


def make_spec(
    workdir: Path,
    command: list[str] | None = None,
    *,
    kind: str = COMMAND_KIND,
    image: Image | None = None,
    session_type: str = "headless",
    environment: dict[str, str] | None = None,
    cores: int = 1,
    memory_gib: int = 2,
    deadline: timedelta = timedelta(minutes=10),
    name: str = "job",
    session_uuid: str | None = None,
) -> LaunchSpec:
    return launch_spec(
        workdir,
        ["echo", "hello"] if command is None else command,
        session_uuid=session_uuid,
        environment=environment,
        cores=cores,
        memory_gib=memory_gib,
        deadline=deadline,
        name=name,
        executable_kind=kind,
        image=image,
        session_type=session_type,
    )


def wait_for(
    platform: SkahaPlatform,
    workdir: Path,
    handle: dict[str, Any],
    done: Callable[[RunStatus], bool] = lambda status: status.finished,
    timeout: float = 10.0,
) -> RunStatus:
    return poll_until(platform, workdir, handle, done, timeout, interval=0.05)


def created_params(fake: FakeSkaha) -> dict[str, list[str]]:
    posts = [r for r in fake.requests if r.method == "POST" and r.path == "/skaha/v1/session"]
    assert posts, "nothing was created"
    return posts[-1].query


# -- headless ----------------------------------------------------------------------------------------------


def test_headless_command_runs_to_success(platform: SkahaPlatform, fake: FakeSkaha, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, ["echo", "hello", "skaha"], environment={"GREETING": "hi"})
    handle = platform.launch(spec)
    assert handle["id"] in fake.sessions
    assert handle["name"] == session_name(spec)
    first = platform.poll(tmp_path, handle)
    assert first.state == RunState.PENDING
    status = wait_for(platform, tmp_path, handle)
    assert status.state == RunState.SUCCEEDED and status.exit_code == 0
    # Parameters go in the query string, as the canfar client sends them.
    params = created_params(fake)
    assert params["image"] == [TERMINAL]
    assert params["type"] == ["headless"]
    assert params["cmd"] == ["echo"]
    assert params["args"] == ["hello skaha"]
    assert params["env"] == ["GREETING=hi"]
    assert params["cores"] == ["1"] and params["ram"] == ["2"]
    auth = [r.headers.get("authorization") for r in fake.requests]
    assert set(auth) == {"Bearer test-token"}
    assert platform.logs(tmp_path, handle) == "hello skaha\n"
    # Kept where the broker's log endpoint reads it, since Skaha forgets finished sessions.
    assert (tmp_path / "logs" / "stdout.txt").read_text() == "hello skaha\n"


def test_info_lists_the_kinds_skaha_runs(platform: SkahaPlatform) -> None:
    as_platform: Platform = platform  # the protocol, checked by mypy
    info = as_platform.info
    assert info.name == "canfar"
    assert info.executable_kinds == {kinds.DOCKER, kinds.JUPYTER, COMMAND_KIND}
    assert info.data_kinds == frozenset({kinds.DATA_SKAO})
    assert info.capacity.cores == 16


def test_sizes_round_up_to_the_context_options_which_are_read_once(
    fake: FakeSkaha, make_platform: Callable[..., SkahaPlatform], tmp_path: Path
) -> None:
    fake.context = {"cores": {"options": [1, 2, 4, 8]}, "memoryGB": {"options": [2, 4, 8, 16]}}
    platform = make_platform()
    platform.launch(make_spec(tmp_path / "a", cores=3, memory_gib=5))
    assert created_params(fake)["cores"] == ["4"] and created_params(fake)["ram"] == ["8"]
    platform.launch(make_spec(tmp_path / "b", cores=1, memory_gib=1))
    assert created_params(fake)["cores"] == ["1"] and created_params(fake)["ram"] == ["2"]
    with pytest.raises(SkahaError, match="more than Skaha offers") as excinfo:
        platform.launch(make_spec(tmp_path / "c", cores=9))
    assert not excinfo.value.retryable
    assert fake.count("GET", "/v1/context") == 1


def test_a_failing_session_reports_its_events_and_log_tail(
    platform: SkahaPlatform, fake: FakeSkaha, tmp_path: Path
) -> None:
    handle = platform.launch(make_spec(tmp_path, ["exit", "3"]))
    status = wait_for(platform, tmp_path, handle)
    assert status.state == RunState.FAILED
    assert status.detail is not None
    assert f"Skaha session {handle['id']} failed" in status.detail
    assert "events:\nTYPE" in status.detail and "BackoffLimitExceeded" in status.detail
    assert "last log lines:\nstarting exit 3\ncommand exited with code 3" in status.detail


def test_a_scripted_image_failure(platform: SkahaPlatform, fake: FakeSkaha, tmp_path: Path) -> None:
    broken = "images.canfar.net/skaha/broken:1"
    fake.script_image(
        broken,
        Outcome(status="Failed", logs="segfault\n", events=(("Warning", "OOMKilled", "out of memory"),)),
    )
    spec = make_spec(tmp_path, ["run"], kind=kinds.DOCKER, image=Image((broken,)))
    status = wait_for(platform, tmp_path, platform.launch(spec))
    assert status.state == RunState.FAILED
    assert status.detail is not None and "OOMKilled" in status.detail and "segfault" in status.detail


def test_an_image_that_cannot_be_pulled_fails_after_the_grace(
    fake: FakeSkaha, make_platform: Callable[..., SkahaPlatform], tmp_path: Path
) -> None:
    missing = "images.canfar.net/skaha/missing:9"
    fake.script_image(missing, Outcome(stuck_pending=True))
    platform = make_platform(image_pull_grace=1.5)
    handle = platform.launch(make_spec(tmp_path, [], kind=kinds.DOCKER, image=Image((missing,))))
    time.sleep(0.3)
    # Past the fake's pull attempt, but within the grace: still pending (a registry hiccup may pass).
    assert platform.poll(tmp_path, handle).state == RunState.PENDING
    status = wait_for(platform, tmp_path, handle, timeout=5)
    assert status.state == RunState.FAILED
    assert status.detail is not None and "ErrImagePull" in status.detail and "not found" in status.detail


def test_a_vanished_session_is_lost(platform: SkahaPlatform, fake: FakeSkaha, tmp_path: Path) -> None:
    handle = platform.launch(make_spec(tmp_path, ["sleep", "30"]))
    wait_for(platform, tmp_path, handle, lambda s: s.state == RunState.RUNNING)
    fake.forget(handle["id"])
    status = platform.poll(tmp_path, handle)
    assert status.state == RunState.LOST
    assert status.detail is not None and status.detail.startswith("session vanished")


def test_transient_errors_are_retryable(platform: SkahaPlatform, fake: FakeSkaha, tmp_path: Path) -> None:
    handle = platform.launch(make_spec(tmp_path, ["sleep", "30"]))
    fake.fail_next(1, status=503, method="GET")
    with pytest.raises(SkahaError, match="503") as excinfo:
        platform.poll(tmp_path, handle)
    assert excinfo.value.retryable
    assert not platform.poll(tmp_path, handle).finished


def test_arguments_skaha_would_mangle_are_refused_before_anything_starts(
    platform: SkahaPlatform, fake: FakeSkaha, tmp_path: Path
) -> None:
    with pytest.raises(SkahaError, match="splits arguments on spaces"):
        platform.launch(make_spec(tmp_path / "a", ["sh", "-c", "echo hi"]))
    with pytest.raises(SkahaError, match="contains '='"):
        platform.launch(make_spec(tmp_path / "b", environment={"B64": "YWJj=="}))
    assert fake.created == 0


# -- container images ------------------------------------------------------------------------------------------


def test_digests_are_checked_against_skaha_or_pinned(
    platform: SkahaPlatform, fake: FakeSkaha, tmp_path: Path
) -> None:
    listed = fake.images[0]
    with pytest.raises(SkahaError, match="has digest"):
        platform.launch(
            make_spec(
                tmp_path / "a", [], kind=kinds.DOCKER, image=Image((listed["id"],), "sha256:" + "9" * 64)
            )
        )
    platform.launch(
        make_spec(tmp_path / "b", [], kind=kinds.DOCKER, image=Image((listed["id"],), listed["digest"]))
    )
    assert created_params(fake)["image"] == [listed["id"]]
    other = "images.canfar.net/skaha/unlisted:2"
    digest = "sha256:" + "a" * 64
    platform.launch(make_spec(tmp_path / "c", [], kind=kinds.DOCKER, image=Image((other,), digest)))
    assert created_params(fake)["image"] == [f"{other}@{digest}"]


def test_docker_entrypoint_and_command_become_cmd_and_args(
    platform: SkahaPlatform, fake: FakeSkaha, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, ["--verbose", "input.fits"], kind=kinds.DOCKER, image=Image((TERMINAL,)))
    spec = LaunchSpec(**{**spec.__dict__, "entrypoint": "/opt/run"})
    platform.launch(spec)
    params = created_params(fake)
    assert params["cmd"] == ["/opt/run"] and params["args"] == ["--verbose input.fits"]


def test_private_registry_credentials_are_sent(
    fake: FakeSkaha, make_platform: Callable[..., SkahaPlatform], tmp_path: Path
) -> None:
    private = "registry.example.org/team/tool:1"
    with pytest.raises(SkahaError, match="image not in a trusted repository"):
        make_platform().launch(make_spec(tmp_path / "a", [], kind=kinds.DOCKER, image=Image((private,))))
    platform = make_platform(registry_auth="robot:pa55")
    handle = platform.launch(make_spec(tmp_path / "b", [], kind=kinds.DOCKER, image=Image((private,))))
    assert fake.sessions[handle["id"]].registry_auth == base64.b64encode(b"robot:pa55").decode()


# -- interactive sessions ----------------------------------------------------------------------------------


def test_notebook_runs_with_connectors_is_renewed_and_released(
    make_platform: Callable[..., SkahaPlatform], tmp_path: Path
) -> None:
    fake = FakeSkaha(session_lifetime=2.0, public_url="https://canfar.example.org", terminating_for=0.4)
    with fake.serve():
        platform = make_platform(url=fake.url, renew_margin=1.2)
        spec = make_spec(tmp_path, [], kind=kinds.JUPYTER, deadline=timedelta(minutes=10))
        handle = platform.launch(spec)
        assert handle["type"] == "notebook"
        assert created_params(fake)["image"] == [NOTEBOOK]
        assert "cmd" not in created_params(fake)
        status = wait_for(platform, tmp_path, handle, lambda s: s.state == RunState.RUNNING)
        sid = handle["id"]
        notebook, portal = status.connectors
        assert notebook.kind == "urn:jupyter-notebook"
        assert notebook.protocol == "HTTPS"
        assert (
            notebook.location
            == f"https://canfar.example.org/session/notebook/{sid}/lab/tree/arc/home/alice?token={sid}"
        )
        assert portal.kind == "urn:ecliptic:connector:science-portal"
        assert portal.location == f"{fake.base}/science-portal/"
        # Skaha would end it (DeadlineExceeded) after 2 s; polling renews it while the booked time lasts.
        until = time.monotonic() + 2.6
        while time.monotonic() < until:
            assert platform.poll(tmp_path, handle).state == RunState.RUNNING
            time.sleep(0.1)
        assert fake.sessions[sid].renewals >= 2
        assert fake.status(sid) == "Running"

        platform.stop(tmp_path, handle, "cancelled by the user", wait=3)
        assert fake.status(sid) == "Terminating"
        assert (tmp_path / ".ecliptic" / "skaha" / DELETED_FILE).exists()
        ending = platform.poll(tmp_path, handle)
        assert ending.state == RunState.RUNNING and ending.connectors == ()
        released = wait_for(platform, tmp_path, handle)
        assert released.state == RunState.SUCCEEDED
        assert released.detail == "released: cancelled by the user"
        platform.stop(tmp_path, handle, "again", wait=1)
        assert platform.poll(tmp_path, handle).state == RunState.SUCCEEDED


def test_no_renew_when_skaha_keeps_the_session_past_the_deadline(
    platform: SkahaPlatform, fake: FakeSkaha, tmp_path: Path
) -> None:
    handle = platform.launch(make_spec(tmp_path, [], kind=kinds.JUPYTER, deadline=timedelta(minutes=5)))
    wait_for(platform, tmp_path, handle, lambda s: s.state == RunState.RUNNING)
    for _ in range(3):
        platform.poll(tmp_path, handle)
    assert fake.sessions[handle["id"]].renewals == 0
    assert fake.count("POST", f"/session/{handle['id']}") == 0


def test_the_deadline_deletes_the_session(platform: SkahaPlatform, fake: FakeSkaha, tmp_path: Path) -> None:
    handle = platform.launch(make_spec(tmp_path, [], kind=kinds.JUPYTER, deadline=timedelta(seconds=1)))
    wait_for(platform, tmp_path, handle, lambda s: s.state == RunState.RUNNING)
    stopping = wait_for(platform, tmp_path, handle, lambda s: "booked time" in (s.detail or ""))
    assert stopping.state == RunState.RUNNING
    assert fake.sessions[handle["id"]].deleted is not None
    status = wait_for(platform, tmp_path, handle)
    assert status.state == RunState.SUCCEEDED and status.detail == "released: the booked time is over"


def test_a_desktop_session_gets_its_own_connector(
    fake: FakeSkaha, make_platform: Callable[..., SkahaPlatform], tmp_path: Path
) -> None:
    platform = make_platform(session_type="desktop")
    spec = make_spec(tmp_path, [], kind=kinds.DOCKER, image=Image(("images.canfar.net/skaha/desktop:1.0",)))
    handle = platform.launch(spec)
    status = wait_for(platform, tmp_path, handle, lambda s: s.state == RunState.RUNNING)
    sid = handle["id"]
    assert status.connectors[0].kind == "urn:ecliptic:connector:desktop"
    assert (
        status.connectors[0].location
        == f"{fake.base}/session/desktop/{sid}/?password={sid}&path=session/desktop/{sid}/"
    )
    assert status.connectors[0].protocol == "HTTP"


def test_stop_deletes_again_when_skaha_swallowed_the_delete(
    platform: SkahaPlatform, fake: FakeSkaha, tmp_path: Path
) -> None:
    handle = platform.launch(make_spec(tmp_path, [], kind=kinds.JUPYTER))
    wait_for(platform, tmp_path, handle, lambda s: s.state == RunState.RUNNING)
    fake.swallow_deletes(1)
    platform.stop(tmp_path, handle, "cancelled", wait=2)
    assert fake.count("DELETE", f"/session/{handle['id']}") == 2
    assert fake.status(handle["id"]) == "Terminating"


def test_poll_deletes_again_when_skaha_swallowed_the_delete(
    platform: SkahaPlatform, fake: FakeSkaha, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(skaha_module, "REDELETE_AFTER", 0.0)
    handle = platform.launch(make_spec(tmp_path, [], kind=kinds.JUPYTER))
    wait_for(platform, tmp_path, handle, lambda s: s.state == RunState.RUNNING)
    fake.swallow_deletes(1)
    platform.stop(tmp_path, handle, "cancelled", wait=0)
    assert fake.status(handle["id"]) == "Running"
    status = platform.poll(tmp_path, handle)
    assert status.state == RunState.RUNNING and status.detail is not None and "being deleted" in status.detail
    assert fake.status(handle["id"]) == "Terminating"
    assert wait_for(platform, tmp_path, handle).state == RunState.SUCCEEDED


def test_the_session_limit_is_a_clear_error_and_known_upfront(
    fake: FakeSkaha, make_platform: Callable[..., SkahaPlatform], tmp_path: Path
) -> None:
    fake.max_interactive = 1
    fake.context["maxInteractiveSessions"] = 1
    fake.add_session(name="my-own-notebook")
    fake.add_session(name="someone-elses", userid="bob")
    platform = make_platform()
    assert platform.active_sessions() == 1
    assert platform.session_limit() == 1
    assert not platform.has_room("notebook")
    assert platform.has_room("headless")
    with pytest.raises(
        SkahaSessionLimitError, match="has reached the maximum of 1 active sessions"
    ) as excinfo:
        platform.launch(make_spec(tmp_path / "a", [], kind=kinds.JUPYTER))
    assert not excinfo.value.retryable and excinfo.value.status == 400
    # Headless sessions do not count against the limit, on Skaha or here.
    platform.launch(make_spec(tmp_path / "b"))

    limited = make_platform(max_sessions=1)
    posts = fake.count("POST", "/v1/session")
    with pytest.raises(SkahaSessionLimitError, match="allows 1 interactive"):
        limited.launch(make_spec(tmp_path / "c", [], kind=kinds.JUPYTER))
    assert fake.count("POST", "/v1/session") == posts


def test_a_refused_token_is_a_clear_auth_error(
    make_platform: Callable[..., SkahaPlatform], tmp_path: Path
) -> None:
    platform = make_platform(token="not-the-token")
    with pytest.raises(SkahaAuthError, match=r"refused the credentials.*401: Unauthorized") as excinfo:
        platform.launch(make_spec(tmp_path))
    assert not excinfo.value.retryable


def test_a_dead_refresh_token_is_a_clear_auth_error(
    make_platform: Callable[..., SkahaPlatform], tmp_path: Path
) -> None:
    oidc = FakeOidc()
    with oidc.serve():
        platform = make_platform(
            token=None,
            oidc_token_url=oidc.token_url,
            client_id=oidc.client_id,
            client_secret=oidc.client_secret,
            refresh_token="rt-revoked",
        )
        with pytest.raises(SkahaAuthError, match="invalid_grant") as excinfo:
            platform.launch(make_spec(tmp_path))
        assert not excinfo.value.retryable


def test_an_unreachable_skaha_is_retryable(
    make_platform: Callable[..., SkahaPlatform], tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    platform = make_platform(url=f"http://127.0.0.1:{port}/skaha", timeout=2)
    with pytest.raises(SkahaError, match="cannot reach Skaha") as excinfo:
        platform.launch(make_spec(tmp_path))
    assert excinfo.value.retryable


def test_what_the_platform_cannot_run_is_refused(
    make_platform: Callable[..., SkahaPlatform], fake: FakeSkaha, tmp_path: Path
) -> None:
    with pytest.raises(SkahaError, match="cannot run executables of kind"):
        make_platform().launch(make_spec(tmp_path / "a", kind=kinds.SINGULARITY))
    with pytest.raises(SkahaError, match="needs an image"):
        make_platform().launch(make_spec(tmp_path / "b", kind=kinds.DOCKER))
    without = make_platform(default_image=None)
    assert COMMAND_KIND not in without.info.executable_kinds
    with pytest.raises(SkahaError, match="none is set"):
        without.launch(make_spec(tmp_path / "c"))
    assert fake.created == 0


def test_logs_outlive_the_session(platform: SkahaPlatform, fake: FakeSkaha, tmp_path: Path) -> None:
    handle = platform.launch(make_spec(tmp_path, ["echo", "kept"]))
    assert platform.logs(tmp_path, handle) == ""
    assert wait_for(platform, tmp_path, handle).state == RunState.SUCCEEDED
    fake.forget(handle["id"])
    assert platform.logs(tmp_path, handle) == "kept\n"


# -- idempotency ----------------------------------------------------------------------------------------------


def test_launch_twice_makes_one_session(platform: SkahaPlatform, fake: FakeSkaha, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    first = platform.launch(spec)
    second = platform.launch(spec)
    assert first == second
    assert fake.created == 1


def test_a_crash_between_create_and_record_does_not_make_two(
    fake: FakeSkaha,
    make_platform: Callable[..., SkahaPlatform],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = make_spec(tmp_path, ["sleep", "30"], name="survey run #7")

    def crash_on_record(path: Path, data: dict[str, Any]) -> None:
        if path.name == SESSION_FILE:
            raise KeyboardInterrupt("the broker died here")
        real_write(path, data)

    monkeypatch.setattr(skaha_module, "write_json_atomic", crash_on_record)
    with pytest.raises(KeyboardInterrupt):
        make_platform().launch(spec)
    monkeypatch.undo()
    assert fake.created == 1
    (created,) = fake.named(session_name(spec))
    assert session_name(spec).startswith("survey-run-7-")

    # Another process (a fresh platform) repeats the launch: it adopts the session Skaha already has.
    handle = make_platform().launch(spec)
    assert handle["id"] == created.id
    assert fake.created == 1


def test_stop_without_a_handle_finds_the_session_by_name(
    fake: FakeSkaha,
    make_platform: Callable[..., SkahaPlatform],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = make_spec(tmp_path, ["sleep", "30"])
    monkeypatch.setattr(
        skaha_module,
        "write_json_atomic",
        lambda path, data: (
            (_ for _ in ()).throw(OSError("disk full"))
            if path.name == SESSION_FILE
            else real_write(path, data)
        ),
    )
    with pytest.raises(OSError):
        make_platform().launch(spec)
    monkeypatch.undo()
    (created,) = fake.named(session_name(spec))
    # The broker never got a handle, so it stops with an empty one.
    make_platform().stop(tmp_path, {}, "cancelled", wait=2)
    assert created.deleted is not None


def test_a_stop_before_the_launch_means_no_session(
    platform: SkahaPlatform, fake: FakeSkaha, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path)
    platform.stop(tmp_path, {}, "cancelled early", wait=0)
    with pytest.raises(SkahaError, match="was stopped"):
        platform.launch(spec)
    assert fake.created == 0
    assert platform.poll(tmp_path, {}).state == RunState.LOST


def test_a_headless_job_cut_off_by_the_deadline_fails(
    platform: SkahaPlatform, fake: FakeSkaha, tmp_path: Path
) -> None:
    handle = platform.launch(make_spec(tmp_path, ["sleep", "30"], deadline=timedelta(seconds=0.6)))
    status = wait_for(platform, tmp_path, handle)
    assert status.state == RunState.FAILED
    assert status.detail == "stopped: the booked time is over before the job finished"


# -- tokens that expire while sessions run ---------------------------------------------------------------------


def _oidc_settings(oidc: FakeOidc) -> dict[str, Any]:
    """A platform that gets its tokens from ``oidc`` by the refresh-token grant, with no static token."""
    return {
        "token": None,
        "oidc_token_url": oidc.token_url,
        "client_id": oidc.client_id,
        "client_secret": oidc.client_secret,
        "refresh_token": oidc.refresh_token,
    }


def test_tokens_are_refreshed_in_the_background_while_a_session_runs(
    make_platform: Callable[..., SkahaPlatform], tmp_path: Path
) -> None:
    oidc = FakeOidc(lifetime=1.0)
    fake = FakeSkaha(tokens=set(), oidc=oidc)
    with fake.serve():
        platform = make_platform(url=fake.url, **_oidc_settings(oidc), refresh_margin=0.5)
        handle = platform.launch(make_spec(tmp_path, ["sleep", "2.5"]))
        status = wait_for(platform, tmp_path, handle, timeout=10)
        assert status.state == RunState.SUCCEEDED
        # The session outlived several 1 s tokens, and not one request was refused.
        assert oidc.grants >= 4
        assert fake.unauthorized == 0
        used = {r.headers.get("authorization") for r in fake.requests if r.path.startswith("/skaha/")}
        assert len(used) >= 3


def test_a_token_refused_in_flight_is_replaced_and_the_request_repeated(
    make_platform: Callable[..., SkahaPlatform], tmp_path: Path
) -> None:
    oidc = FakeOidc(lifetime=30)
    fake = FakeSkaha(tokens=set(), oidc=oidc)
    with fake.serve():
        platform = make_platform(url=fake.url, **_oidc_settings(oidc))
        handle = platform.launch(make_spec(tmp_path, ["sleep", "30"]))
        # The server revokes the token (or the clocks disagree): the next call gets a 401 and recovers.
        oidc._issued.clear()
        assert not platform.poll(tmp_path, handle).finished
        assert fake.unauthorized == 1
        assert oidc.grants == 2


# -- configuration ---------------------------------------------------------------------------------------------


def test_config_needs_exactly_one_token_method(tmp_path: Path) -> None:
    from pydantic import ValidationError

    base = {"url": "https://ws-uv.canfar.net/skaha/", "type": "skaha"}
    with pytest.raises(ValidationError, match="exactly one of token"):
        SkahaConfig(**base)
    with pytest.raises(ValidationError, match="got token and token_file"):
        SkahaConfig(**base, token="t", token_file=tmp_path / "t")
    with pytest.raises(ValidationError, match="needs client_id and refresh_token"):
        SkahaConfig(**base, oidc_token_url="https://iam.example.org/token")
    with pytest.raises(ValidationError, match="not a Skaha session type"):
        SkahaConfig(**base, token="t", session_type="jupyter")
    with pytest.raises(ValidationError, match="extra"):
        SkahaConfig(**base, token="t", tokn="x")  # type: ignore[call-arg]
    parsed = SkahaConfig(
        **base, token="hush-hush", registry_auth=base64.b64encode(b"u:p").decode(), renew_margin="PT2H"
    )
    assert parsed.url == "https://ws-uv.canfar.net/skaha"
    assert parsed.registry_header() == base64.b64encode(b"u:p").decode()
    assert parsed.renew_margin == timedelta(hours=2)
    assert "hush" not in repr(parsed)


# -- the fake follows Part B -----------------------------------------------------------------------------------


def test_the_fake_validates_as_skaha_does(fake: FakeSkaha) -> None:
    fake.pending_for = 60  # every session made here stays Pending
    api = f"{fake.url}/v1"
    with httpx.Client(headers={"Authorization": "Bearer test-token"}, timeout=10) as http:

        def create(**params: Any) -> httpx.Response:
            return http.post(f"{api}/session", params=params)

        def refused(response: httpx.Response, message: str) -> None:
            assert response.status_code == 400, response.text
            assert response.headers["content-type"].startswith("text/plain")
            assert message in response.text

        refused(create(name="a"), "Missing parameter 'image'")
        refused(create(name="a", image="docker.io/library/alpine:3"), "image not in a trusted repository")
        refused(create(name="a", image=TERMINAL, type="shell"), "Invalid session type: shell")
        refused(create(name="a", image=TERMINAL, cores=99), "Invalid value for 'cores': 99")
        refused(create(name="a", image=TERMINAL, ram="lots"), "Invalid value for 'ram': lots")
        # Parameters in a form body count as well as in the query string; the answer is the ID and a newline.
        made = http.post(f"{api}/session", data={"name": "form-made", "image": TERMINAL, "cores": "2.0"})
        assert made.status_code == 200 and made.text.endswith("\n")
        sid = made.text.strip()
        assert len(sid) == 8 and fake.sessions[sid].cores == 2
        assert http.post(f"{api}/session/{sid}").text == "Cannot modify an existing session"
        assert http.post(f"{api}/session/{sid}", params={"action": "stop"}).text == "unrecognized action"
        assert http.post(f"{api}/session/{sid}", params={"action": "renew"}).status_code == 200
        assert http.delete(f"{api}/session/nosuch12").status_code == 200
        missing = http.get(f"{api}/session/nosuch12")
        assert missing.status_code == 404 and missing.text == "session nosuch12 not found"
        assert http.get(f"{api}/session/nosuch12", params={"view": "events"}).status_code == 404
        assert http.get(f"{api}/context").json()["cores"]["options"][0] == 1
        assert http.get(f"{api}/image", params={"type": "desktop"}).json()[0]["types"] == ["desktop"]
        assert http.get(f"{api}/repository").json() == ["images.canfar.net"]
        assert [s["name"] for s in http.get(f"{api}/session", params={"status": "PENDING"}).json()] == [
            "form-made"
        ]
        assert http.get(f"{api}/session", params={"type": "notebook"}).json() == []
        assert set(http.get(f"{api}/session", params={"view": "all"}).json()[0]) == {
            "userid",
            "type",
            "status",
            "startTime",
        }
        assert "requestedCPUCores" in http.get(f"{api}/session", params={"view": "stats"}).json()["cores"]
        for _ in range(3):
            assert create(name="nb", image=NOTEBOOK, type="notebook").status_code == 200
        refused(
            create(name="nb", image=NOTEBOOK, type="notebook"),
            "User alice has reached the maximum of 3 active sessions.",
        )
        # Headless sessions are not limited.
        assert create(name="hl", image=TERMINAL).status_code == 200
    anonymous = httpx.get(f"{api}/session", timeout=10)
    assert anonymous.status_code == 401 and anonymous.headers["content-type"].startswith("text/plain")
    assert httpx.get(f"{fake.url}/capabilities", timeout=10).text.count("standardID=") == 5


# -- the contract: the real canfar client against the fake -----------------------------------------------------


def test_the_canfar_client_works_against_the_fake(
    fake: FakeSkaha, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        from canfar.models.session import FetchResponse
        from canfar.sessions import Session
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("the canfar package is not installed (it is required in CI)")
    # canfar reads CANFAR_* settings and a configuration under the home directory: give it an empty one.
    for key in [k for k in os.environ if k.upper().startswith("CANFAR_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    monkeypatch.chdir(tmp_path)

    fake.run_for = 1.0  # the headless session is still running when the stats are read
    with Session(token="test-token", url=f"{fake.url}/v1", timeout=10) as client:
        (sid,) = client.create(
            name="contract-job",
            image=TERMINAL,
            cores=2,
            ram=4,
            cmd="echo",
            args="from canfar",
            env={"A": "1"},
        )
        session = fake.sessions[sid]
        assert (session.cores, session.ram, session.cmd, session.args) == (2, 4, "echo", ["from", "canfar"])
        assert session.env == {"A": "1", "REPLICA_ID": "1", "REPLICA_COUNT": "1"}
        (notebook,) = client.create(name="contract-nb", image=NOTEBOOK, kind="notebook", cores=1, ram=2)

        listed = client.fetch()
        assert {item["id"] for item in listed} == {sid, notebook}
        for item in listed:
            FetchResponse.model_validate(item)
        assert [item["id"] for item in client.fetch(kind="notebook")] == [notebook]

        time.sleep(fake.pending_for + 0.1)
        (info,) = client.info(notebook)
        parsed = FetchResponse.model_validate(info)
        assert parsed.status == "Running" and parsed.connectURL.endswith(f"?token={notebook}")
        assert client.stats()["cores"]["requestedCPUCores"] == 3

        time.sleep(fake.run_for)
        assert client.logs(sid) == {sid: "from canfar\n"}
        (events,) = client.events(sid)
        table = events[sid].splitlines()
        assert table[0].split() == ["TYPE", "REASON", "MESSAGE", "FIRST-TIME", "LAST-TIME"]
        assert any("Started" in row for row in table[1:])
        assert FetchResponse.model_validate(client.info(sid)[0]).status == "Completed"

        assert client.destroy([sid, notebook]) == {sid: True, notebook: True}
        assert {FetchResponse.model_validate(i).status for i in client.info([sid, notebook])} == {
            "Terminating"
        }
        time.sleep(fake.terminating_for + 0.1)
        assert client.info([sid, notebook]) == []
        assert client.fetch() == []

    request = next(r for r in fake.requests if r.method == "POST")
    assert request.headers["x-skaha-authentication-type"] == "RUNTIME-TOKEN"
    assert request.query["name"] == ["contract-job"]
