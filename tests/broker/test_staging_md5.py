"""The scripted integration run: 100 sessions stage datasets from throttled sites and hash them, all checked.

The sites are network namespaces made by ``tests/netns.py``; without permission for them the tests are
skipped, or fail when ``CI`` is set.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import httpx
import pytest
from bench.staging_md5 import KiB, MiB, run

from tests.netns import Network, require_netns
from tests.processes import gone

SESSIONS = 100


def _namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def _links() -> set[str]:
    listed = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in listed.splitlines()}


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_a_hundred_sessions_stage_from_three_sites_and_every_md5_is_right() -> None:
    require_netns()
    # Small datasets keep the far site (16 Mbit/s, a third of the sessions) to seconds of transfer.
    report = run(SESSIONS, 3, timeout=110, sizes=(256 * KiB, 512 * KiB, 1 * MiB))
    problems = [f"{o.status} #{o.index} {o.dataset}: {o.problem}" for o in report.outcomes if o.problem]
    assert report.completed == SESSIONS, problems[:10]
    assert report.wrong == 0, problems[:10]
    assert report.lost == 0, problems[:10]
    assert {outcome.site for outcome in report.outcomes} == {"near", "mid", "far"}
    assert all(outcome.staging_seconds is not None for outcome in report.outcomes)
    assert report.last_line() == f"sessions={SESSIONS} completed={SESSIONS} wrong=0 lost=0"


def test_sites_serve_ranges_and_leave_nothing_behind_even_after_a_failure(tmp_path: Path) -> None:
    require_netns()
    payload = bytes(range(256)) * 4096
    (tmp_path / "file.bin").write_bytes(payload)
    made: list[str] = []
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="on purpose"), Network() as network:
        site = network.add_site("only", rate_bit=100_000_000)
        url = site.serve_directory(tmp_path)
        made = [site.namespace, site.host_veth]
        pids = [process.pid for process in site.processes]
        with httpx.Client(trust_env=False, timeout=30) as client:
            whole = client.get(f"{url}file.bin")
            part = client.get(f"{url}file.bin", headers={"Range": "bytes=1000-"})
            stale = client.get(f"{url}file.bin", headers={"Range": "bytes=1000-", "If-Range": '"other"'})
        assert hashlib.md5(whole.content).digest() == hashlib.md5(payload).digest()
        assert part.status_code == 206 and part.content == payload[1000:]
        assert part.headers["Content-Range"] == f"bytes 1000-{len(payload) - 1}/{len(payload)}"
        assert stale.status_code == 200 and stale.content == payload
        raise RuntimeError("on purpose")
    # Only this network's names: a parallel worker may be making sites of its own meanwhile.
    assert made[0] not in _namespaces()
    assert made[1] not in _links()
    assert pids and all(gone(pid) for pid in pids)
