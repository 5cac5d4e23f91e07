"""Commented starting points for the network config and ``pod.toml``.

Each template explains its choices in comments and lists every key it leaves out with its default, so
the file a user edits documents itself. The key reference is generated from the same field docs the
diagnostics quote, so the two cannot drift apart.
"""

from __future__ import annotations

import difflib
import textwrap
from collections.abc import Callable, Mapping
from typing import Literal

from ecliptic.mesh.settings import NETWORK_DOCS, POD_DOCS, FieldDoc, NetworkConfig, PodConfig, toml_line

ConfigLevel = Literal["network", "pod"]

_NETWORK_HEAD = """\
# Network config of an ecliptic mesh.
#
# Every pod of the network shares these settings: they are replicated with the metadata, so a change
# made on one pod reaches all of them.
"""

_POD_HEAD = """\
# pod.toml: the settings of this pod alone, kept in its state directory.
#
# Sizes are bytes or text with a unit: K, M, G, T count in 1024s (as du -h and df -h print them),
# KiB, MiB, GiB, TiB too, and KB, MB, GB, TB count in 1000s (as disks are sold).
"""


def _comment(text: str) -> str:
    return "".join(f"# {line}\n" for line in textwrap.wrap(text, width=104))


def _reference(docs: Mapping[str, FieldDoc], defaults: NetworkConfig | PodConfig, keys: list[str]) -> str:
    """Commented-out ``key = value`` lines with what each key means and takes."""
    parts = []
    for key in keys:
        doc = docs[key]
        default = toml_line(defaults, key)
        line = f"# {default}" if default is not None else f"# {key} = {doc.example}"
        note = "(the default)" if default is not None else "(not set by default)"
        parts.append(_comment(f"{doc.meaning} Takes {doc.allowed}.") + f"{line}    {note}\n")
    return "\n".join(parts)


def _others(docs: Mapping[str, FieldDoc], defaults: NetworkConfig | PodConfig, *used: str) -> str:
    rest = [key for key in docs if key not in used]
    if not rest:
        return ""
    return "\n# The other keys:\n\n" + _reference(docs, defaults, rest)


def _network_minimal() -> str:
    return (
        _NETWORK_HEAD
        + "#\n# This file may stay empty: every key has a default that suits a first network. Uncomment a\n"
        "# line to change a value; `config check` says what it thinks of the result.\n\n"
        + _reference(NETWORK_DOCS, NetworkConfig(), list(NETWORK_DOCS))
    )


def _network_raid0() -> str:
    return (
        _NETWORK_HEAD
        + """#
# RAID-0 style: one copy of each file's blocks, spread over the pods. The network holds the sum of the
# pods' disks, and a big file is read from and written to several pods at once. The price: a pod that
# is lost takes its blocks with it, and every file with a block there is damaged. Back up what you
# cannot make again.

# One copy of each block. This is the default, written out so that the choice is on record.
replication = 1

# Blocks are what gets spread: a 1 GiB file is 256 blocks of 4 MiB, placed on different pods.
block_size = "4MiB"
"""
        + _others(NETWORK_DOCS, NetworkConfig(), "replication", "block_size")
    )


def _network_lab() -> str:
    return (
        _NETWORK_HEAD
        + """#
# A lab: a handful of pods on one LAN, large data files, people working on the same files from several
# machines.

# Instrument data comes in big files: bigger blocks mean fewer blocks to track and move.
block_size = "8MiB"

# People look at each other's results: show a change made elsewhere within half a second.
attr_timeout = 0.5

# Workstations get busy (a long analysis, a suspend): do not call a pod down after a short stall.
down_after = "15s"

# Large uploads from laptops over Wi-Fi take a while: keep unreferenced blocks for an hour, so a write
# still in flight never loses the blocks it has already sent.
gc_grace = "1h"
"""
        + _others(NETWORK_DOCS, NetworkConfig(), "block_size", "attr_timeout", "down_after", "gc_grace")
    )


def _pod_minimal() -> str:
    return (
        _POD_HEAD
        + "#\n# This file may stay empty: the pod then uses the whole disk under its state directory (less\n"
        "# reserve) and a cache of 1 GiB. Uncomment a line to change a value; `config check` says what\n"
        "# it thinks of the result, and measures the disk.\n\n"
        + _reference(POD_DOCS, PodConfig(), list(POD_DOCS))
    )


def _pod_small_disk() -> str:
    return (
        _POD_HEAD
        + """#
# A small disk: a laptop or a small virtual machine that shares part of its disk with the network.

# Let the network have 20 GiB of this disk at most...
max_disk = "20G"

# ...and aim to stay under 16 GiB, below that hard limit.
target_disk = "16G"

# A modest cache for blocks read from other pods.
cache_size = "512M"

# A small disk fills up fast: always leave 2 GiB for the system and other programs.
reserve = "2G"
"""
        + _others(POD_DOCS, PodConfig(), "max_disk", "target_disk", "cache_size", "reserve")
    )


def _pod_big_disk() -> str:
    return (
        _POD_HEAD
        + """#
# A big disk: a storage server that gives most of a large disk or array to the network.

# Up to 8 TiB of blocks...
max_disk = "8T"

# ...aiming for 7 TiB, below that hard limit.
target_disk = "7T"

# A large cache for blocks read from other pods: 32 GiB is little next to 8 TiB.
cache_size = "32G"

# Filesystems slow down when nearly full: keep 100 GiB free.
reserve = "100G"
"""
        + _others(POD_DOCS, PodConfig(), "max_disk", "target_disk", "cache_size", "reserve")
    )


_TEMPLATES: dict[ConfigLevel, dict[str, Callable[[], str]]] = {
    "network": {"minimal": _network_minimal, "raid0": _network_raid0, "lab": _network_lab},
    "pod": {"minimal": _pod_minimal, "small-disk": _pod_small_disk, "big-disk": _pod_big_disk},
}


def names(level: ConfigLevel) -> list[str]:
    """The templates of ``level``, ``"minimal"`` first."""
    return list(_levels(level))


def generate(level: ConfigLevel, template: str = "minimal") -> str:
    """A commented TOML config of ``level`` from ``template``; ValueError names the known ones."""
    templates = _levels(level)
    if template not in templates:
        close = difflib.get_close_matches(template, templates, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"no {level} template {template!r}: {hint}the templates are: {', '.join(templates)}")
    return templates[template]()


def _levels(level: str) -> dict[str, Callable[[], str]]:
    for known, templates in _TEMPLATES.items():
        if known == level:
            return templates
    raise ValueError(f"no config level {level!r}: the levels are: {', '.join(_TEMPLATES)}")
