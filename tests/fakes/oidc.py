"""A tiny OIDC token endpoint (refresh-token grant only) whose access tokens really expire, and a loopback
uvicorn server to run such fakes on a port of their own."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response


class LoopbackServer:
    """An ASGI app under uvicorn in a daemon thread, on a socket bound to 127.0.0.1:0 before the server
    starts (so parallel test workers never race for a port)."""

    def __init__(self, app: FastAPI) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.base = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="fake-server", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        until = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > until or not self._thread.is_alive():
                raise RuntimeError("the fake server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@dataclass
class Issued:
    client_id: str
    expires: float


@dataclass
class FakeOidc:
    """Grants ``refresh_token`` for one client; access tokens live ``lifetime`` seconds.

    ``fail_next(n)`` makes the next n grants answer ``status`` (503 by default), for retry tests;
    ``rotate`` hands out a new refresh token with every grant and retires the old one.
    """

    client_id: str = "ecliptic"
    client_secret: str | None = "s3cret"
    refresh_token: str = "rt-initial"
    lifetime: float = 2.0
    rotate: bool = False
    delay: float = 0.0
    """Seconds each grant takes to answer (a slow identity provider)."""
    jwt: bool = False
    """Issue unsigned JWTs carrying ``exp`` and leave ``expires_in`` out of the answer."""
    grants: int = 0
    refused: int = 0
    _issued: dict[str, Issued] = field(default_factory=dict)
    _failures: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _base: str | None = None

    # -- test controls ---------------------------------------------------------------------------------------
    def fail_next(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._failures.extend([status] * count)

    def recover(self) -> None:
        """Answer grants again, whatever failures were still queued."""
        with self._lock:
            self._failures.clear()

    def valid(self, token: str) -> bool:
        with self._lock:
            issued = self._issued.get(token)
            return issued is not None and time.time() < issued.expires

    def expired(self, token: str) -> bool:
        with self._lock:
            issued = self._issued.get(token)
            return issued is not None and time.time() >= issued.expires

    def issue(self, lifetime: float | None = None) -> str:
        """An access token made directly (as if from another grant), for tests that need one up front."""
        token = f"at-{secrets.token_urlsafe(12)}"
        with self._lock:
            self._issued[token] = Issued(self.client_id, time.time() + (lifetime or self.lifetime))
        return token

    @property
    def token_url(self) -> str:
        assert self._base is not None, "serve() the fake first, or attach() it where its router is mounted"
        return f"{self._base}/token"

    # -- HTTP ------------------------------------------------------------------------------------------------
    def router(self) -> APIRouter:
        router = APIRouter()

        @router.post("/token")
        async def token(request: Request) -> Response:
            if self.delay:
                await asyncio.sleep(self.delay)
            # Parsed here rather than with request.form(), which needs python-multipart.
            form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
            client_id, secret = _client(request, form.get("client_id"), form.get("client_secret"))
            with self._lock:
                if self._failures:
                    status = self._failures.pop(0)
                    self.refused += 1
                    return JSONResponse(
                        {"error": "temporarily_unavailable", "error_description": "try again"}, status
                    )
                if client_id != self.client_id or (self.client_secret and secret != self.client_secret):
                    self.refused += 1
                    return JSONResponse({"error": "invalid_client"}, 401)
                if form.get("grant_type") != "refresh_token":
                    self.refused += 1
                    return JSONResponse({"error": "unsupported_grant_type"}, 400)
                if form.get("refresh_token") != self.refresh_token:
                    self.refused += 1
                    return JSONResponse(
                        {"error": "invalid_grant", "error_description": "refresh token is not valid"}, 400
                    )
                expires = time.time() + self.lifetime
                access = _jwt(client_id, expires) if self.jwt else f"at-{secrets.token_urlsafe(12)}"
                self._issued[access] = Issued(client_id, expires)
                self.grants += 1
                body: dict[str, object] = {"access_token": access, "token_type": "Bearer"}
                if not self.jwt:
                    body["expires_in"] = self.lifetime
                if self.rotate:
                    self.refresh_token = f"rt-{secrets.token_urlsafe(8)}"
                    body["refresh_token"] = self.refresh_token
            return JSONResponse(body, headers={"Cache-Control": "no-store"})

        return router

    @contextmanager
    def serve(self) -> Iterator[FakeOidc]:
        app = FastAPI()
        app.include_router(self.router())
        server = LoopbackServer(app)
        server.start()
        self._base = server.base
        try:
            yield self
        finally:
            server.stop()

    def attach(self, base: str) -> None:
        """Served by another fake's server, whose app mounts :meth:`router` at ``base``."""
        self._base = base.rstrip("/")


def _jwt(subject: str, expires: float) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {"sub": subject, "exp": expires, "jti": secrets.token_hex(8)}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.sig"


def _client(request: Request, form_id: object, form_secret: object) -> tuple[str, str | None]:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return "", None
        return user, password
    return (str(form_id) if form_id else "", str(form_secret) if form_secret else None)
