"""Where a file's blocks go: weighted rendezvous (highest random weight) hashing.

Every pod computes the same ranking from the file id and the candidates alone, with no table to keep in
step, and only about 1/N of the files change pods when one joins or leaves. Weights are free space, so
a fuller pod is chosen less often.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from ecliptic.mesh.entries import PodRecord


def _score(key: str, node_id: str, weight: float) -> float:
    digest = hashlib.blake2b(f"{key}\0{node_id}".encode(), digest_size=8).digest()
    uniform = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)
    return -max(weight, 1.0) / math.log(uniform)


def rank(key: str, pods: Sequence[PodRecord]) -> list[PodRecord]:
    return sorted(pods, key=lambda pod: _score(key, pod.node_id, float(pod.free)), reverse=True)


def choose(key: str, pods: Sequence[PodRecord], count: int = 1) -> list[PodRecord]:
    return rank(key, pods)[:count]
