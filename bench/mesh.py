"""Mesh throughput: a FUSE mount of the mesh against the plain disk beneath it, in the same run.

What is measured (each figure the median of ``--repeat`` runs, mount and disk interleaved so both see the same
machine):

1. **Sequential write** of ``--size`` MiB in 1 MiB ``write()`` calls, then ``fsync`` and ``close`` (the mount
   commits the file's manifest on close), to a file in a plain directory and to a file in the mount.
2. **Sequential read** of that file in 1 MiB ``read()`` calls. The kernel page cache is dropped before each read
   when this process may (root: ``/proc/sys/vm/drop_caches``), so both reads are cold; otherwise both are warm
   and the table says so.
3. **Small files**: ``--files`` files of 4 KiB — create+write+close, stat, open+read+close — per second.
4. **Remote read**: a file written on pod A read through pod B (B fetches, verifies and caches every block over
   loopback) with the Python client, against the same read through A, where the blocks are local.

The pods and the mount are real processes (``ecliptic mesh start`` and ``ecliptic mesh mount``) on loopback.
The machine is shared and noisy: the ratios within one run are the result, not the absolute figures.

    python bench/mesh.py [--size 1024] [--files 2000] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ecliptic.mesh.client import MeshClient

MiB = 1024 * 1024
console = Console()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


class Proc:
    def __init__(self, args: list[str], log: Path, ready: str) -> None:
        self.log = log
        handle = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ecliptic", *args], stdout=handle, stderr=subprocess.STDOUT
        )
        wait_for(lambda: ready in log.read_text() or self.process.poll() is not None, f"{args[:2]}")
        if self.process.poll() is not None:
            raise SystemExit(f"{' '.join(args[:2])} failed:\n{log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def write_file(path: Path, size_mib: int) -> float:
    chunk = os.urandom(MiB)
    started = time.perf_counter()
    with path.open("wb", buffering=0) as handle:
        for i in range(size_mib):
            # Vary each chunk a little so blocks do not dedupe by hash (that would flatter the mount).
            handle.write(i.to_bytes(8, "little") + chunk[8:])
        os.fsync(handle.fileno())
    return time.perf_counter() - started


def read_file(path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    total = 0
    with path.open("rb", buffering=0) as handle:
        while data := handle.read(MiB):
            total += len(data)
    return time.perf_counter() - started, total


def small_files(folder: Path, count: int) -> dict[str, float]:
    folder.mkdir()
    payload = os.urandom(4096)
    names = [folder / f"f{i:05d}" for i in range(count)]
    rates = {}
    started = time.perf_counter()
    for name in names:
        with name.open("wb") as handle:
            handle.write(payload)
    rates["create+write 4 KiB"] = count / (time.perf_counter() - started)
    time.sleep(1.2)  # past the mount's attribute cache, so stat is not all kernel-cached
    started = time.perf_counter()
    for name in names:
        os.stat(name)
    rates["stat"] = count / (time.perf_counter() - started)
    started = time.perf_counter()
    for name in names:
        with name.open("rb") as handle:
            if len(handle.read()) != 4096:
                raise SystemExit(f"{name}: short read")
    rates["open+read 4 KiB"] = count / (time.perf_counter() - started)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024, help="MiB for the sequential runs (default 1024)")
    parser.add_argument("--files", type=int, default=2000, help="small files (default 2000)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to work (default: a temporary directory)"
    )
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="ecliptic-bench-mesh-", dir=args.dir))
    needed = args.size * MiB * 4
    if shutil.disk_usage(base).free < needed:
        raise SystemExit(f"{base}: needs {needed // MiB} MiB free (two copies on disk, two through the mesh)")
    procs: list[Proc] = []
    mountpoint = base / "mnt"
    mountpoint.mkdir()
    plain = base / "plain"
    plain.mkdir()
    try:
        a_addr, b_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        procs.append(
            Proc(
                ["mesh", "start", "--root", str(base / "a"), "--listen", a_addr, "--name", "a"],
                base / "a.log",
                "listening on",
            )
        )
        token = subprocess.run(
            [sys.executable, "-m", "ecliptic", "mesh", "token", "--pod", a_addr],
            capture_output=True,
            check=True,
            text=True,
        ).stdout.strip()
        procs.append(
            Proc(
                [
                    "mesh",
                    "start",
                    "--root",
                    str(base / "b"),
                    "--listen",
                    b_addr,
                    "--name",
                    "b",
                    "--join",
                    a_addr,
                    "--token",
                    token,
                ],
                base / "b.log",
                "listening on",
            )
        )
        procs.append(Proc(["mesh", "mount", str(mountpoint), "--pod", a_addr], base / "mount.log", "mounted"))
        cold = drop_caches()

        rows: dict[str, dict[str, list[float]]] = {
            "write": {"disk": [], "mount": []},
            "read": {"disk": [], "mount": []},
        }
        size = args.size * MiB
        with console.status("sequential write and read") as status:
            for run in range(args.repeat):
                for where, folder in (("disk", plain), ("mount", mountpoint)):
                    status.update(f"run {run + 1}/{args.repeat}: write {args.size} MiB to the {where}")
                    target = folder / f"seq-{run}.bin"
                    rows["write"][where].append(size / write_file(target, args.size) / 1e6)
                    drop_caches()
                    status.update(f"run {run + 1}/{args.repeat}: read {args.size} MiB from the {where}")
                    seconds, got = read_file(target)
                    if got != size:
                        raise SystemExit(f"{target}: read {got} bytes, wrote {size}")
                    rows["read"][where].append(size / seconds / 1e6)
                    if run < args.repeat - 1:
                        target.unlink()
        with console.status("small files"):
            small = {
                "disk": small_files(plain / "small", args.files),
                "mount": small_files(mountpoint / "small", args.files),
            }

        with console.status("remote read between two pods"):
            local_label, remote_label = "pod A (holds the blocks)", "pod B (fetches each block from A)"
            remote: dict[str, list[float]] = {local_label: [], remote_label: []}
            remote_size = min(args.size, 512) * MiB
            for run in range(args.repeat):
                # A new file each round, so B has none of its blocks cached yet.
                path = f"/remote-{run}.bin"
                with MeshClient(a_addr) as client:
                    client.write_stream(path, (os.urandom(MiB) for _ in range(remote_size // MiB)))
                for label, address in ((local_label, a_addr), (remote_label, b_addr)):
                    with MeshClient(address) as client:
                        wait_for(lambda client=client, path=path: client.exists(path), f"{path} on {address}")
                        entry = client.stat(path)
                        drop_caches()
                        started = time.perf_counter()
                        got = sum(len(chunk) for chunk in client.iter_content(entry))
                        if got != remote_size:
                            raise SystemExit(f"{path} through {address}: {got} bytes, expected {remote_size}")
                        remote[label].append(got / (time.perf_counter() - started) / 1e6)

        table = Table(
            title=f"mesh vs plain disk — {args.size} MiB sequential, {args.files} small files, median of {args.repeat}"
        )
        table.add_column("measure")
        table.add_column("plain disk", justify="right")
        table.add_column("mesh mount", justify="right")
        table.add_column("mount / disk", justify="right")
        table.add_column("target", justify="right")
        summary = []
        for measure, target in (("write", 0.60), ("read", 0.80)):
            disk, mount = statistics.median(rows[measure]["disk"]), statistics.median(rows[measure]["mount"])
            ratio = mount / disk
            label = f"sequential {measure} MB/s" + ("" if cold or measure == "write" else " (warm cache)")
            verdict = "met" if ratio >= target else "missed"
            table.add_row(label, f"{disk:,.0f}", f"{mount:,.0f}", f"{ratio:.0%}", f"≥ {target:.0%} {verdict}")
            summary.append(f"{measure}={ratio:.2f}")
        for measure in small["disk"]:
            disk, mount = small["disk"][measure], small["mount"][measure]
            table.add_row(f"{measure} /s", f"{disk:,.0f}", f"{mount:,.0f}", f"{mount / disk:.0%}", "")
        console.print(table)
        remote_table = Table(title=f"reading a {remote_size // MiB} MiB file with the Python client")
        remote_table.add_column("through")
        remote_table.add_column("MB/s", justify="right")
        remote_table.add_column("ratio", justify="right")
        local = statistics.median(remote[local_label])
        for label, values in remote.items():
            value = statistics.median(values)
            remote_table.add_row(label, f"{value:,.0f}", f"{value / local:.0%}")
        console.print(remote_table)
        if not cold:
            console.print(
                "[yellow]page cache could not be dropped (not root?): reads are warm on both sides[/]"
            )
        print(" ".join(summary))
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
