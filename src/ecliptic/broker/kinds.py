"""The ``kind`` URIs of the wire format, and how the older families map onto the current one.

The current family is ``…/Calycopis-openapi/schema/v1.0/kinds/<category>/<name>.yaml``. Input in the older
``…/EB/schema/v1.0/types/<category>/<name>-1.0`` and ``…/EB/schema/types/…`` families is accepted and
answered in the current one, and so is the reference broker's ``computer`` typo.
"""

from __future__ import annotations

import re

CURRENT = "https://www.purl.org/ivoa.net/Calycopis-openapi/schema/v1.0/kinds/"


def current(category: str, name: str) -> str:
    return f"{CURRENT}{category}/{name}.yaml"


COMMAND = "urn:ecliptic:executable:command"
DOCKER = current("executable", "docker-container")
SINGULARITY = current("executable", "singularity-container")
JUPYTER = current("executable", "jupyter-notebook")
COMPUTE = current("compute", "simple-compute-resource")
STORAGE = current("storage", "simple-storage-resource")
VOLUME = current("volume", "simple-volume-mount")
DATA_SIMPLE = current("data", "simple-data-resource")
DATA_S3 = current("data", "S3-data-resource")
DATA_RUCIO = current("data", "rucio-data-resource")
DATA_IVOA = current("data", "ivoa-data-resource")
DATA_SKAO = current("data", "skao-data-resource")
SESSION = current("session", "simple-execution-session")
OFFERSET = current("offerset", "execution-offerset")

ENUM_OPTION = "uri:enum-value-option"
ENUM_UPDATE = "uri:enum-value-update"

_FAMILY = re.compile(
    r"^https?://(?:www\.)?purl\.org/ivoa\.net/"
    r"(?:Calycopis-openapi/schema/v1\.0/kinds|EB/schema/v1\.0/types|EB/schema/types)/"
    r"(?P<category>[A-Za-z]+)/(?P<name>[A-Za-z0-9-]+?)(?:-1\.0)?(?:\.yaml)?$"
)
_WD_PROSE = re.compile(
    r"^https?://(?:www\.)?purl\.org/ivoa\.net/(?P<category>[a-z]+)-types/(?P<name>[a-z0-9-]+)$"
)
_CATEGORY_ALIASES = {"computer": "compute", "executables": "executable", "resource": "compute"}
_NAME_ALIASES = {"generic-compute": "simple-compute-resource", "s3-data-resource": "S3-data-resource"}


def normalise(kind: str) -> str:
    """The current-family URI for any accepted spelling of a kind; unknown kinds come back unchanged."""
    kind = kind.strip()
    match = _FAMILY.match(kind) or _WD_PROSE.match(kind)
    if not match:
        return kind
    category = _CATEGORY_ALIASES.get(match["category"], match["category"])
    name = _NAME_ALIASES.get(match["name"], match["name"])
    return current(category, name)
