"""Access-token validation (RFC 9068) with a per-process cache of verified claims.

Signature verification costs more than the rest of a small read, so verified claims are kept
until the token expires. Revocation and deactivation are *not* cached: `actor.load_actor`
checks them against the database on every request, so they take effect at once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from authlib.oauth2.rfc6750.errors import InvalidTokenError
from authlib.oauth2.rfc9068 import JWTBearerTokenValidator
from authlib.oauth2.rfc9068.claims import JWTAccessTokenClaims
from joserfc import jws
from joserfc.errors import JoseError

from casehub.auth.keys import ALGORITHM, KeyStore

ACCEPTED_TYP = {"at+jwt", "application/at+jwt"}


class VerifiedClaimsCache:
    """Thread-safe map of token string → verified claims, bounded, dropped at expiry."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._items: dict[str, tuple[float, JWTAccessTokenClaims]] = {}

    def get(self, token: str) -> JWTAccessTokenClaims | None:
        item = self._items.get(token)
        if item is None:
            return None
        if item[0] <= time.time():
            with self._lock:
                self._items.pop(token, None)
            return None
        return item[1]

    def put(self, token: str, claims: JWTAccessTokenClaims) -> None:
        with self._lock:
            if len(self._items) >= self.max_entries:
                now = time.time()
                self._items = {k: v for k, v in self._items.items() if v[0] > now}
                if len(self._items) >= self.max_entries:
                    self._items.clear()
            self._items[token] = (float(claims["exp"]), claims)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class AccessTokenValidator(JWTBearerTokenValidator):
    """Authlib's RFC 9068 validator, pinned to ES256 and `typ: at+jwt`, with cached claims."""

    def __init__(self, keys: KeyStore, *, issuer: str, audience: str) -> None:
        super().__init__(issuer=issuer, resource_server=audience, realm="casehub")
        self.keys = keys
        self.cache = VerifiedClaimsCache()

    def get_jwks(self) -> Any:
        return self.keys.verification_keys()

    def authenticate_token(self, token_string: str) -> JWTAccessTokenClaims:
        cached = self.cache.get(token_string)
        if cached is not None:
            return cached
        try:
            header = jws.extract_compact(token_string.encode()).headers()
        except (JoseError, ValueError) as exc:
            raise InvalidTokenError(realm=self.realm) from exc
        if header.get("alg") != ALGORITHM or str(header.get("typ", "")).lower() not in ACCEPTED_TYP:
            raise InvalidTokenError(realm=self.realm)
        if any(name in header for name in ("jku", "jwk", "x5u", "x5c", "crit")):
            raise InvalidTokenError(realm=self.realm)
        claims = super().authenticate_token(token_string)
        try:
            claims.validate()
        except JoseError as exc:
            raise InvalidTokenError(realm=self.realm) from exc
        if "agency" not in claims:
            raise InvalidTokenError(realm=self.realm)
        self.cache.put(token_string, claims)
        return claims
