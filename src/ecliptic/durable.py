"""Files a crash leaves either as they were or whole: atomic replacement, write-once records, durable renames.

Records that stop a second submission or say how a run ended must survive the crash they are for, so each
write is fsynced before its rename and the rename itself is made durable by fsyncing the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def fsync_dir(directory: Path) -> None:
    # Makes a rename durable; a platform that cannot open a directory loses only that.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _written(path: Path, chunks: Iterable[bytes]) -> str:
    """A new temporary file beside ``path`` holding ``chunks``, on disk. A unique name, because two writers
    (two launches of one session, say) may write the same file at once."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def write_bytes_atomic(path: Path, chunks: Iterable[bytes]) -> None:
    """Readers see the old file or the whole new one, never a torn write, even across a power cut."""
    tmp = _written(path, chunks)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, [text.encode("utf-8")])


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_json_once(path: Path, data: dict[str, Any]) -> bool:
    """Write ``path`` whole unless it exists already: the first writer wins. True if this one did."""
    if path.exists():
        return False
    tmp = _written(path, [(json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")])
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(path.parent)
    return True
