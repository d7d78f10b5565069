"""Client secrets: generated with 256 bits of entropy, stored only as scrypt hashes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_R, _P = 8, 1


def generate_secret() -> str:
    return "chs_" + secrets.token_urlsafe(32)


def generate_client_id() -> str:
    return "chc_" + secrets.token_hex(12)


def hash_secret(secret: str, *, n: int = 2**14) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=_R, p=_P, dklen=32)
    salt_b64, digest_b64 = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"scrypt${n}${_R}${_P}${salt_b64}${digest_b64}"


def verify_secret(secret: str, stored: str | None) -> bool:
    if not stored or not secret:
        return False
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest_b64)
        actual = hashlib.scrypt(
            secret.encode(),
            salt=base64.b64decode(salt_b64),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)
