"""Access-token validation (RFC 9068) with a per-process cache of verified claims.

Signature verification costs more than the rest of a small read, so verified claims are kept
until the token expires (or its signing key is withdrawn). Revocation and deactivation are
*not* cached: `actor.load_actor` checks them against the database on every request, so they
take effect at once.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from authlib.oauth2.rfc6750.errors import InsufficientScopeError, InvalidTokenError
from authlib.oauth2.rfc9068 import JWTBearerTokenValidator
from authlib.oauth2.rfc9068.claims import JWTAccessTokenClaims
from joserfc import jws, jwt
from joserfc.errors import InvalidClaimError, JoseError

from casehub.auth.keys import ALGORITHM, KeyStore

ACCEPTED_TYP = frozenset({"at+jwt", "application/at+jwt"})
# Headers that could point verification at a key other than casehub's own.
REFUSED_HEADERS = frozenset({"jku", "jwk", "x5u", "x5c", "crit"})
REQUIRED_CLAIMS = ("iss", "aud", "sub", "client_id", "scope", "jti", "iat", "exp", "agency")
# Hosts of one deployment may disagree on the time by a little; a token must not look
# "issued in the future" to a sibling worker. Expiry itself is checked without leeway.
ISSUED_AT_SKEW = 5
MAX_TOKEN_LENGTH = 4096


class _AccessTokenClaimsRegistry(jwt.JWTClaimsRegistry):
    def validate_iat(self, value: object) -> None:
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not numeric or not math.isfinite(value):  # type: ignore[arg-type]
            raise InvalidClaimError("iat")
        if value > self.now + ISSUED_AT_SKEW:
            raise InvalidClaimError("iat", "The token was issued in the future")


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

    def __len__(self) -> int:
        return len(self._items)


class AccessTokenValidator(JWTBearerTokenValidator):
    """RFC 9068 access tokens signed by casehub: ES256 only, `typ: at+jwt` required, a `kid`
    naming a live casehub key, exact `iss` and `aud`, and every claim casehub relies on."""

    def __init__(
        self, keys: KeyStore, *, issuer: str, audience: str, max_lifetime: int = 900
    ) -> None:
        super().__init__(issuer=issuer, resource_server=audience, realm="casehub")
        self.keys = keys
        # A token living longer than casehub issues (a key used to mint one elsewhere, or a
        # TTL lowered since) is refused: `exp - iat` may not exceed the configured TTL.
        self.max_lifetime = max_lifetime
        self.cache = VerifiedClaimsCache()

    def get_jwks(self) -> Any:
        return self.keys.verification_keys()

    def authenticate_token(self, token_string: str) -> JWTAccessTokenClaims:
        cached = self.cache.get(token_string)
        # A key withdrawn from the file (say, after a compromise) stops its cached tokens too.
        if cached is not None and self.keys.is_live(cached.header.get("kid")):
            return cached
        claims = self.verify(token_string)
        self.cache.put(token_string, claims)
        return claims

    def verify(self, token_string: str) -> JWTAccessTokenClaims:
        """Full verification, no cache: signature, header and claims."""
        try:
            return self._verify(token_string)
        except (JoseError, ValueError, TypeError, KeyError, UnicodeError) as exc:
            raise InvalidTokenError(realm=self.realm) from exc

    def _verify(self, token_string: str) -> JWTAccessTokenClaims:
        if not token_string or len(token_string) > MAX_TOKEN_LENGTH:
            raise ValueError("token length")
        header = jws.extract_compact(token_string.encode("ascii")).headers()
        # Pinned algorithm and type (ASVS 9.1.2, 9.2.2): `alg: none`, HS256 "signed" with the
        # public key and ID-token-shaped JWTs (`typ: JWT` or none) are all refused here.
        if header.get("alg") != ALGORITHM:
            raise ValueError("alg")
        if str(header.get("typ", "")).lower() not in ACCEPTED_TYP:
            raise ValueError("typ")
        if REFUSED_HEADERS & header.keys():
            raise ValueError("key-bearing header")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise ValueError("kid")
        key = self.keys.key_for(kid)
        if key is None:
            raise ValueError("unknown kid")
        token = jwt.decode(token_string, key, algorithms=[ALGORITHM])
        registry = _AccessTokenClaimsRegistry(
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.resource_server},
            **{name: {"essential": True} for name in REQUIRED_CLAIMS if name not in ("iss", "aud")},
        )
        registry.validate(token.claims)
        for name in ("client_id", "scope", "agency"):
            if not isinstance(token.claims[name], str):
                raise ValueError(name)
        if token.claims["exp"] - token.claims["iat"] > self.max_lifetime:
            raise ValueError("lifetime")
        return JWTAccessTokenClaims(token.claims, token.header)

    def validate_token(
        self, token: JWTAccessTokenClaims, scopes: Any, request: Any, **kwargs: Any
    ) -> None:
        """Claims were validated by `authenticate_token` (and cached ones drop out at `exp`);
        only a scope, if the caller asked for one, is left to check."""
        if scopes and self.scope_insufficient(token.get("scope"), scopes):
            raise InsufficientScopeError()
