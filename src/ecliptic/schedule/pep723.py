"""Inline script metadata (PEP 723): the ``# /// script`` block of a Python file.

::

    # /// script
    # requires-python = ">=3.11"
    # dependencies = ["httpx"]
    # ///

The block is TOML with every line prefixed by ``#`` (and, for non-empty lines, one space).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The reference regular expression of the specification.
_BLOCK = re.compile(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")


class ScriptMetadataError(ValueError):
    """A ``# /// script`` block that is not valid: two of them, bad TOML, or fields of the wrong type."""


@dataclass(frozen=True)
class ScriptMetadata:
    dependencies: list[str] = field(default_factory=list)
    requires_python: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def wants_uv(self) -> bool:
        """Whether the script asks for an environment of its own (dependencies or a Python version)."""
        return bool(self.dependencies) or self.requires_python is not None


def parse(text: str, name: str = "<script>") -> ScriptMetadata | None:
    """The ``script`` block of a Python source, or None if it has none."""
    blocks = [m for m in _BLOCK.finditer(text) if m.group("type") == "script"]
    if not blocks:
        return None
    if len(blocks) > 1:
        raise ScriptMetadataError(f"{name} has more than one '# /// script' block")
    content = "".join(
        line[2:] if line.startswith("# ") else line[1:]
        for line in blocks[0].group("content").splitlines(keepends=True)
    )
    try:
        data = tomllib.loads(content)
    except tomllib.TOMLDecodeError as exc:
        raise ScriptMetadataError(f"{name}: the '# /// script' block is not valid TOML: {exc}") from exc
    dependencies = data.get("dependencies", [])
    if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
        raise ScriptMetadataError(
            f"{name}: 'dependencies' in the '# /// script' block must be a list of strings"
        )
    requires = data.get("requires-python")
    if requires is not None and not isinstance(requires, str):
        raise ScriptMetadataError(f"{name}: 'requires-python' in the '# /// script' block must be a string")
    return ScriptMetadata(dependencies=list(dependencies), requires_python=requires, raw=data)


def read(path: Path) -> ScriptMetadata | None:
    """The ``script`` block of a Python file (read as UTF-8), or None if it has none."""
    return parse(path.read_text(encoding="utf-8", errors="replace"), str(path))
