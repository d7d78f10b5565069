"""Helpers shared by the OAuth tests: token inspection, audit look-ups, authlib's real client."""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from casehub.models import AuditEvent

with warnings.catch_warnings():
    # authlib 1.9 prefers the `httpx2` package and warns when it falls back to httpx.
    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.integrations.httpx_client import OAuth2Client, OAuthError

__all__ = ["OAuth2Client", "OAuthError", "audit_events", "b64", "basic", "http", "segments"]

RESOURCE = "/v1/agencies"
BEARER_INVALID = 'Bearer realm="casehub", error="invalid_token"'
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, unverified (for inspecting what was issued)."""
    header, payload, _ = token.split(".")
    return json.loads(_unb64(header)), json.loads(_unb64(payload))


def audit_events(db_session: Any, action: str) -> list[AuditEvent]:
    return list(
        db_session.execute(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.pos)
        ).scalars()
    )


@pytest.fixture
def http(app: Any, db_session: Any) -> Iterator[Callable[..., OAuth2Client]]:
    """authlib's OAuth 2 client talking to the app in-process (httpx's WSGI transport)."""
    clients: list[OAuth2Client] = []

    def make(**kwargs: Any) -> OAuth2Client:
        # localhost: authlib refuses plain http elsewhere (in production the issuer is https).
        client = OAuth2Client(
            transport=httpx.WSGITransport(app=app), base_url="http://localhost", **kwargs
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
