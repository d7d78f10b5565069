"""Access-token verification rate, with and without the per-process verified-claims cache.

    .venv/bin/python bench/token_verify.py [--seconds 2]

Prints verifications per second for a full verification (signature, header and claims:
`AccessTokenValidator.verify`) and for the cached path every request takes
(`authenticate_token`: a dict look-up plus a check that the signing key is still live). Neither
includes the per-request database check of revocation and deactivation (`load_actor`), which
the cache never skips.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from casehub.auth.keys import KeyStore
from casehub.auth.server import AccessTokenGenerator
from casehub.auth.tokens import AccessTokenValidator

ISSUER = "https://casehub.example"


def rate(action: Callable[[], object], seconds: float) -> float:
    """Calls per second of `action`, measured for about `seconds`."""
    calls, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(200):
            action()
        calls += 200
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        keys = KeyStore(Path(folder) / "keys.json", token_ttl=900, create=True)
        generator = AccessTokenGenerator(keys, issuer=ISSUER, audience=ISSUER, ttl=900)
        client = SimpleNamespace(
            row=SimpleNamespace(agency_code="btp"),
            get_client_id=lambda: "chc_bench",
            get_allowed_scope=lambda scope: "referrals:read referrals:write",
        )
        token = generator(grant_type="client_credentials", client=client)["access_token"]
        validator = AccessTokenValidator(keys, issuer=ISSUER, audience=ISSUER)
        validator.authenticate_token(token)  # warm: fills the cache

        full = rate(lambda: validator.verify(token), args.seconds)
        cached = rate(lambda: validator.authenticate_token(token), args.seconds)

    print(f"token-verify: full={full:,.0f}/s ({1e6 / full:.1f} us each)")
    print(f"token-verify: cached={cached:,.0f}/s ({1e6 / cached:.2f} us each)")
    print(f"token-verify: cache speed-up x{cached / full:,.0f}")


if __name__ == "__main__":
    main()
