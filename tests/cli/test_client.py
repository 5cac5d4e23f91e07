"""The client commands against a real broker on loopback, through Typer's runner as a user would type them."""

from __future__ import annotations

import functools
import http.server
import json
import re
import threading
from pathlib import Path

import pytest
from tests.conftest import LiveServer, free_port
from typer.testing import CliRunner, Result

from ecliptic.broker import kinds
from ecliptic.broker.client import BrokerClient, BrokerError
from ecliptic.cli.main import app
from ecliptic.cli.request_file import RequestFileError, parse_request

HELLO = """\
name: hello
executable:
  kind: urn:ecliptic:executable:command
  command: ["sh", "-c", "echo hello"]
schedule:
  requested:
    duration: PT1M
"""

SLEEP = """\
executable:
  kind: urn:ecliptic:executable:command
  command: ["sleep", "60"]
schedule:
  requested:
    duration: PT5M
"""

WATCH = ["--interval", "0.1", "--timeout", "120"]
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def run(url: str, *args: str, stdin: str | None = None) -> Result:
    """``ecliptic ARGS --url URL``; any exception other than an exit is a bug in the client, so it fails here."""
    runner = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200"})
    result = runner.invoke(app, [*args, "--url", url], input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"ecliptic {' '.join(args)} raised:\n{result.output}") from result.exception
    return result


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def accepted_uuid(output: str) -> str:
    # Not "is ACCEPTED" only: the workers may have moved it on by the time the broker answers.
    found = re.search(rf"session ({UUID}) is [A-Z]+", output)
    assert found, output
    return found[1]


def test_submit_accept_watch_then_outputs(server: LiveServer, tmp_path: Path) -> None:
    result = run(
        server.url, "submit", write(tmp_path, "hello.yaml", HELLO), "--accept-first", "--watch", *WATCH
    )
    assert result.exit_code == 0, result.output
    assert "offer set" in result.output
    assert "COMPLETED" in result.output
    assert "exit code 0" in result.output
    session = accepted_uuid(result.output)

    logs = run(server.url, "logs", session)
    assert logs.exit_code == 0, logs.output
    assert logs.stdout == "hello\n"
    assert run(server.url, "logs", session, "--stream", "stderr").stdout == ""

    listing = run(server.url, "files", session)
    assert listing.exit_code == 0, listing.output
    assert "logs/stdout.txt" in listing.output

    assert run(server.url, "files", session, "logs/stdout.txt").stdout == "hello\n"
    saved = run(server.url, "files", session, "logs/stdout.txt", "-o", str(tmp_path))
    assert saved.exit_code == 0, saved.output
    assert (tmp_path / "stdout.txt").read_text() == "hello\n"
    missing = run(server.url, "files", session, "no/such/file")
    assert missing.exit_code == 1
    assert "no file" in missing.output

    shown = run(server.url, "show", session)
    assert shown.exit_code == 0, shown.output
    assert "COMPLETED" in shown.output
    assert "echo hello" in shown.output
    as_json = json.loads(run(server.url, "show", session, "--json").stdout)
    assert as_json["phase"] == "COMPLETED"

    table = run(server.url, "sessions", "--phase", "completed")
    assert table.exit_code == 0, table.output
    assert session in table.output
    listed = json.loads(run(server.url, "sessions", "--json", "--limit", "10").stdout)
    assert session in {item["meta"]["uuid"] for item in listed["sessions"]}


def test_submit_json_prints_the_offer_set(server: LiveServer, tmp_path: Path) -> None:
    request = {
        "executable": {"kind": "urn:ecliptic:executable:command", "command": ["true"]},
        "schedule": {"requested": {"duration": "PT1M"}},
    }
    result = run(server.url, "submit", write(tmp_path, "request.json", json.dumps(request)), "--json")
    assert result.exit_code == 0, result.output
    offerset = json.loads(result.stdout)
    assert offerset["result"] == "YES"
    assert offerset["offers"][0]["phase"] == "OFFERED"


def test_submit_from_stdin(server: LiveServer) -> None:
    result = run(server.url, "submit", "-", "--accept-first", "--watch", *WATCH, stdin=HELLO)
    assert result.exit_code == 0, result.output
    assert "ended COMPLETED" in result.output


def test_yaml_syntax_error_names_file_and_line(server: LiveServer, tmp_path: Path) -> None:
    broken = HELLO.replace('  command: ["sh", "-c", "echo hello"]', '  command: ["sh", "-c", "echo hello"')
    path = write(tmp_path, "broken.yaml", broken)
    result = run(server.url, "submit", path)
    assert result.exit_code == 2, result.output
    assert "broken.yaml" in result.output
    assert re.search(r"line \d+, column \d+", result.output)
    assert "hint:" in result.output
    assert "Traceback" not in result.output


def test_json_syntax_error_names_file_and_line(server: LiveServer, tmp_path: Path) -> None:
    path = write(tmp_path, "broken.json", '{\n  "executable": {"kind": "x",}\n}\n')
    result = run(server.url, "submit", path)
    assert result.exit_code == 2, result.output
    assert "broken.json, line 2, column" in result.output
    assert "double quotes" in result.output


def test_missing_file(server: LiveServer, tmp_path: Path) -> None:
    result = run(server.url, "submit", str(tmp_path / "nowhere.yaml"))
    assert result.exit_code == 2
    assert "nowhere.yaml: no such file" in result.output


def test_no_offers_shows_the_messages(server: LiveServer, tmp_path: Path) -> None:
    greedy = HELLO + f"compute:\n  kind: {kinds.COMPUTE}\n  cores:\n    min: 1000\n"
    result = run(server.url, "submit", write(tmp_path, "greedy.yaml", greedy), "--accept-first")
    assert result.exit_code == 1, result.output
    assert "no offers" in result.output
    assert "ERROR" in result.output
    assert "1000" in result.output


def test_malformed_request_lists_details(server: LiveServer, tmp_path: Path) -> None:
    bad = (
        "executable:\n  kind: urn:ecliptic:executable:command\n  command: []\ncompute:\n  cores: {min: -1}\n"
    )
    result = run(server.url, "submit", write(tmp_path, "bad.yaml", bad))
    assert result.exit_code == 2, result.output
    assert "executable.command:" in result.output
    assert "compute.cores.min:" in result.output


def test_accept_twice_is_a_conflict(server: LiveServer, tmp_path: Path) -> None:
    offers = run(server.url, "submit", write(tmp_path, "hello.yaml", HELLO), "--json")
    uuids = [offer["meta"]["uuid"] for offer in json.loads(offers.stdout)["offers"]]
    assert len(uuids) >= 2, offers.output

    first = run(server.url, "accept", uuids[0])
    assert first.exit_code == 0, first.output
    assert uuids[0] in first.output

    sibling = run(server.url, "accept", uuids[1])
    assert sibling.exit_code == 1, sibling.output
    assert "Cannot change phase to ACCEPTED" in sibling.output
    assert "REJECTED" in sibling.output

    assert run(server.url, "watch", uuids[0], *WATCH).exit_code == 0
    again = run(server.url, "accept", uuids[0])
    assert again.exit_code == 1, again.output
    assert "COMPLETED" in again.output


def test_reject_an_offer(server: LiveServer, tmp_path: Path) -> None:
    offers = run(server.url, "submit", write(tmp_path, "hello.yaml", HELLO), "--json")
    first = json.loads(offers.stdout)["offers"][0]["meta"]["uuid"]
    result = run(server.url, "reject", first)
    assert result.exit_code == 0, result.output
    assert "REJECTED" in result.output
    assert run(server.url, "watch", first, *WATCH).exit_code == 1


def test_direct_and_cancel(server: LiveServer, tmp_path: Path) -> None:
    started = run(server.url, "direct", write(tmp_path, "sleep.yaml", SLEEP))
    assert started.exit_code == 0, started.output
    session = accepted_uuid(started.output)

    impatient = run(server.url, "watch", session, "--interval", "0.1", "--timeout", "0.5")
    assert impatient.exit_code == 1
    assert "still" in impatient.output

    cancelled = run(server.url, "cancel", session)
    assert cancelled.exit_code == 0, cancelled.output
    assert "CANCELLED" in cancelled.output

    watched = run(server.url, "watch", session, *WATCH)
    assert watched.exit_code == 1, watched.output
    assert "ended CANCELLED" in watched.output


def test_direct_watch_completes(server: LiveServer, tmp_path: Path) -> None:
    result = run(server.url, "direct", write(tmp_path, "hello.yaml", HELLO), "--watch", *WATCH)
    assert result.exit_code == 0, result.output
    assert "COMPLETED" in result.output

    ended = json.loads(
        run(server.url, "direct", write(tmp_path, "hello.yaml", HELLO), "--watch", "--json", *WATCH).stdout
    )
    assert ended["phase"] == "COMPLETED"


def test_show_says_where_data_came_from_and_how_long_it_took(server: LiveServer, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "table.csv").write_text("a,b\n1,2\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        port = httpd.server_address[1]
        request = HELLO + f"data:\n  - location: http://127.0.0.1:{port}/table.csv\n"
        result = run(server.url, "direct", write(tmp_path, "data.yaml", request), "--watch", "--json", *WATCH)
        ended = json.loads(result.stdout)
        assert ended["phase"] == "COMPLETED", result.output
        shown = run(server.url, "show", ended["meta"]["uuid"])
        assert shown.exit_code == 0, shown.output
        assert f"from http:127.0.0.1:{port}" in shown.output
        assert "took" in shown.output and "estimated" in shown.output
    finally:
        httpd.shutdown()


def test_direct_that_cannot_run_fails_with_messages(server: LiveServer, tmp_path: Path) -> None:
    greedy = HELLO + f"compute:\n  kind: {kinds.COMPUTE}\n  cores:\n    min: 1000\n"
    result = run(server.url, "direct", write(tmp_path, "greedy.yaml", greedy))
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output
    assert "1000" in result.output


def test_failing_command_exits_1_with_its_code(server: LiveServer, tmp_path: Path) -> None:
    failing = HELLO.replace('"echo hello"', '"echo bad >&2; exit 3"')
    result = run(server.url, "direct", write(tmp_path, "failing.yaml", failing), "--watch", *WATCH)
    assert result.exit_code == 1, result.output
    assert "ended FAILED (exit code 3)" in result.output
    session = accepted_uuid(result.output)
    assert run(server.url, "logs", session, "--stream", "stderr").stdout == "bad\n"


def test_logs_follow_prints_each_line_once(server: LiveServer, tmp_path: Path) -> None:
    slow = HELLO.replace('"echo hello"', '"echo one; sleep 1; echo two; sleep 1; echo three"')
    started = run(server.url, "direct", write(tmp_path, "slow.yaml", slow))
    session = accepted_uuid(started.output)
    followed = run(server.url, "logs", session, "--follow", "--interval", "0.1")
    assert followed.exit_code == 0, followed.output
    assert followed.stdout == "one\ntwo\nthree\n"
    assert run(server.url, "logs", session, "--tail", "1").stdout == "three\n"
    assert run(server.url, "logs", session, "--follow", "--tail", "2").stdout == "two\nthree\n"


def test_unknown_and_malformed_uuid(server: LiveServer) -> None:
    unknown = run(server.url, "show", "00000000-0000-4000-8000-000000000000")
    assert unknown.exit_code == 1
    assert "No session 00000000-0000-4000-8000-000000000000" in unknown.output
    malformed = run(server.url, "cancel", "not-a-uuid")
    assert malformed.exit_code == 2
    assert "not a session UUID" in malformed.output


def test_unreachable_broker(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    result = run(url, "sessions")
    assert result.exit_code == 1
    assert result.output.strip() == f"error: cannot reach the broker at {url}: is `ecliptic serve` running?"
    submitted = run(url, "submit", write(tmp_path, "hello.yaml", HELLO))
    assert submitted.exit_code == 1
    assert "cannot reach the broker" in submitted.output


def test_not_a_url(tmp_path: Path) -> None:
    result = run("127.0.0.1:8080", "sessions")
    assert result.exit_code == 2
    assert "not an http(s) URL" in result.output


def test_long_json_line_is_cut_around_the_error() -> None:
    text = '{"executable": {"command": [' + ", ".join(['"x"'] * 200) + ",]}}"
    with pytest.raises(RequestFileError) as caught:
        parse_request(text, "long.json", "json")
    assert caught.value.excerpt is not None
    source, caret = caught.value.excerpt.splitlines()
    assert len(source) < 120
    assert source[caret.index("^")] == "]"


def test_watch_needs_accept_first(tmp_path: Path) -> None:
    result = run(
        f"http://127.0.0.1:{free_port()}/", "submit", write(tmp_path, "hello.yaml", HELLO), "--watch"
    )
    assert result.exit_code == 2
    assert "--accept-first" in result.output


def test_client_as_a_library(server: LiveServer) -> None:
    with BrokerClient(server.url) as client:
        offerset = client.submit(parse_request(HELLO, "hello.yaml", "yaml"))
        assert offerset["result"] == "YES"
        session = client.accept(offerset["offers"][0]["meta"]["uuid"])
        # The answer shows the session as it is when read back, which the broker's workers may have moved on.
        assert session["phase"] in ("ACCEPTED", "WAITING", "PREPARING", "AVAILABLE", "RELEASING", "COMPLETED")
        assert client.offerset(offerset["meta"]["uuid"])["meta"]["uuid"] == offerset["meta"]["uuid"]
        with pytest.raises(BrokerError) as caught:
            client.session("00000000-0000-4000-8000-000000000000")
        assert caught.value.status == 404


@pytest.mark.parametrize(
    ("text", "where", "hint"),
    [
        ("executable:\n\tkind: x\n", "line 2, column 1", "tabs"),
        ("executable:\n  kind: x\n   command: [a]\n", "line 3", "indented too far"),
        ("executable: {kind: x\n", "line 2", "not closed"),
        ("a: 1\n---\nb: 2\n", "line 2", "one request per file"),
    ],
)
def test_yaml_errors_say_where_and_how(text: str, where: str, hint: str) -> None:
    with pytest.raises(RequestFileError) as caught:
        parse_request(text, "request.yaml", "yaml")
    assert caught.value.message.startswith("request.yaml, ")
    assert where in caught.value.message
    assert caught.value.hint is not None and hint in caught.value.hint
