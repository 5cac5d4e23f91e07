"""Run notifications: tell webhooks and MQTT topics about failures, recoveries, missed runs and successes.

The scheduler core decides *which* events a finished run raises (:func:`events_for`), wraps each in a
:class:`RunEvent` and hands it to :meth:`Notifier.notify` with the schedule's notification targets. ``notify``
never blocks the scheduler and never raises: it logs the event and puts one delivery per interested target on
a bounded queue; background workers deliver them.

* **webhook**: an HTTP POST of the JSON :meth:`RunEvent.payload` (headers ``Content-Type: application/json``,
  ``User-Agent: ecliptic/<version>``, ``X-Ecliptic-Event: <event>``) over one shared ``httpx.Client``.
  Connection errors, timeouts and 5xx answers are retried with exponential backoff (0.5 s, 1 s, 2 s …); any
  other non-2xx answer (4xx, 3xx) fails at once.
* **mqtt**: ``mqtt://[user[:password]@]host[:port]/topic`` (default port 1883). The JSON payload is published
  with QoS 1 and the PUBACK awaited. One connected paho client is kept per host:port; a client whose
  connection fails is discarded and a fresh one connects on the next attempt. Retries as for webhooks.

Delivery is at least once on a best-effort basis: a notification is not persisted, so what is still queued
when :meth:`Notifier.stop` runs out of time is dropped (and logged).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

import ecliptic
from ecliptic.isotime import format_instant, utcnow
from ecliptic.schedule.spec import OUTCOMES, Notification, NotifyEvent, RunView

__all__ = [
    "FAILURE_OUTCOMES",
    "DeliveryError",
    "Notifier",
    "RunEvent",
    "events_for",
]

log = logging.getLogger("ecliptic.schedule.notify")

FAILURE_OUTCOMES: frozenset[str] = frozenset({"failed", "timed_out", "interrupted"})
"""Outcomes that raise a ``failure`` event (and make the next success a ``recovery``)."""

_BACKOFF = 0.5
"""Delay before the first retry; doubled before each further one."""

_LEVEL: dict[str, int] = {
    "failure": logging.WARNING,
    "missed": logging.WARNING,
    "recovery": logging.INFO,
    "success": logging.INFO,
}

_VERB: dict[str, str] = {
    "succeeded": "succeeded",
    "failed": "failed",
    "timed_out": "timed out",
    "interrupted": "was interrupted",
    "missed": "was missed",
    "skipped": "was skipped",
    "cancelled": "was cancelled",
}


def events_for(outcome: str, previous_outcome: str | None) -> list[NotifyEvent]:
    """The events a run that ended with ``outcome`` raises.

    ``previous_outcome`` is the outcome of the schedule's previous *finished* run (``None`` for the first).
    A failure outcome (failed, timed_out, interrupted) raises ``failure``; ``missed`` raises ``missed``;
    ``succeeded`` raises ``recovery`` when the previous finished run failed, and always ``success``.
    ``skipped`` and ``cancelled`` raise nothing. An unknown outcome is a programming error (``ValueError``).
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"{outcome!r} is not a run outcome (one of {', '.join(sorted(OUTCOMES))})")
    if outcome in FAILURE_OUTCOMES:
        return ["failure"]
    if outcome == "missed":
        return ["missed"]
    if outcome == "succeeded":
        if previous_outcome in FAILURE_OUTCOMES:
            return ["recovery", "success"]
        return ["success"]
    return []


def _one_line(text: str, limit: int = 200) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass(frozen=True)
class RunEvent:
    """One event about one run, as sent to every target that wants it."""

    event: NotifyEvent
    namespace: str
    schedule: str
    run: dict[str, Any]
    """The run: ``RunView.model_dump(mode="json")``."""
    at: datetime

    @classmethod
    def of(cls, event: NotifyEvent, run: RunView, at: datetime | None = None) -> RunEvent:
        """The event for a run view (``at`` defaults to now)."""
        return cls(
            event=event,
            namespace=run.namespace,
            schedule=run.schedule,
            run=run.model_dump(mode="json"),
            at=at if at is not None else utcnow(),
        )

    def text(self) -> str:
        """One human line, e.g. ``nightly/backup run 42 failed: exit status 3``."""
        run = self.run
        state = str(run.get("state") or "")
        words = [f"{self.namespace}/{self.schedule}"]
        if run.get("id") is not None:
            words.append(f"run {run['id']}")
        words.append(_VERB.get(state, state.replace("_", " ") or "ended"))
        text = " ".join(words)
        attempt = run.get("attempt")
        if isinstance(attempt, int) and attempt > 1:
            text += f" (attempt {attempt})"
        if self.event == "recovery":
            text += " (recovered)"
        error = run.get("error")
        exit_code = run.get("exit_code")
        if state == "missed" and run.get("due_at"):
            text += f" (due {run['due_at']})"
        if isinstance(error, str) and _one_line(error):
            text += f": {_one_line(error)}"
        elif exit_code is not None and exit_code != 0:
            text += f": exit status {exit_code}"
        elif state == "succeeded" and isinstance(run.get("duration_s"), int | float):
            text += f" in {run['duration_s']:.3g} s"
        return text

    def payload(self) -> dict[str, Any]:
        """The JSON body sent to webhooks and MQTT topics."""
        return {
            "event": self.event,
            "namespace": self.namespace,
            "schedule": self.schedule,
            "run": self.run,
            "at": format_instant(self.at),
            "text": self.text(),
        }


class DeliveryError(Exception):
    """A delivery attempt failed; ``retry`` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass
class _Delivery:
    target: Notification
    event: RunEvent


# -- MQTT -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MqttUrl:
    host: str
    port: int
    topic: str
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> _MqttUrl:
        parts = urlsplit(url)
        try:
            port = parts.port or 1883
        except ValueError as exc:
            raise DeliveryError(f"{url!r}: bad port", retry=False) from exc
        topic = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise DeliveryError(f"{url!r} is not mqtt://host:port/topic", retry=False)
        if not topic or "+" in topic or "#" in topic:
            raise DeliveryError(f"{url!r} names no topic to publish to (mqtt://host:port/topic)", retry=False)
        return cls(
            host=parts.hostname,
            port=port,
            topic=topic,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


class _MqttLink:
    """One connected paho client (its network loop on a paho thread)."""

    def __init__(self, url: _MqttUrl, timeout: float) -> None:
        self.key = (url.host, url.port)
        self._connected = threading.Event()
        self._refused: str | None = None
        self.broken = False
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        client.connect_timeout = timeout
        if url.username is not None:
            client.username_pw_set(url.username, url.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self.client = client
        try:
            client.connect(url.host, url.port, keepalive=60)
        except (OSError, ValueError) as exc:
            raise DeliveryError(
                f"cannot connect to MQTT broker {url.host}:{url.port}: {exc}", retry=True
            ) from exc
        client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise DeliveryError(
                f"MQTT broker {url.host}:{url.port} did not accept the connection", retry=True
            )
        if self._refused is not None:
            self.close()
            raise DeliveryError(
                f"MQTT broker {url.host}:{url.port} refused the connection: {self._refused}", retry=True
            )

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            self.broken = True
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        self.broken = True

    def publish(self, topic: str, body: bytes, timeout: float) -> None:
        try:
            info = self.client.publish(topic, body, qos=1)
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError, OSError) as exc:
            self.broken = True
            raise DeliveryError(f"MQTT publish to {topic!r} failed: {exc}", retry=True) from exc
        if not info.is_published():
            self.broken = True
            raise DeliveryError(f"MQTT broker did not acknowledge {topic!r} within {timeout:g} s", retry=True)

    def close(self) -> None:
        self.broken = True
        with contextlib.suppress(Exception):  # closing a half-open client: nothing to report
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()


# -- the notifier ---------------------------------------------------------------------------------------------


class Notifier:
    """Delivers :class:`RunEvent` s to notification targets on background threads."""

    def __init__(
        self, *, timeout: float = 5.0, attempts: int = 3, queue_size: int = 10_000, workers: int = 4
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if queue_size < 1 or workers < 1:
            raise ValueError("queue_size and workers must be at least 1")
        self.timeout = timeout
        self.attempts = attempts
        self.queue_size = queue_size
        self._workers_wanted = workers
        self._queue: deque[_Delivery] = deque()
        self._cond = threading.Condition()
        self._busy = 0
        self._state: Literal["new", "running", "closing", "stopped"] = "new"
        self._abort = threading.Event()
        self._threads: list[threading.Thread] = []
        self._counts_lock = threading.Lock()
        self._delivered = 0
        self._failed = 0
        self._dropped = 0
        self._http: httpx.Client | None = None
        self._links: dict[tuple[str, int], _MqttLink] = {}
        self._links_lock = threading.Lock()
        self._connect_locks: dict[tuple[str, int], threading.Lock] = {}

    # -- lifecycle

    def start(self) -> None:
        """Start the delivery threads (deliveries queued before are sent now)."""
        with self._cond:
            if self._state == "running":
                return
            if self._state != "new":
                raise RuntimeError("a stopped Notifier cannot be started again")
            self._state = "running"
        self._http = httpx.Client(
            timeout=self.timeout,
            headers={"User-Agent": f"ecliptic/{ecliptic.__version__}"},
            follow_redirects=False,
        )
        for number in range(self._workers_wanted):
            thread = threading.Thread(target=self._work, name=f"ecliptic-notify-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, waiting at most ``timeout`` seconds, then stop; what is left is dropped."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._state in ("closing", "stopped"):
                return
            was_running = self._state == "running"
            self._state = "closing"
            self._cond.notify_all()
        if was_running:
            for thread in self._threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            if any(thread.is_alive() for thread in self._threads):
                self._abort.set()  # cut backoff waits short; in-flight requests end within their timeout
                with self._cond:
                    self._cond.notify_all()
                for thread in self._threads:
                    thread.join(0.2)
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
            self._state = "stopped"
        if left:
            self._count("dropped", left)
            log.warning("notifier stopped with %d notification(s) undelivered; dropped them", left)
        with self._links_lock:
            links = list(self._links.values())
            self._links.clear()
        for link in links:
            link.close()
        if self._http is not None:
            self._http.close()

    def __enter__(self) -> Notifier:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- counters

    def delivered(self) -> int:
        """Deliveries that succeeded."""
        with self._counts_lock:
            return self._delivered

    def failed(self) -> int:
        """Deliveries that failed after their attempts (or at once, for errors not worth retrying)."""
        with self._counts_lock:
            return self._failed

    def dropped(self) -> int:
        """Deliveries never attempted: the queue was full, or the notifier stopped first."""
        with self._counts_lock:
            return self._dropped

    def pending(self) -> int:
        """Deliveries queued or in progress."""
        with self._cond:
            return len(self._queue) + self._busy

    def _count(self, which: Literal["delivered", "failed", "dropped"], n: int = 1) -> None:
        with self._counts_lock:
            if which == "delivered":
                self._delivered += n
            elif which == "failed":
                self._failed += n
            else:
                self._dropped += n

    # -- the caller's side

    def notify(self, targets: list[Notification], event: RunEvent) -> None:
        """Log ``event`` and queue it for each target whose ``on`` includes it. Never blocks, never raises."""
        try:
            self._notify(targets, event)
        except Exception:
            log.exception("notification of %s for %s/%s failed", event.event, event.namespace, event.schedule)

    def _notify(self, targets: list[Notification], event: RunEvent) -> None:
        log.log(
            _LEVEL.get(event.event, logging.INFO), "%s", event.text(), extra={"notify_event": event.event}
        )
        wanted = [target for target in targets if event.event in target.on]
        if not wanted:
            return
        full = 0
        with self._cond:
            if self._state in ("closing", "stopped"):
                closed = True
            else:
                closed = False
                for target in wanted:
                    if len(self._queue) >= self.queue_size:
                        full += 1
                        continue
                    self._queue.append(_Delivery(target, event))
                self._cond.notify(len(wanted) - full)
        if closed:
            self._count("dropped", len(wanted))
            log.warning("notifier is stopped: %s notification for %s not sent", event.event, _where(event))
        elif full:
            self._count("dropped", full)
            log.warning(
                "notification queue is full (%d): dropped %d %s notification(s) for %s",
                self.queue_size,
                full,
                event.event,
                _where(event),
            )

    # -- the workers' side

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and self._state == "running":
                    self._cond.wait()
                if not self._queue or self._abort.is_set():
                    return
                delivery = self._queue.popleft()
                self._busy += 1
            try:
                self._deliver(delivery)
            except Exception:  # a bug, not a delivery failure: keep the worker alive
                log.exception("notification delivery crashed")
                self._count("failed")
            finally:
                with self._cond:
                    self._busy -= 1

    def _deliver(self, delivery: _Delivery) -> None:
        target, event = delivery.target, delivery.event
        url = target.webhook if target.webhook is not None else str(target.mqtt)
        body = json.dumps(event.payload(), separators=(",", ":"), ensure_ascii=False).encode()
        for attempt in range(1, self.attempts + 1):
            try:
                if target.webhook is not None:
                    self._post(target.webhook, event.event, body)
                else:
                    self._publish(str(target.mqtt), body)
            except DeliveryError as exc:
                last = attempt >= self.attempts or not exc.retry or self._abort.is_set()
                if last:
                    self._count("failed")
                    log.warning(
                        "%s notification for %s to %s failed after %d attempt(s): %s",
                        event.event,
                        _where(event),
                        _redact(url),
                        attempt,
                        exc,
                    )
                    return
                delay = _BACKOFF * 2 ** (attempt - 1)
                log.debug("notification to %s failed (%s); retrying in %g s", _redact(url), exc, delay)
                self._abort.wait(delay)
                continue
            self._count("delivered")
            log.debug("%s notification for %s delivered to %s", event.event, _where(event), _redact(url))
            return

    def _post(self, url: str, event: str, body: bytes) -> None:
        assert self._http is not None
        try:
            response = self._http.post(
                url, content=body, headers={"Content-Type": "application/json", "X-Ecliptic-Event": event}
            )
        except httpx.TransportError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retry=True) from exc
        except (httpx.HTTPError, RuntimeError) as exc:  # an invalid URL; the client closed by stop()
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retry=False) from exc
        if response.is_success:
            return
        status = response.status_code
        raise DeliveryError(f"HTTP {status} {response.reason_phrase}", retry=status >= 500)

    def _publish(self, url: str, body: bytes) -> None:
        target = _MqttUrl.parse(url)
        link = self._link(target)
        try:
            link.publish(target.topic, body, self.timeout)
        except DeliveryError:
            self._discard(link)
            raise

    def _link(self, url: _MqttUrl) -> _MqttLink:
        key = (url.host, url.port)
        with self._links_lock:
            link = self._links.get(key)
            if link is not None and not link.broken:
                return link
            connect_lock = self._connect_locks.setdefault(key, threading.Lock())
        with connect_lock:  # one connection attempt per broker at a time
            with self._links_lock:
                link = self._links.get(key)
                if link is not None and not link.broken:
                    return link
            if link is not None:
                self._discard(link)
            if self._state == "stopped":
                raise DeliveryError("the notifier is stopped", retry=False)
            link = _MqttLink(url, self.timeout)
            with self._links_lock:
                self._links[key] = link
            return link

    def _discard(self, link: _MqttLink) -> None:
        with self._links_lock:
            if self._links.get(link.key) is link:
                del self._links[link.key]
        link.close()


def _where(event: RunEvent) -> str:
    run_id = event.run.get("id")
    return f"{event.namespace}/{event.schedule}" + (f" run {run_id}" if run_id is not None else "")


def _redact(url: str) -> str:
    """The URL for a log line: scheme, host and port only for webhooks (their user info, path and query may
    carry secrets); MQTT URLs keep their topic."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host += f":{parts.port}"
    except ValueError:
        return "<bad URL>"
    if parts.scheme == "mqtt":
        return f"mqtt://{host}{parts.path}"
    return f"{parts.scheme}://{host}" + ("/…" if parts.path.strip("/") or parts.query else "")
