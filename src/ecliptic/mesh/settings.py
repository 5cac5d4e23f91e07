"""The mesh's configuration: the network-wide config and each pod's ``pod.toml``, both TOML.

The network config is replicated with the metadata, so every pod reads the same text; ``pod.toml`` lives
in a pod's state directory and concerns that pod alone. Both are flat (``key = value`` lines, no tables)
and an empty text is a valid config: every key has a default, and :meth:`NetworkConfig.to_toml` /
:meth:`PodConfig.to_toml` write only the keys that differ from it.

Sizes are a whole number of bytes or text with a unit (case does not matter, a space is allowed):

* ``K``, ``M``, ``G``, ``T``, ``P`` are binary (×1024), as ``du -h``, ``ls -lh`` and ``df -h`` print them:
  ``"100G"`` is 100 GiB;
* ``KiB``, ``MiB``, ``GiB``, ``TiB``, ``PiB`` are binary too, spelt out;
* ``KB``, ``MB``, ``GB``, ``TB``, ``PB`` are decimal (×1000), as disk vendors count: ``"500GB"`` is
  500 000 000 000 bytes;
* ``B`` (or no unit) is bytes. Fractions are allowed with a unit (``"1.5TiB"``) and rounded down to
  whole bytes.

Durations are seconds (a number) or text such as ``"30s"``, ``"10m"``, ``"1h"``, ``"1h30m"``, ``"500ms"``,
``"2d"``; ``m`` is minutes.

:func:`load_network_config` and :func:`load_pod_config` run the same checks as ``config check``
(:mod:`ecliptic.mesh.diagnostics`) and raise :class:`ConfigError` if any of them is an error.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict

if TYPE_CHECKING:
    from ecliptic.mesh.diagnostics import Diagnostic

KiB = 2**10
MiB = 2**20
GiB = 2**30
TiB = 2**40

MIN_BLOCK_SIZE = 64 * KiB
MAX_BLOCK_SIZE = 64 * MiB
MAX_ATTR_TIMEOUT = 60.0

_BINARY = {"k": KiB, "m": MiB, "g": GiB, "t": TiB, "p": 2**50}
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
SIZE_UNITS = "K, M, G, T or KiB, MiB, GiB, TiB count in 1024s; KB, MB, GB, TB in 1000s"

_SECOND_UNITS = {
    **dict.fromkeys(("ms", "msec", "millisecond", "milliseconds"), 0.001),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
    **dict.fromkeys(("w", "week", "weeks"), 604800.0),
}
DURATION_UNITS = "ms, s, m (minutes), h, d"

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SIZE = re.compile(rf"(?P<number>{_NUMBER})\s*(?P<unit>[a-z]*)")
_DURATION_PART = re.compile(rf"\s*(?P<number>{_NUMBER})\s*(?P<unit>[a-z]*)\s*")
_POD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_HOST_PORT = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>\d+)")


def describe(value: object) -> str:
    """A value as it was written in TOML, so messages quote what the user typed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime | date | time):
        return f"{value.isoformat()} (a date or time)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def parse_size(value: str | int | float) -> int:
    """Bytes from a whole number or a text with a unit (see the module docstring); ValueError says why not."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f'{describe(value)} is not a size: write bytes or a number with a unit, like "4MiB"')
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f'{describe(value)} is not a whole number of bytes: use a unit, like "1.5GiB"')
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{describe(value)} is not a size: sizes cannot be negative")
        return value
    text = value.strip().lower()
    if text.startswith("-"):
        raise ValueError(f"{describe(value)} is not a size: sizes cannot be negative")
    match = _SIZE.fullmatch(text)
    if match is None:
        if not text:
            raise ValueError('an empty text is not a size: write bytes or a number with a unit, like "4MiB"')
        raise ValueError(
            f'{describe(value)} is not a size: write a number followed by a unit ({SIZE_UNITS}), like "500G"'
        )
    unit = match["unit"]
    if unit in ("", "b", "byte", "bytes"):
        factor = 1
    elif len(unit) == 1 and unit in _BINARY:
        factor = _BINARY[unit]
    elif len(unit) == 2 and unit[1] == "b" and unit[0] in _DECIMAL:
        factor = _DECIMAL[unit[0]]
    elif len(unit) == 3 and unit[1:] == "ib" and unit[0] in _BINARY:
        factor = _BINARY[unit[0]]
    else:
        written = value.strip()[match.start("unit") :]
        raise ValueError(f"{describe(value)} is not a size: {written!r} is not a unit (use {SIZE_UNITS})")
    try:
        exact = Decimal(match["number"]) * factor
    except InvalidOperation as exc:  # the pattern admits only digits and one dot; kept for safety
        raise ValueError(f"{describe(value)} is not a size") from exc
    if factor == 1 and exact != exact.to_integral_value():
        raise ValueError(f'{describe(value)} is not a whole number of bytes: use a unit, like "1.5KiB"')
    return int(exact)


def format_size(n: int) -> str:
    """``"4 MiB"``, ``"1.5 TiB"``, ``"512 B"``: binary units, one decimal when the value is not whole."""
    if n < 0:
        return "-" + format_size(-n)
    for unit, factor in (("PiB", 2**50), ("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= factor:
            whole, rest = divmod(n, factor)
            return f"{whole} {unit}" if rest == 0 else f"{n / factor:.1f} {unit}"
    return f"{n} B"


def parse_duration(value: str | int | float) -> float:
    """Seconds from a number or a text like ``"10m"`` or ``"1h30m"``; ValueError says why not."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f'{describe(value)} is not a duration: write seconds or a text like "10m"')
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"{describe(value)} is not a duration: it must be a finite number of seconds")
        if value < 0:
            raise ValueError(f"{describe(value)} is not a duration: durations cannot be negative")
        return float(value)
    text = value.strip().lower()
    if not text:
        raise ValueError('an empty text is not a duration: write seconds or a text like "10m"')
    if text.startswith("-"):
        raise ValueError(f"{describe(value)} is not a duration: durations cannot be negative")
    if re.fullmatch(_NUMBER, text):
        return float(text)
    total = 0.0
    position = 0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise ValueError(
                f"{describe(value)} is not a duration: write numbers with units ({DURATION_UNITS}), "
                'like "30s", "10m" or "1h30m"'
            )
        unit = match["unit"]
        if not unit:
            raise ValueError(
                f"{describe(value)} is not a duration: {match['number']} has no unit (use {DURATION_UNITS})"
            )
        if unit not in _SECOND_UNITS:
            written = value.strip()[match.start("unit") : match.end("unit")]
            raise ValueError(
                f"{describe(value)} is not a duration: {written!r} is not a unit (use {DURATION_UNITS})"
            )
        total += float(match["number"]) * _SECOND_UNITS[unit]
        position = match.end()
    return total


def _size_literal(n: int) -> str:
    """The TOML value that reads back as exactly ``n`` bytes, with the largest exact unit."""
    for unit, factor in (("PiB", 2**50), ("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n and n % factor == 0:
            return f'"{n // factor}{unit}"'
    for unit, factor in (("PB", 10**15), ("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n and n % factor == 0:
            return f'"{n // factor}{unit}"'
    return str(n)


def _duration_literal(seconds: float) -> str:
    if seconds.is_integer():
        whole = int(seconds)
        for unit, factor in (("d", 86400), ("h", 3600), ("m", 60)):
            if whole and whole % factor == 0:
                return f'"{whole // factor}{unit}"'
        return f'"{whole}s"'
    # Positional notation, because the duration parser reads no exponents ("1e-05s").
    return f'"{Decimal(repr(seconds)):f}s"'


def _float_literal(value: float) -> str:
    return repr(float(value))


def _text_literal(value: str) -> str:
    # JSON string escapes are a subset of TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=False)


# Validators: each raises ValueError with a message that quotes the value given and says what is wrong.


def _not_text_number(value: object, what: str) -> None:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return
        raise ValueError(f"{describe(value)} is text, not {what}: write it without the quotes")


def _block_size(value: Any) -> int:
    size = parse_size(value)
    if size < MIN_BLOCK_SIZE or size > MAX_BLOCK_SIZE:
        raise ValueError(
            f"{describe(value)} ({format_size(size)}) is outside the allowed range "
            f"{format_size(MIN_BLOCK_SIZE)} to {format_size(MAX_BLOCK_SIZE)}"
        )
    if size & (size - 1):
        below = 1 << (size.bit_length() - 1)
        raise ValueError(
            f"{describe(value)} ({format_size(size)}) is not a power of two: the nearest are "
            f"{format_size(below)} and {format_size(below * 2)}"
        )
    return size


def _replication(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        _not_text_number(value, "a number")
        raise ValueError(f"{describe(value)} is not a whole number of copies")
    if value < 1:
        raise ValueError(f"{describe(value)} copies would keep no data: the least is 1")
    return value


def _duration_at_least(minimum: float, maximum: float | None = None) -> Callable[[Any], float]:
    def validate(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds < minimum:
            raise ValueError(f"{describe(value)} is too short: the least is {minimum:g} s")
        if maximum is not None and seconds > maximum:
            raise ValueError(f"{describe(value)} is too long: the most is {maximum:g} s")
        return seconds

    return validate


def _conflict(value: Any) -> str:
    if value != "newest":
        raise ValueError(
            f'{describe(value)} is not a conflict policy this version knows: only "newest" '
            "(the last write wins)"
        )
    return "newest"


def _size(value: Any) -> int:
    return parse_size(value)


def _optional_size(value: Any) -> int | None:
    return None if value is None else parse_size(value)


def _pod_name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{describe(value)} is not a name: write it in double quotes")
    if not _POD_NAME.fullmatch(value):
        raise ValueError(
            f"{describe(value)} is not a usable pod name: use up to 63 letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return value


def _advertise(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f'{describe(value)} is not an address: write "host:port" in double quotes')
    if "://" in value:
        raise ValueError(
            f"{describe(value)} is not host:port: leave out the scheme ({value.split('://')[0]}://)"
        )
    match = _HOST_PORT.fullmatch(value)
    if match is None:
        if ":" not in value:
            raise ValueError(f"{describe(value)} has no port: write host:port")
        raise ValueError(
            f"{describe(value)} is not host:port: write a host name or IPv4 address, or an IPv6 address "
            "in [brackets], then ':' and the port"
        )
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"{describe(value)} has port {port}: ports go from 1 to 65535")
    host = match["ipv6"] or match["host"]
    if host in ("0.0.0.0", "::"):
        raise ValueError(
            f"{describe(value)} is a listening address (any interface), not one other pods can dial: "
            "write this machine's host name or IP address"
        )
    return value


Size = Annotated[int, BeforeValidator(_size)]
OptionalSize = Annotated[int | None, BeforeValidator(_optional_size)]


@dataclass(frozen=True)
class FieldDoc:
    """What a key means, which values it takes and one to copy; used by templates and diagnostics."""

    meaning: str
    allowed: str
    example: str


_SIZE_ALLOWED = 'a size: bytes, or a number with a unit, like "500G" or "1.5TiB"'

NETWORK_DOCS: dict[str, FieldDoc] = {
    "block_size": FieldDoc(
        "Files are cut into blocks of this size; each block is stored, cached and moved whole.",
        'a power of two from 64 KiB to 64 MiB, as bytes or a size like "4MiB"',
        '"4MiB"',
    ),
    "replication": FieldDoc(
        "How many pods keep a copy of each block.",
        "a whole number of copies, 1 or more",
        "1",
    ),
    "gc_grace": FieldDoc(
        "How long a block nothing refers to is kept before it is deleted, so uploads in flight survive.",
        'a duration of 0 or more: seconds, or a text like "30s", "10m", "1h"',
        '"10m"',
    ),
    "attr_timeout": FieldDoc(
        "How long a mount may trust file attributes before asking again.",
        'a duration from 0 to 60 seconds: seconds, or a text like "500ms" or "2s"',
        "1.0",
    ),
    "down_after": FieldDoc(
        "A pod that has not been heard from for this long is considered down.",
        'a duration of at least 1 second: seconds, or a text like "6s"',
        "6",
    ),
    "conflict": FieldDoc(
        "What wins when two pods change the same entry concurrently.",
        '"newest" (the last write wins; the only policy of this version)',
        '"newest"',
    ),
}

POD_DOCS: dict[str, FieldDoc] = {
    "name": FieldDoc(
        "The name shown for this pod in listings and logs.",
        "up to 63 letters, digits, '.', '_' and '-', starting with a letter or digit, in double quotes",
        '"pod-a"',
    ),
    "max_disk": FieldDoc(
        "The most disk this pod fills with blocks; leave it out for no limit but the disk's.",
        _SIZE_ALLOWED,
        '"500G"',
    ),
    "target_disk": FieldDoc(
        "The disk use this pod aims to stay under (a soft limit, at most max_disk).",
        _SIZE_ALLOWED,
        '"400G"',
    ),
    "cache_size": FieldDoc(
        "Room for copies of other pods' blocks read through this pod.",
        _SIZE_ALLOWED,
        '"1G"',
    ),
    "reserve": FieldDoc(
        "Disk space the pod always leaves free, for the system and other programs.",
        _SIZE_ALLOWED,
        '"256M"',
    ),
    "advertise": FieldDoc(
        "The address other pods dial to reach this one, when it is not the one they would guess.",
        '"host:port" that other pods can reach, like "pod-a.example.org:7070" or "[2001:db8::1]:7070"',
        '"pod-a.example.org:7070"',
    ),
}


_WRITERS: dict[str, Callable[[Any], str]] = {
    "block_size": _size_literal,
    "replication": str,
    "gc_grace": _duration_literal,
    "attr_timeout": _float_literal,
    "down_after": _duration_literal,
    "conflict": _text_literal,
    "name": _text_literal,
    "max_disk": _size_literal,
    "target_disk": _size_literal,
    "cache_size": _size_literal,
    "reserve": _size_literal,
    "advertise": _text_literal,
}


def toml_line(config: NetworkConfig | PodConfig, field: str) -> str | None:
    """``key = value`` for one field of ``config`` as it would be written, or None when it is unset."""
    value = getattr(config, field)
    return None if value is None else f"{field} = {_WRITERS[field](value)}"


def _to_toml(config: NetworkConfig | PodConfig) -> str:
    lines = []
    for name, info in type(config).model_fields.items():
        line = toml_line(config, name)
        if line is not None and getattr(config, name) != info.get_default(call_default_factory=True):
            lines.append(line + "\n")
    return "".join(lines)


class NetworkConfig(BaseModel):
    """Settings every pod of a network shares; replicated with the metadata."""

    # strict: the validators below convert what TOML can express; nothing else should be coerced silently.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    block_size: Annotated[int, BeforeValidator(_block_size)] = 4 * MiB
    replication: Annotated[int, BeforeValidator(_replication)] = 1
    gc_grace: Annotated[float, BeforeValidator(_duration_at_least(0.0))] = 600.0
    attr_timeout: Annotated[float, BeforeValidator(_duration_at_least(0.0, MAX_ATTR_TIMEOUT))] = 1.0
    down_after: Annotated[float, BeforeValidator(_duration_at_least(1.0))] = 6.0
    conflict: Annotated[Literal["newest"], BeforeValidator(_conflict)] = "newest"

    def to_toml(self) -> str:
        """``key = value`` lines for the keys that differ from the defaults: empty for a default config."""
        return _to_toml(self)


class PodConfig(BaseModel):
    """One pod's own settings, from ``pod.toml`` in its state directory."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: Annotated[str | None, BeforeValidator(_pod_name)] = None
    max_disk: OptionalSize = None
    target_disk: OptionalSize = None
    cache_size: Size = GiB
    reserve: Size = 256 * MiB
    advertise: Annotated[str | None, BeforeValidator(_advertise)] = None

    def to_toml(self) -> str:
        """``key = value`` lines for the keys that differ from the defaults: empty for a default config."""
        return _to_toml(self)


class ConfigError(ValueError):
    """A config with at least one error; ``diagnostics`` holds every problem found, warnings included."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics

    def __str__(self) -> str:
        # Imported here: diagnostics imports this module for the models.
        from ecliptic.mesh.diagnostics import render

        return render(self.diagnostics)


def load_network_config(text: str, *, source: str = "<network config>") -> NetworkConfig:
    """The network config in ``text``; :class:`ConfigError` if ``config check`` finds any error."""
    from ecliptic.mesh.diagnostics import read_network

    config, diagnostics = read_network(text, source)
    if config is None or any(d.level == "error" for d in diagnostics):
        raise ConfigError(diagnostics)
    return config


def load_pod_config(
    text: str,
    *,
    source: str = "pod.toml",
    root: Path | None = None,
    network: NetworkConfig | None = None,
) -> PodConfig:
    """The pod config in ``text``; :class:`ConfigError` if ``config check`` finds any error.

    With ``root`` (the pod's state directory) the disk under it is measured too; with ``network`` the
    checks that depend on the block size run as well.
    """
    from ecliptic.mesh.diagnostics import read_pod

    config, diagnostics = read_pod(text, source, root=root, network=network)
    if config is None or any(d.level == "error" for d in diagnostics):
        raise ConfigError(diagnostics)
    return config
