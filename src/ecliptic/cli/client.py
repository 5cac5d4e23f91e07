"""The client commands: submit, direct, accept, reject, cancel, sessions, watch, logs, files, show.

Thin on purpose: read a file, make one or a few calls with :class:`~ecliptic.broker.client.BrokerClient`,
print. Anything a script needs is in that client or behind ``--json``.

Exit codes: 0 success; 1 the broker said no or the session did not complete (NO offers, a refused phase
change, a FAILED/CANCELLED/EXPIRED/REJECTED session, an unknown uuid, an unreachable broker); 2 the input is
wrong (a file that does not parse, a request the broker calls malformed, a bad option).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.live import Live
from rich.text import Text

from ecliptic.broker.client import (
    DEFAULT_URL,
    BrokerClient,
    BrokerError,
    BrokerUnreachable,
    Conflict,
    Json,
)
from ecliptic.broker.phases import SessionPhase
from ecliptic.cli import render
from ecliptic.cli.request_file import RequestDocument, RequestFileError, read_request


def _console(*, stderr: bool = False) -> Console:
    # Made per call, not at import: the console must write to whatever sys.stdout is now (tests swap it).
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped or captured: lay tables out at their natural width instead of folding them into 80 columns.
        console.width = 200
    return console


def _out() -> Console:
    return _console()


def _err() -> Console:
    return _console(stderr=True)


def _quiet_http_logs() -> None:
    # The root command logs at INFO, which would print a line for every request httpx makes: noise for a
    # client command unless -v asked for DEBUG.
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _fail(message: str, code: int = 1, *, hint: str | None = None, excerpt: str | None = None) -> NoReturn:
    err = _err()
    line = Text()
    line.append("error: ", style="bold red")
    line.append(message)
    err.print(line)
    if excerpt:
        err.print(Text(excerpt, style="dim"))
    if hint:
        err.print(Text.assemble(("hint: ", "bold cyan"), hint))
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    typer.echo(render.as_json(data))


def _loc(loc: Any) -> str:
    if isinstance(loc, list):
        return ".".join(str(part) for part in loc) or "body"
    return str(loc)


@contextlib.contextmanager
def _broker(url: str) -> Iterator[BrokerClient]:
    """A client for ``url``, turning every broker failure into one clear message and an exit code."""
    _quiet_http_logs()
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        _fail(
            f"{url!r} is not a URL: {exc}", 2, hint="give the broker's base URL, e.g. http://127.0.0.1:8080/"
        )
    if parsed.scheme not in ("http", "https") or not parsed.host:
        _fail(
            f"{url!r} is not an http(s) URL",
            2,
            hint="give the broker's base URL, e.g. http://127.0.0.1:8080/",
        )
    try:
        with BrokerClient(url) as client:
            yield client
    except BrokerUnreachable as exc:
        if exc.refused:
            _fail(f"cannot reach the broker at {exc.url}: is `ecliptic serve` running?")
        _fail(f"the broker at {exc.url} did not answer: {exc.reason}")
    except Conflict as exc:
        current = exc.session.get("phase") if exc.session else None
        _fail(
            exc.message + (f" (the session is {current})" if current and current not in exc.message else "")
        )
    except BrokerError as exc:
        err = _err()
        if exc.details and exc.status == 400:
            line = Text()
            line.append("error: ", style="bold red")
            line.append(exc.message)
            err.print(line)
            for detail in exc.details:
                if len(exc.details) == 1 and str(detail.get("msg", "")) in exc.message:
                    continue  # the message already says it; listing one problem again is noise
                err.print(
                    Text.assemble("  ", (_loc(detail.get("loc")), "bold"), ": ", str(detail.get("msg", "")))
                )
            raise typer.Exit(2) from exc
        _fail(exc.message, 2 if exc.status in (400, 406, 415, 422) else 1)


def _load(source: str) -> RequestDocument:
    try:
        return read_request(source)
    except RequestFileError as exc:
        _fail(exc.message, 2, hint=exc.hint, excerpt=exc.excerpt)


def _session_line(session: Json, verb: str = "is") -> Text:
    return Text.assemble(
        "session ", (render.uuid_of(session), "bold"), f" {verb} ", render.phase_text(session.get("phase"))
    )


def _print_messages(console: Console, messages: list[Mapping[str, Any]]) -> None:
    table = render.messages_table(messages)
    if table is not None:
        console.print(table)


# -- watching ------------------------------------------------------------------------------------------------
def watch_session(
    client: BrokerClient,
    session_uuid: str,
    *,
    interval: float = 1.0,
    timeout: float | None = None,
    quiet: bool = False,
) -> Json:
    """Poll until the session is terminal and return it, printing a line per phase change.

    On a terminal a live line below those shows the phase of each component; ``quiet`` shows nothing.
    """
    console = _out()
    started = time.monotonic()
    session = client.session(session_uuid)
    last_phase: str | None = None
    polls = 0
    try:
        with contextlib.ExitStack() as stack:
            live = None if quiet else stack.enter_context(Live(console=console, transient=True))
            while True:
                phase = session.get("phase")
                elapsed = time.monotonic() - started
                if phase != last_phase and live is not None:
                    console.print(
                        Text.assemble((f"{render.seconds(elapsed):>6}  ", "dim"), render.phase_text(phase))
                    )
                last_phase = phase
                if phase in render.TERMINAL:
                    break
                if live is not None:
                    live.update(render.watch_status(session, elapsed))
                if timeout is not None and elapsed >= timeout:
                    _fail(
                        f"session {session_uuid} is still {phase} after {render.seconds(timeout)}"
                        f" (it keeps going; `ecliptic cancel {session_uuid}` stops it)"
                    )
                # Quick first polls so a short session ends promptly, then the chosen interval.
                time.sleep(min(interval, 0.1 * (polls + 1)))
                polls += 1
                session = client.session(session_uuid)
    except KeyboardInterrupt:
        _err().print(
            Text(
                f"stopped watching: session {session_uuid} is {session.get('phase')} and keeps going "
                f"(`ecliptic cancel {session_uuid}` stops it)"
            )
        )
        raise typer.Exit(130) from None
    return session


def _final(session: Json, *, show: bool = True) -> NoReturn:
    """Print how a terminal session ended and exit 0 only if it COMPLETED."""
    phase = session.get("phase")
    if show:
        console = _out()
        line = _session_line(session, "ended")
        code = render.exit_code(session)
        if code:
            line.append(f" (exit code {code})")
        console.print(line)
        _print_messages(console, render.messages_of(session))
    raise typer.Exit(0 if phase == SessionPhase.COMPLETED else 1)


# -- commands ------------------------------------------------------------------------------------------------
UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="ECLIPTIC_URL", show_envvar=True, help="Base URL of the broker."),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the broker's JSON instead of tables (for scripts).")
]
IntervalOption = Annotated[
    float, typer.Option("--interval", min=0.05, help="Seconds between polls while watching.")
]
TimeoutOption = Annotated[
    float | None, typer.Option("--timeout", min=0, help="Give up watching after this many seconds (exit 1).")
]


class LogStream(enum.StrEnum):
    stdout = "stdout"
    stderr = "stderr"


def submit(
    file: Annotated[
        str, typer.Argument(help="Execution request, YAML or JSON (.json); - reads standard input.")
    ],
    accept_first: Annotated[bool, typer.Option("--accept-first", help="Accept the first offer.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="With --accept-first: watch it until it ends.")
    ] = False,
    json_out: JsonOption = False,
    interval: IntervalOption = 1.0,
    timeout: TimeoutOption = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Ask the broker for offers for a request file, and optionally accept the first and watch it run.

    With --json, prints one JSON document: the offer set, the accepted session with --accept-first, or the
    ended session with --watch.
    """
    if watch and not accept_first:
        _fail(
            "--watch needs --accept-first: there is no session to watch until an offer is accepted",
            2,
            hint="or accept one later and run `ecliptic watch UUID`",
        )
    document = _load(file)
    with _broker(url) as client:
        offerset = client.submit(document.text, document.fmt)
        yes = offerset.get("result") == "YES" and bool(offerset.get("offers"))
        if json_out and (not accept_first or not yes):
            _print_json(offerset)
            raise typer.Exit(0 if yes else 1)
        if not json_out:
            _show_offerset(offerset)
        if not yes:
            raise typer.Exit(1)
        if not accept_first:
            return
        session = client.accept(render.uuid_of(offerset["offers"][0]))
        if not json_out:
            _out().print(_session_line(session))
        if not watch:
            if json_out:
                _print_json(session)
            return
        session = watch_session(
            client, render.uuid_of(session), interval=interval, timeout=timeout, quiet=json_out
        )
        if json_out:
            _print_json(session)
        _final(session, show=not json_out)


def _show_offerset(offerset: Json) -> None:
    console = _out()
    offers = offerset.get("offers") or []
    result = offerset.get("result", "?")
    head = Text.assemble("offer set ", (render.uuid_of(offerset), "bold"), ": ")
    if result == "YES":
        head.append(f"{len(offers)} offer{'s' if len(offers) != 1 else ''}", style="bold green")
    else:
        head.append("no offers", style="bold red")
    console.print(head)
    if offers:
        console.print(render.offers_table(offerset))
    _print_messages(console, render.messages_of(offerset))
    if offers:
        console.print(
            Text(
                "accept one with `ecliptic accept UUID`; unaccepted offers expire by themselves", style="dim"
            )
        )


def direct(
    file: Annotated[
        str, typer.Argument(help="Execution request, YAML or JSON (.json); - reads standard input.")
    ],
    watch: Annotated[bool, typer.Option("--watch", help="Watch the session until it ends.")] = False,
    json_out: JsonOption = False,
    interval: IntervalOption = 1.0,
    timeout: TimeoutOption = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Run a request now: the broker books the first slot and accepts it in one step."""
    document = _load(file)
    with _broker(url) as client:
        session = client.direct(document.text, document.fmt)
        if session.get("phase") == SessionPhase.FAILED or not watch:
            if json_out:
                _print_json(session)
            else:
                _out().print(_session_line(session))
                if session.get("phase") == SessionPhase.FAILED:
                    _print_messages(_out(), render.messages_of(session))
            raise typer.Exit(1 if session.get("phase") == SessionPhase.FAILED else 0)
        if not json_out:
            _out().print(_session_line(session))
        session = watch_session(
            client, render.uuid_of(session), interval=interval, timeout=timeout, quiet=json_out
        )
        if json_out:
            _print_json(session)
        _final(session, show=not json_out)


def _update(session_uuid: str, phase: SessionPhase, url: str, json_out: bool) -> None:
    with _broker(url) as client:
        session = client.update(session_uuid, phase.value)
    if json_out:
        _print_json(session)
    else:
        _out().print(_session_line(session))


def accept(
    session_uuid: Annotated[str, typer.Argument(metavar="UUID", help="An OFFERED session.")],
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Accept an offer: the other offers of its offer set are rejected."""
    _update(session_uuid, SessionPhase.ACCEPTED, url, json_out)


def reject(
    session_uuid: Annotated[str, typer.Argument(metavar="UUID", help="An OFFERED session.")],
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Reject an offer, freeing what it held."""
    _update(session_uuid, SessionPhase.REJECTED, url, json_out)


def cancel(
    session_uuid: Annotated[
        str, typer.Argument(metavar="UUID", help="An accepted, waiting or running session.")
    ],
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Cancel a session: its executable is stopped and its capacity freed."""
    _update(session_uuid, SessionPhase.CANCELLED, url, json_out)


def sessions(
    phase: Annotated[
        SessionPhase | None,
        typer.Option("--phase", case_sensitive=False, help="Only sessions in this phase."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many sessions.")] = 100,
    watch: Annotated[bool, typer.Option("--watch", help="Keep the table up to date until Ctrl-C.")] = False,
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """List sessions, newest first."""
    wanted = phase.value if phase is not None else None
    with _broker(url) as client:
        found = client.sessions(wanted, limit)
        if json_out:
            _print_json({"sessions": found})
            return
        if not watch:
            _out().print(render.sessions_table(found) if found else Text("no sessions", style="dim"))
            return
        with (
            contextlib.suppress(KeyboardInterrupt),
            Live(render.sessions_table(found), console=_out()) as live,
        ):
            while True:
                time.sleep(1.0)
                live.update(render.sessions_table(client.sessions(wanted, limit)))


def watch(
    session_uuid: Annotated[str, typer.Argument(metavar="UUID")],
    interval: IntervalOption = 1.0,
    timeout: TimeoutOption = None,
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Follow a session's phase until it ends; exit 0 if it COMPLETED, 1 otherwise."""
    with _broker(url) as client:
        session = watch_session(client, session_uuid, interval=interval, timeout=timeout, quiet=json_out)
    if json_out:
        _print_json(session)
    _final(session, show=not json_out)


def logs(
    session_uuid: Annotated[str, typer.Argument(metavar="UUID")],
    stream: Annotated[
        LogStream, typer.Option("--stream", help="Which output of the executable.")
    ] = LogStream.stdout,
    tail: Annotated[int | None, typer.Option("--tail", min=1, help="Only the last N lines.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new output until it ends.")
    ] = False,
    interval: IntervalOption = 1.0,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Print what the executable wrote to standard output (or error)."""
    out = typer.get_text_stream("stdout")
    with _broker(url) as client:
        if not follow:
            out.write(client.logs(session_uuid, stream.value, tail))
            out.flush()
            return
        with contextlib.suppress(KeyboardInterrupt):
            _follow(client, session_uuid, stream.value, tail, interval, out)


def _follow(
    client: BrokerClient, session_uuid: str, stream: str, tail: int | None, interval: float, out: IO[str]
) -> None:
    # Each poll asks only for the bytes past what was read. While the session runs only whole lines are
    # printed, so a line (or a multi-byte character) caught half-written is never shown twice or garbled.
    offset = 0
    pending = b""
    first = True
    while True:
        phase = client.session(session_uuid).get("phase")
        ended = phase in render.TERMINAL
        # Read after the phase: once it is terminal the part read next is the end of the log.
        data, offset = client.log_part(session_uuid, stream, offset)
        pending += data
        upto = len(pending) if ended else pending.rfind(b"\n") + 1
        if upto:
            lines = pending[:upto].splitlines(keepends=True)
            if first and tail is not None:
                lines = lines[-tail:]
            out.write(b"".join(lines).decode("utf-8", errors="replace"))
            out.flush()
            pending = pending[upto:]
            first = False
        if ended:
            return
        time.sleep(interval)


def files(
    session_uuid: Annotated[str, typer.Argument(metavar="UUID")],
    path: Annotated[str | None, typer.Argument(help="Download this file instead of listing.")] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Write the file here (a file or a directory; - for stdout)."),
    ] = None,
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """List the files in a session's storage, or download one (to standard output unless -o)."""
    with _broker(url) as client:
        if path is None:
            found = client.files(session_uuid)
            if json_out:
                _print_json({"files": found})
            else:
                _out().print(render.files_table(found) if found else Text("no files", style="dim"))
            return
        if output is None or output == "-":
            client.download(session_uuid, path, typer.get_binary_stream("stdout"))
            return
        target = Path(output)
        if target.is_dir():
            target = target / Path(path).name
        partial = target.with_name(target.name + ".part")
        # Into a side file first, so a failed download never leaves a truncated file under the real name.
        try:
            with partial.open("wb") as handle:
                count = client.download(session_uuid, path, handle)
            partial.replace(target)
        except OSError as exc:
            _fail(f"cannot write {target}: {exc.strerror or exc}")
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()
    _err().print(Text(f"saved {path} to {target} ({render.size(count)})"))


def show(
    session_uuid: Annotated[str, typer.Argument(metavar="UUID")],
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Show one session: phase, schedule, components and messages."""
    with _broker(url) as client:
        session = client.session(session_uuid)
    if json_out:
        _print_json(session)
    else:
        _out().print(render.session_panel(session))


def register(app: typer.Typer) -> None:
    """Add the client commands to the root ``ecliptic`` command."""
    for command in (submit, direct, accept, reject, cancel, sessions, watch, logs, files, show):
        app.command(rich_help_panel="Client")(command)
