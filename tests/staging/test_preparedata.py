"""The prepareData data source against the fake gatekeeper and DM API (tests/fakes/preparedata.py)."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecliptic.staging.download import StagingError
from ecliptic.staging.preparedata import (
    SKAO_KIND,
    PrepareDataConfig,
    PrepareDataSource,
    parse_spec,
    rse_path,
    task_record,
)
from ecliptic.staging.sources import DataSource
from tests.fakes.preparedata import FakeSrcnet, StoredFile

pytestmark = pytest.mark.timeout(60)

DATA = bytes(range(256)) * 1000


@pytest.fixture
def srcnet(tmp_path: Path) -> Iterator[FakeSrcnet]:
    with FakeSrcnet(tmp_path / "srcnet") as fake:
        yield fake


@pytest.fixture
def stored(srcnet: FakeSrcnet) -> StoredFile:
    return srcnet.add_file("daac", "obs-1.fits", DATA, elsewhere=["FAR-SRC-RSE"])


def source(srcnet: FakeSrcnet, **overrides: Any) -> PrepareDataSource:
    rank = overrides.pop("rank", None)
    values: dict[str, Any] = {
        "gatekeeper_url": srcnet.url,
        "token": "alice-token",
        "home": str(srcnet.home()),
        "local_home": srcnet.home(),
        "dm_url": srcnet.dm_url,
        "dm_token": "dm-token",
        "poll_interval": 0.02,
        "max_poll_interval": 0.1,
        "timeout": 10.0,
    }
    values.update(overrides)
    return PrepareDataSource(PrepareDataConfig(**values), rank=rank)


def recorded_tasks(dest_dir: Path) -> list[str]:
    return sorted(p.name for p in (dest_dir / ".preparedata-task").glob("*"))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- resolve -------------------------------------------------------------------------------------------------


def test_it_is_a_data_source_of_the_skao_kind(srcnet: FakeSrcnet) -> None:
    prepare: DataSource = source(srcnet)
    assert prepare.kinds == {SKAO_KIND}


def test_replicas_come_from_the_spec_when_it_lists_them(srcnet: FakeSrcnet, stored: StoredFile) -> None:
    resolved = source(srcnet).resolve(stored.spec())

    assert [(r.source, r.url, r.site, r.size) for r in resolved.replicas] == [
        ("rse:FAKE-SRC-RSE", stored.url, "FAKE-SRC-RSE", len(DATA))
    ]
    assert resolved.checksum == ("adler32", stored.adler32)
    assert resolved.size == len(DATA)
    assert srcnet.locate_calls == 0


def test_replicas_come_from_the_dm_api_otherwise(srcnet: FakeSrcnet, stored: StoredFile) -> None:
    resolved = source(srcnet).resolve(stored.spec(replicas=False))

    assert [r.source for r in resolved.replicas] == ["rse:FAKE-SRC-RSE", "rse:FAR-SRC-RSE"]
    assert resolved.replicas[0].url == stored.url
    assert resolved.replicas[1].url.startswith("davs://")
    assert srcnet.locate_calls == 1

    ranked = source(srcnet, rank=lambda r: 0.0 if r.site == "FAR-SRC-RSE" else 1.0)
    assert ranked.resolve(stored.spec(replicas=False)).replicas[0].site == "FAR-SRC-RSE"


def test_dm_api_errors_are_clear(srcnet: FakeSrcnet, stored: StoredFile) -> None:
    unknown = stored.spec(replicas=False, objectname="nope.fits")
    with pytest.raises(StagingError, match=r"daac:nope.fits not found") as caught:
        source(srcnet).resolve(unknown)
    assert not caught.value.retryable

    with pytest.raises(StagingError, match=r"refused the token \(HTTP 401\)") as caught:
        source(srcnet, dm_token="stale").resolve(stored.spec(replicas=False))
    assert not caught.value.retryable

    with pytest.raises(StagingError, match="no Data Management API is configured"):
        source(srcnet, dm_url=None).resolve(stored.spec(replicas=False))


def test_only_files_are_staged(srcnet: FakeSrcnet, stored: StoredFile) -> None:
    with pytest.raises(StagingError, match=r"prepareData stages files; daac:obs-1\.fits is a DATASET"):
        source(srcnet).resolve(stored.spec(objecttype="DATASET"))


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"skao": "daac:x"}, "has no 'skao' block"),
        ({"skao": {"objectname": "x"}}, "names no namespace"),
        ({"skao": {"namespace": "daac", "objectname": " "}}, "names no objectname"),
        ({"skao": {"namespace": "daac", "objectname": "x", "datasize": -1}}, "is not a number of bytes"),
        ({"skao": {"namespace": "daac", "objectname": "x", "datasize": True}}, "is not a number of bytes"),
    ],
)
def test_malformed_specs_are_refused(block: dict[str, Any], message: str) -> None:
    with pytest.raises(StagingError, match=message):
        parse_spec(block)


def test_a_bare_block_is_a_spec_too() -> None:
    obj = parse_spec({"namespace": "daac", "objectname": "x", "checksum": {"type": "MD5", "value": "AB"}})
    assert (obj.did, obj.type, obj.checksum) == ("daac:x", "FILE", ("md5", "ab"))


def test_settings_strings_become_paths_and_nonsense_is_refused() -> None:
    config = PrepareDataConfig(gatekeeper_url="u", token="t", home="/h", local_home="/h")  # type: ignore[arg-type]
    assert config.local_home == Path("/h")
    with pytest.raises(ValueError, match="poll_interval must be positive"):
        PrepareDataConfig(gatekeeper_url="u", token="t", home="/h", poll_interval=0)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("davs://host:1094/skadata/daac/08/06/file.bin", "daac/08/06/file.bin"),
        ("davs://host/daac/daac/08/06/file.bin", "daac/08/06/file.bin"),
        ("https://host/store/daac/sub/file.bin", "daac/sub/file.bin"),
        ("daac/77/ad/random_1GiB", "daac/77/ad/random_1GiB"),
        ("davs://host/skadata/daac/08/06/a%20b.bin", "daac/08/06/a b.bin"),
    ],
)
def test_the_path_inside_the_rse_starts_at_the_namespace(url: str, path: str) -> None:
    assert rse_path(url, "daac") == path


@pytest.mark.parametrize("url", ["davs://host/skadata/other/08/06/file.bin", "davs://host/daac/../x/daac/f"])
def test_a_url_without_a_safe_rse_path_is_refused(url: str) -> None:
    with pytest.raises(StagingError):
        rse_path(url, "daac")


# -- fetch ---------------------------------------------------------------------------------------------------


def test_a_file_is_staged_into_the_home_and_verified(
    srcnet: FakeSrcnet, stored: StoredFile, tmp_path: Path
) -> None:
    prepare = source(srcnet)
    replica = prepare.resolve(stored.spec()).replicas[0]
    dest = tmp_path / "session" / "data"
    seen: list[tuple[int, int | None]] = []

    staged = prepare.fetch(stored.spec(), replica, dest, lambda d, t: seen.append((d, t)))

    assert staged.path.parent.parent == srcnet.home() / "ecliptic"
    assert staged.path.name == "obs-1.fits"
    assert staged.path.read_bytes() == DATA
    assert staged.size == len(DATA)
    assert staged.sha256 == hashlib.sha256(DATA).hexdigest()
    assert (staged.algorithm, staged.digest) == ("adler32", stored.adler32)
    assert seen[0] == (0, len(DATA)) and seen[-1] == (len(DATA), len(DATA))
    assert len(srcnet.submissions) == 1
    did, source_path, destination = srcnet.submissions[0][0]
    assert (did, source_path) == ("daac:obs-1.fits", stored.path_in_rse)
    assert srcnet.home() / destination == staged.path
    record = json.loads(task_record(dest, "daac:obs-1.fits").read_text())
    assert record["status"] == "SUCCESS"
    assert srcnet.tasks[record["task_id"]].polls >= 1


def test_the_rse_may_store_the_file_under_another_name(srcnet: FakeSrcnet, tmp_path: Path) -> None:
    stored = srcnet.add_file("purple", "random_CASRC_XRD_50", DATA, stored_as="random_1GiB_050119fc")
    staged = source(srcnet).fetch(stored.spec(), source(srcnet).resolve(stored.spec()).replicas[0], tmp_path)
    assert staged.path.name == "random_CASRC_XRD_50"
    assert srcnet.submissions[0][0][1].endswith("/random_1GiB_050119fc")
    assert staged.path.read_bytes() == DATA


def test_staging_again_after_success_submits_nothing(
    srcnet: FakeSrcnet, stored: StoredFile, tmp_path: Path
) -> None:
    prepare = source(srcnet)
    replica = prepare.resolve(stored.spec()).replicas[0]
    first = prepare.fetch(stored.spec(), replica, tmp_path)

    assert prepare.fetch(stored.spec(), replica, tmp_path) == first
    assert len(srcnet.submissions) == 1

    first.path.write_bytes(b"changed since")
    again = prepare.fetch(stored.spec(), replica, tmp_path)
    assert again.path.read_bytes() == DATA
    assert len(srcnet.submissions) == 2

    first.path.unlink()
    assert prepare.fetch(stored.spec(), replica, tmp_path).path.read_bytes() == DATA
    assert len(srcnet.submissions) == 3


def test_a_fetch_after_a_crash_polls_the_same_task(
    srcnet: FakeSrcnet, stored: StoredFile, tmp_path: Path
) -> None:
    srcnet.pending_delay, srcnet.started_delay = 0.3, 0.4
    replica = source(srcnet).resolve(stored.spec()).replicas[0]

    # The first attempt gives up (as a worker killed mid-wait would) while the task is still running.
    with pytest.raises(StagingError, match=r"is still (PENDING|STARTED) after") as caught:
        source(srcnet, timeout=0.15).fetch(stored.spec(), replica, tmp_path)
    assert caught.value.retryable
    recorded = json.loads(task_record(tmp_path, stored.did).read_text())
    assert recorded["task_id"] in srcnet.tasks
    assert "status" not in recorded

    staged = source(srcnet).fetch(stored.spec(), replica, tmp_path)

    assert staged.path.read_bytes() == DATA
    assert len(srcnet.submissions) == 1
    assert list(srcnet.tasks) == [recorded["task_id"]]
    assert json.loads(task_record(tmp_path, stored.did).read_text())["task_id"] == recorded["task_id"]


def test_data_sharing_a_storage_directory_keep_their_own_tasks(
    srcnet: FakeSrcnet, stored: StoredFile, tmp_path: Path
) -> None:
    other = srcnet.add_file("daac", "obs-2.fits", DATA[::-1])
    prepare = source(srcnet)
    first = prepare.fetch(stored.spec(), prepare.resolve(stored.spec()).replicas[0], tmp_path)
    second = prepare.fetch(other.spec(), prepare.resolve(other.spec()).replicas[0], tmp_path)

    assert first.path.read_bytes() == DATA and second.path.read_bytes() == DATA[::-1]
    assert first.path.parent == second.path.parent
    assert task_record(tmp_path, stored.did) != task_record(tmp_path, other.did)
    prepare.fetch(stored.spec(), prepare.resolve(stored.spec()).replicas[0], tmp_path)
    assert len(srcnet.submissions) == 2


def test_a_failed_task_is_a_final_error_and_the_next_attempt_submits_again(
    srcnet: FakeSrcnet, stored: StoredFile, tmp_path: Path
) -> None:
    missing = stored.spec(replicas=True)
    missing["skao"]["replicas"] = [
        {"rsename": "FAKE-SRC-RSE", "dataurl": "davs://h/skadata/daac/00/00/gone.fits"}
    ]
    prepare = source(srcnet)
    replica = prepare.resolve(missing).replicas[0]

    with pytest.raises(StagingError, match=r"failed: daac/00/00/gone.fits is not in FAKE-SRC-RSE") as caught:
        prepare.fetch(missing, replica, tmp_path)
    assert not caught.value.retryable
    assert recorded_tasks(tmp_path) == []

    with pytest.raises(StagingError, match="failed"):
        prepare.fetch(missing, replica, tmp_path)
    assert len(srcnet.submissions) == 2


def test_a_staged_file_that_does_not_match_the_spec_is_refused(
    srcnet: FakeSrcnet, stored: StoredFile, tmp_path: Path
) -> None:
    wrong = stored.spec(checksum={"type": "sha256", "value": "00" * 32})
    prepare = source(srcnet)

    with pytest.raises(StagingError, match=r"staged, but .* has sha256 [0-9a-f]{64}, not 0000") as caught:
        prepare.fetch(wrong, prepare.resolve(wrong).replicas[0], tmp_path)
    assert not caught.value.retryable
    assert recorded_tasks(tmp_path) == []

    short = stored.spec(datasize=len(DATA) + 1)
    with pytest.raises(StagingError, match=rf"has {len(DATA)} bytes, not {len(DATA) + 1}"):
        prepare.fetch(short, prepare.resolve(short).replicas[0], tmp_path)


def test_a_home_out_of_sight_is_trusted(srcnet: FakeSrcnet, stored: StoredFile, tmp_path: Path) -> None:
    prepare = source(srcnet, home="/cavern/home/alice", local_home=None)

    staged = prepare.fetch(stored.spec(), prepare.resolve(stored.spec()).replicas[0], tmp_path)

    assert str(staged.path).startswith("/cavern/home/alice/ecliptic/")
    assert (staged.size, staged.sha256) == (len(DATA), "")
    assert (srcnet.home() / staged.path.relative_to("/cavern/home/alice")).read_bytes() == DATA


def test_a_rejected_token_is_a_final_error(srcnet: FakeSrcnet, stored: StoredFile, tmp_path: Path) -> None:
    prepare = source(srcnet, token="expired")
    with pytest.raises(StagingError, match=r"prepareData refused the token \(HTTP 401\)") as caught:
        prepare.fetch(stored.spec(), prepare.resolve(stored.spec()).replicas[0], tmp_path)
    assert not caught.value.retryable
    assert srcnet.submissions == []
    assert recorded_tasks(tmp_path) == []


def test_a_token_callable_is_asked_for_every_request(
    srcnet: FakeSrcnet, stored: StoredFile, tmp_path: Path
) -> None:
    calls: list[int] = []

    def token() -> str:
        calls.append(1)
        return "alice-token"

    prepare = source(srcnet, token=token)
    prepare.fetch(stored.spec(), prepare.resolve(stored.spec()).replicas[0], tmp_path)
    task = next(iter(srcnet.tasks.values()))
    assert len(calls) == 1 + task.polls  # the submission and every poll


def test_a_body_the_gatekeeper_rejects_is_a_final_error_with_its_reason(
    srcnet: FakeSrcnet, tmp_path: Path
) -> None:
    bad = srcnet.add_file("bad scope", "x.fits", DATA)
    prepare = source(srcnet)
    with pytest.raises(StagingError, match=r"HTTP 400 .*invalid DID 'bad scope:x.fits'") as caught:
        prepare.fetch(bad.spec(), prepare.resolve(bad.spec()).replicas[0], tmp_path)
    assert not caught.value.retryable
    assert srcnet.submissions == []


def test_the_fake_gatekeeper_validates_like_an_api(srcnet: FakeSrcnet) -> None:
    auth = {"Authorization": "Bearer alice-token"}
    url = f"{srcnet.url}/preparedata"

    assert httpx.post(url, json=[["a:b", "a/b", "c"]]).status_code == 401
    not_json = httpx.post(url, content=b"[[", headers=auth)
    assert (not_json.status_code, not_json.json()["detail"]) == (400, "the request body is not JSON")
    shaped = httpx.post(url, json={"did": "a:b"}, headers=auth)
    assert shaped.status_code == 422
    assert shaped.json()["detail"][0]["type"] == "list_type"
    pair = httpx.post(url, json=[["a:b", "a/b"]], headers=auth)
    assert pair.status_code == 422
    climbing = httpx.post(url, json=[["a:b", "a/b", "../../etc"]], headers=auth)
    assert climbing.status_code == 400 and "destination" in climbing.json()["detail"]
    assert httpx.post(url, json=[], headers=auth).status_code == 400
    unknown = httpx.get(f"{url}/no-such-task", headers=auth).json()
    assert unknown["status"] == "PENDING"  # as Celery reports any id it does not know


def test_a_gatekeeper_that_is_down_is_worth_retrying(
    srcnet: FakeSrcnet, stored: StoredFile, tmp_path: Path
) -> None:
    prepare = source(srcnet, gatekeeper_url=f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(StagingError, match="cannot reach") as caught:
        prepare.fetch(stored.spec(), prepare.resolve(stored.spec()).replicas[0], tmp_path)
    assert caught.value.retryable
