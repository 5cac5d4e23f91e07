"""FUSE mounts of a pod as real processes (``ecliptic mesh mount``), for the mount tests."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from tests.mesh.harness import ENV, PodProcess


def fuse_available() -> bool:
    if not (os.path.exists("/dev/fuse") and shutil.which("fusermount3")):
        return False
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return False
    return True


def mounted(path: Path) -> bool:
    """From /proc/self/mountinfo: a stat of a mount whose process hangs would hang the test too."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split()[4] == target for line in mounts)


class Mount:
    """``ecliptic mesh mount PATH --pod ADDRESS``, started and stopped; usable as a context manager."""

    def __init__(self, pod: PodProcess, path: Path, *, debug: bool = False) -> None:
        self.pod = pod
        self.path = path
        self.debug = debug
        self.log = path.parent / f"{path.name}.mount.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Mount:
        self.path.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "ecliptic",
            "mesh",
            "mount",
            str(self.path),
            "--pod",
            self.pod.address,
        ]
        if self.debug:
            command.append("--debug")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=ENV)
        try:
            line = self._first_line(timeout)
            expected = f"mounted {self.pod.address} on {self.path}"
            if line != expected:
                raise AssertionError(f"the mount said {line!r}, not {expected!r}")
            if not mounted(self.path):
                raise AssertionError(f"{self.path} is not in the mount table after {line!r}")
        except BaseException:
            self.stop()
            raise
        return self

    def _first_line(self, timeout: float) -> str:
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        buffer = b""
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no 'mounted' line in {timeout} s:\n{self.log_text()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self.process.wait(10)
                    raise AssertionError(f"the mount exited ({code}) before mounting:\n{self.log_text()}")
                buffer += chunk
        return buffer.split(b"\n", 1)[0].decode()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 30.0) -> None:
        """Unmount (lazily when something still uses it) and wait for the process; kill it if it hangs."""
        if mounted(self.path):
            done = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True)
            if done.returncode != 0 and mounted(self.path):
                subprocess.run(["fusermount3", "-uz", str(self.path)], capture_output=True)
        process, self.process = self.process, None
        if process is None:
            return
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        finally:
            if process.stdout is not None:
                process.stdout.close()

    def __enter__(self) -> Mount:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
