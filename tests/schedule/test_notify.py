"""Run notifications against real receivers on loopback: an HTTP webhook server and the Mosquitto broker."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import ecliptic
from ecliptic.schedule.notify import FAILURE_OUTCOMES, Notifier, RunEvent, events_for
from ecliptic.schedule.spec import Notification, NotifyEvent, RunView

pytestmark = pytest.mark.timeout(15)

AT = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def run_view(state: str = "failed", **fields: Any) -> RunView:
    values: dict[str, Any] = {
        "id": 42,
        "schedule_id": "s-1",
        "namespace": "nightly",
        "schedule": "backup",
        "scheduled_at": "2024-05-06T07:00:00Z",
        "due_at": "2024-05-06T07:00:00Z",
        "attempt": 1,
        "cause": "schedule",
        "state": state,
        "exit_code": 3 if state == "failed" else None,
    }
    values.update(fields)
    return RunView.model_validate(values)


def run_event(event: NotifyEvent = "failure", state: str = "failed", **fields: Any) -> RunEvent:
    return RunEvent.of(event, run_view(state, **fields), at=AT)


def wait_for(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- a webhook receiver ---------------------------------------------------------------------------------------


class Receiver:
    """An HTTP server on loopback that records each request and answers from a script of status codes."""

    def __init__(self, statuses: list[int] | None = None, delay: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.delay = delay
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append((self.path, dict(self.headers.items()), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def notifier() -> Iterator[Notifier]:
    notes = Notifier(timeout=2.0)
    notes.start()
    yield notes
    notes.stop(timeout=2.0)


# -- events ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "previous", "events"),
    [
        ("failed", None, ["failure"]),
        ("failed", "failed", ["failure"]),
        ("timed_out", "succeeded", ["failure"]),
        ("interrupted", None, ["failure"]),
        ("succeeded", None, ["success"]),
        ("succeeded", "succeeded", ["success"]),
        ("succeeded", "failed", ["recovery", "success"]),
        ("succeeded", "timed_out", ["recovery", "success"]),
        ("succeeded", "interrupted", ["recovery", "success"]),
        ("succeeded", "missed", ["success"]),
        ("missed", None, ["missed"]),
        ("missed", "failed", ["missed"]),
        ("skipped", "failed", []),
        ("cancelled", None, []),
    ],
)
def test_events_for(outcome: str, previous: str | None, events: list[str]) -> None:
    assert events_for(outcome, previous) == events


def test_events_for_rejects_a_non_outcome() -> None:
    assert frozenset({"failed", "timed_out", "interrupted"}) == FAILURE_OUTCOMES
    with pytest.raises(ValueError, match="not a run outcome"):
        events_for("running", None)


def test_payload_and_text() -> None:
    event = run_event()
    payload = event.payload()
    assert payload == {
        "event": "failure",
        "namespace": "nightly",
        "schedule": "backup",
        "run": run_view().model_dump(mode="json"),
        "at": "2024-05-06T07:08:09Z",
        "text": "nightly/backup run 42 failed: exit status 3",
    }
    json.dumps(payload)  # JSON-able as is
    assert run_event(error="boom\nTraceback ...").text() == "nightly/backup run 42 failed: boom"
    assert run_event("recovery", "succeeded", id=43).text() == "nightly/backup run 43 succeeded (recovered)"
    assert (
        run_event("failure", "timed_out", attempt=2).text() == "nightly/backup run 42 timed out (attempt 2)"
    )
    assert (
        run_event("missed", "missed").text() == "nightly/backup run 42 was missed (due 2024-05-06T07:00:00Z)"
    )


# -- webhooks -------------------------------------------------------------------------------------------------


def test_webhook_gets_json_and_headers(receiver: Receiver, notifier: Notifier) -> None:
    event = run_event()
    notifier.notify([Notification(webhook=receiver.url)], event)
    wait_for(lambda: notifier.delivered() == 1)
    [(path, headers, body)] = receiver.requests
    assert path == "/hook"
    headers = {key.lower(): value for key, value in headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"ecliptic/{ecliptic.__version__}"
    assert headers["x-ecliptic-event"] == "failure"
    assert json.loads(body) == event.payload()
    assert notifier.failed() == 0


def test_on_filters_events(receiver: Receiver, notifier: Notifier) -> None:
    failures_only = Notification(webhook=receiver.url, on=["failure"])
    defaults = Notification(webhook=receiver.url)  # failure, recovery, missed
    notifier.notify([failures_only, defaults], run_event("success", "succeeded"))
    notifier.notify([failures_only, defaults], run_event("recovery", "succeeded"))
    notifier.notify([failures_only], run_event("failure"))
    wait_for(lambda: notifier.delivered() == 2)
    notifier.stop()
    events = sorted(headers["X-Ecliptic-Event"] for _, headers, _ in receiver.requests)
    assert events == ["failure", "recovery"]


def test_retries_after_503() -> None:
    server = Receiver(statuses=[503, 200])
    notes = Notifier(timeout=2.0)
    notes.start()
    try:
        notes.notify([Notification(webhook=server.url)], run_event())
        wait_for(lambda: notes.delivered() == 1)
        assert server.count() == 2
        assert notes.failed() == 0
    finally:
        notes.stop()
        server.close()


def test_400_is_not_retried() -> None:
    server = Receiver(statuses=[400, 200])
    notes = Notifier(timeout=2.0)
    notes.start()
    try:
        notes.notify([Notification(webhook=server.url)], run_event())
        wait_for(lambda: notes.failed() == 1)
        time.sleep(0.7)  # longer than the first backoff: a retry would have arrived
        assert server.count() == 1
        assert notes.delivered() == 0
    finally:
        notes.stop()
        server.close()


def test_unreachable_webhook_does_not_block_and_fails_after_retries(caplog: pytest.LogCaptureFixture) -> None:
    notes = Notifier(timeout=1.0, attempts=3)
    notes.start()
    try:
        began = time.monotonic()
        notes.notify([Notification(webhook=f"http://127.0.0.1:{closed_port()}/hook")], run_event())
        assert time.monotonic() - began < 0.1
        assert notes.failed() == 0
        with caplog.at_level(logging.WARNING, logger="ecliptic.schedule.notify"):
            wait_for(lambda: notes.failed() == 1)
        assert time.monotonic() - began >= 1.5  # backoff 0.5 s + 1 s between the three attempts
        assert notes.delivered() == 0
        assert any("after 3 attempt(s)" in record.getMessage() for record in caplog.records)
    finally:
        notes.stop()


def test_stop_flushes_the_queue() -> None:
    server = Receiver(delay=0.01)
    notes = Notifier(timeout=2.0)
    target = Notification(webhook=server.url, on=["success"])
    try:
        for number in range(5):  # queued before start: sent once started
            notes.notify([target], run_event("success", "succeeded", id=number))
        notes.start()
        for number in range(5, 40):
            notes.notify([target], run_event("success", "succeeded", id=number))
        notes.stop(timeout=5.0)
        assert notes.delivered() == 40
        assert server.count() == 40
        assert sorted(json.loads(body)["run"]["id"] for _, _, body in server.requests) == list(range(40))
        notes.notify([target], run_event("success", "succeeded"))  # after stop: dropped, no error
        assert notes.dropped() == 1
    finally:
        server.close()


def test_stop_is_bounded_by_its_timeout() -> None:
    notes = Notifier(timeout=1.0, attempts=5)
    notes.start()
    dead = Notification(webhook=f"http://127.0.0.1:{closed_port()}/hook")
    for _ in range(20):
        notes.notify([dead], run_event())
    began = time.monotonic()
    notes.stop(timeout=0.3)
    assert time.monotonic() - began < 1.5
    assert notes.delivered() == 0
    assert notes.failed() + notes.dropped() == 20


def test_full_queue_drops_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    notes = Notifier(queue_size=2)  # not started: nothing drains the queue
    targets = [Notification(webhook=f"http://127.0.0.1:1/{n}") for n in range(5)]
    with caplog.at_level(logging.INFO, logger="ecliptic.schedule.notify"):
        began = time.monotonic()
        notes.notify(targets, run_event())
        assert time.monotonic() - began < 0.1
    assert notes.dropped() == 3
    assert notes.pending() == 2
    assert any("queue is full" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    notes.stop(timeout=0.1)


def test_events_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    notes = Notifier()
    with caplog.at_level(logging.INFO, logger="ecliptic.schedule.notify"):
        notes.notify([], run_event())
        notes.notify([], run_event("success", "succeeded", duration_s=1.25))
        notes.notify([], run_event("missed", "missed"))
        notes.notify([], run_event("recovery", "succeeded"))
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "ecliptic.schedule.notify"]
    assert records == [
        (logging.WARNING, "nightly/backup run 42 failed: exit status 3"),
        (logging.INFO, "nightly/backup run 42 succeeded in 1.25 s"),
        (logging.WARNING, "nightly/backup run 42 was missed (due 2024-05-06T07:00:00Z)"),
        (logging.INFO, "nightly/backup run 42 succeeded (recovered)"),
    ]
    notes.stop()


def test_notify_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    notes = Notifier()
    broken = RunEvent(event="failure", namespace="n", schedule="s", run=None, at=AT)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="ecliptic.schedule.notify"):
        notes.notify([Notification(webhook="http://127.0.0.1:1/")], broken)
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    notes.stop()


# -- MQTT -----------------------------------------------------------------------------------------------------

MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((MQTT_HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def mosquitto() -> str:
    if not _listening(MQTT_PORT) and shutil.which("mosquitto"):
        subprocess.run(
            ["mosquitto", "-d", "-c", "/etc/mosquitto/mosquitto.conf"],
            check=False,
            capture_output=True,
            timeout=5,
        )
        deadline = time.monotonic() + 3
        while not _listening(MQTT_PORT) and time.monotonic() < deadline:
            time.sleep(0.1)
    if not _listening(MQTT_PORT):
        message = f"no MQTT broker listens on {MQTT_HOST}:{MQTT_PORT} (and mosquitto -d did not start one)"
        if os.environ.get("CI"):
            pytest.fail(message + ": .ci/run starts one, so this is a failure in CI")
        pytest.skip(message)
    return f"mqtt://{MQTT_HOST}:{MQTT_PORT}"


class Subscriber:
    def __init__(self, topic: str) -> None:
        self.messages: list[bytes] = []
        self.got = threading.Condition()
        subscribed = threading.Event()
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        client.on_message = self._on_message
        client.connect(MQTT_HOST, MQTT_PORT)
        client.loop_start()
        self.client = client
        assert subscribed.wait(5), "subscription not acknowledged"

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.got:
            self.messages.append(message.payload)
            self.got.notify_all()

    def wait(self, count: int, timeout: float = 5.0) -> list[bytes]:
        with self.got:
            assert self.got.wait_for(lambda: len(self.messages) >= count, timeout), self.messages
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def topic(mosquitto: str) -> Iterator[tuple[str, Subscriber]]:
    name = f"ecliptic-test/{uuid.uuid4().hex}/runs"
    subscriber = Subscriber(name)
    yield name, subscriber
    subscriber.close()


def test_mqtt_publishes_the_payload(
    mosquitto: str, topic: tuple[str, Subscriber], notifier: Notifier
) -> None:
    name, subscriber = topic
    event = run_event()
    notifier.notify([Notification(mqtt=f"{mosquitto}/{name}")], event)
    [message] = subscriber.wait(1)
    assert json.loads(message) == event.payload()
    wait_for(lambda: notifier.delivered() == 1)


def test_mqtt_reuses_one_client_and_reconnects(
    mosquitto: str, topic: tuple[str, Subscriber], notifier: Notifier
) -> None:
    name, subscriber = topic
    target = Notification(mqtt=f"{mosquitto}/{name}", on=["success"])
    notifier.notify([target], run_event("success", "succeeded", id=1))
    notifier.notify([target], run_event("success", "succeeded", id=2))
    subscriber.wait(2)
    wait_for(lambda: notifier.delivered() == 2)
    assert len(notifier._links) == 1
    [link] = notifier._links.values()
    link.client.disconnect()  # the connection goes away: the next delivery connects afresh
    wait_for(lambda: link.broken)
    notifier.notify([target], run_event("success", "succeeded", id=3))
    messages = subscriber.wait(3)
    assert sorted(json.loads(m)["run"]["id"] for m in messages) == [1, 2, 3]
    wait_for(lambda: notifier.delivered() == 3)
    assert notifier._links[(MQTT_HOST, MQTT_PORT)] is not link


def test_mqtt_unreachable_broker_fails_after_retries() -> None:
    notes = Notifier(timeout=1.0, attempts=2)
    notes.start()
    try:
        began = time.monotonic()
        notes.notify([Notification(mqtt=f"mqtt://127.0.0.1:{closed_port()}/t")], run_event())
        assert time.monotonic() - began < 0.1
        wait_for(lambda: notes.failed() == 1)
        assert notes.delivered() == 0
    finally:
        notes.stop()
