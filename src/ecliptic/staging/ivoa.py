"""IVOA data resources: the dataset an ObsCore record or a DataLink row points at, staged over HTTP.

The spec's ``ivoa`` block may carry an ``obscore`` record and a ``datalink`` row. A DataLink row is the more
specific choice (the client picked that link: a cutout, a preview, the dataset itself), so its
``access_url`` is staged first; the ObsCore ``access_url`` is another copy only when that row is the
dataset itself (``semantics`` ``#this`` or unset). An ObsCore ``access_url`` whose ``access_format`` says it is
a DataLink document is read, and its ``#this`` rows are the copies. An ``ivoid`` alone is not enough: this
broker does not look identifiers up in a registry, so the client has to give an access URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree

import httpx

from ecliptic.broker.kinds import DATA_IVOA
from ecliptic.staging.download import Progress, StagedFile, StagingError, filename_for, http_errors
from ecliptic.staging.http import HttpSource, checksum_of, raise_for_status
from ecliptic.staging.sources import Replica, Resolved

MAX_DATALINK_BYTES = 16 * 1024 * 1024
"""A DataLink document lists links; one larger than this is not one."""

_EXTENSIONS = {
    "application/fits": ".fits",
    "image/fits": ".fits",
    "application/x-fits": ".fits",
    "application/x-votable+xml": ".xml",
    "application/xml": ".xml",
    "text/xml": ".xml",
    "application/x-hdf5": ".h5",
    "application/x-hdf": ".hdf",
    "text/csv": ".csv",
    "application/json": ".json",
    "text/plain": ".txt",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "application/pdf": ".pdf",
    "application/gzip": ".gz",
    "application/x-gzip": ".gz",
    "application/x-tar": ".tar",
    "application/zip": ".zip",
}


@dataclass(frozen=True)
class _Link:
    url: str
    size: int | None
    content_type: str


class IvoaSource:
    """IvoaDataResource: staged from ``obscore.access_url`` or ``datalink.access_url`` through ``http``."""

    kinds = frozenset({DATA_IVOA})

    def __init__(self, http: HttpSource | None = None, *, timeout: float = 60.0) -> None:
        self.http = http or HttpSource(timeout=timeout)
        self.timeout = timeout

    def resolve(self, spec: dict[str, Any]) -> Resolved:
        block = _block(spec)
        links = self._links(block)
        checksum = checksum_of(spec)
        replicas: list[Replica] = []
        failures: list[StagingError] = []
        size: int | None = None
        for link in links:
            try:
                resolved = self.http.resolve({"location": link.url})
            except StagingError as exc:
                failures.append(exc)
                continue
            for replica in resolved.replicas:
                if all(replica.url != known.url for known in replicas):
                    replicas.append(replica if replica.size is not None else _sized(replica, link.size))
            if size is None:
                size = resolved.size if resolved.size is not None else link.size
        if not replicas:
            raise StagingError(
                "; ".join(failure.message for failure in failures),
                retryable=any(failure.retryable for failure in failures),
            )
        details: dict[str, Any] = {"links": [link.url for link in links]}
        if block.get("ivoid"):
            details["ivoid"] = block["ivoid"]
        return Resolved(replicas, size=size, checksum=checksum, details=details)

    def fetch(
        self, spec: dict[str, Any], replica: Replica, dest_dir: Path, progress: Progress | None = None
    ) -> StagedFile:
        block = _block(spec)
        name = _filename(block, replica.url)
        return self.http.fetch(
            {"location": replica.url, "checksum": spec.get("checksum")},
            replica,
            dest_dir,
            progress,
            filename=name,
        )

    # -- where the data is -------------------------------------------------------------------------------

    def _links(self, block: Mapping[str, Any]) -> list[_Link]:
        datalink = _mapping(block.get("datalink"), "ivoa.datalink")
        obscore = _mapping(block.get("obscore"), "ivoa.obscore")
        links: list[_Link] = []
        if datalink:
            error = _text(datalink.get("error_message"))
            if error:
                raise StagingError(f"the DataLink row reports an error: {error}")
            if datalink.get("link_authorized") is False:
                raise StagingError("the DataLink row says this client is not authorized to read the link")
            url = _text(datalink.get("access_url"))
            if url:
                links.append(
                    _Link(_http_url(url, "ivoa.datalink.access_url"), _size(datalink), _type(datalink))
                )
            elif _text(datalink.get("service_def")):
                raise StagingError(
                    "the DataLink row points at a service (service_def), not at data: give the access_url of "
                    "a link to the data itself"
                )
        same_data = _text(datalink.get("semantics")) in ("", "#this") if datalink else True
        url = _text(obscore.get("access_url"))
        if url and same_data:
            url = _http_url(url, "ivoa.obscore.access_url")
            access_format = _text(obscore.get("access_format"))
            if "content=datalink" in access_format.lower().replace(" ", ""):
                if not links:
                    links.extend(self._this_links(url))
            else:
                links.append(_Link(url, None, access_format))
        if links:
            return links
        ivoid = _text(block.get("ivoid"))
        if ivoid:
            raise StagingError(
                f"ivoa.ivoid {ivoid} alone cannot be staged: this broker does not resolve IVOA identifiers; "
                "give an access_url (ivoa.obscore.access_url or ivoa.datalink.access_url)"
            )
        raise StagingError(
            "the IVOA data resource names no data: give ivoa.obscore.access_url or ivoa.datalink.access_url"
        )

    def _this_links(self, url: str) -> list[_Link]:
        """The ``#this`` links of the DataLink document at ``url``."""
        document = self._read_document(url)
        try:
            root = ElementTree.fromstring(document)
        except ElementTree.ParseError as exc:
            raise StagingError(f"the DataLink document at {url} is not XML: {exc}") from exc
        status = _query_status(root)
        if status:
            raise StagingError(f"the DataLink service at {url} reports an error: {status}")
        rows = _rows(root, url)
        links = [
            _Link(
                _http_url(row["access_url"], f"the #this link in {url}"),
                int(row["content_length"]) if row.get("content_length", "").isdigit() else None,
                row.get("content_type", ""),
            )
            for row in rows
            if row.get("semantics") == "#this" and row.get("access_url") and not row.get("error_message")
        ]
        if links:
            return links
        errors = [
            row["error_message"]
            for row in rows
            if row.get("semantics") == "#this" and row.get("error_message")
        ]
        if errors:
            raise StagingError(f"the DataLink service at {url} cannot give the dataset: {errors[0]}")
        raise StagingError(f"the DataLink document at {url} has no #this link to the dataset")

    def _read_document(self, url: str) -> bytes:
        with (
            http_errors(f"timed out reading {url}", f"cannot read {url}", f"cannot reach {url}"),
            httpx.Client(
                follow_redirects=True,
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 30.0)),
                headers={"User-Agent": "ecliptic-staging"},
            ) as client,
            client.stream("GET", url) as response,
        ):
            raise_for_status(url, response)
            chunks: list[bytes] = []
            total = 0
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > MAX_DATALINK_BYTES:
                    raise StagingError(
                        f"the DataLink document at {url} is larger than {MAX_DATALINK_BYTES} bytes"
                    )
                chunks.append(chunk)
        return b"".join(chunks)


# -- the spec ------------------------------------------------------------------------------------------------


def _block(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    block = spec.get("ivoa")
    if block is None:
        raise StagingError("the IVOA data resource has no ivoa block")
    return _mapping(block, "ivoa")


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise StagingError(f"{what} must be an object, not {value!r}")
    return value


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _size(row: Mapping[str, Any]) -> int | None:
    value = row.get("content_length")
    if isinstance(value, int) and value >= 0:
        return value
    return int(value) if isinstance(value, str) and value.strip().isdigit() else None


def _type(row: Mapping[str, Any]) -> str:
    return _text(row.get("content_type"))


def _http_url(url: str, what: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise StagingError(f"{what} {url!r} is not an http(s) URL")
    return url


def _sized(replica: Replica, size: int | None) -> Replica:
    return Replica(replica.source, replica.url, size, replica.site)


def _filename(block: Mapping[str, Any], url: str) -> str | None:
    """A name for the staged file when the URL's own (``…/getData?ID=…``) would not say what it is."""
    segment = unquote(urlsplit(url).path).rstrip("/").rsplit("/", 1)[-1]
    if "." in segment.lstrip("."):
        return None
    obscore = _mapping(block.get("obscore"), "ivoa.obscore")
    datalink = _mapping(block.get("datalink"), "ivoa.datalink")
    stem = ""
    for candidate in (
        obscore.get("obs_id"),
        obscore.get("obs_publisher_did"),
        datalink.get("ID"),
        block.get("ivoid"),
    ):
        text = _text(candidate)
        if text:
            stem = text.replace("?", "/").replace("#", "/").rstrip("/").rsplit("/", 1)[-1]
            break
    content_type = (
        _type(datalink) if _text(datalink.get("access_url")) == url else _text(obscore.get("access_format"))
    )
    extension = _EXTENSIONS.get(content_type.split(";", 1)[0].strip().lower(), "")
    if not stem:
        return filename_for(url, "data") + extension if extension else None
    name = filename_for("", stem)
    return name if not extension or name.lower().endswith(extension) else name + extension


# -- DataLink documents --------------------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _query_status(root: ElementTree.Element) -> str:
    for element in root.iter():
        if (
            _local(element.tag) == "INFO"
            and element.get("name") == "QUERY_STATUS"
            and (element.get("value") or "").upper() == "ERROR"
        ):
            return (element.text or "").strip() or "QUERY_STATUS is ERROR"
    return ""


def _rows(root: ElementTree.Element, url: str) -> list[dict[str, str]]:
    for table in root.iter():
        if _local(table.tag) != "TABLE":
            continue
        names = [
            field.get("name") or field.get("ID") or "" for field in table if _local(field.tag) == "FIELD"
        ]
        for data in table:
            if _local(data.tag) != "DATA":
                continue
            for serialisation in data:
                kind = _local(serialisation.tag)
                if kind != "TABLEDATA":
                    raise StagingError(
                        f"the DataLink document at {url} is serialised as {kind}; only TABLEDATA is read"
                    )
                return [
                    {
                        name: (cell.text or "").strip()
                        for name, cell in zip(names, (c for c in row if _local(c.tag) == "TD"), strict=False)
                    }
                    for row in serialisation
                    if _local(row.tag) == "TR"
                ]
    return []
