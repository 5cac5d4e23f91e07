"""Bearer tokens for the services a platform calls (Skaha), and how they are kept fresh.

Three sources, one interface (:class:`TokenSource`):

* :class:`StaticToken` — a token given in the configuration; it is the operator's job to keep it valid.
* :class:`FileToken` — a token in a file that something else keeps fresh (``oidc-agent``, a sidecar, a cron
  job); the file is read again whenever it changes, so a rewritten token is used from the next request on.
* :class:`RefreshingToken` — an OAuth 2 refresh-token grant against an OIDC token endpoint, renewed by a
  background thread before the access token expires. Callers never wait for the network while a valid token
  exists; only the very first call (or one after every refresh failed until the token ran out) does.

A server that still refuses a token (clock skew, revocation) is reported with :meth:`TokenSource.invalidate`,
after which the next :meth:`TokenSource.bearer` fetches or re-reads a fresh one.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)

DEFAULT_LIFETIME = 300.0
"""Seconds an access token is assumed to live when the token endpoint says nothing and it is not a JWT."""


class TokenError(RuntimeError):
    """No usable token; ``retryable`` says whether asking again later may give one."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class TokenSource(Protocol):
    def bearer(self) -> str:
        """A token to send as ``Authorization: Bearer …`` now; raises :class:`TokenError` if there is none."""
        ...

    def invalidate(self, rejected: str) -> None:
        """The server refused ``rejected``: do not hand it out again if a fresher one can be had."""
        ...

    def close(self) -> None: ...


class StaticToken:
    def __init__(self, token: str) -> None:
        token = token.strip()
        if not token:
            raise ValueError("the token is empty")
        self._token = token

    def bearer(self) -> str:
        return self._token

    def invalidate(self, rejected: str) -> None:
        # Nothing fresher exists; the caller reports the refusal.
        return None

    def close(self) -> None:
        return None


class FileToken:
    """A token file, re-read when its identity, size or modification time changes (so also after a rename)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._token: str | None = None

    def bearer(self) -> str:
        try:
            info = self.path.stat()
        except OSError as exc:
            with self._lock:
                if self._token is not None:
                    # A writer that replaces the file non-atomically leaves a moment without it.
                    log.warning(
                        "token file %s is unreadable (%s); using the token read before", self.path, exc
                    )
                    return self._token
            raise TokenError(f"cannot read the token file {self.path}: {exc.strerror or exc}") from exc
        signature = (info.st_ino, info.st_size, info.st_mtime_ns)
        with self._lock:
            if signature == self._signature and self._token is not None:
                return self._token
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenError(f"cannot read the token file {self.path}: {exc}") from exc
        with self._lock:
            if not text:
                if self._token is not None:
                    log.warning("token file %s is empty; using the token read before", self.path)
                    return self._token
                raise TokenError(f"the token file {self.path} is empty")
            if self._token is not None and text != self._token:
                log.info("token file %s changed; using the new token", self.path)
            self._signature, self._token = signature, text
            return text

    def invalidate(self, rejected: str) -> None:
        with self._lock:
            if self._token == rejected:
                self._signature = None

    def close(self) -> None:
        return None


class RefreshingToken:
    """Access tokens from an OIDC token endpoint's refresh-token grant, renewed in the background.

    The renewal is due ``margin`` before expiry, but never later than halfway through the token's life, so
    short-lived tokens are also renewed in time. A failed renewal is retried with exponential backoff (with
    jitter, between ``retry_min`` and ``retry_max`` seconds) for as long as it takes; each failure is logged.
    A rotated refresh token in the answer replaces the old one.
    """

    def __init__(
        self,
        token_url: str,
        *,
        client_id: str,
        client_secret: str | None,
        refresh_token: str,
        margin: timedelta = timedelta(seconds=60),
        scope: str | None = None,
        timeout: float = 10.0,
        retry_min: float = 1.0,
        retry_max: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not refresh_token.strip():
            raise ValueError("the refresh token is empty")
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token.strip()
        self.margin = margin.total_seconds()
        self.scope = scope
        self.retry_min = retry_min
        self.retry_max = max(retry_max, retry_min)
        self._clock = clock
        # client_secret_basic: the one client authentication every OAuth 2 server must support.
        self._http = httpx.Client(
            timeout=timeout, auth=httpx.BasicAuth(client_id, client_secret) if client_secret else None
        )
        self._lock = threading.Lock()
        """Guards the token fields; held only to read or swap them, never during a request."""
        self._refreshing = threading.Lock()
        """One grant at a time, so a rotated refresh token is never used twice."""
        self._access: str | None = None
        self._issued = 0.0
        self._expires = 0.0
        self._failures = 0
        self._last_error: TokenError | None = None
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshes = 0
        """Successful grants so far (for diagnostics and tests)."""

    # -- the caller's side -----------------------------------------------------------------------------------
    def bearer(self) -> str:
        if self._closed.is_set():
            raise TokenError("the token source is closed", retryable=False)
        self._ensure_thread()
        token = self._valid()
        if token is not None:
            return token
        # No valid token at all: this caller has nothing to do but wait for one grant.
        self._refresh()
        token = self._valid()
        if token is None:
            raise self._last_error or TokenError("the token endpoint gave no usable token")
        return token

    def invalidate(self, rejected: str) -> None:
        with self._lock:
            if self._access != rejected:
                return
            self._access = None
        log.info("the server refused the access token; fetching a new one")
        self._wake.set()

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._http.close()

    @property
    def expires_at(self) -> float:
        """When the current access token expires (seconds since the epoch; 0 when there is none)."""
        with self._lock:
            return self._expires if self._access else 0.0

    # -- internals -------------------------------------------------------------------------------------------
    def _valid(self) -> str | None:
        now = self._clock()
        with self._lock:
            if self._access is None:
                return None
            # Keep a sliver of the lifetime back: a token sent at the last instant arrives expired.
            skew = min(5.0, 0.1 * max(0.0, self._expires - self._issued))
            return self._access if now < self._expires - skew else None

    def _due(self) -> float:
        with self._lock:
            if self._access is None:
                return 0.0
            lifetime = max(0.0, self._expires - self._issued)
            return self._expires - min(self.margin, lifetime / 2)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="ecliptic-token-refresh", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            delay = self._due() - self._clock()
            if delay > 0:
                self._wake.wait(delay)
                self._wake.clear()
                continue
            if self._refresh():
                if self._due() <= self._clock():
                    # The endpoint hands out tokens too short-lived to renew ahead: do not hammer it.
                    self._wake.wait(self.retry_min)
                    self._wake.clear()
                continue
            with self._lock:
                failures = self._failures
            ceiling = min(self.retry_max, self.retry_min * 2 ** max(0, failures - 1))
            self._wake.wait(random.uniform(min(self.retry_min, ceiling), ceiling))
            self._wake.clear()

    def _refresh(self) -> bool:
        """One grant (unless another thread just made one); True when a valid token is in place afterwards."""
        with self._refreshing:
            if self._valid() is not None and self._clock() < self._due():
                return True
            with self._lock:
                refresh_token = self._refresh_token
            started = self._clock()
            try:
                access, lifetime, rotated = self._grant(refresh_token)
            except TokenError as exc:
                with self._lock:
                    self._failures += 1
                    self._last_error = exc
                    failures = self._failures
                    left = self._expires - self._clock() if self._access else 0.0
                still = f"; the current token is valid for {left:.0f} s more" if left > 0 else ""
                log.warning("refreshing the access token failed (attempt %d): %s%s", failures, exc, still)
                return False
            with self._lock:
                self._access = access
                self._issued = started
                self._expires = started + lifetime
                if rotated:
                    self._refresh_token = rotated
                self._failures = 0
                self._last_error = None
                self.refreshes += 1
            log.info("refreshed the access token; it expires in %.0f s", lifetime)
            return True

    def _grant(self, refresh_token: str) -> tuple[str, float, str | None]:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if self.scope:
            form["scope"] = self.scope
        if not self._client_secret:
            form["client_id"] = self.client_id  # a public client names itself in the body
        try:
            response = self._http.post(self.token_url, data=form, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise TokenError(f"cannot reach the token endpoint {self.token_url}: {exc}") from exc
        if response.status_code != 200:
            raise _grant_error(response)
        try:
            body = response.json()
        except ValueError as exc:
            raise TokenError("the token endpoint answered something that is not JSON") from exc
        access = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(access, str) or not access:
            raise TokenError("the token endpoint's answer has no access_token")
        lifetime = _lifetime(body.get("expires_in"), access)
        rotated = body.get("refresh_token")
        return access, lifetime, rotated if isinstance(rotated, str) and rotated else None


def _grant_error(response: httpx.Response) -> TokenError:
    code = description = ""
    try:
        body = response.json()
        if isinstance(body, dict):
            code = str(body.get("error") or "")
            description = str(body.get("error_description") or "")
    except ValueError:
        description = response.text.strip()[:200]
    what = ": ".join(part for part in (code, description) if part) or response.reason_phrase
    # A dead refresh token (expired, revoked) or a refused client only an operator can mend; the rest may pass.
    retryable = code not in ("invalid_grant", "invalid_client", "unauthorized_client")
    return TokenError(
        f"the token endpoint refused the refresh ({response.status_code} {what})", retryable=retryable
    )


def _lifetime(expires_in: Any, access: str) -> float:
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        return float(expires_in)
    if isinstance(expires_in, str):
        try:
            value = float(expires_in)
        except ValueError:
            value = 0.0
        if value > 0:
            return value
    claims = jwt_claims(access)
    exp = claims.get("exp") if claims else None
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return max(0.0, float(exp) - time.time())
    return DEFAULT_LIFETIME


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, unverified (only to learn when it expires); None when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    padded = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


def token_source(
    *,
    token: str | None = None,
    token_file: Path | None = None,
    oidc_token_url: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    refresh_token: str | None = None,
    refresh_margin: timedelta = timedelta(seconds=60),
    scope: str | None = None,
) -> TokenSource:
    """The one source the settings describe: exactly one of a token, a token file, or an OIDC refresh grant."""
    chosen = [name for name, value in (("token", token), ("token_file", token_file)) if value]
    if oidc_token_url:
        chosen.append("oidc_token_url")
    if len(chosen) != 1:
        raise ValueError(
            "configure exactly one of token, token_file, or oidc_token_url with client_id and refresh_token"
            + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    if token:
        return StaticToken(token)
    if token_file:
        return FileToken(Path(os.path.expanduser(token_file)))
    assert oidc_token_url is not None
    missing = [
        name for name, value in (("client_id", client_id), ("refresh_token", refresh_token)) if not value
    ]
    if missing:
        raise ValueError(f"an OIDC refresh grant needs {' and '.join(missing)}")
    assert client_id is not None and refresh_token is not None
    return RefreshingToken(
        oidc_token_url,
        client_id=client_id,
        client_secret=client_secret,
        refresh_token=refresh_token,
        margin=refresh_margin,
        scope=scope,
    )
