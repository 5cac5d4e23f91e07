"""Real container daemons for the Docker platform's tests: a private ``dockerd`` and a private Podman service.

Each pytest process (each xdist worker) starts its own daemon, with every root, socket and pid file in a
fresh temporary folder of its own, so workers never share one and the machine's defaults (``/var/lib/docker``,
``/var/run/docker.pid``, ``/var/lib/containers``) are never used. ``dockerd`` runs with ``--bridge=none
--iptables=false``: no bridge, no NAT rules, no forwarding, so containers can only have ``none`` or ``host``
networking and no test can reach past loopback. The one image is imported from the static busybox of the
``busybox-static`` package, without any registry; its name points at a registry on a closed loopback port,
so even a pull that a test provokes goes nowhere but loopback.

Without the daemon, the tests skip; under CI (env ``CI`` set) the Docker ones fail instead, since CI installs
everything they need (``.ci/docker.sh``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

REGISTRY = "127.0.0.1:1"
"""The test images' registry: port 1 of loopback, where nothing listens."""
IMAGE = f"{REGISTRY}/ecliptic-test/busybox:1"

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass
class Daemon:
    kind: Literal["docker", "podman"]
    host: str
    """The daemon's API URL (``unix://…``), what ``DOCKER_HOST`` would be."""
    api: Any
    """A ``docker.APIClient`` for the test's own checks."""
    image: str
    image_id: str
    root: Path
    pid: int


def unavailable(reason: str, *, required: bool) -> None:
    if required and os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: .ci/docker.sh)", pytrace=False)
    pytest.skip(reason)


def _static_busybox() -> Path | None:
    found = shutil.which("busybox") or ("/bin/busybox" if Path("/bin/busybox").exists() else None)
    if found is None:
        return None
    # A dynamically linked busybox cannot run in an image that has nothing but itself.
    probe = subprocess.run(["ldd", found], capture_output=True, text=True, check=False)
    return Path(found) if probe.returncode != 0 or "not a dynamic" in probe.stdout + probe.stderr else None


def busybox_rootfs(busybox: Path) -> bytes:
    """A tar of a root filesystem with busybox as /bin/busybox and a link for every applet it has."""
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    data = busybox.read_bytes()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777)):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(data)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return out.getvalue()


def _connect(host: str, process: subprocess.Popen[bytes], log: Path, what: str, *, required: bool) -> Any:
    """A client of the daemon once it answers; unavailable if it exits or stays silent."""
    import docker

    until = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            unavailable(f"{what} exited with {process.returncode}: {_tail(log)}", required=required)
        # version="auto" asks the daemon for its API version, so the client is only made once it listens.
        with contextlib.suppress(docker.errors.DockerException):
            api = docker.APIClient(base_url=host, version="auto", timeout=60)
            if api.ping():
                return api
        if time.monotonic() > until:
            unavailable(
                f"{what} did not answer within {START_TIMEOUT:.0f} s: {_tail(log)}", required=required
            )
        time.sleep(0.1)


def _tail(log: Path, lines: int = 15) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _mounts_under(root: Path) -> list[str]:
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(root) or point.startswith(f"{root}/"):
                found.append(point)
    return found


def _is_mountpoint(path: str) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        return any(line.split()[4] == path for line in fh)


def _unmount_all(root: Path) -> None:
    # Deepest first; nsfs and overlay mounts left by the daemons keep rmtree from deleting their folders.
    for point in sorted(_mounts_under(root), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _end(process: subprocess.Popen[bytes]) -> None:
    """End the daemon, then anything it left in the process group it was started in (its own)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _remove_containers(api: Any) -> None:
    with contextlib.suppress(Exception):
        for container in api.containers(all=True):
            with contextlib.suppress(Exception):
                api.remove_container(container["Id"], force=True)


def _import_image(api: Any, busybox: Path) -> str:
    repository, tag = IMAGE.rsplit(":", 1)
    reply = api.import_image_from_data(
        busybox_rootfs(busybox), repository=repository, tag=tag, changes=["ENV PATH=/bin", 'CMD ["/bin/sh"]']
    )
    found = re.search(r"sha256:[0-9a-f]{64}", str(reply))
    assert found, f"the import answered {reply!r}"
    # Podman's import ignores the tag it is given (and says latest), so tag it again.
    api.tag(found[0], repository, tag)
    return str(api.inspect_image(IMAGE)["Id"])


def _prerequisites(kind: str, program: str, package: str) -> tuple[str, Path]:
    """The daemon's binary and a static busybox; what CI installs is required there, the rest may skip."""
    required = kind == "docker"
    if os.uname().sysname != "Linux" or os.geteuid() != 0:
        unavailable(f"the {kind} tests start their own daemon, which needs root on Linux", required=required)
    try:
        import docker  # noqa: F401
    except ImportError:
        unavailable("the docker SDK is not installed (pip install docker)", required=required)
    binary = shutil.which(program)
    if binary is None:
        unavailable(f"{program} is not installed (apt-get install {package})", required=True)
    busybox = _static_busybox()
    if busybox is None:
        unavailable("no static busybox (apt-get install busybox-static)", required=True)
    assert binary is not None and busybox is not None
    return binary, busybox


def _dockerd_version(binary: str) -> tuple[int, ...]:
    text = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"(\d+)\.(\d+)", text)
    return (int(found[1]), int(found[2])) if found else (0, 0)


@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[Daemon]:
    binary, busybox = _prerequisites("docker", "dockerd", "docker.io")
    root = Path(tempfile.mkdtemp(prefix="ecl-docker-"))
    config: dict[str, Any] = {}
    if _dockerd_version(binary) < (23, 0):
        # Before 23 the daemon writes an identity key into /etc/docker unless told where else to keep it.
        config["deprecated-key-path"] = str(root / "key.json")
    (root / "daemon.json").write_text(json.dumps(config))
    # Folders the daemon makes in /run whatever its roots: its plugin folder, and containerd's shim sockets.
    runtime_dirs = [
        Path(p) for p in ("/run/docker", "/run/docker/plugins", "/run/containerd", "/run/containerd/s")
    ]
    made = [p for p in runtime_dirs if not p.exists()]
    default_netns = "/run/docker/netns/default"
    had_default_netns = _is_mountpoint(default_netns)
    host = f"unix://{root}/docker.sock"
    log = root / "dockerd.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config-file={root}/daemon.json",
                f"--data-root={root}/data",
                f"--exec-root={root}/exec",
                f"--pidfile={root}/dockerd.pid",
                f"--host={host}",
                "--bridge=none",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--userland-proxy=false",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api: Any = None
    try:
        api = _connect(host, process, log, "dockerd", required=True)
        image_id = _import_image(api, busybox)
        yield Daemon("docker", host, api, IMAGE, image_id, root, process.pid)
    finally:
        if api is not None:
            _remove_containers(api)
            api.close()
        _end(process)
        if not had_default_netns and _is_mountpoint(default_netns):
            subprocess.run(["umount", default_netns], capture_output=True, check=False)
        _unmount_all(root)
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()
        shutil.rmtree(root, ignore_errors=True)


def _podman_config(root: Path) -> dict[str, str]:
    # Hosts without CAP_SYS_RESOURCE cannot raise hard limits, and Podman's default RLIMIT_NOFILE and
    # RLIMIT_NPROC are above theirs: every container start fails. These are below what such hosts allow.
    (root / "containers.conf").write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n'
        "[engine]\n"
        f'tmp_dir = "{root}/tmp"\n'
        f'volume_path = "{root}/volumes"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{root}/events.log"\n'
        "[network]\n"
        f'network_config_dir = "{root}/networks"\n'
    )
    (root / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{root}/storage"\nrunroot = "{root}/run"\n'
    )
    # No search registries: a short image name must never turn into a request to a public registry.
    (root / "registries.conf").write_text(
        'unqualified-search-registries = []\nshort-name-mode = "disabled"\n'
    )
    return {
        **os.environ,
        "CONTAINERS_CONF": str(root / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
    }


def _private_var_lib(root: Path) -> list[str]:
    """A prefix that runs a command in a mount namespace of its own, on a /var/lib whose changes go to ``root``.

    Podman writes its blob-info cache to /var/lib/containers/cache whatever its storage roots are; in its own
    mount namespace that write lands in ``root``, and the mounts Podman makes are never seen on the host.
    """
    upper, work = root / "var-lib", root / "var-lib.work"
    upper.mkdir()
    work.mkdir()
    mount = 'mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$1,workdir=$2" /var/lib && shift 2 && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh", str(upper), str(work)]


def _podman_runs(api: Any) -> str | None:
    """Why a container cannot run under this Podman on this kernel, or None when one can."""
    try:
        created = api.create_container(
            IMAGE, command=["true"], host_config=api.create_host_config(network_mode="none")
        )
        try:
            api.start(created["Id"])
            code = api.wait(created["Id"], timeout=30)["StatusCode"]
            return None if code == 0 else f"a trivial container exited with {code}"
        finally:
            api.remove_container(created["Id"], force=True)
    except Exception as exc:
        return f"podman cannot run a container here: {exc}"


@pytest.fixture(scope="session")
def podman_daemon() -> Iterator[Daemon]:
    binary, busybox = _prerequisites("podman", "podman", "podman")
    root = Path(tempfile.mkdtemp(prefix="ecl-podman-"))
    env = _podman_config(root)
    host = f"unix://{root}/podman.sock"
    log = root / "podman.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*_private_var_lib(root), binary, "system", "service", "--time=0", host],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    api: Any = None
    try:
        api = _connect(host, process, log, "podman system service", required=False)
        image_id = _import_image(api, busybox)
        why = _podman_runs(api)
        if why is not None:
            pytest.skip(why)
        yield Daemon("podman", host, api, IMAGE, image_id, root, process.pid)
    finally:
        if api is not None:
            _remove_containers(api)
            api.close()
        _end(process)
        _unmount_all(root)
        shutil.rmtree(root, ignore_errors=True)
