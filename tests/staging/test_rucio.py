"""The Rucio data source against a real Rucio 41.5.1 server (tests/staging/rucio_server.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecliptic.staging.download import StagingError
from ecliptic.staging.rucio import (
    RUCIO_KIND,
    RucioConfig,
    RucioSource,
    _File,
    _member_names,
    _readable_url,
    parse_spec,
)
from ecliptic.staging.sources import DataSource, Replica
from tests.staging.rucio_server import RucioServer, rucio_server_fixture  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(120)


def source(server: RucioServer, **overrides: Any) -> RucioSource:
    rank = overrides.pop("rank", None)
    values: dict[str, Any] = {
        "url": server.url,
        "account": server.account,
        "username": server.username,
        "password": server.password,
        "timeout": 20.0,
    }
    values.update(overrides)
    return RucioSource(RucioConfig(**values), rank=rank)


def spec(name: str, kind: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"rucio": {"scope": "test", "object": name, "type": kind, **extra}}


def prefer(site: str) -> Any:
    return lambda replica: 0.0 if replica.site == site else 1.0


def content(server: RucioServer, name: str) -> bytes:
    return bytes.fromhex(server.files[name]["content"])


def pfn_path(replica: Replica) -> Path:
    return Path(replica.url.removeprefix("file://localhost"))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- resolve -------------------------------------------------------------------------------------------------


def test_it_is_a_data_source_of_the_rucio_kind(rucio_server: RucioServer) -> None:
    rucio: DataSource = source(rucio_server)
    assert rucio.kinds == {RUCIO_KIND}


def test_a_file_resolves_to_one_replica_per_rse_with_its_checksums(rucio_server: RucioServer) -> None:
    info = rucio_server.files["alpha.bin"]
    resolved = source(rucio_server).resolve(spec("alpha.bin", "FILE"))

    assert {r.site for r in resolved.replicas} == {"NEAR", "FAR"}
    for replica in resolved.replicas:
        assert replica.source == f"rse:{replica.site}"
        assert replica.size == 300_000
        assert replica.url.startswith("file://")
        assert str(pfn_path(replica)) == info["paths"][replica.site]
    assert resolved.size == 300_000
    assert resolved.checksum == ("md5", info["md5"])
    assert resolved.details["adler32"] == info["adler32"]
    assert resolved.details["type"] == "FILE"


def test_a_file_known_by_adler32_only_offers_that_checksum(rucio_server: RucioServer) -> None:
    resolved = source(rucio_server).resolve(spec("gamma.bin"))
    assert resolved.checksum == ("adler32", rucio_server.files["gamma.bin"]["adler32"])


def test_rank_orders_the_replicas_and_http_pfns_are_listed(rucio_server: RucioServer) -> None:
    for site in ("WEB", "NEAR"):
        resolved = source(rucio_server, rank=prefer(site)).resolve(spec("beta.txt"))
        assert resolved.replicas[0].site == site
    web = next(r for r in resolved.replicas if r.site == "WEB")
    assert web.url.startswith("http://127.0.0.1:") and web.url.endswith("/test/e4/ee/beta.txt")


def test_a_dataset_resolves_to_the_rses_holding_its_files_most_first(rucio_server: RucioServer) -> None:
    resolved = source(rucio_server).resolve(spec("ds1", "DATASET"))

    assert resolved.replicas[0].site == "NEAR"  # the only RSE with both files
    assert {r.site for r in resolved.replicas} == {"NEAR", "FAR", "WEB"}
    assert all(r.size == 305_000 and r.source == f"rse:{r.site}" for r in resolved.replicas)
    assert resolved.size == 305_000
    assert resolved.checksum is None
    assert resolved.details["files"] == 2
    assert resolved.details["coverage"]["NEAR"] == {"files": 2, "bytes": 305_000}
    assert resolved.details["coverage"]["WEB"] == {"files": 1, "bytes": 5_000}


def test_a_container_resolves_through_its_datasets(rucio_server: RucioServer) -> None:
    resolved = source(rucio_server).resolve(spec("cont1"))
    assert resolved.details["type"] == "CONTAINER"
    assert resolved.details["files"] == 3  # alpha.bin, in both datasets, once
    assert resolved.size == 300_000 + 5_000 + 12_345


def test_a_did_of_another_type_than_the_spec_says_is_refused(rucio_server: RucioServer) -> None:
    with pytest.raises(StagingError, match=r"test:ds1 is a DATASET, not a FILE") as caught:
        source(rucio_server).resolve(spec("ds1", "FILE"))
    assert not caught.value.retryable


def test_only_replicas_in_readable_schemes_count(rucio_server: RucioServer) -> None:
    with pytest.raises(StagingError, match=r"test:alpha.bin has no available replica readable here \(http\)"):
        source(rucio_server, schemes=("http",)).resolve(spec("alpha.bin"))
    resolved = source(rucio_server, schemes=("http",)).resolve(spec("beta.txt"))
    assert [r.site for r in resolved.replicas] == ["WEB"]


# -- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("did", [("test", "nope"), ("nosuchscope", "alpha.bin")])
def test_an_unknown_did_is_a_clear_final_error(rucio_server: RucioServer, did: tuple[str, str]) -> None:
    with pytest.raises(StagingError) as caught:
        source(rucio_server).resolve({"rucio": {"scope": did[0], "object": did[1]}})
    assert caught.value.message == f"rucio DID {did[0]}:{did[1]} not found"
    assert not caught.value.retryable


def test_a_wrong_password_is_a_clear_final_error(rucio_server: RucioServer) -> None:
    with pytest.raises(StagingError, match="refused the login of account root as ddmlab") as caught:
        source(rucio_server, password="wrong").resolve(spec("alpha.bin"))
    assert "Cannot authenticate" in caught.value.message
    assert not caught.value.retryable


def test_a_server_that_is_down_is_worth_retrying(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    down = RucioSource(RucioConfig(url=url, account="root", username="u", password="p", timeout=5))
    with pytest.raises(StagingError, match="cannot be reached") as caught:
        down.resolve(spec("alpha.bin"))
    assert caught.value.retryable
    with pytest.raises(StagingError) as caught:
        down.fetch(spec("alpha.bin"), Replica("rse:NEAR", "x", site="NEAR"), tmp_path)
    assert caught.value.retryable


def test_a_given_token_is_used_as_it_is(rucio_server: RucioServer) -> None:
    response = httpx.get(
        f"{rucio_server.url}/auth/userpass",
        headers={
            "X-Rucio-Account": rucio_server.account,
            "X-Rucio-Username": rucio_server.username,
            "X-Rucio-Password": rucio_server.password,
        },
    )
    token = response.headers["X-Rucio-Auth-Token"]
    tokened = source(rucio_server, username=None, password=None, token=token)
    assert tokened.resolve(spec("alpha.bin")).size == 300_000

    bogus = source(rucio_server, username=None, password=None, token="root-nobody-0000")
    with pytest.raises(StagingError, match="refused the token") as caught:
        bogus.resolve(spec("alpha.bin"))
    assert not caught.value.retryable


def test_a_token_the_server_no_longer_accepts_is_replaced_once(rucio_server: RucioServer) -> None:
    rucio = source(rucio_server)
    rucio.resolve(spec("alpha.bin"))
    first = rucio._token
    # As after a server-side expiry: the cached token looks valid here but the server rejects it.
    rucio._token = "root-ddmlab-unknown-00000000000000000000000000000000"
    assert rucio.resolve(spec("alpha.bin")).size == 300_000
    assert rucio._token not in (None, first, "root-ddmlab-unknown-00000000000000000000000000000000")


def test_a_token_is_reused_until_it_nears_expiry(rucio_server: RucioServer) -> None:
    rucio = source(rucio_server)
    rucio.resolve(spec("alpha.bin"))
    token = rucio._token
    rucio.resolve(spec("beta.txt"))
    assert rucio._token == token
    rucio._token_expires = 0.0
    rucio.resolve(spec("beta.txt"))
    assert rucio._token != token


def test_credentials_go_only_to_the_configured_server(rucio_server: RucioServer) -> None:
    with pytest.raises(StagingError, match="this broker reads Rucio at"):
        source(rucio_server).resolve(spec("alpha.bin", endpoint="https://rucio.elsewhere.example"))
    same = spec("alpha.bin", endpoint=rucio_server.url + "/")
    assert source(rucio_server).resolve(same).size == 300_000


def test_specs_name_dids_in_both_spellings() -> None:
    assert str(parse_spec({"rucio": {"object": "test:alpha.bin"}})) == "test:alpha.bin"
    assert parse_spec({"scope": "test", "object": "x", "type": "dataset"}).type == "DATASET"
    with pytest.raises(StagingError, match="names no scope"):
        parse_spec({"rucio": {"object": "alpha.bin"}})
    with pytest.raises(StagingError, match="not one of FILE, DATASET, CONTAINER"):
        parse_spec({"rucio": {"scope": "test", "object": "x", "type": "BLOB"}})
    with pytest.raises(ValueError, match="needs a token, or a username and password"):
        RucioConfig(url="http://127.0.0.1:1", account="root")
    with pytest.raises(ValueError, match=r"rucio schemes \['root'\] cannot be fetched"):
        RucioConfig(url="http://127.0.0.1:1", account="root", token="t", schemes=["root", "davs"])  # type: ignore[arg-type]
    assert RucioConfig(url="u", account="a", token="t", schemes=["HTTPS"]).schemes == ("https",)  # type: ignore[arg-type]


# -- fetch ---------------------------------------------------------------------------------------------------


def test_a_file_is_fetched_and_verified_by_adler32(rucio_server: RucioServer, tmp_path: Path) -> None:
    rucio = source(rucio_server)
    resolved = rucio.resolve(spec("alpha.bin"))
    seen: list[tuple[int, int | None]] = []

    staged = rucio.fetch(spec("alpha.bin"), resolved.replicas[0], tmp_path, lambda d, t: seen.append((d, t)))

    data = content(rucio_server, "alpha.bin")
    assert staged.path == tmp_path / "alpha.bin"
    assert staged.path.read_bytes() == data
    assert staged.size == len(data)
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
    assert (staged.algorithm, staged.digest) == ("adler32", rucio_server.files["alpha.bin"]["adler32"])
    assert seen[-1] == (len(data), len(data))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rucio-alpha.bin.json", "alpha.bin"]
    record = json.loads((tmp_path / ".rucio-alpha.bin.json").read_text())
    assert record["files"]["alpha.bin"]["rse"] == resolved.replicas[0].site
    assert record["files"]["alpha.bin"]["failed"] == []


def test_fetching_again_keeps_the_verified_file(rucio_server: RucioServer, tmp_path: Path) -> None:
    rucio = source(rucio_server)
    replica = rucio.resolve(spec("beta.txt")).replicas[0]
    first = rucio.fetch(spec("beta.txt"), replica, tmp_path)
    before = first.path.stat()

    again = rucio.fetch(spec("beta.txt"), replica, tmp_path)

    assert again == first
    assert (again.path.stat().st_ino, again.path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_damaged_file_in_place_is_fetched_again(rucio_server: RucioServer, tmp_path: Path) -> None:
    rucio = source(rucio_server)
    replica = rucio.resolve(spec("beta.txt")).replicas[0]
    target = tmp_path / "beta.txt"
    target.write_bytes(b"x" * 5_000)

    staged = rucio.fetch(spec("beta.txt"), replica, tmp_path)

    assert staged.path.read_bytes() == content(rucio_server, "beta.txt")


def test_a_corrupt_replica_fails_its_checksum_and_the_next_is_used(
    rucio_server: RucioServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rucio = source(rucio_server, rank=prefer("NEAR"))
    resolved = rucio.resolve(spec("gamma.bin"))
    assert resolved.replicas[0].site == "NEAR"  # the corrupt copy comes first

    with caplog.at_level(logging.WARNING, logger="ecliptic.staging.rucio"):
        staged = rucio.fetch(spec("gamma.bin"), resolved.replicas[0], tmp_path)

    assert staged.path.read_bytes() == content(rucio_server, "gamma.bin")
    assert (staged.algorithm, staged.digest) == ("adler32", rucio_server.files["gamma.bin"]["adler32"])
    record = json.loads((tmp_path / ".rucio-gamma.bin.json").read_text())["files"]["gamma.bin"]
    assert record["rse"] == "FAR"
    assert [f["rse"] for f in record["failed"]] == ["NEAR"]
    assert "checksum mismatch" in record["failed"][0]["error"]
    assert "adler32" in record["failed"][0]["error"]
    assert any("NEAR failed" in message for message in caplog.messages)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rucio-gamma.bin.json", "gamma.bin"]


def test_when_every_replica_is_corrupt_nothing_is_left_under_its_name(
    rucio_server: RucioServer, tmp_path: Path
) -> None:
    rucio = source(rucio_server)
    replica = rucio.resolve(spec("delta.bin")).replicas[0]

    with pytest.raises(
        StagingError, match=r"every replica of rucio test:delta.bin failed \(NEAR: "
    ) as caught:
        rucio.fetch(spec("delta.bin"), replica, tmp_path)

    assert "checksum mismatch" in caught.value.message
    assert not caught.value.retryable
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rucio-delta.bin.json"]


def test_an_http_pfn_is_downloaded(rucio_server: RucioServer, tmp_path: Path) -> None:
    rucio = source(rucio_server, rank=prefer("WEB"))
    replica = rucio.resolve(spec("beta.txt")).replicas[0]
    assert replica.url.startswith("http://")

    staged = rucio.fetch(spec("beta.txt"), replica, tmp_path)

    assert staged.path.read_bytes() == content(rucio_server, "beta.txt")
    record = json.loads((tmp_path / ".rucio-beta.txt.json").read_text())
    assert record["files"]["beta.txt"]["rse"] == "WEB"


def test_a_dataset_is_fetched_into_a_directory(rucio_server: RucioServer, tmp_path: Path) -> None:
    rucio = source(rucio_server)
    far = next(r for r in rucio.resolve(spec("ds1")).replicas if r.site == "FAR")
    seen: list[int] = []

    staged = rucio.fetch(spec("ds1"), far, tmp_path, lambda done, total: seen.append(done))

    directory = tmp_path / "ds1"
    assert staged.path == directory
    assert sorted(p.name for p in directory.iterdir()) == ["alpha.bin", "beta.txt"]
    lines = []
    for name in ("alpha.bin", "beta.txt"):
        data = content(rucio_server, name)
        assert (directory / name).read_bytes() == data
        lines.append(f"{name}\0{hashlib.sha256(data).hexdigest()}\n")
    assert staged.sha256 == hashlib.sha256("".join(lines).encode()).hexdigest()
    assert staged.size == 305_000
    assert seen == sorted(seen) and seen[-1] == 305_000
    record = json.loads((tmp_path / ".rucio-ds1.json").read_text())["files"]
    assert record["alpha.bin"]["rse"] == "FAR"  # the replica asked for, where it has the file
    assert record["beta.txt"]["rse"] in ("NEAR", "WEB")  # FAR lacks it


def test_a_container_is_fetched_flat_into_a_directory(rucio_server: RucioServer, tmp_path: Path) -> None:
    rucio = source(rucio_server)
    replica = rucio.resolve(spec("cont1")).replicas[0]

    staged = rucio.fetch(spec("cont1"), replica, tmp_path)

    assert sorted(p.name for p in staged.path.iterdir()) == ["alpha.bin", "beta.txt", "epsilon.dat"]
    assert (staged.path / "epsilon.dat").read_bytes() == content(rucio_server, "epsilon.dat")


def test_members_sharing_a_name_get_distinct_file_names() -> None:
    def member(scope: str, name: str) -> _File:
        return _File(scope=scope, name=name, bytes=1, adler32=None, md5=None, pfns=())

    names = _member_names(
        [member("a", "x.fits"), member("b", "x.fits"), member("a", "y/z"), member("c", "n")]
    )
    assert names[0] != names[1]
    assert names[0].startswith("x-") and names[0].endswith(".fits")
    assert names[2:] == ["z", "n"]


def test_davs_pfns_are_read_over_https() -> None:
    assert _readable_url("davs://se.example:1094/skadata/f") == "https://se.example:1094/skadata/f"
    assert _readable_url("file://localhost/x") == "file://localhost/x"
