"""JWTs signed by partner systems (RFC 7523): client assertions and jwt-bearer grants.

Both are verified the same way: a key from the client's registered JWKS only (never `jku`,
`jwk` or `x5u`), an algorithm from a short allowlist, `aud` naming this authorization server,
a bounded `exp`, and a `jti` accepted once across every worker (the `used_assertions` table).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import ExpiredTokenError, JoseError, MissingClaimError
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from casehub.models import UsedAssertion

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# RFC 9864 deprecates the polymorphic "EdDSA" for the fully specified "Ed25519"; with an
# Ed25519 key they are the same signature, so the old name is verified as the new one (and
# joserfc's deprecation warning for "EdDSA" never fires).
ALGORITHMS = ("ES256", "RS256", "Ed25519")
ALIASES = {"EdDSA": "Ed25519"}
ADVERTISED_ALGORITHMS = [*ALGORITHMS, "EdDSA"]

# Seconds of clock difference tolerated between a partner and casehub (FAPI 2.0 asks for 10).
CLOCK_SKEW = 10
MAX_JTI_LENGTH = 255  # used_assertions.jti
MIN_RSA_BITS = 2048
# Headers that would point verification at a key the client did not register.
REFUSED_HEADERS = frozenset({"jku", "jwk", "x5u", "x5c", "crit"})

_KEY_CLASSES: dict[str, tuple[type[Any], str | None]] = {
    "ES256": (ECKey, "P-256"),
    "RS256": (RSAKey, None),
    "Ed25519": (OKPKey, "Ed25519"),
}


class RejectedAssertion(Exception):
    """The assertion cannot be accepted; the message is safe to return to the client."""


class _Registry(JWSRegistry):
    """The allowlist, with the deprecated alias resolved to its fully specified algorithm."""

    def get_alg(self, name: str) -> Any:
        return super().get_alg(ALIASES.get(name, name))


_REGISTRY = _Registry(algorithms=list(ALGORITHMS))


def peek(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims *before* verification: only to find whose keys to verify with."""
    try:
        obj = jws.extract_compact(assertion.encode())
        header = obj.headers()
        claims = json.loads(obj.payload)
    except (JoseError, ValueError, TypeError, UnicodeError) as exc:
        raise RejectedAssertion("The assertion is not a signed JWT.") from exc
    if not isinstance(claims, dict) or not isinstance(header, dict):
        raise RejectedAssertion("The assertion is not a signed JWT.")
    return header, claims


def _select_key(jwks: Mapping[str, Any] | None, header: Mapping[str, Any], alg: str) -> Any:
    """The one registered key that may have made this signature."""
    key_class, curve = _KEY_CLASSES[alg]
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise RejectedAssertion("The assertion's kid must be a string.")
    candidates = []
    weak = False
    for raw in (jwks or {}).get("keys", []):
        if not isinstance(raw, dict) or raw.get("kty") != key_class.key_type:
            continue
        if key_class is RSAKey and rsa_bits(raw) < MIN_RSA_BITS:
            weak = True  # not even imported: joserfc warns about weak keys on import
            continue
        if raw.get("use") not in (None, "sig"):
            continue
        registered_alg = raw.get("alg")
        if registered_alg is not None and ALIASES.get(registered_alg, registered_alg) != alg:
            continue
        try:
            # The registered alg (possibly the deprecated alias) was checked just above.
            key = key_class.import_key({k: v for k, v in raw.items() if k != "alg"})
        except (JoseError, ValueError, TypeError):
            continue
        if curve is not None and key.curve_name != curve:
            continue
        if kid is not None and kid not in (raw.get("kid"), key.thumbprint()):
            continue
        candidates.append(key)
    if not candidates and weak:
        raise RejectedAssertion(f"RSA keys must have at least {MIN_RSA_BITS} bits.")
    if not candidates:
        raise RejectedAssertion("No registered key of the client matches the assertion.")
    if len(candidates) > 1:
        raise RejectedAssertion("Several registered keys match: name one with kid.")
    return candidates[0]


def rsa_bits(jwk: Mapping[str, Any]) -> int:
    """The modulus size of an RSA JWK, read without importing the key."""
    modulus = jwk.get("n")
    if not isinstance(modulus, str):
        return 0
    try:
        raw = base64.urlsafe_b64decode(modulus + "=" * (-len(modulus) % 4))
    except (ValueError, binascii.Error):
        return 0
    return int.from_bytes(raw, "big").bit_length()


def verify(
    assertion: str,
    jwks: Mapping[str, Any] | None,
    *,
    audiences: Sequence[str],
    max_lifetime: int,
    now: int | None = None,
) -> dict[str, Any]:
    """Verify the signature and the registered claims; return the claims.

    `iss`, `sub`, `aud`, `exp` and `jti` are required; `exp` may be at most `max_lifetime`
    seconds ahead; `iat` and `nbf`, when present, may not be in the future.
    """
    if not jwks:
        raise RejectedAssertion("The client has registered no public keys.")
    header, _ = peek(assertion)
    alg = header.get("alg")
    if not isinstance(alg, str) or ALIASES.get(alg, alg) not in ALGORITHMS:
        raise RejectedAssertion("The assertion's algorithm is not accepted.")
    if REFUSED_HEADERS & header.keys():
        raise RejectedAssertion("Keys are taken from the client's registration only.")
    key = _select_key(jwks, header, ALIASES.get(alg, alg))
    try:
        token = jwt.decode(assertion, key, registry=_REGISTRY)
    except (JoseError, ValueError, TypeError) as exc:
        raise RejectedAssertion("The assertion's signature or header is not valid.") from exc
    claims = dict(token.claims)
    moment = int(time.time()) if now is None else now
    registry = jwt.JWTClaimsRegistry(
        now=moment,
        leeway=CLOCK_SKEW,
        iss={"essential": True},
        sub={"essential": True},
        aud={"essential": True, "values": list(audiences)},
        exp={"essential": True},
        jti={"essential": True},
    )
    try:
        registry.validate(claims)
    except ExpiredTokenError as exc:
        raise RejectedAssertion("The assertion has expired.") from exc
    except MissingClaimError as exc:
        raise RejectedAssertion(f"The assertion lacks {exc.claim}.") from exc
    except JoseError as exc:
        raise RejectedAssertion(f"The assertion's {_claim_name(exc)} is not valid.") from exc
    if claims["exp"] > moment + max_lifetime + CLOCK_SKEW:
        raise RejectedAssertion(f"The assertion's exp may be at most {max_lifetime} s ahead.")
    if len(claims["jti"]) > MAX_JTI_LENGTH:
        raise RejectedAssertion("The assertion's jti is longer than 255 characters.")
    return claims


def _claim_name(error: JoseError) -> str:
    """The claim joserfc complained about, e.g. `exp` or `aud,jti` (missing ones)."""
    return str(getattr(error, "claim", None) or "claims")


def consume_jti(session: Session, *, issuer: str, jti: str, exp: float) -> bool:
    """Record the assertion as used; False if it was used before (by any worker).

    The insert runs in the request's transaction, inside a savepoint so that a replay does not
    spoil the rest of it; the primary key (issuer, jti) is what refuses the second use, so two
    workers racing with the same assertion cannot both succeed.
    """
    now = datetime.now(UTC)
    # An expired assertion is refused on `exp` before it gets here, so its row can go.
    session.execute(
        delete(UsedAssertion).where(UsedAssertion.issuer == issuer, UsedAssertion.expires_at < now)
    )
    expires_at = datetime.fromtimestamp(float(exp) + CLOCK_SKEW, UTC)
    try:
        with session.begin_nested():
            session.add(UsedAssertion(issuer=issuer, jti=jti, expires_at=expires_at))
    except IntegrityError:
        return False
    return True
