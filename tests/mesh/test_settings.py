"""The mesh's config levels: parsing, round trips, templates and the ``config check`` diagnostics."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import NamedTuple

import pytest

from ecliptic.mesh import templates
from ecliptic.mesh.diagnostics import (
    Diagnostic,
    check_network,
    check_pod,
    exit_code,
    render,
    summary,
)
from ecliptic.mesh.settings import (
    ConfigError,
    GiB,
    KiB,
    MiB,
    NetworkConfig,
    PodConfig,
    TiB,
    format_size,
    load_network_config,
    load_pod_config,
    parse_duration,
    parse_size,
)


class _Usage(NamedTuple):
    total: int
    used: int
    free: int


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """A fake 100 GiB disk with 50 GiB free; the list collects the paths measured."""
    measured: list[Path] = []

    def usage(path: Path) -> _Usage:
        measured.append(Path(path))
        return _Usage(100 * GiB, 50 * GiB, 50 * GiB)

    monkeypatch.setattr("ecliptic.mesh.diagnostics.shutil.disk_usage", usage)
    return measured


def only(diagnostics: list[Diagnostic], field: str) -> Diagnostic:
    found = [d for d in diagnostics if d.field == field]
    assert len(found) == 1, diagnostics
    return found[0]


# Sizes and durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4MiB", 4 * MiB),
        ("4 MiB", 4 * MiB),
        ("4mib", 4 * MiB),
        ("100G", 100 * GiB),
        ("100g", 100 * GiB),
        ("1.5TiB", 3 * TiB // 2),
        ("500MB", 500_000_000),
        ("2KB", 2000),
        ("2K", 2048),
        ("123", 123),
        ("123B", 123),
        (" 7 bytes ", 7),
        ("0.1K", 102),
        (".5M", MiB // 2),
        (0, 0),
        (4096, 4096),
        (1e12, 10**12),
    ],
)
def test_parse_size(text: str | int | float, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("12 parsecs", "'parsecs' is not a unit"),
        ("4 Mb/s", "is not a size"),
        ("lots", "write a number followed by a unit"),
        ("", "empty"),
        ("-1G", "cannot be negative"),
        (-5, "cannot be negative"),
        ("1.5", "whole number of bytes"),
        (1.5, "whole number of bytes"),
        (True, "true is not a size"),
        (float("inf"), "whole number"),
    ],
)
def test_parse_size_errors(text: str | int | float, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_size(text)


def test_parsecs_message_quotes_the_value_and_lists_the_units() -> None:
    with pytest.raises(ValueError) as caught:
        parse_size("12 parsecs")
    message = str(caught.value)
    assert message.startswith('"12 parsecs" is not a size')
    assert "KiB" in message and "GB" in message


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (512, "512 B"), (KiB, "1 KiB"), (1536, "1.5 KiB"), (4 * MiB, "4 MiB"), (3 * TiB, "3 TiB")],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10m", 600.0),
        ("30s", 30.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("500ms", 0.5),
        ("2d", 172800.0),
        ("10 min", 600.0),
        ("600", 600.0),
        ("1.5s", 1.5),
        (90, 90.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("12 parsecs", "'parsecs' is not a unit"),
        ("1h30", "30 has no unit"),
        ("ten minutes", "write numbers with units"),
        ("", "empty"),
        ("-5s", "cannot be negative"),
        (-1, "cannot be negative"),
        (False, "false is not a duration"),
    ],
)
def test_parse_duration_errors(text: str | int | float, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_duration(text)


# Models: defaults and round trips


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_text_is_the_default_config(text: str) -> None:
    network = load_network_config(text)
    assert network == NetworkConfig()
    assert (network.block_size, network.replication, network.gc_grace) == (4 * MiB, 1, 600.0)
    assert (network.attr_timeout, network.down_after, network.conflict) == (1.0, 6.0, "newest")
    pod = load_pod_config(text)
    assert pod == PodConfig()
    assert (pod.name, pod.max_disk, pod.target_disk, pod.advertise) == (None, None, None, None)
    assert (pod.cache_size, pod.reserve) == (GiB, 256 * MiB)
    assert check_network(text, "n.toml") == []
    assert check_pod(text, "pod.toml") == []


def test_default_configs_write_empty_text() -> None:
    assert NetworkConfig().to_toml() == ""
    assert PodConfig().to_toml() == ""


def test_to_toml_writes_only_what_differs() -> None:
    config = NetworkConfig.model_validate({"replication": 1, "block_size": "8MiB"})
    assert config.to_toml() == 'block_size = "8MiB"\n'


@pytest.mark.parametrize(
    "values",
    [
        {"block_size": "64KiB", "gc_grace": "90s", "attr_timeout": 0.5, "down_after": "1.5s"},
        {
            "block_size": 32 * MiB,
            "replication": 3,
            "gc_grace": "1h30m",
            "attr_timeout": "2s",
            "down_after": 60,
        },
        {"gc_grace": 0, "attr_timeout": 0},
    ],
)
def test_network_round_trip(values: dict[str, object]) -> None:
    config = NetworkConfig.model_validate(values)
    assert load_network_config(config.to_toml()) == config


@pytest.mark.parametrize(
    "values",
    [
        {"name": "pod-a", "max_disk": "1.5TiB", "target_disk": "500GB", "advertise": "pod-a.lan:7070"},
        {"max_disk": 5000, "cache_size": 0, "reserve": "1G", "advertise": "[2001:db8::1]:7070"},
        {"cache_size": "1.1G", "target_disk": 1},
    ],
)
def test_pod_round_trip(values: dict[str, object]) -> None:
    config = PodConfig.model_validate(values)
    assert load_pod_config(config.to_toml()) == config


def test_models_are_frozen_and_strict_about_keys() -> None:
    config = NetworkConfig()
    with pytest.raises(ValueError):
        config.replication = 2  # type: ignore[misc]
    with pytest.raises(ValueError):
        PodConfig.model_validate({"max_dsk": "1G"})


# Templates


@pytest.mark.parametrize(
    ("level", "name"), [(level, name) for level in ("network", "pod") for name in templates.names(level)]
)
def test_every_template_parses_and_checks_clean(level: str, name: str) -> None:
    text = templates.generate(level, name)  # type: ignore[arg-type]
    tomllib.loads(text)
    if level == "network":
        assert check_network(text, name) == []
        load_network_config(text)
    else:
        assert check_pod(text, name, network=NetworkConfig()) == []
        load_pod_config(text, network=NetworkConfig())


def test_template_names_and_minimal_bodies() -> None:
    assert templates.names("network") == ["minimal", "raid0", "lab"]
    assert templates.names("pod") == ["minimal", "small-disk", "big-disk"]
    for level in ("network", "pod"):
        text = templates.generate(level)
        assert tomllib.loads(text) == {}
        assert "empty" in text
    assert load_network_config(templates.generate("network", "raid0")).replication == 1


def test_unknown_template_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="did you mean 'raid0'") as caught:
        templates.generate("network", "raid1")
    assert "minimal, raid0, lab" in str(caught.value)
    with pytest.raises(ValueError, match="levels"):
        templates.names("cluster")  # type: ignore[arg-type]


# Diagnostics: syntax and values


def test_unknown_key_suggests_the_nearest() -> None:
    [d] = check_network('# comment\nblok_size = "4MiB"\n', "network.toml")
    assert (d.level, d.line, d.column, d.field) == ("error", 2, 1, "blok_size")
    assert d.fix is not None and "did you mean 'block_size'?" in d.fix and "replication" in d.fix


def test_key_of_the_other_level_says_where_it_belongs() -> None:
    [d] = check_network('max_disk = "1T"\n', "network.toml")
    assert d.level == "error" and d.fix is not None and "pod.toml" in d.fix
    [d] = check_pod("replication = 2\n", "pod.toml")
    assert d.level == "error" and d.fix is not None and "network config" in d.fix


def test_tables_are_reported_at_their_header() -> None:
    [d] = check_pod('name = "a"\n\n[disk]\nmax = 1\n', "pod.toml")
    assert (d.level, d.line, d.column, d.field) == ("error", 3, 1, "disk")
    assert "no tables" in d.message


def test_all_problems_are_reported_at_once() -> None:
    text = (
        "# pod.toml\n"
        'name = "pod a"\n'
        'max_disk = "12 parsecs"\n'
        "  cache_size = true\n"
        "colour = 'blue'\n"
        'advertise = "0.0.0.0:7070"\n'
    )
    diagnostics = check_pod(text, "pod.toml")
    assert [(d.field, d.line, d.column) for d in diagnostics] == [
        ("name", 2, 1),
        ("max_disk", 3, 1),
        ("cache_size", 4, 3),
        ("colour", 5, 1),
        ("advertise", 6, 1),
    ]
    assert all(d.level == "error" for d in diagnostics)
    parsecs = only(diagnostics, "max_disk")
    assert '"12 parsecs"' in parsecs.message and "'parsecs' is not a unit" in parsecs.message
    assert parsecs.fix is not None and "max_disk" in parsecs.fix and 'max_disk = "500G"' in parsecs.fix
    assert "listening address" in only(diagnostics, "advertise").message
    assert exit_code(diagnostics) == 2


def test_a_bad_value_does_not_hide_the_semantic_checks() -> None:
    diagnostics = check_network('block_size = "3MiB"\nreplication = 2\n', "network.toml")
    assert [(d.field, d.level) for d in diagnostics] == [("block_size", "error"), ("replication", "warning")]
    assert "nearest are 2 MiB and 4 MiB" in diagnostics[0].message


@pytest.mark.parametrize(
    ("text", "field", "says"),
    [
        ("replication = 0", "replication", "the least is 1"),
        ('replication = "3"', "replication", "without the quotes"),
        ("replication = 1.5", "replication", "not a whole number"),
        ('block_size = "128MiB"', "block_size", "outside the allowed range"),
        ("block_size = 4", "block_size", "outside the allowed range"),
        ("down_after = 0.5", "down_after", "the least is 1 s"),
        ('gc_grace = "soon"', "gc_grace", "not a duration"),
        ("attr_timeout = 61", "attr_timeout", "the most is 60 s"),
        ('conflict = "oldest"', "conflict", 'only "newest"'),
        ("gc_grace = 10:00:00", "gc_grace", "a date or time"),
    ],
)
def test_network_value_errors(text: str, field: str, says: str) -> None:
    [d] = check_network(text + "\n", "network.toml")
    assert (d.level, d.field, d.line, d.column) == ("error", field, 1, 1)
    assert says in d.message
    assert d.fix is not None and field in d.fix


def test_bare_numbers_get_a_unit_suggested() -> None:
    [d] = check_network("block_size = 4\n", "n.toml")
    assert d.fix is not None and 'block_size = "4MiB"' in d.fix
    [d] = check_network("attr_timeout = 500\n", "n.toml")
    assert d.fix is not None and 'attr_timeout = "500ms"' in d.fix


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("pod-a", "no port"),
        ("http://pod-a:7070", "scheme"),
        ("pod-a:99999", "1 to 65535"),
        ("[::]:7070", "listening"),
    ],
)
def test_advertise_errors(value: str, says: str) -> None:
    [d] = check_pod(f'advertise = "{value}"\n', "pod.toml")
    assert d.level == "error" and says in d.message


def test_unquoted_text_points_at_the_value() -> None:
    [d] = check_network("replication = 1\nblock_size = 4MiB\n", "network.toml")
    assert (d.level, d.line, d.column, d.field) == ("error", 2, 14, "block_size")
    assert d.fix == 'write block_size = "4MiB"'


def test_syntax_error_position_comes_from_tomllib() -> None:
    [d] = check_pod('name = "pod-a"\nmax_disk = "1G" cache_size = "1G"\n', "pod.toml")
    assert (d.level, d.line, d.column) == ("error", 2, 17)
    assert d.message.startswith("not valid TOML")


def test_duplicate_key_points_at_the_second() -> None:
    [d] = check_pod('max_disk = "1G"\nreserve = "1G"\nmax_disk = "2G"\n', "pod.toml")
    assert (d.level, d.line, d.column, d.field) == ("error", 3, 1, "max_disk")
    assert "first on line 1" in d.message


def test_unterminated_string() -> None:
    [d] = check_pod('name = "pod-a"\nadvertise = "pod-a:7070\n', "pod.toml")
    assert (d.level, d.line, d.field) == ("error", 2, "advertise")
    assert d.fix is not None and "double quote" in d.fix


# Diagnostics: semantic checks, each at its level and line


@pytest.mark.parametrize(
    ("text", "field", "level", "says"),
    [
        ("replication = 3", "replication", "warning", "one copy of each block"),
        ('block_size = "256KiB"', "block_size", "advice", "1 MiB requests FUSE sends"),
        ('gc_grace = "30s"', "gc_grace", "warning", "Garage"),
        ("gc_grace = 0", "gc_grace", "warning", "could be collected"),
        ("attr_timeout = 0", "attr_timeout", "advice", "network round trip"),
        ("attr_timeout = 30", "attr_timeout", "warning", "up to that long"),
        ("down_after = 1", "down_after", "advice", "mark pods down"),
    ],
)
def test_network_semantic_checks(text: str, field: str, level: str, says: str) -> None:
    diagnostics = check_network(f'# network\nconflict = "newest"\n{text}\n', "network.toml")
    [d] = diagnostics
    assert (d.level, d.field, d.line, d.column) == (level, field, 3, 1)
    assert says in d.message
    assert exit_code(diagnostics) == 0


def test_network_boundaries_are_quiet() -> None:
    text = 'block_size = "1MiB"\ngc_grace = "1m"\nattr_timeout = 10\ndown_after = 3\n'
    assert check_network(text, "network.toml") == []


def test_short_bare_gc_grace_suggests_minutes() -> None:
    [d] = check_network("gc_grace = 10\n", "network.toml")
    assert d.fix is not None and 'gc_grace = "10m"' in d.fix


@pytest.mark.parametrize(
    ("text", "field", "level", "says"),
    [
        ('max_disk = "10G"\ntarget_disk = "20G"', "target_disk", "error", "larger than max_disk"),
        ('max_disk = "10G"\ncache_size = "20G"', "cache_size", "warning", "larger than max_disk"),
        ('name = "a"\ntarget_disk = 500', "target_disk", "warning", "500 bytes"),
        ('name = "a"\ncache_size = 0', "cache_size", "advice", "over the network"),
        ('name = "a"\nreserve = 0', "reserve", "advice", "fail to write"),
        ('name = "a"\nadvertise = "127.0.0.1:7070"', "advertise", "warning", "loopback"),
        ('name = "a"\nadvertise = "localhost:7070"', "advertise", "warning", "loopback"),
        ('name = "a"\nadvertise = "[::1]:7070"', "advertise", "warning", "loopback"),
    ],
)
def test_pod_semantic_checks(text: str, field: str, level: str, says: str) -> None:
    [d] = check_pod(text + "\n", "pod.toml")
    assert (d.level, d.field, d.line, d.column) == (level, field, 2, 1)
    assert says in d.message


def test_pod_checks_against_the_network_block_size() -> None:
    network = NetworkConfig.model_validate({"block_size": "8MiB"})
    text = 'name = "a"\nmax_disk = "4M"\ncache_size = "1M"\n'
    diagnostics = check_pod(text, "pod.toml", network=network)
    assert [(d.field, d.level, d.line) for d in diagnostics] == [
        ("max_disk", "error", 2),
        ("cache_size", "warning", 3),
    ]
    assert "could not store a single block" in diagnostics[0].message
    assert check_pod(text, "pod.toml") == []


def test_max_disk_larger_than_the_disk(disk: list[Path], tmp_path: Path) -> None:
    diagnostics = check_pod('name = "a"\nmax_disk = "1T"\n', "pod.toml", root=tmp_path)
    d = only(diagnostics, "max_disk")
    assert (d.level, d.line) == ("warning", 2)
    assert "100 GiB in all" in d.message
    assert disk == [tmp_path]


def test_reserve_at_least_the_free_space(disk: list[Path], tmp_path: Path) -> None:
    diagnostics = check_pod('name = "a"\n\nreserve = "50G"\n', "pod.toml", root=tmp_path)
    d = only(diagnostics, "reserve")
    assert (d.level, d.line) == ("error", 3)
    assert "could not store anything" in d.message
    assert exit_code(diagnostics) == 2


def test_default_reserve_has_no_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(
        "ecliptic.mesh.diagnostics.shutil.disk_usage", lambda path: _Usage(GiB, GiB - MiB, MiB)
    )
    [d] = check_pod("", "pod.toml", root=tmp_path)
    assert (d.level, d.field, d.line, d.column) == ("error", "reserve", None, None)


def test_max_disk_beyond_the_free_space_is_advice(disk: list[Path], tmp_path: Path) -> None:
    [d] = check_pod('max_disk = "60G"\n', "pod.toml", root=tmp_path)
    assert (d.level, d.field, d.line) == ("advice", "max_disk", 1)
    assert check_pod('max_disk = "40G"\n', "pod.toml", root=tmp_path) == []


def test_a_root_not_made_yet_measures_its_parent(disk: list[Path], tmp_path: Path) -> None:
    assert check_pod("", "pod.toml", root=tmp_path / "state" / "pod") == []
    assert disk == [tmp_path]


def test_a_disk_that_cannot_be_measured_is_advice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fail(path: Path) -> _Usage:
        raise PermissionError("denied")

    monkeypatch.setattr("ecliptic.mesh.diagnostics.shutil.disk_usage", fail)
    [d] = check_pod("", "pod.toml", root=tmp_path)
    assert (d.level, d.field) == ("advice", None)


# Output


def test_render_is_compiler_like() -> None:
    diagnostics = check_network('# net\n\nreplication = 0\n  gc_grace = "5s"\n', "network.toml")
    assert render(diagnostics) == (
        "error[replication]: 0 copies would keep no data: the least is 1\n"
        "  --> network.toml:3:1\n"
        "   |\n"
        " 3 | replication = 0\n"
        "   | ^^^^^^^^^^^\n"
        "   = fix: replication takes a whole number of copies, 1 or more; for example: replication = 1\n"
        "\n"
        "warning[gc_grace]: gc_grace of 5 s is short: a block uploaded by a write still in flight is not "
        "referenced yet and could be collected (Garage lost data with short GC delays)\n"
        "  --> network.toml:4:3\n"
        "   |\n"
        ' 4 |   gc_grace = "5s"\n'
        "   |   ^^^^^^^^\n"
        '   = fix: keep at least "1m"; the default "10m" is safe\n'
        "\n"
        "1 error, 1 warning, 0 advice\n"
    )


def test_render_without_a_location_and_wide_line_numbers() -> None:
    text = "\n" * 11 + "replication = 2\n"
    [d] = check_network(text, "n.toml")
    lines = render([d, Diagnostic("advice", "pod.toml", None, None, None, "hello", None)]).splitlines()
    assert lines[1:4] == ["   --> n.toml:12:1", "    |", " 12 | replication = 2"]
    assert lines[7:9] == ["advice: hello", "  --> pod.toml"]
    assert lines[-1] == "0 errors, 1 warning, 1 advice"


def test_summary_and_exit_code() -> None:
    assert render([]) == "0 errors, 0 warnings, 0 advice\n"
    warning = Diagnostic("warning", "x", 1, 1, "a", "m", None)
    error = Diagnostic("error", "x", 1, 1, "a", "m", None)
    assert summary([error, error, warning]) == "2 errors, 1 warning, 0 advice"
    assert exit_code([]) == 0
    assert exit_code([warning]) == 0
    assert exit_code([warning, error]) == 2


def test_load_raises_with_every_diagnostic() -> None:
    with pytest.raises(ConfigError) as caught:
        load_network_config("replication = 0\nblok = 1\n", source="net.toml")
    assert [d.line for d in caught.value.diagnostics] == [1, 2]
    assert "net.toml:2:1" in str(caught.value)
    with pytest.raises(ConfigError):
        load_pod_config('max_disk = "1G"\ntarget_disk = "2G"\n')


def test_load_accepts_warnings() -> None:
    assert load_network_config("replication = 2\n").replication == 2
    assert load_pod_config('advertise = "localhost:7070"\n').advertise == "localhost:7070"
