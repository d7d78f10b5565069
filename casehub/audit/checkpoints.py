"""Signed checkpoints: an Ed25519 signature over the chain's head `{seq, hash, time}`.

A checkpoint held outside the database (or simply signed by a key the database never sees)
means rewriting the chain up to it, even with every hash recomputed, is detected.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from flask import Flask
from sqlalchemy import Connection, insert, select

from casehub.audit import canonical
from casehub.audit.chain import chain_head
from casehub.db import utcnow
from casehub.models.audit import AuditCheckpoint


class CheckpointKeyError(RuntimeError):
    """No usable checkpoint key (missing file, or a public key where signing needs a private)."""


def _key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (a private key's file gives its public half)."""
    data = path.read_bytes()
    if b"PUBLIC KEY" in data:
        public = serialization.load_pem_public_key(data)
    else:
        private = serialization.load_pem_private_key(data, password=None)
        public = private.public_key() if isinstance(private, Ed25519PrivateKey) else None
    if not isinstance(public, Ed25519PublicKey):
        raise CheckpointKeyError(f"{path} is not an Ed25519 key")
    return public


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CheckpointKey:
    """The checkpoint signing key, or only its public half (enough to verify)."""

    def __init__(self, public: Ed25519PublicKey, private: Ed25519PrivateKey | None = None) -> None:
        self.public = public
        self.private = private
        self.key_id = _key_id(public)
        # Public halves of keys that signed earlier checkpoints (CASEHUB_AUDIT_CHECKPOINT_
        # RETIRED_KEYS): their checkpoints still verify after the signing key is rotated.
        self.retired: dict[str, Ed25519PublicKey] = {}

    def retire(self, public: Ed25519PublicKey) -> None:
        self.retired[_key_id(public)] = public

    def verifies_as(self, key_id: str, signature: str, message: bytes) -> bool:
        """Whether the key named `key_id` — this one or a retired one — made `signature`."""
        if key_id == self.key_id:
            return self.verifies(signature, message)
        public = self.retired.get(key_id)
        if public is None:
            return False
        try:
            public.verify(_unb64(signature), message)
        except (InvalidSignature, ValueError):
            return False
        return True

    @classmethod
    def generate(cls) -> CheckpointKey:
        private = Ed25519PrivateKey.generate()
        return cls(private.public_key(), private)

    @classmethod
    def load(cls, path: Path, *, create: bool = False) -> CheckpointKey:
        """Read a PEM private (or public) key; generate and store a private one if allowed."""
        if not path.exists():
            if not create:
                raise CheckpointKeyError(f"no audit checkpoint key at {path}")
            key = cls.generate()
            key.save(path)
            return key
        data = path.read_bytes()
        if b"PUBLIC KEY" in data:
            public = serialization.load_pem_public_key(data)
            if not isinstance(public, Ed25519PublicKey):
                raise CheckpointKeyError("the audit checkpoint key must be Ed25519")
            return cls(public)
        private = serialization.load_pem_private_key(data, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise CheckpointKeyError("the audit checkpoint key must be Ed25519")
        return cls(private.public_key(), private)

    def save(self, path: Path) -> None:
        assert self.private is not None
        pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created owner-only from the start: the private key never sits world-readable.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)

    def sign(self, message: bytes) -> str:
        if self.private is None:
            raise CheckpointKeyError("signing checkpoints needs the private key")
        return _b64(self.private.sign(message))

    def verifies(self, signature: str, message: bytes) -> bool:
        try:
            self.public.verify(_unb64(signature), message)
        except (InvalidSignature, ValueError):
            return False
        return True


def key_path(app: Flask) -> Path:
    configured = app.config.get("AUDIT_CHECKPOINT_KEY_FILE")
    return Path(configured or os.path.join(app.instance_path, "audit-checkpoint-key.pem"))


def app_key(app: Flask, *, create: bool = False) -> CheckpointKey | None:
    """The app's checkpoint key; None when there is none and `create` is False."""
    path = key_path(app)
    if not path.exists() and not create:
        return None
    key = CheckpointKey.load(path, create=create and app.config.get("ENV") != "production")
    for retired in str(app.config.get("AUDIT_CHECKPOINT_RETIRED_KEYS") or "").split(","):
        if retired.strip():
            key.retire(load_public_key(Path(retired.strip())))
    return key


def message(seq: int, head_hash: str, signed_at: datetime) -> bytes:
    """The signed bytes: canonical JSON of `{hash, seq, time}`."""
    body = {"hash": head_hash, "seq": seq, "time": canonical.field_text(signed_at)}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Checkpoint:
    id: int
    seq: int
    hash: str
    signed_at: datetime
    key_id: str
    signature: str

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "seq": self.seq,
            "hash": self.hash,
            "time": canonical.field_text(self.signed_at),
            "key_id": self.key_id,
            "signature": self.signature,
        }


def load_checkpoints(
    connection: Connection, *, from_seq: int = 0, newest: int | None = None
) -> list[Checkpoint]:
    """Checkpoints in (seq, id) order: all of them, those signing `from_seq` or later, or
    (`newest`) only that many of the newest, newest first."""
    table = AuditCheckpoint.__table__
    stmt = select(table)
    if from_seq:
        stmt = stmt.where(table.c.seq >= from_seq)
    if newest is None:
        stmt = stmt.order_by(table.c.seq, table.c.id)
    else:
        stmt = stmt.order_by(table.c.seq.desc(), table.c.id.desc()).limit(newest)
    rows = connection.execute(stmt)
    return [Checkpoint(r.id, r.seq, r.hash, r.signed_at, r.key_id, r.signature) for r in rows]


def signature_holds(checkpoint: Checkpoint, key: CheckpointKey | None) -> bool:
    if key is None:
        return False
    return key.verifies_as(
        checkpoint.key_id,
        checkpoint.signature,
        message(checkpoint.seq, checkpoint.hash, checkpoint.signed_at),
    )


def sign_head(
    connection: Connection, key: CheckpointKey, head: tuple[int, str] | None = None
) -> Checkpoint:
    """Sign `head` (default: the chain's current head) and store the checkpoint, in the
    caller's transaction."""
    seq, head_hash = head or chain_head(connection)
    # Stored with microseconds on every backend, so the signed time reads back identically.
    signed_at = utcnow()
    signature = key.sign(message(seq, head_hash, signed_at))
    new_id = connection.execute(
        insert(AuditCheckpoint)
        .values(
            seq=seq, hash=head_hash, signed_at=signed_at, key_id=key.key_id, signature=signature
        )
        .returning(AuditCheckpoint.id)
    ).scalar_one()
    return Checkpoint(int(new_id), seq, head_hash, signed_at, key.key_id, signature)
