"""The runners, with real processes (and a real broker on loopback for the broker runner)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from ecliptic.schedule import pep723, processes, runners
from ecliptic.schedule.runners import RunContext, RunResult, execute, kill_orphan, process_identity
from ecliptic.schedule.spec import ScheduleSpec
from tests.broker.requests import command_request
from tests.conftest import LiveServer, make_settings

SCHEDULED_AT = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def make_spec(run: Any, **fields: Any) -> ScheduleSpec:
    return ScheduleSpec.model_validate({"name": "job", "trigger": {"once": "now"}, "run": run, **fields})


def make_ctx(tmp_path: Path, **fields: Any) -> RunContext:
    values: dict[str, Any] = {
        "run_id": 7,
        "schedule": "job",
        "namespace": "team",
        "scheduled_at": SCHEDULED_AT,
        "attempt": 2,
        "log_dir": tmp_path / "logs",
        "cancel": threading.Event(),
        "cancel_reason": [],
        "base_dir": tmp_path,
    }
    values.update(fields)
    return RunContext(**values)


def run(tmp_path: Path, runner: Any, ctx: RunContext | None = None, **fields: Any) -> RunResult:
    return execute(make_spec(runner, **fields), ctx or make_ctx(tmp_path))


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Adopt orphans, as this sandbox's init never reaps them: zombies would keep a killed group's id alive."""
    adopted = processes.become_subreaper()
    try:
        yield
    finally:
        if adopted:
            processes.stop_being_subreaper()


# -- commands ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "outcome"), [(0, "succeeded"), (3, "failed")])
def test_exit_codes(tmp_path: Path, code: int, outcome: str) -> None:
    result = run(tmp_path, {"cmd": ["sh", "-c", f"echo out; echo err >&2; exit {code}"]})
    assert (result.outcome, result.exit_code) == (outcome, code)
    assert result.error == (None if code == 0 else "exit status 3")
    assert (result.stdout_tail, result.stderr_tail) == ("out\n", "err\n")
    assert result.started_at <= result.ended_at and result.started_at.tzinfo is not None


def test_missing_program_is_a_failure_not_an_exception(tmp_path: Path) -> None:
    result = run(tmp_path, {"cmd": "no-such-program-here --flag"})
    assert result.outcome == "failed" and result.exit_code is None
    assert result.error == "program not found: no-such-program-here"
    assert "program not found" in (tmp_path / "logs" / "7.err").read_text()


def test_shell_expands_and_no_shell_does_not(tmp_path: Path) -> None:
    env = {"HOME": "/home/somebody"}
    plain = run(tmp_path, {"cmd": "echo $HOME"}, env=env)
    shell = run(tmp_path, {"cmd": "echo $HOME", "shell": True}, env=env)
    assert plain.stdout_tail == "$HOME\n"
    assert shell.stdout_tail == "/home/somebody\n"


def test_environment_is_the_runs_own(tmp_path: Path) -> None:
    before = dict(os.environ)
    code = """
        import json, os
        print(json.dumps({k: v for k, v in os.environ.items() if k.startswith(("ECLIPTIC_", "MY_")) and not k.startswith("ECLIPTIC_TEST_")}))
    """
    result = run(tmp_path, {"cmd": py(code)}, env={"MY_SETTING": "on"})
    assert result.outcome == "succeeded", result
    seen = json.loads(result.stdout_tail)
    assert seen == {
        "MY_SETTING": "on",
        "ECLIPTIC_RUN_ID": "7",
        "ECLIPTIC_SCHEDULE": "job",
        "ECLIPTIC_NAMESPACE": "team",
        "ECLIPTIC_SCHEDULED_AT": "2026-03-01T09:30:00Z",
        "ECLIPTIC_ATTEMPT": "2",
    }
    assert dict(os.environ) == before


def test_cwd_is_resolved_against_the_base_dir(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    relative = run(tmp_path, {"python": "import os; print(os.getcwd())"}, cwd="work")
    default = run(tmp_path, {"python": "import os; print(os.getcwd())"})
    assert Path(relative.stdout_tail.strip()).resolve() == (tmp_path / "work").resolve()
    assert Path(default.stdout_tail.strip()).resolve() == tmp_path.resolve()
    missing = run(tmp_path, {"cmd": "true"}, cwd="nowhere")
    assert missing.outcome == "failed" and "working directory not found" in (missing.error or "")


def test_logs_keep_everything_and_tails_are_bounded(tmp_path: Path) -> None:
    code = """
        import sys
        sys.stdout.write("é" + "x" * (4 * 2**20) + "END-OUT")
        sys.stderr.write("start\\n" + "e" * 10000 + "END-ERR")
    """
    tracemalloc.start()
    try:
        result = run(tmp_path, {"cmd": py(code)})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.outcome == "succeeded"
    assert len(result.stdout_tail) == runners.TAIL_CHARS and result.stdout_tail.endswith("xEND-OUT")
    assert len(result.stderr_tail) == runners.TAIL_CHARS and result.stderr_tail.endswith("eEND-ERR")
    out = tmp_path / "logs" / "7.out"
    assert out.stat().st_size == len("é".encode()) + 4 * 2**20 + len("END-OUT")
    assert (tmp_path / "logs" / "7.err").read_text().startswith("start\n")
    assert peak < 2**20, f"execute held {peak} bytes: the output went through memory"


def test_timeout_kills_the_whole_process_group(tmp_path: Path, subreaper: None) -> None:
    pids: list[int | None] = []
    ctx = make_ctx(tmp_path, on_started=lambda pid, identity: pids.append(pid))
    began = time.monotonic()
    result = run(tmp_path, {"cmd": "sh -c 'sleep 60 & sleep 60'"}, ctx, timeout="0.5s", kill_grace="2s")
    assert time.monotonic() - began < 5
    assert result.outcome == "timed_out" and result.error == "killed after timeout PT0.5S"
    assert result.exit_code == -signal.SIGTERM
    [pgid] = pids
    assert pgid is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_leftovers_of_a_finished_command_are_stopped(tmp_path: Path, subreaper: None) -> None:
    pids: list[int | None] = []
    ctx = make_ctx(tmp_path, on_started=lambda pid, identity: pids.append(pid))
    result = run(tmp_path, {"cmd": ["sh", "-c", "sleep 60 & echo started"]}, ctx, kill_grace="1s")
    assert result.outcome == "succeeded" and result.stdout_tail == "started\n"
    assert "leaving 1 process(es)" in result.stderr_tail
    with pytest.raises(ProcessLookupError):
        os.killpg(pids[0] or 0, 0)


def test_a_child_ignoring_sigterm_gets_sigkill_after_the_grace(tmp_path: Path) -> None:
    began = time.monotonic()
    result = run(
        tmp_path,
        {"cmd": ["sh", "-c", "trap '' TERM; sleep 30; echo never"]},
        timeout="0.3s",
        kill_grace="0.7s",
    )
    took = time.monotonic() - began
    assert result.outcome == "timed_out" and result.exit_code == -signal.SIGKILL
    assert result.error == "killed after timeout PT0.3S; SIGKILL after kill_grace PT0.7S"
    assert 1.0 <= took < 3.0
    assert "never" not in result.stdout_tail


def test_cancel_stops_the_run_at_once(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)

    def cancel_soon() -> None:
        time.sleep(0.3)
        ctx.cancel_reason.append("replaced by run 8")
        ctx.cancel.set()

    threading.Thread(target=cancel_soon, daemon=True).start()
    began = time.monotonic()
    result = run(tmp_path, {"cmd": "sleep 30"}, ctx)
    assert time.monotonic() - began < 1.3
    assert result.outcome == "cancelled" and result.error == "cancelled: replaced by run 8"


def test_cancelled_before_start_runs_nothing(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, cancel_reason=["shutdown"])
    ctx.cancel.set()
    result = run(tmp_path, {"cmd": ["touch", str(tmp_path / "ran")]}, ctx)
    assert result.outcome == "cancelled" and "shutdown" in (result.error or "")
    assert not (tmp_path / "ran").exists()


def test_on_started_gets_pid_and_identity(tmp_path: Path) -> None:
    seen: list[tuple[int | None, str | None]] = []
    ctx = make_ctx(tmp_path, on_started=lambda pid, identity: seen.append((pid, identity)))
    result = run(tmp_path, {"python": "import os; print(os.getpid())"}, ctx)
    [(pid, identity)] = seen
    assert pid == int(result.stdout_tail) and identity and ":" in identity


# -- python ----------------------------------------------------------------------------------------------------


def test_python_snippet(tmp_path: Path) -> None:
    ok = run(tmp_path, {"python": "import sys; print(sys.version_info[:2] >= (3, 11))"})
    assert ok.outcome == "succeeded" and ok.stdout_tail == "True\n"
    bad = run(tmp_path, {"python": "raise ValueError('bad input')"})
    assert bad.outcome == "failed" and bad.exit_code == 1
    assert bad.error == "ValueError: bad input (exit status 1)"
    assert "Traceback" in bad.stderr_tail


def test_python_file_with_inline_metadata_runs_through_uv(tmp_path: Path) -> None:
    if runners.find_uv(os.environ) is None:
        pytest.skip("uv is not installed")
    script = tmp_path / "task.py"
    script.write_text(
        "# /// script\n"
        '# requires-python = ">=3.11"\n'
        "# dependencies = []\n"
        "# ///\n"
        "import os, sys\n"
        "def task(greeting):\n"
        "    print(greeting, os.environ.get('UV_NO_PROGRESS'))\n"
        "if __name__ == '__main__':\n"
        "    print(sys.executable)\n"
        "    print(sys.argv[1:])\n"
    )
    cache = tmp_path / "uv-cache"
    env = {"UV_OFFLINE": "1", "UV_CACHE_DIR": str(cache), "UV_PYTHON_DOWNLOADS": "never"}
    result = run(tmp_path, {"file": "task.py", "args": ["a", "b c"]}, env=env, timeout="60s")
    assert result.outcome == "succeeded", result
    executable, argv = result.stdout_tail.splitlines()
    assert Path(executable).is_relative_to(cache), "not run in uv's environment for the script"
    assert argv == "['a', 'b c']"
    called = run(tmp_path, {"file": "task.py", "function": "task", "kwargs": {"greeting": "hi"}}, env=env)
    assert called.outcome == "succeeded", called
    assert called.stdout_tail == "hi 1\n"


def test_python_file_without_uv_warns_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runners, "find_uv", lambda env: None)
    (tmp_path / "task.py").write_text(
        '# /// script\n# dependencies = ["some-package>=1"]\n# ///\nimport sys\nprint("ran", sys.argv[1:])\n'
    )
    result = run(tmp_path, {"file": "task.py", "args": ["x"]})
    assert result.outcome == "succeeded" and result.stdout_tail == "ran ['x']\n"
    first = (tmp_path / "logs" / "7.err").read_text().splitlines()[0]
    assert first.startswith("ecliptic: warning: task.py declares dependencies (some-package>=1)")


def test_inline_metadata_parsing(tmp_path: Path) -> None:
    assert pep723.parse("print(1)\n") is None
    meta = pep723.parse(
        '# /// script\n# dependencies = ["a", "b<2"]\n#\n# requires-python = ">=3.11"\n# ///\n'
    )
    assert meta is not None and meta.dependencies == ["a", "b<2"] and meta.requires_python == ">=3.11"
    with pytest.raises(pep723.ScriptMetadataError, match="more than one"):
        pep723.parse("# /// script\n# a = 1\n# ///\nx = 1\n# /// script\n# b = 1\n# ///\n")
    (tmp_path / "broken.py").write_text("# /// script\n# dependencies = [\n# ///\nprint('ran')\n")
    result = run(tmp_path, {"file": "broken.py"})
    assert result.outcome == "failed" and "not valid TOML" in (result.error or "")
    assert "ran" not in result.stdout_tail


def test_python_file_function_with_kwargs(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "helper.py").write_text("PREFIX = 'got'\n")
    (tmp_path / "jobs" / "task.py").write_text(
        textwrap.dedent(
            """
            import sys
            from helper import PREFIX

            def run(name, count=1):
                print(PREFIX, name * count, sys.argv[1:])

            def fail(**kwargs):
                raise RuntimeError(f"failing with {kwargs}")

            if __name__ == "__main__":
                print("main block ran")
            """
        )
    )
    ok = run(tmp_path, {"file": "jobs/task.py", "function": "run", "kwargs": {"name": "ab", "count": 2}})
    assert ok.outcome == "succeeded", ok
    assert ok.stdout_tail == "got abab []\n"
    bad = run(tmp_path, {"file": "jobs/task.py", "function": "fail", "kwargs": {"x": 1}})
    assert bad.outcome == "failed" and bad.error == "RuntimeError: failing with {'x': 1} (exit status 1)"
    missing = run(tmp_path, {"file": "jobs/task.py", "function": "nope"})
    assert missing.outcome == "failed" and "has no function 'nope'" in (missing.error or "")


def test_other_files_must_be_executable(tmp_path: Path) -> None:
    script = tmp_path / "task.sh"
    script.write_text("#!/bin/sh\necho shell says $1\n")
    not_yet = run(tmp_path, {"file": "task.sh", "args": ["hi"]})
    assert not_yet.outcome == "failed" and "is not executable" in (not_yet.error or "")
    script.chmod(0o755)
    ok = run(tmp_path, {"file": "task.sh", "args": ["hi"]})
    assert ok.outcome == "succeeded" and ok.stdout_tail == "shell says hi\n"
    gone = run(tmp_path, {"file": "missing.sh"})
    assert gone.outcome == "failed" and (gone.error or "").startswith("file not found:")


def test_entrypoint(tmp_path: Path) -> None:
    (tmp_path / "mytasks.py").write_text(
        textwrap.dedent(
            """
            import json

            def report(a, b, *, scale=1):
                print(json.dumps({"sum": (a + b) * scale}))

            def explode():
                raise ValueError("entrypoint exploded")
            """
        )
    )
    ok = run(tmp_path, {"entrypoint": "mytasks:report", "args": [1, 2], "kwargs": {"scale": 10}})
    assert ok.outcome == "succeeded", ok
    assert json.loads(ok.stdout_tail) == {"sum": 30}
    bad = run(tmp_path, {"entrypoint": "mytasks:explode"})
    assert bad.outcome == "failed" and bad.exit_code == 1
    assert bad.error == "ValueError: entrypoint exploded (exit status 1)"
    assert "Traceback (most recent call last)" in bad.stderr_tail
    missing = run(tmp_path, {"entrypoint": "not_a_module_here:fn"})
    assert (missing.error or "").startswith("ModuleNotFoundError: No module named 'not_a_module_here'")


# -- in-process calls ----------------------------------------------------------------------------------------


@pytest.fixture
def call_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module importable from tmp_path (only through base_dir), with a unique name per test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"calltasks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import threading
            CALLS = []

            def record(*args, **kwargs):
                CALLS.append((args, kwargs, threading.current_thread().name))

            async def later(value):
                CALLS.append(value)

            def boom():
                raise KeyError("missing thing")
            """
        )
    )
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_call_runs_in_this_process(tmp_path: Path, call_module: str) -> None:
    seen: list[tuple[int | None, str | None]] = []
    ctx = make_ctx(tmp_path, on_started=lambda pid, identity: seen.append((pid, identity)))
    result = run(tmp_path, {"call": f"{call_module}:record", "args": [1], "kwargs": {"k": "v"}}, ctx)
    assert result.outcome == "succeeded" and result.error is None
    assert (result.stdout_tail, result.stderr_tail) == ("", "")
    assert seen == [(None, None)]
    module = sys.modules[call_module]
    [(args, kwargs, _thread)] = module.CALLS
    assert (args, kwargs) == ((1,), {"k": "v"})
    assert run(tmp_path, {"call": f"{call_module}:later", "args": ["async"]}).outcome == "succeeded"
    assert module.CALLS[-1] == "async"


def test_call_failures(tmp_path: Path, call_module: str) -> None:
    raised = run(tmp_path, {"call": f"{call_module}:boom"})
    assert raised.outcome == "failed" and raised.error == "KeyError: 'missing thing'"
    assert "Traceback" in raised.stderr_tail and "boom" in raised.stderr_tail
    missing = run(tmp_path, {"call": "no_such_module_anywhere:fn"})
    assert missing.outcome == "failed"
    assert missing.error == "ModuleNotFoundError: No module named 'no_such_module_anywhere'"
    absent = run(tmp_path, {"call": f"{call_module}:absent"})
    assert absent.outcome == "failed" and "has no function 'absent'" in (absent.error or "")


def test_call_with_an_override_and_a_timeout(tmp_path: Path) -> None:
    calls: list[Any] = []
    spec = make_spec({"call": "registered.by:library", "args": [5]})
    result = execute(spec, make_ctx(tmp_path), callable_override=lambda n: calls.append(n))
    assert result.outcome == "succeeded" and calls == [5]

    release = threading.Event()
    slow = make_spec({"call": "registered.by:library"}, timeout="0.3s")
    began = time.monotonic()
    result = execute(slow, make_ctx(tmp_path), callable_override=lambda: release.wait(10))
    assert time.monotonic() - began < 1.5
    assert result.outcome == "timed_out" and "cannot be killed" in (result.error or "")
    release.set()

    # With a timeout the call runs on a helper thread, so a cancel ends the run at once (the thread goes on).
    hold = threading.Event()
    ctx = make_ctx(tmp_path, cancel_reason=["user asked"])
    threading.Timer(0.2, ctx.cancel.set).start()
    began = time.monotonic()
    guarded = make_spec({"call": "x:y"}, timeout="30s")
    result = execute(guarded, ctx, callable_override=lambda: hold.wait(10))
    assert time.monotonic() - began < 5
    assert result.outcome == "cancelled" and result.error == "cancelled: user asked"
    hold.set()

    # Without one it runs inline, on the caller's thread, to its end: nothing could stop it anyway.
    ctx = make_ctx(tmp_path, run_id=8, cancel_reason=["user asked"])
    threading.Timer(0.1, ctx.cancel.set).start()
    result = execute(make_spec({"call": "x:y"}), ctx, callable_override=lambda: time.sleep(0.3))
    assert result.outcome == "succeeded"
    assert not (tmp_path / "logs" / f"{ctx.run_id}.out").exists()  # no files for a clean in-process call


# -- steps -----------------------------------------------------------------------------------------------------


def test_steps_stop_at_the_first_failure(tmp_path: Path) -> None:
    steps = {
        "steps": [
            {"name": "prepare", "run": {"cmd": "echo prepared"}},
            {"name": "optional", "if": False, "run": {"cmd": "echo skipped"}},
            {"name": "build", "run": {"python": "import sys; print('building'); sys.exit(4)"}},
            {"name": "never", "run": {"cmd": ["touch", str(tmp_path / "never")]}},
        ]
    }
    result = run(tmp_path, steps)
    assert result.outcome == "failed" and result.exit_code == 4
    assert result.error == "step 3/4 build: exit status 4"
    assert result.stdout_tail == (
        "step 1/4 prepare: succeeded\n"
        "step 2/4 optional: skipped (if: false)\n"
        "step 3/4 build: failed (exit status 4)\n"
        "--- step 3/4 build ---\n"
        "building\n"
    )
    assert not (tmp_path / "never").exists()
    log = (tmp_path / "logs" / "7.out").read_text()
    assert "prepared" in log and "building" in log and "skipped" not in log.replace("optional: skipped", "")


def test_steps_share_one_timeout(tmp_path: Path) -> None:
    steps = {"steps": [{"run": {"cmd": "sleep 0.4"}}, {"run": {"cmd": "sleep 5"}}]}
    began = time.monotonic()
    result = run(tmp_path, steps, timeout="0.7s", kill_grace="0.5s")
    assert time.monotonic() - began < 2
    assert result.outcome == "timed_out" and (result.error or "").startswith("step 2/2: killed after timeout")


# -- orphans ---------------------------------------------------------------------------------------------------


def test_kill_orphan_checks_the_identity(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        identity = process_identity(proc.pid)
        assert identity is not None and identity == process_identity(proc.pid)
        wrong = identity.rsplit(":", 1)[0] + ":1"
        assert kill_orphan(proc.pid, wrong) is False
        assert proc.poll() is None
        assert kill_orphan(proc.pid, identity) is True
        assert proc.wait(timeout=5) == -signal.SIGTERM
        assert process_identity(proc.pid) is None
        assert kill_orphan(proc.pid, identity) is False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- broker ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    base = tmp_path_factory.mktemp("broker")
    with LiveServer(make_settings(base / "data", f"sqlite:///{base / 'b.sqlite'}")) as live:
        yield live


def test_broker_request_runs_to_completion(tmp_path: Path, broker: LiveServer) -> None:
    request = command_request("sh", "-c", "echo hello-from-the-broker; echo warn >&2")
    ctx = make_ctx(tmp_path, broker_url=broker.url)
    result = run(tmp_path, {"broker": request}, ctx, timeout="60s")
    assert result.outcome == "succeeded", result
    assert result.exit_code == 0
    assert "COMPLETED" in result.stdout_tail and "hello-from-the-broker" in result.stdout_tail
    assert "warn" in result.stderr_tail


def test_broker_request_file_with_no_offer(tmp_path: Path, broker: LiveServer) -> None:
    (tmp_path / "request.yaml").write_text(
        yaml.safe_dump(command_request("true", compute={"cores": {"min": 100000}}))
    )
    result = run(tmp_path, {"broker": "request.yaml", "url": broker.url})
    assert result.outcome == "failed"
    assert (result.error or "").startswith("the broker made no offer: ")
    assert "more than platform" in (result.error or "")


def test_broker_without_a_url(tmp_path: Path) -> None:
    result = run(tmp_path, {"broker": command_request("true")})
    assert result.outcome == "failed" and "no broker" in (result.error or "")


def test_broker_run_cancelled_cancels_the_session(tmp_path: Path, broker: LiveServer) -> None:
    ctx = make_ctx(tmp_path, broker_url=broker.url, cancel_reason=["shutdown"])
    threading.Timer(1.0, ctx.cancel.set).start()
    result = run(tmp_path, {"broker": command_request("sleep", "60")}, ctx)
    assert result.outcome == "cancelled", result
    session = next(line for line in result.stdout_tail.splitlines() if "accepting session" in line)
    session_uuid = session.rsplit(" ", 1)[1]
    from ecliptic.broker.client import BrokerClient

    deadline = time.monotonic() + 20
    with BrokerClient(broker.url) as client:
        while client.session(session_uuid)["phase"] != "CANCELLED":
            assert time.monotonic() < deadline, "the session was not cancelled"
            time.sleep(0.1)
