"""Every response carries the security headers (issue 9): no sniffing, no framing, no referrer,
a content security policy, HSTS when the service is reached over https, and no server version."""

from __future__ import annotations

import pytest

from casehub import create_app

EVERYWHERE = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@pytest.fixture
def reader(factory):
    factory.agency("platform", "other", platform=True)
    return factory.partner("platform", "referrals:read monitoring:read")


def _responses(client, reader):
    token = reader.headers()
    yield client.get("/healthz")
    yield client.get("/openapi.json")
    yield client.get("/docs")
    yield client.get("/.well-known/jwks.json")
    yield client.post("/oauth/token", data={"grant_type": "client_credentials"})  # 401
    yield client.get("/v1/referrals")  # 401
    yield client.get("/v1/referrals", headers=token)
    yield client.get("/v1/referrals?bogus=1", headers=token)  # 422
    yield client.get("/v1/referrals/00000000-0000-4000-8000-000000000000", headers=token)  # 404
    yield client.get("/no/such/route")
    yield client.get("/metrics", headers=token)


def test_every_response_carries_the_security_headers(client, reader):
    for response in _responses(client, reader):
        for name, value in EVERYWHERE.items():
            assert response.headers.get(name) == value, (response.request.path, name)
        policy = response.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in policy or "default-src 'none'" in policy, policy
        assert "Strict-Transport-Security" not in response.headers  # the issuer is http here
        assert "Werkzeug" not in response.headers.get("Server", "")


def test_docs_keep_their_own_policy(client):
    policy = client.get("/docs").headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy


def test_hsts_when_the_issuer_is_https(tmp_path):
    app = create_app(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'h.db'}",
            "ISSUER": "https://casehub.example.org",
            "SIGNING_KEYS_FILE": str(tmp_path / "keys.json"),
            "AUDIT_SEQUENCER": False,
        }
    )
    response = app.test_client().get("/healthz")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    assert (
        int(response.headers["Strict-Transport-Security"].split("=")[1].split(";")[0]) >= 31536000
    )
