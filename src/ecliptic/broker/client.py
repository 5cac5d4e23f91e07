"""A Python client for the broker's HTTP API: plain JSON in, plain JSON out.

with BrokerClient("http://127.0.0.1:8080/") as broker:
    offerset = broker.submit({"executable": {...}}, "json")
    broker.accept(offerset["offers"][0]["meta"]["uuid"])
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import IO, Any, Literal
from urllib.parse import quote

import httpx

from ecliptic.broker.phases import SessionPhase

DEFAULT_URL = "http://127.0.0.1:8080/"
Format = Literal["json", "yaml"]
Json = dict[str, Any]

CONTENT_TYPES: dict[Format, str] = {"json": "application/json", "yaml": "application/yaml"}


class BrokerUnreachable(Exception):
    """No HTTP answer at all: nothing listens at the URL, or the connection broke."""

    def __init__(self, url: str, reason: str, *, refused: bool) -> None:
        super().__init__(f"cannot reach the broker at {url}: {reason}")
        self.url = url
        self.reason = reason
        self.refused = refused


class BrokerError(Exception):
    """A 4xx or 5xx answer, with the broker's message and the ``details`` that say where the problem is."""

    def __init__(
        self, status: int, message: str, details: list[Json] | None = None, body: Any = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []
        self.body = body


class Conflict(BrokerError):
    """409: the phase change is not allowed now; :attr:`session` is the session as it is."""

    @property
    def session(self) -> Json | None:
        session = self.body.get("session") if isinstance(self.body, Mapping) else None
        return session if isinstance(session, dict) else None


class BrokerClient:
    """Calls to one ExecutionBroker, returning the JSON bodies as plain dicts.

    ``submit`` and ``direct`` take a request as a mapping (sent as JSON) or as the text of a JSON or YAML
    document (sent as it is, so the broker's error positions match the file). Errors raise
    :class:`BrokerError` (or :class:`Conflict` for 409) and :class:`BrokerUnreachable`.
    """

    def __init__(
        self, url: str = DEFAULT_URL, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None
    ):
        self.url = url if url.endswith("/") else url + "/"
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,  # the 303 of /requests and /direct carries the body we want
            headers={"Accept": "application/json"},
        )

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- offers and sessions ---------------------------------------------------------------------------------
    def submit(self, request: Mapping[str, Any] | str | bytes, fmt: Format = "json") -> Json:
        """``POST /requests``: the offer set, YES with OFFERED sessions or NO with messages saying why."""
        return self._json(self._send("POST", "requests", request, fmt))

    def direct(self, request: Mapping[str, Any] | str | bytes, fmt: Format = "json") -> Json:
        """``POST /direct``: the accepted session, or (not raised) a FAILED session whose messages say why."""
        response = self._send("POST", "direct", request, fmt, allow={400})
        body = self._json(response)
        if response.status_code == 400 and "phase" not in body:
            raise _error(response)
        return body

    def update(self, session_uuid: str, phase: str) -> Json:
        """Ask for a phase change (ACCEPTED, REJECTED, CANCELLED); :class:`Conflict` if not allowed now."""
        update = {"kind": "uri:enum-value-update", "path": "phase", "value": phase}
        return self._json(self._send("POST", f"sessions/{_segment(session_uuid)}", update, "json"))

    def accept(self, session_uuid: str) -> Json:
        return self.update(session_uuid, SessionPhase.ACCEPTED.value)

    def reject(self, session_uuid: str) -> Json:
        return self.update(session_uuid, SessionPhase.REJECTED.value)

    def cancel(self, session_uuid: str) -> Json:
        return self.update(session_uuid, SessionPhase.CANCELLED.value)

    def session(self, session_uuid: str) -> Json:
        return self._json(self._get(f"sessions/{_segment(session_uuid)}"))

    def sessions(self, phase: str | None = None, limit: int | None = None) -> list[Json]:
        params: dict[str, str | int] = {}
        if phase is not None:
            params["phase"] = phase
        if limit is not None:
            params["limit"] = limit
        found = self._json(self._get("sessions", params)).get("sessions")
        return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []

    def offerset(self, offerset_uuid: str) -> Json:
        return self._json(self._get(f"offersets/{_segment(offerset_uuid)}"))

    # -- outputs ---------------------------------------------------------------------------------------------
    def logs(self, session_uuid: str, stream: str = "stdout", tail: int | None = None) -> str:
        params: dict[str, str | int] = {"stream": stream}
        if tail is not None:
            params["tail"] = tail
        return self._get(f"sessions/{_segment(session_uuid)}/logs", params).text

    def log_part(self, session_uuid: str, stream: str = "stdout", offset: int = 0) -> tuple[bytes, int]:
        """The log's bytes from ``offset`` on, and the offset to ask for next time (to follow a growing log)."""
        response = self._get(f"sessions/{_segment(session_uuid)}/logs", {"stream": stream, "offset": offset})
        data = response.content
        return data, int(response.headers.get("x-log-size", offset + len(data)))

    def files(self, session_uuid: str) -> list[Json]:
        found = self._json(self._get(f"sessions/{_segment(session_uuid)}/files")).get("files")
        return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []

    def file(self, session_uuid: str, path: str) -> bytes:
        return self._get(f"sessions/{_segment(session_uuid)}/files/{quote(path.lstrip('/'))}").content

    def download(self, session_uuid: str, path: str, out: IO[bytes]) -> int:
        """Stream one file into ``out`` without holding it in memory; the number of bytes written."""
        url = f"sessions/{_segment(session_uuid)}/files/{quote(path.lstrip('/'))}"
        written = 0
        with self._guard(), self._http.stream("GET", url) as response:
            if response.status_code >= 400:
                response.read()
                raise _error(response)
            for chunk in response.iter_bytes():
                out.write(chunk)
                written += len(chunk)
        return written

    # -- plumbing --------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as exc:
            raise BrokerUnreachable(self.url, str(exc) or type(exc).__name__, refused=True) from exc
        except httpx.TransportError as exc:
            raise BrokerUnreachable(self.url, str(exc) or type(exc).__name__, refused=False) from exc

    def _get(self, path: str, params: Mapping[str, str | int] | None = None) -> httpx.Response:
        with self._guard():
            response = self._http.get(path, params=params)
        if response.status_code >= 400:
            raise _error(response)
        return response

    def _send(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | str | bytes,
        fmt: Format,
        allow: frozenset[int] | set[int] = frozenset(),
    ) -> httpx.Response:
        if isinstance(body, Mapping):
            content: str | bytes = json.dumps(body)
            fmt = "json"
        else:
            content = body
        with self._guard():
            response = self._http.request(
                method, path, content=content, headers={"Content-Type": CONTENT_TYPES[fmt]}
            )
        if response.status_code >= 400 and response.status_code not in allow:
            raise _error(response)
        return response

    @staticmethod
    def _json(response: httpx.Response) -> Json:
        try:
            body = response.json()
        except ValueError as exc:
            raise BrokerError(
                response.status_code,
                f"the broker answered {response.status_code} with a body that "
                f"is not JSON: {response.text[:200]!r}",
            ) from exc
        if not isinstance(body, dict):
            raise BrokerError(
                response.status_code, f"the broker answered with JSON that is not an object: {body!r}"
            )
        return body


def _segment(value: str) -> str:
    return quote(value.strip(), safe="")


def _error(response: httpx.Response) -> BrokerError:
    body: Any = None
    with contextlib.suppress(ValueError):
        body = response.json()
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        message = body["message"]
        raw = body.get("details")
        details = [d for d in raw if isinstance(d, dict)] if isinstance(raw, list) else []
    else:
        # Not one of ours (a proxy's error page, say): say what came back rather than guess.
        snippet = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        message = f"HTTP {response.status_code} {response.reason_phrase}" + (
            f": {snippet}" if snippet else ""
        )
        details = []
    kind = Conflict if response.status_code == 409 else BrokerError
    return kind(response.status_code, message, details, body)
