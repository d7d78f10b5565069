"""Webhook signing secrets without storing them.

A subscription's secret is `whsec_` + base64(HMAC-SHA256(webhook key, salt)): the database keeps
only the random salt, and the 32-byte webhook key lives in a file beside the token-signing keys
(CASEHUB_WEBHOOK_KEY_FILE; generated in the instance folder for demos and tests). A copy of the
database alone therefore cannot sign a delivery, and the secret is shown once, when it is made.

Deliveries are signed with `standardwebhooks` (HMAC-SHA256 over `id.timestamp.body`); during a
rotation the previous secret signs too, so the receiver may verify with either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from flask import Flask
from standardwebhooks.webhooks import Webhook as StandardWebhook

KEY_BYTES = 32
SALT_BYTES = 32
PREFIX = "whsec_"


class WebhookKeyError(RuntimeError):
    """No usable webhook key."""


class WebhookKey:
    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise WebhookKeyError(f"the webhook key must be at least {KEY_BYTES} bytes")
        self._key = key

    @classmethod
    def load(cls, path: Path, *, create: bool = False) -> WebhookKey:
        """Read the key (base64 text); generate and store one (mode 0600) if allowed."""
        if not path.exists():
            if not create:
                raise WebhookKeyError(f"no webhook key at {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
            encoded = base64.b64encode(secrets.token_bytes(KEY_BYTES))
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process made it first: read theirs
            else:
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(encoded + b"\n")
        try:
            return cls(base64.b64decode(path.read_bytes().strip(), validate=True))
        except (ValueError, OSError) as error:
            raise WebhookKeyError(f"the webhook key at {path} is not base64") from error

    def secret(self, salt: str) -> str:
        """The `whsec_…` secret a salt stands for."""
        digest = hmac.new(self._key, b"casehub-webhook-secret\x00" + salt.encode(), hashlib.sha256)
        return PREFIX + base64.b64encode(digest.digest()).decode()


def new_salt() -> str:
    return secrets.token_urlsafe(SALT_BYTES)


def key_path(app: Flask) -> Path:
    configured = app.config.get("WEBHOOK_KEY_FILE")
    return Path(configured or os.path.join(app.instance_path, "webhook-key"))


def load_key(app: Flask) -> WebhookKey:
    """The app's webhook key; outside production a missing one is generated."""
    key: WebhookKey | None = app.extensions.get("casehub.webhook_key")
    if key is None:
        create = app.config["ENV"] != "production"
        key = WebhookKey.load(key_path(app), create=create)
        app.extensions["casehub.webhook_key"] = key
    return key


def signature(secrets_in_use: Sequence[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """The `webhook-signature` header: one `v1,<base64>` per secret, separated by spaces."""
    return " ".join(
        StandardWebhook(secret).sign(msg_id, timestamp, body) for secret in secrets_in_use
    )
