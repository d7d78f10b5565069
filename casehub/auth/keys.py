"""Token-signing keys (ES256): the newest key signs; a retired key keeps verifying, and stays
published, until its last token could have expired. Kept in a JSON file: generated in the
instance folder for demos, named by CASEHUB_SIGNING_KEYS_FILE in production."""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, KeySet

ALGORITHM = "ES256"
# A retired key outlives its last token by this margin (clock differences between hosts).
RETIRE_MARGIN = 60
# How often the hot path may look at the file for a rotation made by another process.
RECHECK_SECONDS = 1.0

_FileIdentity = tuple[int, int, int]  # inode, mtime_ns, size: os.replace gives a new inode


class KeysUnavailable(RuntimeError):
    """The signing key file is missing or holds no active key."""


@dataclass(frozen=True)
class _Snapshot:
    """One consistent reading of the key file; replaced whole, never mutated."""

    identity: _FileIdentity
    signing: KeySet
    verifying: dict[str, ECKey]  # kid → key
    published: dict[str, Any]
    checked_at: float
    stale_at: float  # the moment a retired key drops out, so the set must be rebuilt


class KeyStore:
    """Reads the key file and notices changes made by any process (`casehub keys rotate`).

    The hot path (`key_for`, `is_live`, `signing_keys`) reads an immutable snapshot without a
    lock and looks at the file at most once a second; a token naming a key id it does not know
    forces an immediate look, so a token signed by a worker that has just rotated verifies at
    once in every other worker.
    """

    def __init__(
        self,
        path: Path,
        *,
        token_ttl: int,
        create: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.token_ttl = token_ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        # In production the file is never generated implicitly: `casehub keys rotate` creates it,
        # and until then the service is not ready (see /readyz) rather than unable to start.
        if create and not path.exists():
            self.rotate()

    # -- reading ---------------------------------------------------------------------------
    def _current(self, *, force: bool = False) -> _Snapshot:
        now = self.clock()
        snapshot = self._snapshot
        if (
            snapshot is not None
            and not force
            and now < snapshot.checked_at + RECHECK_SECONDS
            and now < snapshot.stale_at
        ):
            return snapshot
        with self._lock:
            snapshot = self._snapshot
            try:
                stat = self.path.stat()
            except FileNotFoundError as exc:
                raise KeysUnavailable(
                    f"signing key file {self.path} does not exist; run `casehub keys rotate`"
                ) from exc
            identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if snapshot is not None and snapshot.identity == identity and now < snapshot.stale_at:
                snapshot = _Snapshot(
                    identity,
                    snapshot.signing,
                    snapshot.verifying,
                    snapshot.published,
                    now,
                    snapshot.stale_at,
                )
            else:
                snapshot = self._load(identity, now)
            self._snapshot = snapshot
            return snapshot

    def _load(self, identity: _FileIdentity, now: float) -> _Snapshot:
        entries = _read(self.path)
        # A key signs from its `active_at` (its creation, unless it was published first) until
        # it is retired; a retirement may be set for the moment the next key starts signing.
        signers = [
            e
            for e in entries
            if _active_at(e) <= now and (e.get("retired_at") is None or e["retired_at"] > now)
        ]
        if not signers:
            raise KeysUnavailable(f"{self.path} holds no active signing key")
        live = [e for e in entries if e.get("retired_at") is None or self._until(e) > now]
        upcoming = [_active_at(e) for e in live if _active_at(e) > now]
        verifying: dict[str, ECKey] = {}
        public = []
        for entry in live:
            key = ECKey.import_key(entry["private"])
            verifying[str(key.kid)] = key
            jwk = key.as_dict(private=False)
            jwk.update({"use": "sig", "alg": ALGORITHM})
            public.append(jwk)
        signing = ECKey.import_key(max(signers, key=_active_at)["private"])
        retiring = [self._until(e) for e in live if e.get("retired_at") is not None]
        return _Snapshot(
            identity=identity,
            signing=KeySet([signing]),
            verifying=verifying,
            published={"keys": public},
            checked_at=now,
            # Rebuilt when a retired key drops out or a published one starts signing.
            stale_at=min([*retiring, *upcoming], default=math.inf),
        )

    def _until(self, entry: dict[str, Any]) -> float:
        """When a retired key's last token has certainly expired."""
        return float(entry["retired_at"]) + self.token_ttl + RETIRE_MARGIN

    # -- public API ------------------------------------------------------------------------
    def signing_keys(self) -> KeySet:
        """The active key (one), for the token generator."""
        return self._current().signing

    def key_for(self, kid: str) -> ECKey | None:
        """The live key with this id; looks at the file again before saying there is none."""
        key = self._current().verifying.get(kid)
        if key is None:
            key = self._current(force=True).verifying.get(kid)
        return key

    def is_live(self, kid: object) -> bool:
        """Whether tokens signed with this key id may still be accepted (cheap, no file check
        beyond the once-a-second one)."""
        return isinstance(kid, str) and kid in self._current().verifying

    def verification_keys(self) -> KeySet:
        return KeySet(list(self._current().verifying.values()))

    def published(self) -> dict[str, Any]:
        """The JWK Set served at /.well-known/jwks.json: public halves of the live keys."""
        return self._current().published

    def reload(self) -> None:
        """Forget what was read; the next use reads the file (after the path changed, say)."""
        with self._lock:
            self._snapshot = None

    def rotate(self, *, publish_first: int = 0) -> str:
        """Add a new key and retire the previous ones; return the new key id.

        With `publish_first` seconds, the new key is published (and verifies) at once but signs
        only after that delay, the previous key signing until then: every host that reads its
        copy of the file within the delay (a Kubernetes Secret takes a minute or two to reach
        every pod) knows the key before any token signed with it arrives.

        Keys whose tokens have all expired are removed from the file. An exclusive lock on a
        side file keeps two concurrent rotations from losing one another's keys.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                key = ECKey.generate_key("P-256", auto_kid=True)
                now = int(self.clock())
                starts = now + max(0, publish_first)
                entries = _read(self.path)
                if not entries:
                    starts = now  # nothing else could sign meanwhile
                for entry in entries:
                    if entry.get("retired_at") is None or entry["retired_at"] > starts:
                        entry["retired_at"] = starts
                entries = [e for e in entries if self._until(e) > now]
                new_entry: dict[str, Any] = {
                    "private": key.as_dict(private=True),
                    "created_at": now,
                    "retired_at": None,
                }
                if starts > now:
                    new_entry["active_at"] = starts
                entries.append(new_entry)
                _write(self.path, entries)
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
        self.reload()
        return str(key.kid)


def _active_at(entry: dict[str, Any]) -> float:
    return float(entry.get("active_at", entry.get("created_at", 0)))


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return list(json.loads(path.read_text())["keys"])


def _write(path: Path, entries: list[dict[str, Any]]) -> None:
    """Atomically replace the file (readers see the old or the new one, never a half)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keys-")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"keys": entries}, handle, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
