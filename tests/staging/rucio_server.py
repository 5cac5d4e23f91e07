"""A real Rucio 41.5.1 server on loopback, for the Rucio data source's tests (platforms.md A6).

Rucio pins too much to live in the project's venv, so it runs from its own (``.ci/rucio.sh`` makes
``.venv-rucio``; ``ECLIPTIC_TEST_RUCIO_PYTHON`` names its python). One script in that venv does everything at
once, because each Rucio CLI call costs seconds of start-up: it builds the SQLite catalogue, serves the REST API
and a plain HTTP server (the storage of the ``WEB`` RSE) on free loopback ports, registers the RSEs, scope,
files and collections below, prints one JSON line describing them, and serves until its stdin closes, so a
killed test run never leaves a server behind. Each xdist worker gets its own server in its own directory.

Catalogue (scope ``test``; NEAR and FAR are posix RSEs with different prefixes, WEB an http one):

- ``alpha.bin``  uploaded to NEAR and FAR with the Rucio upload client (adler32 and md5)
- ``beta.txt``   uploaded to NEAR; a copy on WEB registered by hand
- ``gamma.bin``  adler32 only; the NEAR copy is corrupted (same size), the FAR copy good
- ``delta.bin``  adler32 and md5; only on NEAR, corrupted
- ``epsilon.dat`` on FAR
- dataset ``ds1`` = alpha.bin + beta.txt; dataset ``ds2`` = epsilon.dat + alpha.bin; container ``cont1`` =
  ds1 + ds2
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0

USERNAME = "ddmlab"
PASSWORD = "secret"
ACCOUNT = "root"
SCOPE = "test"


@dataclass(frozen=True)
class RucioServer:
    url: str
    account: str
    username: str
    password: str
    scope: str
    root: Path
    files: dict[str, dict[str, Any]]
    """Per file name: ``bytes``, ``adler32``, ``md5`` (or None), ``content`` (hex of the good bytes) and
    ``paths`` ({RSE: local path of that copy})."""
    rses: dict[str, str]
    """RSE name → the local directory its storage lives in."""


def rucio_python() -> Path | None:
    configured = os.environ.get("ECLIPTIC_TEST_RUCIO_PYTHON")
    candidate = Path(configured) if configured else PROJECT_ROOT / ".venv-rucio" / "bin" / "python"
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def _config(root: Path) -> str:
    return f"""\
[common]
logdir = {root / "log"}
loglevel = WARNING

[database]
default = sqlite:///{root / "rucio.db"}

[client]
auth_type = userpass
username = {USERNAME}
password = {PASSWORD}
account = {ACCOUNT}
request_retries = 1
auth_token_file_path = {root / "client-token" / "auth_token"}

[bootstrap]
userpass_identity = {USERNAME}
userpass_pwd = {PASSWORD}

[policy]
permission = generic
schema = generic
lfn2pfn_algorithm_default = hash

[api]
endpoints = accounts, auth, dids, ping, replicas, rses, rules, scopes

[trace]
tracedir = {root / "trace"}
trace_host = 127.0.0.1
topic = /topic/rucio.tracer
brokers = 127.0.0.1
port = 61013
username = unused
password = unused
"""


_SCRIPT = r'''
import functools, hashlib, json, os, random, sys, threading, zlib
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# The Rucio clients print to stdout; only the one JSON line may reach the test process through it.
report = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr

root = Path(sys.argv[1])
scope, account, username, password = sys.argv[2:6]

from rucio.db.sqla import models
from rucio.db.sqla.session import get_engine
from rucio.db.sqla.util import create_base_vo, create_root_account

# build_database() wants an alembic config; registering the models does the same for a fresh SQLite file.
models.register_models(get_engine())
create_base_vo()
create_root_account()

from rucio.web.rest.flaskapi.v1.main import application
from werkzeug.serving import make_server

api = make_server("127.0.0.1", 0, application, threaded=True)
threading.Thread(target=api.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{api.server_port}"


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


web_root = root / "web"
web_root.mkdir()
web = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(web_root)))
threading.Thread(target=web.serve_forever, daemon=True).start()

from rucio.client import Client
from rucio.client.uploadclient import UploadClient
from rucio.rse import rsemanager

client = Client(rucio_host=url, auth_host=url, account=account, auth_type="userpass",
                creds={"username": username, "password": password})
client.add_scope(account, scope)

rses = {"NEAR": root / "rse-near", "FAR": root / "rse-far", "WEB": web_root / "web"}
full = {"read": 1, "write": 1, "delete": 1, "third_party_copy_read": 1, "third_party_copy_write": 1}
for name in ("NEAR", "FAR"):
    rses[name].mkdir()
    client.add_rse(name)
    client.add_protocol(name, {
        "scheme": "file", "hostname": "localhost", "port": 0, "prefix": str(rses[name]),
        "impl": "rucio.rse.protocols.posix.Default",
        "domains": {"wan": full, "lan": {"read": 1, "write": 1, "delete": 1}},
    })
    client.set_local_account_limit(account, name, -1)
rses["WEB"].mkdir()
client.add_rse("WEB")
client.add_protocol("WEB", {
    "scheme": "http", "hostname": "127.0.0.1", "port": web.server_port, "prefix": "/web/",
    "impl": "rucio.rse.protocols.webdav.Default",
    "domains": {"wan": {"read": 1, "write": 0, "delete": 0, "third_party_copy_read": 0,
                        "third_party_copy_write": 0},
                "lan": {"read": 1, "write": 0, "delete": 0}},
})

sizes = {"alpha.bin": 300_000, "beta.txt": 5_000, "gamma.bin": 70_000, "delta.bin": 9_000,
         "epsilon.dat": 12_345}
files = {}
staging = root / "upload"
staging.mkdir()
for name, size in sizes.items():
    data = random.Random(name).randbytes(size)
    (staging / name).write_bytes(data)
    files[name] = {"bytes": size, "adler32": f"{zlib.adler32(data) & 0xFFFFFFFF:08x}",
                   "md5": hashlib.md5(data).hexdigest(), "content": data.hex(), "paths": {}}


def local_path(rse, name):
    pfn = rsemanager.lfns2pfns(rsemanager.get_rse_info(rse), [{"scope": scope, "name": name}],
                               operation="read")[f"{scope}:{name}"]
    if rse == "WEB":
        return web_root / pfn.split("/", 3)[3]
    return Path(pfn.removeprefix("file://localhost"))


def place(rse, name, *, md5=True, corrupt=False):
    """What a finished transfer leaves behind: the bytes at the RSE's path, and the replica registered."""
    path = local_path(rse, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = bytearray((staging / name).read_bytes())
    if corrupt:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    entry = {"scope": scope, "name": name, "bytes": files[name]["bytes"], "adler32": files[name]["adler32"]}
    if md5:
        entry["md5"] = files[name]["md5"]
    client.add_replicas(rse, [entry])
    files[name]["paths"][rse] = str(path)


uploader = UploadClient(client)
uploader.upload([{"path": str(staging / "alpha.bin"), "rse": "NEAR", "did_scope": scope},
                 {"path": str(staging / "beta.txt"), "rse": "NEAR", "did_scope": scope}])
uploader.upload([{"path": str(staging / "alpha.bin"), "rse": "FAR", "did_scope": scope}])
for rse, name in (("NEAR", "alpha.bin"), ("FAR", "alpha.bin"), ("NEAR", "beta.txt")):
    files[name]["paths"][rse] = str(local_path(rse, name))
place("WEB", "beta.txt")
place("NEAR", "gamma.bin", md5=False, corrupt=True)
place("FAR", "gamma.bin", md5=False)
place("NEAR", "delta.bin", corrupt=True)
place("FAR", "epsilon.dat")
for name in files:
    files[name]["md5"] = None if name == "gamma.bin" else files[name]["md5"]

client.add_dataset(scope, "ds1")
client.attach_dids(scope, "ds1", [{"scope": scope, "name": "alpha.bin"}, {"scope": scope, "name": "beta.txt"}])
client.add_dataset(scope, "ds2")
client.attach_dids(scope, "ds2", [{"scope": scope, "name": "epsilon.dat"}, {"scope": scope, "name": "alpha.bin"}])
client.add_container(scope, "cont1")
client.attach_dids(scope, "cont1", [{"scope": scope, "name": "ds1"}, {"scope": scope, "name": "ds2"}])

report.write(json.dumps({"url": url, "files": files, "rses": {k: str(v) for k, v in rses.items()}}) + "\n")
report.flush()
sys.stdin.read()
'''


class _Process:
    def __init__(self, python: Path, root: Path) -> None:
        self.root = root
        for sub in ("log", "trace", "client-token"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "rucio.cfg").write_text(_config(root), encoding="utf-8")
        script = root / "serve.py"
        script.write_text(_SCRIPT, encoding="utf-8")
        self.log = root / "server.log"
        env = {**os.environ, "RUCIO_CONFIG": str(root / "rucio.cfg"), "PYTHONUNBUFFERED": "1"}
        # The test process's own venv must not leak into the Rucio one.
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(python), str(script), str(root), SCOPE, ACCOUNT, USERNAME, PASSWORD],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=root,
            )

    def ready(self) -> dict[str, Any]:
        line: list[bytes] = []
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        if not line or not line[0]:
            self.stop()
            tail = self.log.read_text(encoding="utf-8", errors="replace")[-4000:]
            raise RuntimeError(f"the Rucio test server did not start; its log ends:\n{tail}")
        info: dict[str, Any] = json.loads(line[0])
        return info

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Nothing in the catalogue outlives the test session, so no orderly shutdown is owed.
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_rucio(root: Path) -> Iterator[RucioServer]:
    python = rucio_python()
    if python is None:
        how = (
            "run `source .ci/rucio.sh` from the project root (it makes .venv-rucio with rucio==41.5.1), "
            "or point ECLIPTIC_TEST_RUCIO_PYTHON at a python that has rucio 41.5.1"
        )
        if os.environ.get("CI"):
            pytest.fail(f"no Rucio server python for the Rucio tests: {how}")
        pytest.skip(f"no Rucio server python: {how}")
    started = time.monotonic()
    process = _Process(python, root)
    try:
        info = process.ready()
        sys.stderr.write(f"rucio test server up in {time.monotonic() - started:.1f} s at {info['url']}\n")
        yield RucioServer(
            url=info["url"],
            account=ACCOUNT,
            username=USERNAME,
            password=PASSWORD,
            scope=SCOPE,
            root=root,
            files=info["files"],
            rses=info["rses"],
        )
    finally:
        process.stop()
        shutil.rmtree(root / "upload", ignore_errors=True)


@pytest.fixture(scope="session", name="rucio_server")
def rucio_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RucioServer]:
    """Import ``rucio_server_fixture`` into a test module to get the ``rucio_server`` fixture there."""
    yield from start_rucio(tmp_path_factory.mktemp("rucio"))
