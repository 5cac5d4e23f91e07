"""``ecliptic mesh``: run a pod, and act on the network through a pod.

Every command but ``start``, ``mount`` and ``config generate|check`` talks to the pod at ``--pod`` (default
``$ECLIPTIC_MESH_POD`` or 127.0.0.1:7400). Clients on the pod's own host need nothing more; from another
host give the network's token (``--token`` or ``$ECLIPTIC_MESH_TOKEN``).

Exit codes: 0 done; 1 the operation failed (the message says why and where); 2 the input is wrong.
"""

from __future__ import annotations

import contextlib
import os
import stat as statmod
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ecliptic.mesh.wire import MeshError

if TYPE_CHECKING:  # the client is imported where used: `ecliptic --help` should not pay for it
    from ecliptic.mesh.client import MeshClient

mesh_app = typer.Typer(
    name="mesh",
    help="The distributed file system: pods, files, mounts.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
config_app = typer.Typer(name="config", help="Network-wide and per-pod configuration.", no_args_is_help=True)
mesh_app.add_typer(config_app)

DEFAULT_POD = "127.0.0.1:7400"
PodOption = Annotated[
    str,
    typer.Option("--pod", envvar="ECLIPTIC_MESH_POD", help="The pod to act through (HOST:PORT)."),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="ECLIPTIC_MESH_TOKEN", help="The network's token (needed off the pod's host)."
    ),
]

_out = Console()
_err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> NoReturn:
    _err.print(f"[red]error[/]: {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _client(pod: str, token: str | None) -> Iterator[MeshClient]:
    from ecliptic.mesh.client import MeshClient

    try:
        client = MeshClient(pod, token=token)
    except ValueError as exc:
        _fail(str(exc), 2)
    try:
        yield client
    except MeshError as exc:
        _fail(exc.message if exc.code == "EHOSTUNREACH" else f"{exc.message} [{exc.code}]")
    finally:
        client.close()


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_err,
        transient=True,
        disable=not _err.is_terminal and not os.environ.get("ECLIPTIC_PROGRESS"),
    )


# -- pods ----------------------------------------------------------------------------------------------------
@mesh_app.command()
def start(
    root: Annotated[Path, typer.Option("--root", help="The pod's directory (created if missing).")],
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to listen on.")] = DEFAULT_POD,
    join: Annotated[
        str | None, typer.Option("--join", help="A pod of the network to join (HOST:PORT).")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="ECLIPTIC_MESH_TOKEN", help="Join token.")
    ] = None,
    advertise: Annotated[
        str | None, typer.Option(help="HOST:PORT other pods dial (default: --listen).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="The pod's name (default: pod.toml's, or the host name).")
    ] = None,
    conflict: Annotated[
        str,
        typer.Option(
            help="Files already in --root that the network also has: keep the 'network' version, the 'local' one, or the 'newest'."
        ),
    ] = "network",
    sync_interval: Annotated[
        float, typer.Option(help="Seconds between anti-entropy rounds with each peer.")
    ] = 1.0,
) -> None:
    """Run a pod in the foreground: a new network, or --join one with --token."""
    from ecliptic.mesh.importer import CONFLICTS
    from ecliptic.mesh.pod import Pod, PodOptions, run_pod
    from ecliptic.mesh.settings import ConfigError
    from ecliptic.mesh.wire import split_address

    if conflict not in CONFLICTS:
        _fail(f"--conflict {conflict!r}: use one of {', '.join(CONFLICTS)}", 2)
    for option, value in (("--listen", listen), ("--join", join), ("--advertise", advertise)):
        if value is not None:
            try:
                split_address(value)
            except ValueError as exc:
                _fail(f"{option}: {exc}", 2)
    if join and not token:
        _fail("--join needs --token: print one on a member with `ecliptic mesh token --pod ADDRESS`", 2)
    if token:
        from ecliptic.mesh.identity import JoinToken

        try:
            JoinToken.parse(token)
        except ValueError as exc:
            _fail(f"--token: {exc}", 2)
    if root.exists() and not root.is_dir():
        _fail(f"--root {root} is not a directory", 2)
    root.mkdir(parents=True, exist_ok=True)

    def ready(pod: Pod) -> None:
        network = pod.token.network_id if pod.token else "?"
        print(f"pod {pod.node_id} ({pod.name}) listening on {pod.address}, network {network}", flush=True)

    options = PodOptions(
        root=root,
        listen=listen,
        advertise=advertise,
        name=name,
        join=join,
        token=token,
        conflict=conflict,
        sync_interval=sync_interval,
    )
    try:
        run_pod(options, ready)
    except ConfigError as exc:
        from ecliptic.mesh.diagnostics import render

        _fail(f"the pod's configuration has problems:\n{render(exc.diagnostics)}", 2)
    except MeshError as exc:
        _fail(f"{exc.message} [{exc.code}]", 2 if exc.code in ("EINVAL", "EACCES", "ENOSPC") else 1)
    except OSError as exc:
        _fail(f"cannot listen on {listen}: {exc.strerror or exc}", 1)


@mesh_app.command()
def token(pod: PodOption = DEFAULT_POD) -> None:
    """Print the network's join token (only for a client on the pod's host)."""
    with _client(pod, None) as client:
        print(client.join_token())


@mesh_app.command()
def pods(pod: PodOption = DEFAULT_POD, token: TokenOption = None) -> None:
    """List the network's pods with their state and space."""
    with _client(pod, token) as client:
        rows = client.pods()
    table = Table("node", "name", "address", "state", "reach", "files", "held", "free", "capacity")
    for row in rows:
        table.add_row(
            row["node"][:12],
            row["name"],
            row["address"],
            row["state"],
            row["reach"],
            str(row["files"]),
            _bytes(row["bytes"]),
            _bytes(row["free"]),
            _bytes(row["capacity"]),
        )
    _out.print(table)


@mesh_app.command()
def status(pod: PodOption = DEFAULT_POD, token: TokenOption = None) -> None:
    """The pod's own view: network, counts, peers and traffic."""
    with _client(pod, token) as client:
        info = client.pod_info()
    counts = info["counts"]
    _out.print(f"pod {info['node']} ({info['name']}) at {info['address']}, network {info['network']}")
    _out.print(
        f"{counts['files']} files and {counts['dirs']} directories ({_bytes(counts['bytes'])}); "
        f"held here {_bytes(info['held_bytes'])}, cached {_bytes(info['cached_bytes'])}"
    )
    for node, peer in sorted(info["peers"].items()):
        state = "up" if peer["up"] else f"down ({peer['error'] or 'no answer yet'})"
        _out.print(f"  peer {node[:12]}: {state}, {peer['rtt_ms']} ms")


@mesh_app.command()
def leave(pod: PodOption = DEFAULT_POD, token: TokenOption = None) -> None:
    """Remove the pod from the network: its files move to the others first, then it stops."""
    with _client(pod, token) as client, Progress(console=_err, transient=True) as bar:
        task = bar.add_task("moving files to the other pods", total=None)

        def event(header: dict[str, object]) -> None:
            if header.get("ev") == "progress":
                bar.update(task, completed=int(header["done"]), total=int(header["total"]))  # type: ignore[call-overload]

        result = client.leave(on_event=event)
    _out.print(f"left the network: {result['moved']} files moved to other pods")


@mesh_app.command()
def relocate(
    paths: Annotated[list[str], typer.Argument(help="Files or directories to move.")],
    to: Annotated[
        str, typer.Option("--to", help="The pod to move them to (node id prefix, name or address).")
    ],
    pod: PodOption = DEFAULT_POD,
    token: TokenOption = None,
) -> None:
    """Move files' blocks to another pod (their paths do not change)."""
    with _client(pod, token) as client:
        result = client.relocate(paths, to)
    _out.print(
        f"moved {result['moved']} files"
        + (f", {result['skipped']} changed meanwhile and were left" if result["skipped"] else "")
    )


# -- files ---------------------------------------------------------------------------------------------------
@mesh_app.command("ls")
def ls(
    path: Annotated[str, typer.Argument(help="A directory or file in the network.")] = "/",
    long: Annotated[bool, typer.Option("--long", "-l", help="Mode, size, time and holders.")] = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-R")] = False,
    pod: PodOption = DEFAULT_POD,
    token: TokenOption = None,
) -> None:
    """List a directory of the network."""
    import datetime as dt

    with _client(pod, token) as client:
        entry = client.stat(path)
        if recursive and entry.kind == "dir":
            items = sorted(list(client.walk(path))[1:], key=lambda item: item[0])
        elif entry.kind == "dir":
            items = [(e.name, e) for e in client.children(entry.id)]
        else:
            items = [(entry.name, entry)]
    for shown, item in items:
        suffix = "/" if item.kind == "dir" else f" -> {item.target}" if item.kind == "symlink" else ""
        if long:
            when = dt.datetime.fromtimestamp(item.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M")
            holders = ",".join(h[:8] for h in item.holders)
            print(f"{statmod.filemode(item.st_mode)} {item.size:>12} {when} {shown}{suffix}  {holders}")
        else:
            print(f"{shown}{suffix}")


@mesh_app.command()
def put(
    local: Annotated[Path, typer.Argument(help="A local file or directory.")],
    remote: Annotated[str, typer.Argument(help="Where in the network (a directory keeps the name).")] = "/",
    pod: PodOption = DEFAULT_POD,
    token: TokenOption = None,
) -> None:
    """Copy a local file or directory into the network."""
    if not local.exists():
        _fail(f"{local}: no such file or directory", 2)
    with _client(pod, token) as client:
        target = remote
        if client.exists(remote) and client.stat(remote).kind == "dir":
            target = f"{remote.rstrip('/')}/{local.name}"
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        total = sum(p.stat().st_size for p in files)
        with _progress() as bar:
            task = bar.add_task(f"put {local.name}", total=total)
            if local.is_dir():
                client.mkdir(target, parents=True, exist_ok=True)
                for folder in sorted(p for p in local.rglob("*") if p.is_dir()):
                    client.mkdir(
                        f"{target}/{folder.relative_to(local).as_posix()}", parents=True, exist_ok=True
                    )
            for path in files:
                destination = target if local.is_file() else f"{target}/{path.relative_to(local).as_posix()}"
                client.put_file(path, destination, progress=lambda n: bar.advance(task, n))
    _err.print(f"put {len(files)} file(s), {_bytes(total)}")


@mesh_app.command()
def get(
    remote: Annotated[str, typer.Argument(help="A file or directory in the network.")],
    local: Annotated[Path, typer.Argument(help="Where to write it (a directory keeps the name).")] = Path(
        "."
    ),
    pod: PodOption = DEFAULT_POD,
    token: TokenOption = None,
) -> None:
    """Copy a file or directory out of the network."""
    with _client(pod, token) as client:
        entry = client.stat(remote)
        target = local / entry.name if local.is_dir() else local
        items = list(client.walk(remote))
        total = sum(e.size for _, e in items if e.kind == "file")
        base = items[0][0]
        with _progress() as bar:
            task = bar.add_task(f"get {entry.name}", total=total)
            for path, item in items:
                destination = target / path[len(base) :].lstrip("/") if entry.kind == "dir" else target
                if item.kind == "dir":
                    destination.mkdir(parents=True, exist_ok=True)
                elif item.kind == "symlink":
                    destination.unlink(missing_ok=True)
                    destination.symlink_to(item.target)
                else:
                    client.get_file(path, destination, progress=lambda n: bar.advance(task, n))
    _err.print(f"got {sum(1 for _, e in items if e.kind == 'file')} file(s), {_bytes(total)}")


@mesh_app.command()
def cat(
    paths: Annotated[list[str], typer.Argument(help="Files in the network.")],
    pod: PodOption = DEFAULT_POD,
    token: TokenOption = None,
) -> None:
    """Write files of the network to standard output."""
    with _client(pod, token) as client:
        for path in paths:
            entry = client.stat(path)
            if entry.kind != "file":
                _fail(f"{path} is a {'directory' if entry.kind == 'dir' else entry.kind}, not a file")
            for data in client.iter_content(entry):
                sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


@mesh_app.command()
def rm(
    paths: Annotated[list[str], typer.Argument(help="Files or directories in the network.")],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Directories and their contents.")
    ] = False,
    pod: PodOption = DEFAULT_POD,
    token: TokenOption = None,
) -> None:
    """Remove files (and with -r directories) from the network."""
    with _client(pod, token) as client:
        for path in paths:
            entry = client.stat(path)
            if entry.kind == "dir" and not recursive:
                _fail(f"{path} is a directory: use rm -r to remove it and its contents", 2)
            client.remove(path, recursive=recursive)


@mesh_app.command()
def mkdir(
    paths: Annotated[list[str], typer.Argument(help="Directories to make.")],
    parents: Annotated[
        bool, typer.Option("--parents", "-p", help="Make missing parents; no error if it exists.")
    ] = False,
    pod: PodOption = DEFAULT_POD,
    token: TokenOption = None,
) -> None:
    """Make directories in the network."""
    with _client(pod, token) as client:
        for path in paths:
            client.mkdir(path, parents=parents, exist_ok=parents)


@mesh_app.command()
def mv(
    source: Annotated[str, typer.Argument(help="A file or directory in the network.")],
    destination: Annotated[str, typer.Argument(help="The new path (an existing directory keeps the name).")],
    pod: PodOption = DEFAULT_POD,
    token: TokenOption = None,
) -> None:
    """Rename or move a file or directory within the network."""
    with _client(pod, token) as client:
        client.move(source, destination)


@mesh_app.command()
def mount(
    mountpoint: Annotated[Path, typer.Argument(help="An empty directory to mount the network on.")],
    pod: PodOption = DEFAULT_POD,
    token: TokenOption = None,
    allow_other: Annotated[
        bool, typer.Option(help="Let other users see the mount (needs user_allow_other).")
    ] = False,
    debug: Annotated[bool, typer.Option(help="Log every FUSE operation.")] = False,
) -> None:
    """Mount the network with FUSE, in the foreground (unmount with Ctrl-C or `fusermount3 -u`)."""
    if not mountpoint.is_dir():
        _fail(f"{mountpoint}: not a directory (make it first)", 2)
    try:
        from ecliptic.mesh.fuse import run_mount
    except ImportError as exc:
        _fail(
            f"FUSE is not available: {exc}. Install the extra: pip install 'ecliptic[fuse]' (needs libfuse3)",
            2,
        )
    try:
        run_mount(mountpoint, pod, token=token, allow_other=allow_other, debug=debug)
    except MeshError as exc:
        _fail(f"{exc.message} [{exc.code}]")
    except RuntimeError as exc:
        _fail(str(exc))


# -- configuration -------------------------------------------------------------------------------------------
@config_app.command("generate")
def config_generate(
    level: Annotated[str, typer.Argument(help="'network' or 'pod'.")] = "network",
    template: Annotated[
        str, typer.Option(help="Which template (see the list in the error for an unknown one).")
    ] = "minimal",
) -> None:
    """Print a commented configuration template."""
    from ecliptic.mesh import templates

    if level not in ("network", "pod"):
        _fail(f"unknown level {level!r}: use 'network' or 'pod'", 2)
    if template not in templates.names(level):  # type: ignore[arg-type]
        _fail(f"unknown {level} template {template!r}: use one of {', '.join(templates.names(level))}", 2)  # type: ignore[arg-type]
    print(templates.generate(level, template), end="")  # type: ignore[arg-type]


@config_app.command("check")
def config_check(
    network: Annotated[Path | None, typer.Option("--network", help="A network-wide config file.")] = None,
    pod_file: Annotated[Path | None, typer.Option("--pod-file", help="A pod.toml.")] = None,
    root: Annotated[
        Path | None, typer.Option("--root", help="The pod's directory, to check against its disk.")
    ] = None,
) -> None:
    """Check configuration files: errors, warnings and advice, each with where and what to do."""
    from ecliptic.mesh.diagnostics import check_network, check_pod, exit_code, render
    from ecliptic.mesh.settings import ConfigError, load_network_config

    if network is None and pod_file is None and root is None:
        _fail("give --network FILE, --pod-file FILE or --root DIR (its .ecliptic-mesh/pod.toml)", 2)
    found = []
    network_config = None
    if network is not None:
        if not network.is_file():
            _fail(f"{network}: no such file", 2)
        text = network.read_text()
        found += check_network(text, str(network))
        with contextlib.suppress(ConfigError):
            network_config = load_network_config(text)
    if pod_file is None and root is not None:
        pod_file = root / ".ecliptic-mesh" / "pod.toml"
        if not pod_file.exists():
            pod_file = None
    if pod_file is not None:
        if not pod_file.is_file():
            _fail(f"{pod_file}: no such file", 2)
        found += check_pod(pod_file.read_text(), str(pod_file), root=root, network=network_config)
    print(render(found) if found else "no problems found")
    raise typer.Exit(exit_code(found))


@config_app.command("show")
def config_show(pod: PodOption = DEFAULT_POD, token: TokenOption = None) -> None:
    """Print the network-wide configuration as the network holds it (empty means all defaults)."""
    with _client(pod, token) as client:
        text = client.network_config()
    print(
        text
        if text.strip()
        else "# empty: every setting has its default (see `ecliptic mesh config generate`)"
    )


@config_app.command("set")
def config_set(
    file: Annotated[Path, typer.Argument(help="A network-wide config file; it replaces the network's.")],
    pod: PodOption = DEFAULT_POD,
    token: TokenOption = None,
) -> None:
    """Replace the network-wide configuration (checked first; every pod receives it)."""
    from ecliptic.mesh.diagnostics import check_network, render

    if not file.is_file():
        _fail(f"{file}: no such file", 2)
    text = file.read_text()
    problems = check_network(text, str(file))
    if any(d.level == "error" for d in problems):
        _fail(f"not applied:\n{render(problems)}", 2)
    if problems:
        _err.print(render(problems))
    with _client(pod, token) as client:
        client.set_network_config(text)
    _err.print("applied; every pod receives it with the next change round")


def register(app: typer.Typer) -> None:
    app.add_typer(mesh_app, rich_help_panel="Mesh")
