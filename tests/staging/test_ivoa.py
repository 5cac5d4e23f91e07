"""IvoaSource against a real HTTP server on 127.0.0.1 serving datasets and DataLink documents."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ecliptic.broker.kinds import DATA_IVOA
from ecliptic.staging import StagingError
from ecliptic.staging.http import HttpSource
from ecliptic.staging.ivoa import IvoaSource
from tests.conftest import free_port
from tests.staging.test_http_source import Server, serve

DATASET = os.urandom(200_000)
PREVIEW = os.urandom(3_000)

DATALINK = """<?xml version="1.0" encoding="UTF-8"?>
<VOTABLE xmlns="http://www.ivoa.net/xml/VOTable/v1.3" version="1.3">
 <RESOURCE type="results">
  <INFO name="standardID" value="ivo://ivoa.net/std/DataLink#links-1.1"/>
  <TABLE>
   <FIELD name="ID" datatype="char" arraysize="*"/>
   <FIELD name="access_url" datatype="char" arraysize="*"/>
   <FIELD name="service_def" datatype="char" arraysize="*"/>
   <FIELD name="error_message" datatype="char" arraysize="*"/>
   <FIELD name="semantics" datatype="char" arraysize="*"/>
   <FIELD name="content_type" datatype="char" arraysize="*"/>
   <FIELD name="content_length" datatype="long"/>
   <DATA><TABLEDATA>
    <TR><TD>ivo://example.org/obs?42</TD><TD>{base}/files/preview.png</TD><TD/><TD/>
        <TD>#preview</TD><TD>image/png</TD><TD>3000</TD></TR>
    <TR><TD>ivo://example.org/obs?42</TD><TD>{base}/files/obs42.fits</TD><TD/><TD/>
        <TD>#this</TD><TD>application/fits</TD><TD>200000</TD></TR>
   </TABLEDATA></DATA>
  </TABLE>
 </RESOURCE>
</VOTABLE>
"""

BROKEN_LINKS = """<VOTABLE xmlns="http://www.ivoa.net/xml/VOTable/v1.3"><RESOURCE><TABLE>
 <FIELD name="ID"/><FIELD name="access_url"/><FIELD name="error_message"/><FIELD name="semantics"/>
 <DATA><TABLEDATA><TR><TD>x</TD><TD/><TD>NotFoundFault: no such observation</TD><TD>#this</TD></TR></TABLEDATA></DATA>
</TABLE></RESOURCE></VOTABLE>"""


@pytest.fixture
def archive() -> Iterator[Server]:
    server = Server(files={"/files/obs42.fits": DATASET, "/files/preview.png": PREVIEW, "/getData": DATASET})
    with serve(server):
        base = server.url("")
        server.files["/links"] = DATALINK.format(base=base).encode()
        server.files["/broken-links"] = BROKEN_LINKS.encode()
        yield server


DATALINK_FORMAT = "application/x-votable+xml;content=datalink"


def _spec(**ivoa: Any) -> dict[str, Any]:
    return {"kind": DATA_IVOA, "ivoa": ivoa}


def test_obscore_access_url(archive: Server, tmp_path: Path) -> None:
    source = IvoaSource()
    spec = _spec(
        ivoid="ivo://example.org/obs?42",
        obscore={
            "obs_id": "obs42",
            "access_url": archive.url("/getData"),
            "access_format": "application/fits",
        },
    )
    resolved = source.resolve(spec)
    assert [r.url for r in resolved.replicas] == [archive.url("/getData")]
    assert resolved.replicas[0].source == f"http:127.0.0.1:{archive.port}"
    assert resolved.size == len(DATASET)
    assert resolved.details["ivoid"] == "ivo://example.org/obs?42"
    staged = source.fetch(spec, resolved.replicas[0], tmp_path)
    # "getData" says nothing: the name comes from the ObsCore record and the format.
    assert staged.path == tmp_path / "obs42.fits"
    assert staged.path.read_bytes() == DATASET
    assert staged.sha256 == hashlib.sha256(DATASET).hexdigest()


def test_datalink_row_comes_first_and_obscore_is_another_copy(archive: Server, tmp_path: Path) -> None:
    source = IvoaSource()
    spec = _spec(
        obscore={"access_url": archive.url("/getData"), "access_format": "application/fits"},
        datalink={
            "ID": "ivo://example.org/obs?42",
            "access_url": archive.url("/files/obs42.fits"),
            "semantics": "#this",
            "content_type": "application/fits",
            "content_length": 200000,
        },
    )
    resolved = source.resolve(spec)
    assert [r.url for r in resolved.replicas] == [archive.url("/files/obs42.fits"), archive.url("/getData")]
    staged = source.fetch(spec, resolved.replicas[0], tmp_path)
    assert staged.path.name == "obs42.fits" and staged.path.read_bytes() == DATASET


def test_a_datalink_preview_is_not_the_obscore_dataset(archive: Server, tmp_path: Path) -> None:
    spec = _spec(
        obscore={"access_url": archive.url("/getData")},
        datalink={"access_url": archive.url("/files/preview.png"), "semantics": "#preview"},
    )
    resolved = IvoaSource().resolve(spec)
    assert [r.url for r in resolved.replicas] == [archive.url("/files/preview.png")]
    assert resolved.size == len(PREVIEW)


def test_obscore_pointing_at_a_datalink_document(archive: Server, tmp_path: Path) -> None:
    source = IvoaSource()
    spec = _spec(obscore={"access_url": archive.url("/links"), "access_format": DATALINK_FORMAT})
    resolved = source.resolve(spec)
    assert [r.url for r in resolved.replicas] == [archive.url("/files/obs42.fits")]
    staged = source.fetch(spec, resolved.replicas[0], tmp_path)
    assert staged.path.read_bytes() == DATASET


def test_datalink_errors_are_reported(archive: Server) -> None:
    spec = _spec(obscore={"access_url": archive.url("/broken-links"), "access_format": DATALINK_FORMAT})
    with pytest.raises(StagingError, match="NotFoundFault: no such observation") as info:
        IvoaSource().resolve(spec)
    assert not info.value.retryable
    with pytest.raises(StagingError, match="reports an error: gone"):
        IvoaSource().resolve(_spec(datalink={"access_url": archive.url("/x"), "error_message": "gone"}))
    with pytest.raises(StagingError, match="points at a service"):
        IvoaSource().resolve(_spec(datalink={"service_def": "soda-sync"}))


def test_ivoid_alone_needs_an_access_url() -> None:
    with pytest.raises(StagingError, match="access_url") as info:
        IvoaSource().resolve(_spec(ivoid="ivo://example.org/obs?42"))
    assert not info.value.retryable
    assert "ivo://example.org/obs?42" in info.value.message
    with pytest.raises(StagingError, match="names no data"):
        IvoaSource().resolve(_spec())
    with pytest.raises(StagingError, match="no ivoa block"):
        IvoaSource().resolve({"kind": DATA_IVOA})


def test_only_http_access_urls(tmp_path: Path) -> None:
    (tmp_path / "x.fits").write_bytes(b"x")
    source = IvoaSource(HttpSource([tmp_path]))
    with pytest.raises(StagingError, match="not an http"):
        source.resolve(_spec(obscore={"access_url": (tmp_path / "x.fits").as_uri()}))


def test_missing_dataset_is_not_retryable_and_server_down_is(archive: Server) -> None:
    with pytest.raises(StagingError, match="does not exist") as info:
        IvoaSource().resolve(_spec(obscore={"access_url": archive.url("/files/none.fits")}))
    assert not info.value.retryable
    down = f"http://127.0.0.1:{free_port()}/files/obs42.fits"
    with pytest.raises(StagingError, match="cannot reach") as info:
        IvoaSource(timeout=5).resolve(_spec(obscore={"access_url": down}))
    assert info.value.retryable


def test_one_working_copy_is_enough(archive: Server) -> None:
    spec = _spec(
        obscore={"access_url": archive.url("/files/obs42.fits")},
        datalink={"access_url": archive.url("/files/none.fits"), "semantics": "#this"},
    )
    resolved = IvoaSource().resolve(spec)
    assert [r.url for r in resolved.replicas] == [archive.url("/files/obs42.fits")]
