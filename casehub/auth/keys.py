"""Token-signing keys (ES256): the active key signs, retired keys stay published until their
last token has expired. Kept in a JSON file: generated in the instance folder for demos, named
by CASEHUB_SIGNING_KEYS_FILE in production."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, KeySet

ALGORITHM = "ES256"


class KeyStore:
    """Reads the key file, re-reading it when it changes (e.g. after `casehub keys rotate`)."""

    def __init__(self, path: Path, *, token_ttl: int, create: bool) -> None:
        self.path = path
        self.token_ttl = token_ttl
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._entries: list[dict[str, Any]] = []
        self._signing: KeySet | None = None
        self._verifying: KeySet | None = None
        self._published: dict[str, Any] = {"keys": []}
        if not path.exists():
            if not create:
                raise FileNotFoundError(f"signing key file {path} does not exist")
            self.rotate()

    # -- file handling -------------------------------------------------------------------
    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return list(json.loads(self.path.read_text())["keys"])

    def _write(self, entries: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys-")
        with os.fdopen(fd, "w") as handle:
            json.dump({"keys": entries}, handle, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def _refresh(self) -> None:
        mtime = self.path.stat().st_mtime_ns
        if mtime == self._mtime:
            return
        with self._lock:
            entries = self._read()
            active = [e for e in entries if e.get("retired_at") is None]
            if not active:
                raise RuntimeError(f"{self.path} holds no active signing key")
            now = time.time()
            # A retired key verifies (and is published) until its last token has expired.
            live = [
                e
                for e in entries
                if e.get("retired_at") is None or e["retired_at"] + self.token_ttl + 60 > now
            ]
            self._signing = KeySet([ECKey.import_key(active[-1]["private"])])
            self._verifying = KeySet([ECKey.import_key(e["private"]) for e in live])
            public = []
            for e in live:
                jwk = ECKey.import_key(e["private"]).as_dict(private=False)
                jwk.update({"use": "sig", "alg": ALGORITHM})
                public.append(jwk)
            self._published = {"keys": public}
            self._entries = entries
            self._mtime = mtime

    # -- public API ----------------------------------------------------------------------
    def signing_keys(self) -> KeySet:
        self._refresh()
        assert self._signing is not None
        return self._signing

    def verification_keys(self) -> KeySet:
        self._refresh()
        assert self._verifying is not None
        return self._verifying

    def published(self) -> dict[str, Any]:
        self._refresh()
        return self._published

    def rotate(self) -> str:
        """Add a new active key and retire the previous ones; return the new key id."""
        key = ECKey.generate_key("P-256", auto_kid=True)
        now = int(time.time())
        entries = self._read()
        for entry in entries:
            if entry.get("retired_at") is None:
                entry["retired_at"] = now
        # Forget keys whose tokens have all expired.
        entries = [
            e for e in entries if e["retired_at"] + self.token_ttl + 60 > now
        ]
        entries.append({"private": key.as_dict(private=True), "created_at": now, "retired_at": None})
        self._write(entries)
        self._mtime = None
        return str(key.kid)
