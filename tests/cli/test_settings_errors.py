"""Bad settings stop the service with one line naming the variable (or file) and the fix, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecliptic.cli.main import app
from ecliptic.config import get_settings


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECLIPTIC_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_a_bad_duration_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECLIPTIC_OFFER_LIFETIME", "5min")
    result = CliRunner().invoke(app, ["migrate"])
    assert result.exit_code == 2
    assert "ECLIPTIC_OFFER_LIFETIME" in result.output and "PT30M" in result.output
    assert "Traceback" not in result.output


def test_a_bad_toml_file_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "ecliptic.toml").write_text('offer_lifetime = "PT1M"\nlocal_cores = PT1M\n')
    result = CliRunner().invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "ecliptic.toml is not valid TOML" in result.output and "line 2" in result.output


def test_good_settings_from_the_file(tmp_path: Path) -> None:
    (tmp_path / "ecliptic.toml").write_text('offer_lifetime = "PT2M"\nlocal_cores = 3\n')
    settings = get_settings()
    assert settings.offer_lifetime.total_seconds() == 120 and settings.local_cores == 3
    result = CliRunner().invoke(app, ["migrate"])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        (
            '# platforms\n[platforms.hpc]\ntype = "slurm"\nmemroy_gib = 8\n',
            ["ecliptic.toml:4:", "platforms.hpc.memroy_gib", "did you mean 'memory_gib'?"],
        ),
        (
            '[platforms.hpc]\ntype = "slrum"\n',
            ["ecliptic.toml:2:", "'slrum' is not a platform type", "slurm"],
        ),
        ('[platforms.k8s]\ntype = "kubernetes"\ncores = 0\n', ["ecliptic.toml:3:", "platforms.k8s.cores"]),
        ('[rucio]\nurl = "http://127.0.0.1:1"\naccount = "a"\n', ["[rucio]", "username and password"]),
        ('[transfer_rates]\n"rse:FAR" = { rate = "20 MB" }\n', ["transfer_rates", 'add "/s"']),
    ],
)
def test_bad_platform_and_source_tables_name_the_line_and_the_fix(
    tmp_path: Path, toml: str, words: list[str]
) -> None:
    (tmp_path / "ecliptic.toml").write_text(toml)
    result = CliRunner().invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 2, result.output
    for word in words:
        assert word in result.output
    assert "Traceback" not in result.output
