"""Staging at a distance: N broker sessions, each staging one dataset from a throttled site and hashing it.

The scripted integration run of iteration 4: datasets at different distances from the broker, many sessions
at once, every result checked.

- **Sites**: ``--sources`` network namespaces on this machine (``tests/netns.py``), each reached through a veth
  pair shaped with tbf in both directions — near 400 Mbit/s, mid 80 Mbit/s, far 16 Mbit/s, … — and each serving
  its own generated datasets (``--sizes``) of known MD5 over HTTP with byte ranges.
- **Broker**: a real ``ecliptic serve`` process on a free loopback port, SQLite in a fresh data directory, the
  local platform sized so capacity never limits the run, no embedded mesh, no scheduler.
- **Sessions**: N execution requests, at most ``--concurrency`` in flight. Each names one dataset (an http URL
  at one site, with its md5 checksum) and runs ``md5sum "$ECLIPTIC_DATA_DATASET"``; the client accepts the first
  offer, polls the session until it ends, reads its stdout through the logs API and compares the hash.
- **Baseline**: a direct httpx download of each site's largest dataset, in the same run, before the sessions.

Per site it reports sessions, completed, wrong (completed with another hash) and lost (anything else); the
staging time of the data component (PREPARING → AVAILABLE in the session's history), and the broker's own
``staging_seconds`` / ``estimated_seconds`` / ``source`` fields when the data component carries them, as
estimated against actual once a site has history; and the throughput of staging against the direct download:
per session, and of the link while any staging from that site was running (sessions share a site's link, so
that is the figure to compare with a lone download). The last line is ``sessions=N completed=C wrong=W lost=L``;
the exit code is 1 when anything was wrong or lost, 2 when namespaces cannot be made here.

    python bench/staging_md5.py --sessions N [--sources 3] [--keep] [--timeout 600] [--concurrency 32]
        [--workers 16] [--lease PT30S] [--sizes 256K,1M,4M]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
# Run as a script the interpreter puts bench/ on the path, not the project: the helpers live in tests/.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.netns import NetnsUnavailable, Network, Site, unavailable_reason  # noqa: E402
from tests.processes import ServerProcess  # noqa: E402

from ecliptic.broker import kinds  # noqa: E402
from ecliptic.isotime import IsoTimeError, parse_duration  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
DEFAULT_SIZES = (256 * KiB, 1 * MiB, 4 * MiB)
TERMINAL = frozenset({"REJECTED", "EXPIRED", "COMPLETED", "FAILED", "CANCELLED"})
ACCEPT = {"kind": "uri:enum-value-update", "path": "phase", "value": "ACCEPTED"}
CANCEL = {"kind": "uri:enum-value-update", "path": "phase", "value": "CANCELLED"}
DATA_NAME = "dataset"
COMMAND = ["sh", "-c", f'md5sum "$ECLIPTIC_DATA_{DATA_NAME.upper()}"']
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
ESTIMATE_TOLERANCE = 0.20
DEFAULT_LEASE = "PT30S"
"""The broker's own default engine lease."""
GET_ATTEMPTS = 3
REQUEST_TIMEOUT = 15.0
TEARDOWN_RESERVE = 12.0
"""Seconds of the run's timeout kept back from the sessions for cancelling leftovers and stopping everything."""
KEEPALIVE_EXPIRY = 2.0
"""Below uvicorn's 5 s keep-alive: the client drops an idle connection before the server may close it under a
request being sent on it."""


@dataclass(frozen=True)
class Profile:
    name: str
    rate_bit: int
    latency_ms: int


PROFILES = (
    Profile("near", 400_000_000, 20),
    Profile("mid", 80_000_000, 40),
    Profile("far", 16_000_000, 80),
    Profile("farther", 8_000_000, 100),
    Profile("remote", 4_000_000, 150),
)


@dataclass(frozen=True)
class Dataset:
    site: str
    name: str
    path: Path
    size: int
    md5: str
    url: str


@dataclass
class Outcome:
    index: int
    site: str
    dataset: str
    size: int
    status: str = "lost"
    """``completed`` (the right hash), ``wrong`` (completed, another hash) or ``lost`` (anything else)."""
    problem: str | None = None
    session: str | None = None
    phase: str | None = None
    submitted: float = 0.0
    ended: float | None = None
    accepted_at: datetime | None = None
    staging_start: datetime | None = None
    staging_end: datetime | None = None
    offer_prepare_seconds: float | None = None
    reported_seconds: float | None = None
    estimated_seconds: float | None = None
    estimate_basis: str | None = None
    source: str | None = None

    @property
    def staging_seconds(self) -> float | None:
        if self.staging_start is None or self.staging_end is None:
            return None
        return (self.staging_end - self.staging_start).total_seconds()

    @property
    def queued_seconds(self) -> float | None:
        """From the accept to the start of staging: time spent waiting for a broker worker."""
        if self.accepted_at is None or self.staging_start is None:
            return None
        return (self.staging_start - self.accepted_at).total_seconds()

    def lose(self, problem: str) -> Outcome:
        self.status, self.problem = "lost", problem
        return self


@dataclass(frozen=True)
class Baseline:
    bytes: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Report:
    sessions: int
    outcomes: list[Outcome]
    baselines: dict[str, Baseline]
    sites: list[tuple[Profile, str]]
    timings: dict[str, float] = field(default_factory=dict)
    retried: list[str] = field(default_factory=list)
    """GETs the client repeated after a transport error (reads are idempotent; each one is reported)."""

    def count(self, status: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)

    @property
    def completed(self) -> int:
        return self.count("completed")

    @property
    def wrong(self) -> int:
        return self.count("wrong")

    @property
    def lost(self) -> int:
        # A session the client never got an outcome for counts as lost too.
        return self.sessions - self.completed - self.wrong

    def last_line(self) -> str:
        return f"sessions={self.sessions} completed={self.completed} wrong={self.wrong} lost={self.lost}"


# -- sites and datasets --------------------------------------------------------------------------------------


def _size_label(size: int) -> str:
    if size % MiB == 0:
        return f"{size // MiB}m"
    if size % KiB == 0:
        return f"{size // KiB}k"
    return f"{size}b"


def make_datasets(root: Path, site: str, sizes: Sequence[int], seed: int) -> list[tuple[str, Path, int, str]]:
    """Files of pseudo-random bytes (incompressible, different per site); their names, paths, sizes and MD5s."""
    directory = root / site
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    made = []
    for size in sizes:
        name = f"{site}-{_size_label(size)}.bin"
        data = rng.randbytes(size)
        (directory / name).write_bytes(data)
        made.append((name, directory / name, size, hashlib.md5(data).hexdigest()))
    return made


def start_sites(
    network: Network, workdir: Path, sources: int, sizes: Sequence[int]
) -> tuple[list[tuple[Profile, Site]], dict[str, list[Dataset]]]:
    sites: list[tuple[Profile, Site]] = []
    datasets: dict[str, list[Dataset]] = {}
    for number, profile in enumerate(PROFILES[:sources]):
        site = network.add_site(profile.name, rate_bit=profile.rate_bit, latency_ms=profile.latency_ms)
        made = make_datasets(workdir / "sites", profile.name, sizes, seed=number + 1)
        base = site.serve_directory(
            workdir / "sites" / profile.name, log=workdir / f"site-{profile.name}.log"
        )
        sites.append((profile, site))
        datasets[profile.name] = [
            Dataset(profile.name, name, path, size, md5, f"{base}{name}") for name, path, size, md5 in made
        ]
    return sites, datasets


def measure_baselines(
    datasets: dict[str, list[Dataset]], deadline: float, repeats: int = 2
) -> dict[str, Baseline]:
    """A lone httpx download of each site's largest dataset: the link as a plain client sees it."""
    baselines: dict[str, Baseline] = {}
    for site, files in datasets.items():
        largest = max(files, key=lambda dataset: dataset.size)
        timings = []
        for _ in range(repeats):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the run's deadline passed while measuring the direct downloads")
            digest = hashlib.md5()
            started = time.perf_counter()
            with (
                httpx.Client(timeout=min(remaining, 60), trust_env=False) as client,
                client.stream("GET", largest.url) as response,
            ):
                response.raise_for_status()
                for chunk in response.iter_bytes(1 * MiB):
                    digest.update(chunk)
            timings.append(time.perf_counter() - started)
            if digest.hexdigest() != largest.md5:
                raise RuntimeError(f"the direct download of {largest.url} has another MD5")
        baselines[site] = Baseline(largest.size, statistics.median(timings))
    return baselines


# -- the broker ----------------------------------------------------------------------------------------------


def broker_process(workdir: Path, sessions: int, concurrency: int, workers: int, lease: str) -> ServerProcess:
    """An ``ecliptic serve`` for this run, not started yet: the caller arranges its stop first."""
    data_dir = workdir / "broker"
    data_dir.mkdir()
    room = str(sessions + concurrency + 8)
    env = {
        "ECLIPTIC_LOCAL_CORES": room,
        "ECLIPTIC_LOCAL_MEMORY_GIB": room,
        "ECLIPTIC_LOCAL_STORAGE_GIB": room,
        "ECLIPTIC_WORKERS": str(workers),
        # ServerProcess's short lease is for crash tests; a staging that outlives its lease is run twice.
        "ECLIPTIC_LEASE": lease,
        "ECLIPTIC_SCHEDULER": "false",
        # A file that is never there: an ecliptic.toml in the directory the bench runs from is not this run's.
        "ECLIPTIC_CONFIG": str(workdir / "ecliptic.toml"),
        # The sites are reached directly: a proxy from the environment would send the bytes off the machine.
        **dict.fromkeys(PROXY_VARIABLES, ""),
    }
    return ServerProcess(data_dir, f"sqlite:///{data_dir / 'ecliptic.sqlite'}", workdir / "broker.log", **env)


def request_body(dataset: Dataset, index: int) -> dict[str, Any]:
    return {
        "name": f"md5-{index:05d}",
        "executable": {"kind": kinds.COMMAND, "command": COMMAND},
        "compute": {"cores": {"min": 1, "max": 1}, "memory": {"min": 1, "max": 1}},
        "schedule": {"requested": {"duration": "PT10M"}},
        "data": [
            {
                "meta": {"name": DATA_NAME},
                # A distinct URL per session: a broker that caches by URL still has to move every dataset.
                "location": f"{dataset.url}?session={index}",
                "checksum": {"type": "md5", "value": dataset.md5},
            }
        ],
    }


def _instant(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _seconds(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
        with contextlib.suppress(IsoTimeError):
            return parse_duration(value).total_seconds()
    return None


def component_field(component: dict[str, Any], key: str) -> Any:
    """A field of the data component, at its top level or one level down (``state``, ``staging``, …)."""
    if key in component:
        return component[key]
    for value in component.values():
        if isinstance(value, dict) and key in value:
            return value[key]
    return None


def _last_message(body: dict[str, Any]) -> str:
    messages = (body.get("meta") or {}).get("messages") or []
    return str(messages[-1].get("message") or messages[-1]) if messages else "no message"


def _read_history(outcome: Outcome, history: list[dict[str, Any]]) -> None:
    for entry in history:
        if entry.get("component") is None and entry.get("to") == "ACCEPTED":
            outcome.accepted_at = _instant(entry.get("at"))
        if entry.get("component") != "data":
            continue
        if entry.get("to") == "PREPARING" and outcome.staging_start is None:
            outcome.staging_start = _instant(entry.get("at"))
        elif entry.get("to") == "AVAILABLE" and entry.get("from") == "PREPARING":
            outcome.staging_end = _instant(entry.get("at"))


class BrokerClient:
    """The run's API client: a GET that meets a transport error is tried again, a few times, and recorded."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.retried: list[str] = []

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        attempt = 1
        while True:
            try:
                return await self.http.get(url, **kwargs)
            except httpx.TransportError as exc:
                if attempt >= GET_ATTEMPTS:
                    raise
                self.retried.append(f"GET {url}: {type(exc).__name__} {exc}".rstrip())
                await asyncio.sleep(0.2 * attempt)
                attempt += 1

    async def post(self, url: str, body: dict[str, Any], timeout: float | None = None) -> httpx.Response:
        if timeout is None:
            return await self.http.post(url, json=body)
        return await self.http.post(url, json=body, timeout=timeout)


def _poll_delay(polls: int) -> float:
    # Soon at first (a near dataset is staged and hashed in well under a second), then at most once a second.
    return min(0.2 * 1.5**polls, 1.0)


async def _wait_terminal(
    client: BrokerClient, uuid: str, deadline: float
) -> tuple[dict[str, Any] | None, str | None]:
    polls = 0
    phase = None
    while time.monotonic() < deadline:
        response = await client.get(f"sessions/{uuid}")
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            phase = body.get("phase")
            if phase in TERMINAL:
                return body, phase
        await asyncio.sleep(min(_poll_delay(polls), max(0.0, deadline - time.monotonic())))
        polls += 1
    return None, phase


async def run_session(
    client: BrokerClient, index: int, dataset: Dataset, deadline: float, live: dict[int, str]
) -> Outcome:
    outcome = Outcome(index, dataset.site, dataset.name, dataset.size, submitted=time.monotonic())
    step = "POST /requests"
    try:
        if time.monotonic() >= deadline:
            return outcome.lose("not submitted: the run's deadline had passed")
        response = await client.post("requests", request_body(dataset, index))
        if response.status_code != 303:
            return outcome.lose(f"POST /requests answered {response.status_code}: {response.text[:200]}")
        offerset = response.json()
        offers = offerset.get("offers") or []
        if offerset.get("result") != "YES" or not offers:
            return outcome.lose(f"no offer: {_last_message(offerset)}")
        offer = offers[0]
        outcome.session = uuid = str(offer["meta"]["uuid"])
        preparing = ((offer.get("schedule") or {}).get("preparing") or {}).get("duration")
        outcome.offer_prepare_seconds = _seconds(preparing)
        step = "accepting"
        accepted = await client.post(f"sessions/{uuid}", ACCEPT)
        if accepted.status_code != 200:
            return outcome.lose(f"accepting answered {accepted.status_code}: {accepted.text[:200]}")
        live[index] = uuid
        step = "polling"
        body, phase = await _wait_terminal(client, uuid, deadline)
        outcome.ended = time.monotonic()
        outcome.phase = phase
        step = "reading the history"
        history = await client.get(f"sessions/{uuid}/history")
        if history.status_code == 200:
            _read_history(outcome, history.json().get("history") or [])
        if body is None:
            return outcome.lose(f"still {phase} at the run's deadline")
        live.pop(index, None)
        data = (body.get("data") or [{}])[0]
        outcome.reported_seconds = _seconds(component_field(data, "staging_seconds"))
        outcome.estimated_seconds = _seconds(component_field(data, "estimated_seconds"))
        source, basis = component_field(data, "source"), component_field(data, "estimate_basis")
        outcome.source = str(source) if source is not None else None
        outcome.estimate_basis = str(basis) if basis is not None else None
        if phase != "COMPLETED":
            return outcome.lose(f"{phase}: {_last_message(body)}")
        step = "reading the logs"
        logs = await client.get(f"sessions/{uuid}/logs", params={"stream": "stdout"})
        words = logs.text.split() if logs.status_code == 200 else []
        reported = words[0] if words else ""
        if reported != dataset.md5:
            outcome.status = "wrong"
            outcome.problem = f"md5 {reported or '(no output)'} instead of {dataset.md5}"
        else:
            outcome.status = "completed"
        return outcome
    except httpx.HTTPError as exc:
        return outcome.lose(f"{step}: {type(exc).__name__} {exc}".rstrip())


async def _progress(outcomes: list[asyncio.Task[Outcome]], console: Console, started: float) -> None:
    while True:
        await asyncio.sleep(5)
        finished = [task.result() for task in outcomes if task.done() and not task.cancelled()]
        done = sum(1 for outcome in finished if outcome.status == "completed")
        console.print(
            f"  {time.monotonic() - started:5.1f}s  {len(finished)}/{len(outcomes)} ended, {done} completed"
        )


async def run_sessions(
    base_url: str,
    plan: Sequence[Dataset],
    concurrency: int,
    deadline: float,
    console: Console,
) -> tuple[list[Outcome], list[str]]:
    live: dict[int, str] = {}
    limits = httpx.Limits(
        max_connections=concurrency + 4,
        max_keepalive_connections=concurrency + 4,
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )
    started = time.monotonic()
    async with httpx.AsyncClient(
        base_url=base_url, timeout=REQUEST_TIMEOUT, limits=limits, trust_env=False
    ) as http:
        client = BrokerClient(http)
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int, dataset: Dataset) -> Outcome:
            async with gate:
                return await run_session(client, index, dataset, deadline, live)

        tasks = [asyncio.create_task(one(index, dataset)) for index, dataset in enumerate(plan)]
        reporter = asyncio.create_task(_progress(tasks, console, started))
        try:
            # Every loop stops by itself at the deadline; a request in flight then is cut off soon after.
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()) + 3)
        finally:
            reporter.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, reporter, return_exceptions=True)
            # Sessions still running must not outlive the run: the broker is stopped next, its runs are not.
            cancels = [client.post(f"sessions/{uuid}", CANCEL, timeout=5) for uuid in live.values()]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*cancels, return_exceptions=True), timeout=6)
        outcomes = []
        for index, (task, dataset) in enumerate(zip(tasks, plan, strict=True)):
            if task in pending or task.cancelled() or task.exception() is not None:
                stopped = task in pending or task.cancelled()
                problem = "cancelled at the deadline" if stopped else repr(task.exception())
                outcomes.append(Outcome(index, dataset.site, dataset.name, dataset.size).lose(problem))
            else:
                outcomes.append(task.result())
    return outcomes, client.retried


# -- the report ----------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def _busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """How long at least one of the intervals was running (their union's length)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def _rate_bit(rate: int) -> str:
    return f"{rate / 1e6:g} Mbit/s"


def render(report: Report, console: Console) -> None:
    by_site: dict[str, list[Outcome]] = {profile.name: [] for profile, _ in report.sites}
    for outcome in report.outcomes:
        by_site.setdefault(outcome.site, []).append(outcome)
    profiles = {profile.name: (profile, address) for profile, address in report.sites}

    results = Table(title="Sessions by site")
    for column in ("site", "address", "tbf rate", "sessions", "completed", "wrong", "lost"):
        results.add_column(column, justify="left" if column in ("site", "address") else "right")
    results.add_column("queued s (median)", justify="right")
    results.add_column("end to end s (median)", justify="right")
    for site, outcomes in by_site.items():
        profile, address = profiles[site]
        ended = [o.ended - o.submitted for o in outcomes if o.ended is not None]
        queued = [o.queued_seconds for o in outcomes if o.queued_seconds is not None]
        results.add_row(
            site,
            address,
            _rate_bit(profile.rate_bit),
            str(len(outcomes)),
            str(sum(o.status == "completed" for o in outcomes)),
            str(sum(o.status == "wrong" for o in outcomes)),
            str(sum(o.status == "lost" for o in outcomes)),
            _fmt(_median(queued)),
            _fmt(_median(ended)),
        )
    console.print(results)

    staging = Table(title="Staging: the data component's PREPARING → AVAILABLE")
    for column in (
        "site",
        "broker source",
        "staged",
        "mean s",
        "median s",
        "max s",
        "broker staging_seconds",
        "estimated s",
        "estimate basis",
        "actual/estimated (with history)",
        f"within ±{ESTIMATE_TOLERANCE:.0%}",
        "offer preparing s",
    ):
        words = column in ("site", "broker source", "estimate basis")
        staging.add_column(column, justify="left" if words else "right")
    for site, outcomes in by_site.items():
        staged = [o for o in outcomes if o.staging_seconds is not None]
        seconds = [o.staging_seconds for o in staged if o.staging_seconds is not None]
        sources = sorted({o.source for o in outcomes if o.source})
        # "With history": staging that began after the first staging from this site had finished.
        first_end = min((o.staging_end for o in staged if o.staging_end is not None), default=None)
        warm = [
            o
            for o in staged
            if first_end is not None
            and o.staging_start is not None
            and o.staging_start >= first_end
            and o.estimated_seconds
        ]
        ratios = [(o.staging_seconds or 0.0) / (o.estimated_seconds or 1.0) for o in warm]
        within = sum(abs(ratio - 1) <= ESTIMATE_TOLERANCE for ratio in ratios)
        estimated = [o.estimated_seconds for o in outcomes if o.estimated_seconds is not None]
        reported = [o.reported_seconds for o in outcomes if o.reported_seconds is not None]
        prepare = [o.offer_prepare_seconds for o in outcomes if o.offer_prepare_seconds is not None]
        staging.add_row(
            site,
            ", ".join(sources) or "— (no field)",
            str(len(staged)),
            _fmt(_mean(seconds), 3),
            _fmt(_median(seconds), 3),
            _fmt(max(seconds, default=None), 3),
            _fmt(_mean(reported), 3) if reported else "— (no field)",
            _fmt(_mean(estimated), 3) if estimated else "— (no field)",
            ", ".join(sorted({o.estimate_basis for o in outcomes if o.estimate_basis})) or "—",
            f"{_fmt(_mean(ratios))} (n={len(ratios)})" if ratios else "—",
            f"{within}/{len(ratios)}" if ratios else "—",
            _fmt(_mean(prepare), 1),
        )
    console.print(staging)

    throughput = Table(title="Throughput against a direct httpx download from the same site, same run (MB/s)")
    for column in (
        "site",
        "direct",
        "per session (mean)",
        "per session / direct",
        "link while staging",
        "link / direct",
    ):
        throughput.add_column(column, justify="left" if column == "site" else "right")
    for site, outcomes in by_site.items():
        staged = [o for o in outcomes if o.staging_start is not None and o.staging_end is not None]
        rates = [o.size / s / 1e6 for o in staged if (s := o.staging_seconds)]
        intervals = [
            (o.staging_start.timestamp(), o.staging_end.timestamp())
            for o in staged
            if o.staging_start is not None and o.staging_end is not None
        ]
        busy = _busy_seconds(intervals)
        link = sum(o.size for o in staged) / busy / 1e6 if busy > 0 else None
        baseline = report.baselines.get(site)
        direct = baseline.rate / 1e6 if baseline else None
        per_session = _mean(rates)
        throughput.add_row(
            site,
            _fmt(direct),
            _fmt(per_session),
            _fmt(per_session / direct if per_session and direct else None),
            _fmt(link),
            _fmt(link / direct if link and direct else None),
        )
    console.print(throughput)

    problems = [o for o in report.outcomes if o.status != "completed"]
    for outcome in problems[:10]:
        console.print(
            f"  {outcome.status}: #{outcome.index} {outcome.dataset} {outcome.session}: {outcome.problem}"
        )
    if len(problems) > 10:
        console.print(f"  … and {len(problems) - 10} more")
    if report.retried:
        console.print(
            f"  client: {len(report.retried)} GETs retried after transport errors, e.g. {report.retried[0]}"
        )
    timings = report.timings
    console.print(
        "timings: "
        + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items())
        + (f"; {report.sessions / timings['sessions']:.1f} sessions/s" if timings.get("sessions") else "")
    )
    console.print(report.last_line(), highlight=False)


# -- the run -------------------------------------------------------------------------------------------------


def plan_sessions(datasets: dict[str, list[Dataset]], sessions: int) -> list[Dataset]:
    """Round robin over the sites, and over each site's datasets: every site gets every size."""
    sites = list(datasets)
    plan = []
    for index in range(sessions):
        files = datasets[sites[index % len(sites)]]
        plan.append(files[(index // len(sites)) % len(files)])
    return plan


def run(
    sessions: int,
    sources: int = 3,
    *,
    keep: bool = False,
    timeout: float = 600.0,
    concurrency: int = 32,
    sizes: Sequence[int] = DEFAULT_SIZES,
    workers: int = 16,
    lease: str = DEFAULT_LEASE,
    console: Console | None = None,
) -> Report:
    """Everything the bench does, bounded by ``timeout`` seconds in all; raises NetnsUnavailable first."""
    if not 1 <= sources <= len(PROFILES):
        raise ValueError(f"sources must be 1 to {len(PROFILES)}, not {sources}")
    if sessions < 1 or concurrency < 1 or not sizes:
        raise ValueError("sessions, concurrency and sizes must be positive")
    console = console or Console(width=max(Console().width, 160))
    if reason := unavailable_reason():
        raise NetnsUnavailable(reason)
    begun = time.monotonic()
    deadline = begun + timeout
    timings: dict[str, float] = {}
    workdir = Path(tempfile.mkdtemp(prefix="ecliptic-staging-md5-"))
    with contextlib.ExitStack() as stack:
        if keep:
            stack.callback(console.print, f"kept: {workdir} (datasets, broker store and logs)")
        else:
            stack.callback(shutil.rmtree, workdir, True)
        network = stack.enter_context(Network())
        sites, datasets = start_sites(network, workdir, sources, sizes)
        baselines = measure_baselines(datasets, deadline)
        server = broker_process(workdir, sessions, concurrency, workers, lease)
        # Registered before the start: a signal during the start must not leave the process behind.
        stack.callback(server.stop)
        server.start()
        timings["setup"] = time.monotonic() - begun
        console.print(
            f"{sessions} sessions, {concurrency} in flight, over {sources} sites "
            f"({', '.join(f'{p.name} {s.address}' for p, s in sites)}); broker at {server.url}"
        )
        started = time.monotonic()
        plan = plan_sessions(datasets, sessions)
        session_deadline = deadline - TEARDOWN_RESERVE
        outcomes, retried = asyncio.run(
            run_sessions(server.url, plan, concurrency, session_deadline, console)
        )
        timings["sessions"] = time.monotonic() - started
    timings["total"] = time.monotonic() - begun
    report = Report(sessions, outcomes, baselines, [(p, s.address) for p, s in sites], timings, retried)
    render(report, console)
    return report


def _sizes(text: str) -> list[int]:
    units = {"k": KiB, "m": MiB}
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        factor = units.get(part[-1:], 1)
        number = part[:-1] if part[-1:] in units else part
        sizes.append(int(float(number) * factor))
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive, e.g. 256K,1M,4M")
    return sizes


def _terminate(signum: int, frame: object) -> None:
    # SystemExit unwinds through the ExitStack, so the sites and the broker are torn down on SIGTERM too.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=100, help="how many sessions (default 100)")
    parser.add_argument("--sources", type=int, default=3, help=f"how many sites, 1 to {len(PROFILES)}")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (datasets, store, logs)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the whole run (default 600)")
    parser.add_argument("--concurrency", type=int, default=32, help="sessions in flight (default 32)")
    parser.add_argument("--workers", type=int, default=16, help="the broker's engine threads (default 16)")
    parser.add_argument(
        "--lease", default=DEFAULT_LEASE, help=f"the broker's engine lease (default {DEFAULT_LEASE})"
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=list(DEFAULT_SIZES),
        help="dataset sizes per site (default 256K,1M,4M)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        report = run(
            args.sessions,
            args.sources,
            keep=args.keep,
            timeout=args.timeout,
            concurrency=args.concurrency,
            sizes=args.sizes,
            workers=args.workers,
            lease=args.lease,
        )
    except NetnsUnavailable as exc:
        print(f"cannot make the sites: network namespaces are not usable here: {exc}", file=sys.stderr)
        return 2
    return 1 if report.wrong or report.lost else 0


if __name__ == "__main__":
    sys.exit(main())
