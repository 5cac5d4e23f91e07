"""A pod's persistent identity and the network's admission secret.

The Ed25519 key is made once and kept in the pod's state directory, so a restarted pod is the same pod
(Wormhole made a new identity on every start, which looked like data loss to its peers). The node id is
derived from the public key, so an id cannot be claimed without the key.

Join tokens carry the network id and the network secret: ``ecm1_<network id>_<secret>``. A peer proves
it holds the secret with an HMAC over the other side's challenge, never by sending the secret itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

TOKEN_PREFIX = "ecm1"


def node_id_of(public_key: bytes) -> str:
    return base64.b32encode(hashlib.blake2b(public_key, digest_size=15).digest()).decode().lower()


class Identity:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.node_id = node_id_of(self.public_key)

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path}: not an Ed25519 private key")
            return cls(key)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        return cls(key)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class JoinToken:
    network_id: str
    secret: bytes

    def __str__(self) -> str:
        encoded = base64.urlsafe_b64encode(self.secret).decode().rstrip("=")
        return f"{TOKEN_PREFIX}_{self.network_id}_{encoded}"

    @classmethod
    def new(cls) -> JoinToken:
        return cls(network_id=secrets.token_hex(8), secret=secrets.token_bytes(32))

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        parts = text.strip().split("_", 2)
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX or len(parts[1]) != 16:
            raise ValueError(
                "not a join token: expected ecm1_<network>_<secret>, as printed by `ecliptic mesh token`"
            )
        try:
            secret = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
            int(parts[1], 16)
        except ValueError:
            raise ValueError("the join token is damaged (bad network id or secret encoding)") from None
        if len(secret) != 32:
            raise ValueError("the join token is damaged (its secret has the wrong length)")
        return cls(network_id=parts[1], secret=secret)

    def prove(self, challenge: bytes) -> bytes:
        return hmac.new(self.secret, b"ecliptic-mesh-admit\0" + challenge, hashlib.sha256).digest()

    def check(self, challenge: bytes, proof: bytes) -> bool:
        return hmac.compare_digest(self.prove(challenge), proof)
