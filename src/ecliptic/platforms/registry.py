"""Configured platforms from ``[platforms.<name>]`` tables: the module of each ``type`` is imported only when
used, so a broker without Docker or Kubernetes needs neither SDK installed."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from ecliptic.platforms.base import Platform

MODULES = {
    "docker": "ecliptic.platforms.docker",
    "podman": "ecliptic.platforms.docker",
    "slurm": "ecliptic.platforms.slurm",
    "kubernetes": "ecliptic.platforms.kubernetes",
    "skaha": "ecliptic.platforms.skaha",
}
CONFIGS = {
    "ecliptic.platforms.docker": "DockerConfig",
    "ecliptic.platforms.slurm": "SlurmConfig",
    "ecliptic.platforms.kubernetes": "KubernetesConfig",
    "ecliptic.platforms.skaha": "SkahaConfig",
}
EXTRAS = {"docker": "docker", "podman": "docker", "kubernetes": "kubernetes"}


class PlatformConfigError(ValueError):
    """A platform table that cannot be used: names the table, the key and what is wrong."""


def build_platform(name: str, raw: Mapping[str, Any]) -> Platform:
    kind = str(raw.get("type", ""))
    module_name = MODULES.get(kind)
    if module_name is None:
        known = ", ".join(sorted(MODULES))
        raise PlatformConfigError(
            f"platforms.{name}.type: {kind or '(missing)'!r} is not a platform type (one of: {known})"
        )
    module = importlib.import_module(module_name)
    config_class: type[BaseModel] = getattr(module, CONFIGS[module_name])
    try:
        config = config_class.model_validate(dict(raw))
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            where = ".".join(str(part) for part in error["loc"])
            message = f"platforms.{name}.{where}: {error['msg']}"
            if error["type"] == "extra_forbidden":
                close = difflib.get_close_matches(str(error["loc"][-1]), list(config_class.model_fields), n=1)
                message = f"platforms.{name}.{where}: not a setting of {kind} platforms" + (
                    f"; did you mean '{close[0]}'?" if close else ""
                )
            problems.append(message)
        raise PlatformConfigError("; ".join(problems)) from exc
    try:
        platform: Platform = module.build(name, config)
    except ImportError as exc:
        extra = EXTRAS.get(kind, kind)
        raise PlatformConfigError(
            f"platforms.{name}: the {kind} platform needs the '{extra}' extra "
            f"(pip install 'ecliptic[{extra}]'): {exc}"
        ) from exc
    return platform


def build_platforms(tables: Mapping[str, Mapping[str, Any]]) -> dict[str, Platform]:
    return {name: build_platform(name, raw) for name, raw in tables.items()}
