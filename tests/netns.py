"""Throttled "sites" on this machine: network namespaces joined to the host by veth pairs, for staging tests.

Each :class:`Site` is a namespace this helper creates, with one veth pair: the host end gets ``10.251.x.1/30``,
the namespace end ``10.251.x.2/30``. Nothing else is configured — no default route in the namespace, no
forwarding, no NAT — so the addresses are only ever used between the two ends of that pair, and a process in
the namespace can reach nothing but the host end. Both directions are shaped with ``tbf`` (the host end's
egress carries requests and ACKs into the site, the namespace end's egress the data out of it), which makes a
site "near" or "far" by bandwidth.

Names carry a random prefix per :class:`Network` and subnets are claimed under a file lock against the
addresses and routes already on the host, so parallel runs (pytest-xdist, two benches) never clash.
:meth:`Network.close` kills every process started in the sites and deletes the veths and namespaces, and is
safe to call after any failure, half-way through creation, or twice.

Run as a script, this file is also the sites' file server (``serve``): static files with single byte ranges
and a strong ETag, which the broker's resumable downloads use.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import functools
import http.server
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import httpx

POOL = ipaddress.ip_network("10.251.0.0/16")
"""Private addresses for the veth pairs; each site takes one ``10.251.x.0/30`` of it."""
LOCK_NAME = "ecliptic-netns.lock"
COMMAND_TIMEOUT = 30.0
STOP_GRACE = 5.0


class NetnsUnavailable(RuntimeError):
    """Network namespaces, veths or tbf cannot be made here (not Linux, no ``ip``/``tc``, not permitted)."""


class NetnsError(RuntimeError):
    """An ``ip`` or ``tc`` command failed while setting up a site."""


def _command(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def _must(argv: Sequence[str]) -> str:
    done = _command(argv)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@functools.cache
def unavailable_reason() -> str | None:
    """Why sites cannot be made here, or None: probes the whole recipe once (namespace, veth, address, tbf)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, not {sys.platform}"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the {tool!r} command (iproute2) is not installed"
    probe = f"eclp{os.getpid() % 100000}{secrets.token_hex(2)}"
    namespace, host, inner = f"{probe}-ns", f"{probe}h", f"{probe}n"
    steps = [
        ["ip", "netns", "add", namespace],
        ["ip", "link", "add", host, "type", "veth", "peer", "name", inner],
        ["ip", "link", "set", inner, "netns", namespace],
        ["tc", "qdisc", "add", "dev", host, "root", *_shaping_args(1_000_000, None, 50)],
        # `ip netns exec` also needs a mount namespace and sysfs of its own, which some containers refuse.
        [
            "ip",
            "netns",
            "exec",
            namespace,
            "tc",
            "qdisc",
            "add",
            "dev",
            inner,
            "root",
            *_shaping_args(1_000_000, None, 50),
        ],
    ]
    try:
        for step in steps:
            done = _command(step)
            if done.returncode != 0:
                return f"`{' '.join(step)}` is not permitted here: {done.stderr.strip() or done.returncode}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run ip/tc: {exc}"
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            _command(["ip", "link", "del", host])
            _command(["ip", "netns", "del", namespace])
    return None


def require_netns() -> None:
    """For tests: skip when sites cannot be made here, but fail under CI, where they must work."""
    import pytest

    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but network namespaces are not usable: {reason}", pytrace=False)
    pytest.skip(f"network namespaces are not usable: {reason}")


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    # Held from choosing a subnet until its address is on the host veth, where the next run's scan sees it.
    path = Path(tempfile.gettempdir()) / LOCK_NAME
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network on the host: its addresses' prefixes (up or down) and its routes."""
    used: list[ipaddress.IPv4Network] = []
    for entry in json.loads(_must(["ip", "-j", "-4", "addr", "show"]) or "[]"):
        for info in entry.get("addr_info", []):
            with contextlib.suppress(KeyError, ValueError):
                used.append(ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False))
    for route in json.loads(_must(["ip", "-j", "-4", "route", "show", "table", "all"]) or "[]"):
        destination = route.get("dst", "")
        if destination and destination != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(destination, strict=False))
    return used


def _shaping_args(rate_bit: int, burst_bytes: int | None, latency_ms: int) -> list[str]:
    # tbf must hold at least one timer tick's worth of tokens (HZ may be as low as 100) or it cannot reach
    # its rate; 10 ms of the rate, and never less than a few full-size frames.
    burst = burst_bytes if burst_bytes is not None else max(32 * 1024, rate_bit // 8 // 100)
    return ["tbf", "rate", f"{rate_bit}bit", "burst", f"{burst}b", "latency", f"{latency_ms}ms"]


@dataclass
class Site:
    name: str
    namespace: str
    host_veth: str
    inner_veth: str
    subnet: ipaddress.IPv4Network
    rate_bit: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def host_address(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def address(self) -> str:
        """The namespace's address: where its servers are reached from the host."""
        return str(self.subnet.network_address + 2)

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def run(self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return _command(self.exec_argv(argv), timeout)

    def popen(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stdout: IO[bytes] | int | None = subprocess.DEVNULL,
        stderr: IO[bytes] | int | None = subprocess.STDOUT,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the site, in a process group of its own, so :meth:`stop` can end all of it."""
        process = subprocess.Popen(
            self.exec_argv(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def serve_directory(
        self, root: Path, *, port: int = 8000, log: Path | None = None, timeout: float = 30
    ) -> str:
        """Serve ``root`` over HTTP from inside the site; returns the base URL once it answers."""
        handle = open(log, "ab") if log is not None else None  # noqa: SIM115 - the child keeps it open
        try:
            process = self.popen(
                [sys.executable, str(Path(__file__).resolve()), "serve", str(root), self.address, str(port)],
                stdout=handle if handle is not None else subprocess.DEVNULL,
            )
        finally:
            if handle is not None:
                handle.close()
        url = f"http://{self.address}:{port}/"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log is not None else ""
                raise NetnsError(
                    f"the file server in {self.namespace} exited with {process.returncode}\n{tail}"
                )
            with contextlib.suppress(httpx.TransportError):
                httpx.head(url, timeout=1, trust_env=False)
                return url
            time.sleep(0.05)
        raise NetnsError(f"the file server in {self.namespace} did not answer at {url} within {timeout}s")

    def stop(self) -> None:
        """End every process of the site: those started here (their groups), then anything left inside."""
        for process in self.processes:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            if process.poll() is None:
                _signal_group(process, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=STOP_GRACE)
        # Only processes inside this site's own namespace, which nothing but this helper starts.
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            listed = _command(["ip", "netns", "pids", self.namespace]).stdout.split()
            for pid in (int(text) for text in listed if text.isdigit()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


class Network:
    """Sites made by one run; a context manager that always tears them down."""

    def __init__(self, prefix: str | None = None) -> None:
        # Interface names are at most 15 bytes: prefix (9) + index + "h"/"n" leaves room for 99 sites.
        self.prefix = prefix or f"ecl{secrets.token_hex(3)}"
        if len(self.prefix) > 10 or not self.prefix.isalnum():
            raise ValueError(f"prefix {self.prefix!r} must be alphanumeric and at most 10 characters")
        self.sites: list[Site] = []
        self._pending: list[tuple[str, str]] = []

    def __enter__(self) -> Network:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def add_site(
        self, name: str, *, rate_bit: int, burst_bytes: int | None = None, latency_ms: int = 50
    ) -> Site:
        """A namespace reached at ``rate_bit`` bits per second in each direction."""
        if reason := unavailable_reason():
            raise NetnsUnavailable(reason)
        index = len(self.sites) + len(self._pending)
        namespace = f"{self.prefix}-{name}"
        host, inner = f"{self.prefix}{index}h", f"{self.prefix}{index}n"
        # Recorded before the first command, so close() removes whatever part of it got made.
        self._pending.append((namespace, host))
        shaping = _shaping_args(rate_bit, burst_bytes, latency_ms)
        with _allocation_lock():
            subnet = self._free_subnet()
            prefix = f"/{subnet.prefixlen}"
            _must(["ip", "netns", "add", namespace])
            _must(["ip", "link", "add", host, "type", "veth", "peer", "name", inner])
            _must(["ip", "addr", "add", f"{subnet.network_address + 1}{prefix}", "dev", host])
        _must(["ip", "link", "set", inner, "netns", namespace])
        _must(["ip", "-n", namespace, "addr", "add", f"{subnet.network_address + 2}{prefix}", "dev", inner])
        _must(["ip", "-n", namespace, "link", "set", "lo", "up"])
        _must(["ip", "-n", namespace, "link", "set", inner, "up"])
        _must(["ip", "link", "set", host, "up"])
        _must(["tc", "qdisc", "add", "dev", host, "root", *shaping])
        _must(["ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", inner, "root", *shaping])
        site = Site(name, namespace, host, inner, subnet, rate_bit)
        self._pending.remove((namespace, host))
        self.sites.append(site)
        return site

    def _free_subnet(self) -> ipaddress.IPv4Network:
        used = _networks_in_use()
        for third in range(256):
            candidate = ipaddress.IPv4Network(f"{POOL.network_address + third * 256}/30")
            if not any(candidate.overlaps(network) for network in used):
                return candidate
        raise NetnsError(f"every 10.251.x.0/30 of {POOL} is in use on this host")

    def close(self) -> None:
        """Kill the sites' processes, delete their veths and namespaces; errors are collected, not stopped at."""
        problems: list[str] = []
        for site in self.sites:
            try:
                site.stop()
            except Exception as exc:
                problems.append(f"stopping {site.namespace}: {exc}")
        leftovers = [(site.namespace, site.host_veth) for site in self.sites] + self._pending
        for namespace, host in leftovers:
            # Deleting one end of a veth deletes both; deleting only the namespace frees it asynchronously.
            for argv in (["ip", "link", "del", host], ["ip", "netns", "del", namespace]):
                try:
                    done = _command(argv)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    problems.append(f"{' '.join(argv)}: {exc}")
                    continue
                missing = "Cannot find device" in done.stderr or "No such file" in done.stderr
                if done.returncode != 0 and not missing:
                    problems.append(f"{' '.join(argv)}: {done.stderr.strip()}")
        self.sites = []
        self._pending = []
        if problems:
            raise NetnsError("tearing down sites: " + "; ".join(problems))


# -- the sites' file server ----------------------------------------------------------------------------------


class _FileHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def do_GET(self) -> None:
        self._respond(body=True)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _respond(self, *, body: bool) -> None:
        target = self._target()
        if target is None:
            self._empty(404)
            return
        with open(target, "rb") as handle:
            info = os.fstat(handle.fileno())
            size = info.st_size
            etag = f'"{info.st_ino:x}-{size:x}-{info.st_mtime_ns:x}"'
            wanted = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if wanted is not None and if_range is not None and if_range != etag:
                wanted = None  # the client's partial copy is of another entity: it gets the whole new one
            start, end = 0, size - 1
            status = 200
            if wanted is not None:
                parsed = _byte_range(wanted, size)
                if parsed is None:
                    self._empty(416, {"Content-Range": f"bytes */{size}"})
                    return
                start, end = parsed
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(end - start + 1 if size else 0))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if body and size:
                self.wfile.flush()
                self.connection.sendfile(handle, start, end - start + 1)

    def _target(self) -> Path | None:
        relative = unquote(urlsplit(self.path).path).lstrip("/")
        root = self.root.resolve()
        target = (root / relative).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return None
        return target

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range as inclusive offsets, or None when it cannot be satisfied (or is several)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if not first:
            length = int(last)
            return (max(0, size - length), size - 1) if length > 0 and size else None
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    return (start, end) if start <= end and start < size else None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class _SiteServer(http.server.ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: a burst of sessions overflows it, and each dropped SYN costs
    # the client 1, 3, 7, 15 then 31 s of retransmits, far more than any transfer here.
    request_queue_size = 1024


def serve(root: Path, address: str, port: int) -> None:
    handler = type("FileHandler", (_FileHandler,), {"root": root})
    server = _SiteServer((address, port), handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The file server that runs inside a site's namespace.")
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve", help="serve a directory with byte ranges")
    serving.add_argument("root", type=Path)
    serving.add_argument("address")
    serving.add_argument("port", type=int)
    args = parser.parse_args(argv)
    try:
        serve(args.root, args.address, args.port)
    except OSError as exc:
        print(f"cannot serve on {args.address}:{args.port}: {exc}", file=sys.stderr)
        return errno.EADDRINUSE if exc.errno == errno.EADDRINUSE else 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
