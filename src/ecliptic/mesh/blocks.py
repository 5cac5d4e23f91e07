"""Content-addressed block storage on a pod's disk.

A block is named by the BLAKE3 hash of its bytes and never changes, so a cached copy can never be stale
and a block already present is never fetched again. ``blocks/`` holds the blocks this pod is a holder of
(counted against its space); ``cache/`` holds copies of other pods' blocks read through this pod, which
may be dropped at any time. Writes go to ``tmp/`` and are renamed into place, so a crash leaves either
the whole block or nothing under its name.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import blake3

HOLE = ""
"""The hash of a run of zero bytes that is not stored (sparse files, truncate that grows)."""

_READ_CHUNK = 1024 * 1024


class BlockCorrupt(Exception):
    """Bytes received under a hash do not have that hash."""


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    # Multithreaded hashing pays off only for large inputs; below 1 MiB it costs more than it saves.
    threads = blake3.blake3.AUTO if len(data) >= 1024 * 1024 else 1
    return blake3.blake3(data, max_threads=threads).hexdigest()


class BlockStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blocks = root / "blocks"
        self.cache = root / "cache"
        self.tmp = root / "tmp"
        for folder in (self.blocks, self.cache, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _relative(digest: str) -> str:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a block hash: {digest!r}")
        return f"{digest[:2]}/{digest}"

    def held_path(self, digest: str) -> Path:
        return self.blocks / self._relative(digest)

    def cached_path(self, digest: str) -> Path:
        return self.cache / self._relative(digest)

    def find(self, digest: str) -> Path | None:
        for path in (self.held_path(digest), self.cached_path(digest)):
            if path.exists():
                return path
        return None

    def holds(self, digest: str) -> bool:
        return self.held_path(digest).exists()

    def temp_path(self) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}.part"

    def put(
        self, data: bytes | bytearray | memoryview, *, expected: str | None = None, cache: bool = False
    ) -> str:
        digest = hash_bytes(data)
        if expected is not None and digest != expected:
            raise BlockCorrupt(f"block announced as {expected[:16]}… hashes to {digest[:16]}…")
        target = self.cached_path(digest) if cache else self.held_path(digest)
        if target.exists():
            return digest
        temp = self.temp_path()
        with temp.open("wb") as handle:
            handle.write(data)
        self._install(temp, target)
        return digest

    def adopt(self, temp: Path, digest: str, *, verify: bool = True) -> None:
        """Move a block written to ``tmp/`` by a local client into ``blocks/``."""
        if verify:
            actual = hash_file(temp)
            if actual != digest:
                temp.unlink(missing_ok=True)
                raise BlockCorrupt(f"uploaded file {temp.name} hashes to {actual[:16]}…, not {digest[:16]}…")
        self._install(temp, self.held_path(digest))

    def promote(self, digest: str) -> bool:
        """Make a cached block a held one (this pod became its holder); False when it is not here."""
        held = self.held_path(digest)
        if held.exists():
            return True
        cached = self.cached_path(digest)
        if not cached.exists():
            return False
        held.parent.mkdir(parents=True, exist_ok=True)
        os.replace(cached, held)
        return True

    @staticmethod
    def _install(temp: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, target)

    def read(self, digest: str, offset: int = 0, length: int = -1) -> bytes:
        path = self.find(digest)
        if path is None:
            raise FileNotFoundError(digest)
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read() if length < 0 else handle.read(length)

    def drop(self, digest: str) -> None:
        self.held_path(digest).unlink(missing_ok=True)

    def held(self) -> Iterator[tuple[str, int, float]]:
        """(hash, size, mtime) of every held block."""
        yield from _scan(self.blocks)

    def cached(self) -> Iterator[tuple[str, int, float]]:
        yield from _scan(self.cache)

    def usage(self) -> tuple[int, int]:
        return sum(size for _, size, _ in self.held()), sum(size for _, size, _ in self.cached())

    def trim_cache(self, limit: int) -> int:
        """Drop the least recently used cached blocks until the cache fits ``limit``; bytes freed."""
        entries = sorted(self.cached(), key=lambda item: item[2])
        total = sum(size for _, size, _ in entries)
        freed = 0
        for digest, size, _ in entries:
            if total - freed <= limit:
                break
            self.cached_path(digest).unlink(missing_ok=True)
            freed += size
        return freed

    def clean_tmp(self, older_than: float) -> None:
        cutoff = time.time() - older_than
        for path in self.tmp.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:
                pass


def _scan(folder: Path) -> Iterator[tuple[str, int, float]]:
    for shard in folder.iterdir():
        if not shard.is_dir():
            continue
        for path in shard.iterdir():
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            yield path.name, info.st_size, info.st_atime if info.st_atime > info.st_mtime else info.st_mtime


def hash_file(path: Path) -> str:
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with path.open("rb") as handle:
        while chunk := handle.read(_READ_CHUNK * 4):
            hasher.update(chunk)
    return hasher.hexdigest()
