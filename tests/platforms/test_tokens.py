"""Token sources against a real (fake) OIDC token endpoint on loopback, with tokens that really expire."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from ecliptic.platforms.tokens import (
    FileToken,
    RefreshingToken,
    StaticToken,
    TokenError,
    jwt_claims,
    token_source,
)
from tests.fakes.oidc import FakeOidc


@pytest.fixture
def oidc() -> Iterator[FakeOidc]:
    fake = FakeOidc(lifetime=1.0)
    with fake.serve():
        yield fake


def refreshing(oidc: FakeOidc, **overrides: object) -> RefreshingToken:
    values: dict[str, object] = {
        "client_id": oidc.client_id,
        "client_secret": oidc.client_secret,
        "refresh_token": oidc.refresh_token,
        "margin": timedelta(seconds=0.5),
        "retry_min": 0.05,
        "retry_max": 0.2,
    }
    values.update(overrides)
    return RefreshingToken(oidc.token_url, **values)  # type: ignore[arg-type]


def test_static_token() -> None:
    assert StaticToken(" abc \n").bearer() == "abc"
    with pytest.raises(ValueError, match="empty"):
        StaticToken("  ")


def test_file_token_is_read_again_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    source = FileToken(path)
    with pytest.raises(TokenError, match="cannot read the token file"):
        source.bearer()
    path.write_text("first\n")
    assert source.bearer() == "first"
    # An atomic replace, as oidc-agent style writers do it: a new inode, maybe in the same second.
    tmp = tmp_path / "token.new"
    tmp.write_text("second-token\n")
    os.replace(tmp, path)
    assert source.bearer() == "second-token"
    # A writer that truncates first: the empty moment does not lose the token.
    path.write_text("")
    assert source.bearer() == "second-token"
    path.unlink()
    assert source.bearer() == "second-token"
    path.write_text("third\n")
    assert source.bearer() == "third"


def test_file_token_invalidate_forces_a_reread(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("one")
    source = FileToken(path)
    assert source.bearer() == "one"
    stat = path.stat()
    path.write_text("two")
    # Same size and modification time as before: only invalidate() makes it look again.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    source.invalidate("one")
    assert source.bearer() == "two"


def test_refresh_grant_keeps_a_valid_token_across_expiries(oidc: FakeOidc) -> None:
    source = refreshing(oidc)
    try:
        first = source.bearer()
        assert oidc.valid(first)
        seen = {first}
        slowest = 0.0
        until = time.monotonic() + 3.5
        while time.monotonic() < until:
            started = time.monotonic()
            token = source.bearer()
            slowest = max(slowest, time.monotonic() - started)
            assert oidc.valid(token), "bearer() handed out a token the endpoint considers expired"
            seen.add(token)
            time.sleep(0.05)
        # Tokens live 1 s: three and a half seconds need at least three renewals, all done in the background.
        assert len(seen) >= 4
        assert oidc.grants >= 4
        assert slowest < 0.2
    finally:
        source.close()


def test_callers_do_not_wait_for_a_slow_refresh(oidc: FakeOidc) -> None:
    oidc.lifetime = 2.0
    source = refreshing(oidc, margin=timedelta(seconds=1.2))
    try:
        token = source.bearer()
        oidc.delay = 0.8  # the renewal due at 0.8 s is in flight until 1.6 s
        time.sleep(0.9)
        started = time.monotonic()
        assert source.bearer() == token
        assert time.monotonic() - started < 0.1
        until = time.monotonic() + 3
        while source.bearer() == token and time.monotonic() < until:
            time.sleep(0.05)
        assert source.bearer() != token
        assert oidc.valid(source.bearer())
    finally:
        source.close()


def test_a_failing_refresh_endpoint_is_retried(oidc: FakeOidc, caplog: pytest.LogCaptureFixture) -> None:
    oidc.lifetime = 2.0
    source = refreshing(oidc, margin=timedelta(seconds=1.0))
    try:
        first = source.bearer()
        grants = oidc.grants
        oidc.fail_next(3)
        until = time.monotonic() + 3
        while (token := source.bearer()) == first and time.monotonic() < until:
            assert oidc.valid(token)
            time.sleep(0.02)
        assert token != first and oidc.valid(token)
        assert oidc.refused == 3
        assert oidc.grants == grants + 1
        assert "refreshing the access token failed (attempt 3)" in caplog.text
    finally:
        source.close()


def test_first_call_raises_when_the_endpoint_is_down(oidc: FakeOidc) -> None:
    # Down for as long as the test says: the background thread may try first, the caller must still fail.
    oidc.fail_next(10_000, status=503)
    source = refreshing(oidc)
    try:
        with pytest.raises(TokenError, match="503") as excinfo:
            source.bearer()
        assert excinfo.value.retryable
        oidc.recover()
        # The background thread keeps trying, so the next caller gets a token.
        until = time.monotonic() + 3
        while oidc.grants == 0 and time.monotonic() < until:
            time.sleep(0.02)
        assert oidc.valid(source.bearer())
    finally:
        source.close()


def test_a_revoked_refresh_token_is_not_retryable(oidc: FakeOidc) -> None:
    source = refreshing(oidc, refresh_token="rt-revoked")
    try:
        with pytest.raises(TokenError, match="invalid_grant") as excinfo:
            source.bearer()
        assert not excinfo.value.retryable
    finally:
        source.close()


def test_rotated_refresh_tokens_are_used(oidc: FakeOidc) -> None:
    oidc.rotate = True
    oidc.lifetime = 0.6
    source = refreshing(oidc, margin=timedelta(seconds=0.3))
    try:
        source.bearer()
        until = time.monotonic() + 3
        while oidc.grants < 4 and time.monotonic() < until:
            time.sleep(0.05)
        # Each grant retired the refresh token before it: only a client that kept the new ones gets this far.
        assert oidc.grants >= 4
        assert oidc.refused == 0
        assert oidc.valid(source.bearer())
    finally:
        source.close()


def test_invalidate_fetches_a_new_token(oidc: FakeOidc) -> None:
    oidc.lifetime = 30
    source = refreshing(oidc)
    try:
        first = source.bearer()
        source.invalidate("some-other-token")
        assert source.bearer() == first
        source.invalidate(first)
        second = source.bearer()
        assert second != first and oidc.valid(second)
    finally:
        source.close()


def test_public_client_and_jwt_expiry(oidc: FakeOidc) -> None:
    oidc.client_secret = None
    oidc.jwt = True
    oidc.lifetime = 20
    source = refreshing(oidc, client_secret=None)
    try:
        token = source.bearer()
        claims = jwt_claims(token)
        assert claims is not None
        # No expires_in in the answer: the expiry comes from the JWT's exp claim.
        assert source.expires_at == pytest.approx(float(claims["exp"]), abs=0.5)
    finally:
        source.close()
    assert jwt_claims("not-a-jwt") is None


def test_concurrent_first_calls_make_one_grant(oidc: FakeOidc) -> None:
    oidc.lifetime = 30
    oidc.delay = 0.2
    source = refreshing(oidc)
    results: list[str] = []
    try:
        threads = [threading.Thread(target=lambda: results.append(source.bearer())) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(results)) == 1 and len(results) == 8
        assert oidc.grants == 1
    finally:
        source.close()


def test_token_source_needs_exactly_one_method(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        token_source()
    with pytest.raises(ValueError, match="got token, token_file"):
        token_source(token="a", token_file=tmp_path / "t")
    with pytest.raises(ValueError, match="client_id and refresh_token"):
        token_source(oidc_token_url="http://127.0.0.1:1/token")
    assert isinstance(token_source(token="a"), StaticToken)
    assert isinstance(token_source(token_file=tmp_path / "t"), FileToken)
    source = token_source(oidc_token_url="http://127.0.0.1:1/token", client_id="c", refresh_token="r")
    assert isinstance(source, RefreshingToken)
    source.close()
