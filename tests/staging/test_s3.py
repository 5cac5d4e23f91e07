"""S3Source against moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from ecliptic.broker.kinds import DATA_S3
from ecliptic.staging import StagingError
from ecliptic.staging.http import tree_digest
from ecliptic.staging.s3 import S3Config, S3Credentials, S3Source, s3_client
from tests.conftest import free_port
from tests.staging.moto_s3 import moto_endpoint

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_endpoint() as url:
        yield url


@pytest.fixture
def config(endpoint: str) -> S3Config:
    return S3Config(
        endpoint=endpoint, credentials={"*": S3Credentials("test", "test")}, part_size=MiB, max_attempts=1
    )


@pytest.fixture
def client(config: S3Config, endpoint: str) -> Any:
    return s3_client(config, endpoint)


@pytest.fixture
def bucket(client: Any) -> str:
    name = f"bucket-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


def _spec(endpoint: str, bucket: str, key: str | None, **extra: Any) -> dict[str, Any]:
    return {"kind": DATA_S3, "endpoint": endpoint, "bucket": bucket, "object": key, **extra}


def _multipart(client: Any, bucket: str, key: str, data: bytes, part: int) -> None:
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(data), part), start=1):
        answer = client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data[start : start + part]
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )


def test_object_resolve_and_fetch(
    config: S3Config, client: Any, bucket: str, endpoint: str, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB + 17)
    client.put_object(Bucket=bucket, Key="raw/obs 1.fits", Body=data)
    digest = hashlib.sha256(data).hexdigest()
    spec = _spec(endpoint, bucket, "raw/obs 1.fits", checksum={"type": "sha256", "value": digest})
    source = S3Source(config)
    resolved = source.resolve(spec)
    port = endpoint.rsplit(":", 1)[1]
    assert [(r.source, r.size) for r in resolved.replicas] == [(f"s3:127.0.0.1:{port}", len(data))]
    assert resolved.size == len(data) and resolved.checksum == ("sha256", digest)
    assert resolved.details["etag"] == f'"{hashlib.md5(data).hexdigest()}"'
    seen: list[tuple[int, int | None]] = []
    staged = source.fetch(
        spec, resolved.replicas[0], tmp_path, lambda done, total: seen.append((done, total))
    )
    assert staged.path == tmp_path / "obs_1.fits"
    assert staged.path.read_bytes() == data
    assert (staged.size, staged.sha256, staged.digest) == (len(data), digest, digest)
    assert seen[-1] == (len(data), len(data)) and len(seen) >= 4  # read in 1 MiB ranges
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obs_1.fits"]


def test_checksum_mismatch_is_refused(
    config: S3Config, client: Any, bucket: str, endpoint: str, tmp_path: Path
) -> None:
    client.put_object(Bucket=bucket, Key="x.bin", Body=b"payload")
    spec = _spec(endpoint, bucket, "x.bin", checksum={"type": "md5", "value": "0" * 32})
    source = S3Source(config)
    with pytest.raises(StagingError, match="checksum mismatch") as info:
        source.fetch(spec, source.resolve(spec).replicas[0], tmp_path)
    assert not info.value.retryable
    assert list(tmp_path.iterdir()) == []


def test_multipart_etag_is_verified(
    config: S3Config, client: Any, bucket: str, endpoint: str, tmp_path: Path
) -> None:
    data = os.urandom(5 * MiB + 1000)
    _multipart(client, bucket, "big.bin", data, 5 * MiB)
    source = S3Source(config)
    spec = _spec(endpoint, bucket, "big.bin")
    resolved = source.resolve(spec)
    assert resolved.details["etag"].endswith('-2"')
    staged = source.fetch(spec, resolved.replicas[0], tmp_path)
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
    # The same file under the final name with one byte flipped is not taken for the object.
    corrupt = bytearray(data)
    corrupt[5 * MiB + 10] ^= 0xFF
    staged.path.write_bytes(bytes(corrupt))
    again = source.fetch(spec, resolved.replicas[0], tmp_path)
    assert again.path.read_bytes() == data


def test_uneven_multipart_parts_are_checked_by_size(
    config: S3Config, client: Any, bucket: str, endpoint: str, tmp_path: Path
) -> None:
    data = os.urandom(11 * MiB)
    upload = client.create_multipart_upload(Bucket=bucket, Key="uneven.bin")["UploadId"]
    parts = []
    for number, (start, end) in enumerate([(0, 5 * MiB), (5 * MiB, 11 * MiB)], start=1):
        answer = client.upload_part(
            Bucket=bucket, Key="uneven.bin", UploadId=upload, PartNumber=number, Body=data[start:end]
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    client.complete_multipart_upload(
        Bucket=bucket, Key="uneven.bin", UploadId=upload, MultipartUpload={"Parts": parts}
    )
    source = S3Source(config)
    spec = _spec(endpoint, bucket, "uneven.bin")
    staged = source.fetch(spec, source.resolve(spec).replicas[0], tmp_path)
    assert staged.sha256 == hashlib.sha256(data).hexdigest()


class Interrupt(Exception):
    pass


def _stop_after(limit: int) -> Any:
    def progress(done: int, total: int | None) -> None:
        if done >= limit:
            raise Interrupt

    return progress


def test_interrupted_fetch_resumes(
    config: S3Config, client: Any, bucket: str, endpoint: str, tmp_path: Path
) -> None:
    data = os.urandom(5 * MiB + 3)
    client.put_object(Bucket=bucket, Key="resume.bin", Body=data)
    source = S3Source(config)
    spec = _spec(endpoint, bucket, "resume.bin")
    replica = source.resolve(spec).replicas[0]
    with pytest.raises(Interrupt):
        source.fetch(spec, replica, tmp_path, _stop_after(2 * MiB))
    kept = (tmp_path / "resume.bin.part").stat().st_size
    assert 2 * MiB <= kept < len(data)
    seen: list[int] = []
    staged = source.fetch(spec, replica, tmp_path, lambda done, total: seen.append(done))
    assert seen[0] == kept  # it continued from the .part instead of starting over
    assert staged.path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resume.bin"]


def test_changed_object_restarts(
    config: S3Config, client: Any, bucket: str, endpoint: str, tmp_path: Path
) -> None:
    client.put_object(Bucket=bucket, Key="v.bin", Body=os.urandom(3 * MiB))
    source = S3Source(config)
    spec = _spec(endpoint, bucket, "v.bin")
    replica = source.resolve(spec).replicas[0]
    with pytest.raises(Interrupt):
        source.fetch(spec, replica, tmp_path, _stop_after(MiB))
    newer = os.urandom(3 * MiB)
    client.put_object(Bucket=bucket, Key="v.bin", Body=newer)
    seen: list[int] = []
    staged = source.fetch(spec, replica, tmp_path, lambda done, total: seen.append(done))
    assert seen[0] == 0 and staged.path.read_bytes() == newer


def _digest_of(directory: Path) -> str:
    lines = []
    for path in directory.rglob("*"):
        if path.is_file():
            lines.append(
                (path.relative_to(directory).as_posix(), hashlib.sha256(path.read_bytes()).hexdigest())
            )
    return tree_digest(lines)


def test_bucket_becomes_a_directory(
    config: S3Config, client: Any, bucket: str, endpoint: str, tmp_path: Path
) -> None:
    objects = {
        "a.txt": b"alpha",
        "sub/b.bin": os.urandom(2 * MiB + 1),
        "sub/deeper/c.fits": os.urandom(1000),
        "empty.dat": b"",
    }
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    client.put_object(Bucket=bucket, Key="markers/", Body=b"")
    source = S3Source(config)
    spec = _spec(endpoint, bucket, "", template="{endpoint}/{bucket}/{object}")
    resolved = source.resolve(spec)
    assert resolved.size == sum(len(b) for b in objects.values())
    assert resolved.details["objects"] == len(objects) + 1
    staged = source.fetch(spec, resolved.replicas[0], tmp_path)
    assert staged.path == tmp_path / bucket
    for key, body in objects.items():
        assert (staged.path / key).read_bytes() == body
    assert (staged.path / "markers").is_dir()
    assert staged.size == resolved.size
    expected = tree_digest((key, hashlib.sha256(body).hexdigest()) for key, body in objects.items())
    assert staged.sha256 == expected == _digest_of(staged.path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [bucket]


def test_prefix_and_folder_object(
    config: S3Config, client: Any, bucket: str, endpoint: str, tmp_path: Path
) -> None:
    client.put_object(Bucket=bucket, Key="run7/x.txt", Body=b"x")
    client.put_object(Bucket=bucket, Key="run7/y/z.txt", Body=b"z")
    client.put_object(Bucket=bucket, Key="run8/other.txt", Body=b"o")
    source = S3Source(config)
    for key in ("run7/", "run7"):
        spec = _spec(endpoint, bucket, key)
        staged = source.fetch(spec, source.resolve(spec).replicas[0], tmp_path / key.strip("/"))
        assert staged.path.name == "run7"
        assert sorted(p.relative_to(staged.path).as_posix() for p in staged.path.rglob("*.txt")) == [
            "x.txt",
            "y/z.txt",
        ]


def test_interrupted_bucket_fetch_resumes(
    config: S3Config, client: Any, bucket: str, endpoint: str, tmp_path: Path
) -> None:
    bodies = {f"f{i}.bin": os.urandom(MiB + i) for i in range(4)}
    for key, body in bodies.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    source = S3Source(config)
    spec = _spec(endpoint, bucket, None)
    replica = source.resolve(spec).replicas[0]
    with pytest.raises(Interrupt):
        source.fetch(spec, replica, tmp_path, _stop_after(int(2.5 * MiB)))
    assert not (tmp_path / bucket).exists()  # only a whole directory gets the final name
    work = tmp_path / f"{bucket}.partdir"
    finished = {p.name: p.stat().st_ino for p in work.iterdir()}
    assert sorted(finished) == ["f0.bin", "f1.bin"]
    (started,) = (tmp_path / f"{bucket}.parts").glob("*.part")
    kept = started.stat().st_size
    assert kept > 0
    seen: list[int] = []
    staged = source.fetch(spec, replica, tmp_path, lambda done, total: seen.append(done))
    # The finished files stayed as they were, and f2 went on from its .part rather than from its start.
    assert {name: (staged.path / name).stat().st_ino for name in finished} == finished
    before_f2 = 2 * MiB + 1
    assert not [done for done in seen if before_f2 < done < before_f2 + kept]
    assert before_f2 + kept in seen
    assert {p.name: p.read_bytes() for p in staged.path.iterdir()} == bodies
    assert sorted(p.name for p in tmp_path.iterdir()) == [bucket]
    # Staging it again leaves it as it is; an object removed since is removed from the copy.
    client.delete_object(Bucket=bucket, Key="f3.bin")
    again = source.fetch(spec, replica, tmp_path)
    assert sorted(p.name for p in again.path.iterdir()) == ["f0.bin", "f1.bin", "f2.bin"]
    assert again.sha256 == _digest_of(again.path)


def test_missing_things_are_not_retryable(config: S3Config, bucket: str, endpoint: str) -> None:
    source = S3Source(config)
    with pytest.raises(StagingError, match="no such object") as info:
        source.resolve(_spec(endpoint, bucket, "nothing.fits"))
    assert not info.value.retryable
    with pytest.raises(StagingError, match="no objects under this prefix") as info:
        source.resolve(_spec(endpoint, bucket, "nothing/"))
    assert not info.value.retryable
    with pytest.raises(StagingError, match="no such bucket") as info:
        source.resolve(_spec(endpoint, "no-such-bucket-here", ""))
    assert not info.value.retryable
    with pytest.raises(StagingError, match="bucket name"):
        source.resolve(_spec(endpoint, "a/b", "x"))


def test_unsafe_keys_are_refused(
    config: S3Config, client: Any, bucket: str, endpoint: str, tmp_path: Path
) -> None:
    client.put_object(Bucket=bucket, Key="ok/../../escape.txt", Body=b"x")
    source = S3Source(config)
    spec = _spec(endpoint, bucket, "ok/")
    with pytest.raises(StagingError, match="not a usable file name"):
        source.fetch(spec, source.resolve(spec).replicas[0], tmp_path)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_server_down_is_retryable(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    source = S3Source(S3Config(credentials={"*": S3Credentials("test", "test")}, max_attempts=1, timeout=5))
    with pytest.raises(StagingError) as info:
        source.resolve(_spec(endpoint, "some-bucket", "x.fits"))
    assert info.value.retryable


def test_credentials_and_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECLIPTIC_S3_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("ECLIPTIC_S3_SECRET_ACCESS_KEY", "hush-hush")
    monkeypatch.setenv("ECLIPTIC_S3_ENDPOINT", "http://127.0.0.1:9")
    config = S3Config.from_env()
    assert config.endpoint == "http://127.0.0.1:9"
    found = config.credentials_for("http://127.0.0.1:9")
    assert found is not None and found.access_key_id == "from-env" and "hush-hush" not in repr(found)
    pinned = S3Config(credentials={"127.0.0.1:9000": S3Credentials("pinned", "s")}, environment=False)
    assert pinned.credentials_for("http://127.0.0.1:9000") == S3Credentials("pinned", "s")
    assert pinned.credentials_for("http://127.0.0.1:9001") is None
    # An unsigned client is made when there are no credentials at all (public buckets).
    from botocore import UNSIGNED  # type: ignore[import-untyped]

    assert (
        s3_client(S3Config(environment=False), "http://127.0.0.1:9").meta.config.signature_version is UNSIGNED
    )
    signed = s3_client(config, "http://127.0.0.1:9")
    assert signed.meta.config.signature_version is not UNSIGNED
    assert signed._request_signer._credentials.access_key == "from-env"


def test_templates_choose_the_addressing_style_and_endpoint() -> None:
    from ecliptic.staging.s3 import _target

    plain = S3Config(environment=False)
    virtual = _target(
        {"bucket": "obs", "object": "x", "template": "https://{bucket}.s3.eu-west-2.amazonaws.com/{object}"},
        plain,
    )
    assert (virtual.endpoint, virtual.virtual) == ("https://s3.eu-west-2.amazonaws.com", True)
    assert s3_client(plain, virtual.endpoint, virtual=True).meta.region_name == "eu-west-2"
    path = _target(
        {
            "bucket": "obs",
            "object": "x",
            "template": "{endpoint}/{bucket}/{object}",
            "endpoint": "store.example.org:9000",
        },
        plain,
    )
    assert (path.endpoint, path.virtual, path.source) == (
        "https://store.example.org:9000",
        False,
        "s3:store.example.org:9000",
    )
    assert _target({"bucket": "obs", "template": "virtual"}, S3Config(endpoint="http://127.0.0.1:9")).virtual
    assert _target({"bucket": "obs"}, plain).endpoint == "https://s3.amazonaws.com"
    with pytest.raises(StagingError, match="not an http"):
        _target({"bucket": "obs", "endpoint": "ftp://127.0.0.1"}, plain)
    with pytest.raises(StagingError, match="must be a key"):
        _target({"bucket": "obs", "object": 7}, plain)


def test_two_workers_on_one_object_do_not_mix_their_bytes(
    config: S3Config, client: Any, bucket: str, endpoint: str, tmp_path: Path
) -> None:
    data = os.urandom(4 * MiB + 9)
    client.put_object(Bucket=bucket, Key="shared.bin", Body=data)
    source = S3Source(config)
    spec = _spec(endpoint, bucket, "shared.bin")
    replica = source.resolve(spec).replicas[0]
    with ThreadPoolExecutor(2) as pool:
        staged = list(pool.map(lambda _: source.fetch(spec, replica, tmp_path), range(2)))
    assert [s.sha256 for s in staged] == [hashlib.sha256(data).hexdigest()] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.bin"]
