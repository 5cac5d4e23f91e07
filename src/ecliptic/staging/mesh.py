"""Simple data resources in the mesh, ``mesh:///path``, read through the broker's pod.

URL form: ``mesh:///datasets/x.fits`` is the path ``/datasets/x.fits`` in the network of the pod the
broker is configured with (``ECLIPTIC_MESH_POD`` or its embedded pod). Every pod reads every file, so the
pod is configuration, not data: ``mesh://<pod>/path`` (the form fsspec URLs take) is accepted when
``<pod>`` is the address or name of a pod of that network, and still read through the broker's own pod. A
directory is staged whole, recursively (symbolic links in it are left out: their targets may be anywhere).

The replicas are the pods holding the file's blocks, those that answer first and, for a directory, those
holding more of it first. Bytes are checked twice as they arrive: each block against the BLAKE3 hash it is
named by, and the whole file against the spec's checksum, if any. An interrupted fetch resumes at the first
block of its ``.part`` that is not intact, provided the file still has the same blocks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ecliptic.mesh.blocks import HOLE, hash_bytes
from ecliptic.mesh.client import MeshClient, normalize
from ecliptic.mesh.entries import Entry
from ecliptic.mesh.wire import MeshError, ProtocolError
from ecliptic.staging.download import (
    Hashes,
    Progress,
    StagedFile,
    StagingError,
    complete_part,
    discard_part,
    exclusive,
    filename_for,
    open_part,
    part_paths,
)
from ecliptic.staging.http import FetchInto, TreeFile, checksum_of, relative_path, stage_tree
from ecliptic.staging.sources import Replica, Resolved

_PERMANENT = frozenset({"ENOENT", "ENOTDIR", "EACCES", "EPERM", "EINVAL", "EISDIR", "ELOOP", "ENOSYS"})
_AHEAD = 4


class MeshSource:
    """Simple data at ``mesh:`` URLs, read through the pod at ``pod`` (``HOST:PORT``)."""

    kinds = frozenset({"mesh:"})

    def __init__(self, pod: str, *, token: str | None = None, timeout: float = 60.0) -> None:
        self.pod = pod
        self.token = token
        self.timeout = timeout

    def resolve(self, spec: dict[str, Any]) -> Resolved:
        url, path, pod_named = _parse(spec)
        with self._client(url) as client:
            pods = {str(p["node"]): p for p in client.pods()}
            if pod_named is not None:
                check_pod_named(url, pod_named, pods.values())
            entry = _stat(client, path, url)
            files = [entry] if entry.kind == "file" else [e for _, e in _tree(client, path, url)[0]]
            checksum = checksum_of(spec)
            if checksum is not None and entry.kind == "dir":
                raise StagingError(f"{url} is a directory: a checksum can only be verified for a file")
            total = sum(f.size for f in files)
            held: dict[str, int] = {}
            for item in files:
                for node in item.holders:
                    held[node] = held.get(node, 0) + item.size
            own = str(client.info.get("name") or client.info.get("node", "")[:12])
        canonical = f"mesh://{path}"
        if not held:
            # Nothing stored anywhere (empty files, an empty directory): the pod read through has it all.
            replicas = [Replica(f"mesh:{own}", canonical, total, site=own)]
        else:
            reachable = [node for node in held if pods.get(node, {}).get("reach") in ("self", "up")]
            if not reachable:
                names = ", ".join(sorted(_pod_name(pods, node) for node in held))
                raise StagingError(f"{url}: the pods holding it ({names}) do not answer", retryable=True)
            order = sorted(held, key=lambda node: (node not in reachable, -held[node], _pod_name(pods, node)))
            replicas = [
                Replica(
                    f"mesh:{_pod_name(pods, node)}",
                    canonical,
                    total,
                    site=_pod_name(pods, node) if held[node] == total else None,
                )
                for node in order
            ]
        details: dict[str, Any] = {
            "kind": entry.kind,
            "files": len(files),
            "held": {_pod_name(pods, node): size for node, size in held.items()},
        }
        return Resolved(replicas, size=total, checksum=checksum, details=details)

    def fetch(
        self, spec: dict[str, Any], replica: Replica, dest_dir: Path, progress: Progress | None = None
    ) -> StagedFile:
        url, path, _ = _parse({"location": replica.url})
        checksum = checksum_of(spec)
        with self._client(url) as client:
            entry = _stat(client, path, url)
            dest = dest_dir / filename_for(path, "mesh")
            dest_dir.mkdir(parents=True, exist_ok=True)
            try:
                if entry.kind == "file":
                    part, meta = part_paths(dest)
                    with exclusive(dest):
                        return _fetch_file(client, url, entry, dest, part, meta, checksum, progress)
                if checksum is not None:
                    raise StagingError(f"{url} is a directory: a checksum can only be verified for a file")
                files, directories = _tree(client, path, url)
                items = [
                    TreeFile(
                        relative,
                        item.size,
                        _fetcher(client, f"mesh://{path.rstrip('/')}/{relative}", item),
                        verify=_verifier(item),
                    )
                    for relative, item in files
                ]
                return stage_tree(dest, items, directories=directories, progress=progress)
            except MeshError as exc:
                raise mesh_error(url, exc) from exc
            except OSError as exc:
                raise StagingError(f"cannot stage {url} into {dest}: {exc}") from exc

    def _client(self, url: str) -> AbstractContextManager[MeshClient]:
        return mesh_session(self.pod, url, token=self.token, timeout=self.timeout)


@contextmanager
def mesh_session(
    pod: str, url: str, *, token: str | None = None, timeout: float = 60.0
) -> Iterator[MeshClient]:
    """A connected client of ``pod``; mesh and socket failures inside become :class:`StagingError`."""
    try:
        client = MeshClient(pod, token=token, timeout=timeout)
    except ValueError as exc:
        raise StagingError(f"the mesh pod address {pod!r} is not usable: {exc}") from exc
    try:
        client.connect()
        yield client
    except MeshError as exc:
        raise mesh_error(url, exc) from exc
    except ProtocolError as exc:
        raise StagingError(f"{pod} does not speak the mesh protocol: {exc}") from exc
    except OSError as exc:
        raise StagingError(f"lost the mesh pod at {pod}: {exc}", retryable=True) from exc
    finally:
        client.close()


def _parse(spec: dict[str, Any]) -> tuple[str, str, str | None]:
    """``(url, path in the network, pod the URL names or None)``."""
    url = spec.get("location")
    if not isinstance(url, str) or not url.strip():
        raise StagingError("the data resource has no location URL")
    url = url.strip()
    path, named = parse_mesh_url(url)
    return url, path, named


def parse_mesh_url(url: str) -> tuple[str, str | None]:
    """``(path in the network, pod the URL names or None)`` of ``mesh:///path`` or ``mesh://<pod>/path``."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "mesh":
        raise StagingError(f"{url!r} is not a mesh URL (mesh:///path)")
    if parts.query or parts.fragment:
        raise StagingError(f"{url!r}: mesh URLs take no query or fragment")
    raw = unquote(parts.path)
    if not raw.startswith("/"):
        raise StagingError(f"{url!r}: a mesh URL names an absolute path, mesh:///path")
    if any(segment == ".." for segment in raw.split("/")):
        raise StagingError(f"{url!r}: '..' is not allowed in a mesh path")
    return normalize(raw), parts.netloc or None


def check_pod_named(url: str, named: str, pods: Iterable[dict[str, Any]]) -> None:
    """Refuse a URL naming a pod that is not in the network (it would be read through another one)."""
    for record in pods:
        if record.get("state") != "left" and named in (record.get("address"), record.get("name")):
            return
    raise StagingError(
        f"{url} names the pod {named}, which is not in this broker's mesh network; use mesh:///path"
    )


def _pod_name(pods: dict[str, dict[str, Any]], node: str) -> str:
    return str(pods.get(node, {}).get("name") or node[:12])


def _stat(client: MeshClient, path: str, url: str) -> Entry:
    entry = client.stat(path)
    if entry.kind == "symlink":
        raise StagingError(f"{url} is a symbolic link (to {entry.target}); name the file it points to")
    return entry


def _tree(client: MeshClient, path: str, url: str) -> tuple[list[tuple[str, Entry]], list[str]]:
    """The files (relative path, entry) and directories under the directory ``path``."""
    base = path.rstrip("/")
    files: list[tuple[str, Entry]] = []
    directories: list[str] = []
    for full, entry in client.walk(path):
        if full == path or entry.kind == "symlink":
            continue
        relative = relative_path(full[len(base) + 1 :].split("/"), f"mesh://{full}")
        if entry.kind == "file":
            files.append((relative, entry))
        else:
            directories.append(relative)
    return files, directories


def mesh_error(url: str, exc: MeshError) -> StagingError:
    if exc.code in ("ENOENT", "ENOTDIR"):
        return StagingError(f"{url}: no such file or directory in the mesh")
    return StagingError(f"cannot read {url} from the mesh: {exc}", retryable=exc.code not in _PERMANENT)


def _fetcher(client: MeshClient, url: str, entry: Entry) -> FetchInto:
    def fetch(dest: Path, part: Path, meta: Path, progress: Progress | None) -> StagedFile:
        return _fetch_file(client, url, entry, dest, part, meta, None, progress)

    return fetch


def _verifier(entry: Entry) -> Callable[[Path], bool]:
    return lambda path: _intact(path, entry)


def _manifest_key(entry: Entry) -> str:
    return hashlib.sha256(json.dumps([list(block) for block in entry.blocks]).encode()).hexdigest()


def _check_block(url: str, digest: str, data: bytes) -> None:
    if digest == HOLE:
        return
    if hash_bytes(data) != digest:
        raise StagingError(f"{url}: a block read from the mesh does not match its hash {digest[:16]}…")


def _fetch_file(
    client: MeshClient,
    url: str,
    entry: Entry,
    dest: Path,
    part: Path,
    meta: Path,
    checksum: tuple[str, str] | None,
    progress: Progress | None,
) -> StagedFile:
    existing = Hashes(checksum)
    if dest.is_file() and not dest.is_symlink() and _intact(dest, entry, existing) and existing.matches():
        return existing.staged(dest)
    hashes = Hashes(checksum)
    key = {"url": url, "manifest": _manifest_key(entry)}
    start = _resume(part, meta, key, entry, hashes)
    if start == 0:
        meta.write_text(json.dumps(key), encoding="utf-8")
    digests = [digest for digest, _ in entry.blocks]
    if progress is not None:
        progress(hashes.size, entry.size)
    with open_part(part, append=start > 0) as out:
        for index in range(start, len(entry.blocks)):
            digest, length = entry.blocks[index]
            ahead = [d for d in digests[index + 1 : index + 1 + _AHEAD] if d != HOLE]
            data = client.read_block(entry, digest, 0, length, ahead=ahead)
            if len(data) != length:
                raise StagingError(
                    f"{url}: the mesh returned {len(data)} of a block's {length} bytes", retryable=True
                )
            try:
                _check_block(url, digest, data)
            except StagingError:
                discard_part(part, meta)
                raise
            out.write(data)
            hashes.update(data)
            if progress is not None:
                progress(hashes.size, entry.size)
        out.flush()
    if hashes.size != entry.size:
        discard_part(part, meta)
        raise StagingError(f"{url}: read {hashes.size} bytes, the file has {entry.size}", retryable=True)
    complete_part(part, meta, dest, hashes, url)
    return hashes.staged(dest)


def _resume(part: Path, meta: Path, key: dict[str, str], entry: Entry, hashes: Hashes) -> int:
    """The index of the first block still to fetch, after keeping the intact blocks of the ``.part``."""
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None
    if recorded != key or not part.is_file() or part.is_symlink():
        discard_part(part, meta)
        return 0
    kept = index = 0
    with open(part, "rb") as handle:
        for digest, length in entry.blocks:
            data = handle.read(length)
            if len(data) != length or not _block_ok(digest, data):
                break
            hashes.update(data)
            kept += length
            index += 1
    os.truncate(part, kept)
    return index


def _block_ok(digest: str, data: bytes) -> bool:
    if digest == HOLE:
        return not any(data)
    return hash_bytes(data) == digest


def _intact(path: Path, entry: Entry, hashes: Hashes | None = None) -> bool:
    """Whether the local file has exactly the entry's blocks (hashing it into ``hashes`` on the way)."""
    try:
        if path.stat().st_size != entry.size:
            return False
        with open(path, "rb") as handle:
            for digest, length in entry.blocks:
                data = handle.read(length)
                if len(data) != length or not _block_ok(digest, data):
                    return False
                if hashes is not None:
                    hashes.update(data)
    except OSError:
        return False
    return True
