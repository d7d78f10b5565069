"""Hostile input at every route: bodies, path ids and query strings an attacker with a valid
token might send. Each gets a clear 4xx (problem+json, no trace of the server's insides) and
never a 5xx; the figures line counts the cases."""

from __future__ import annotations

import json

import pytest

from tests import test_audit_routes
from tests.test_audit_routes import ROUTES, World

world = test_audit_routes.world  # the walk's fixture: one valid call of every route

NESTED = b"[" * 5000 + b"]" * 5000
BODIES: list[tuple[str, bytes]] = [
    ("nested arrays", NESTED),
    ("nested objects", b'{"a":' * 2000 + b"1" + b"}" * 2000),
    ("lone surrogate", b'{"summary": "\\ud800"}'),
    ("NUL in a string", b'{"summary": "a\\u0000b", "name": "a\\u0000b"}'),
    ("invalid UTF-8", b'{"summary": "\xff\xfe"}'),
    ("UTF-8 BOM", b'\xef\xbb\xbf{"summary": "x"}'),
    ("huge number", b'{"limit": 1e400, "estimated_birth_year": 1e400}'),
    ("long integer", b'{"estimated_birth_year": ' + b"9" * 5000 + b"}"),
    ("NaN", b'{"estimated_birth_year": NaN}'),
    ("top-level array", b"[]"),
    ("top-level string", b'"referral"'),
    ("null", b"null"),
    ("empty", b""),
    ("truncated", b'{"summary": "x'),
    ("duplicate keys", b'{"summary": "x", "summary": 1}'),
    ("megabyte string", b'{"summary": "' + b"x" * 900_000 + b'"}'),
    ("wrong types", b'{"summary": {"$ne": null}, "risk_level": ["high"], "name": 7}'),
]
PATH_IDS = [
    "../../etc/passwd",
    "%00",
    "1' OR '1'='1",
    "x" * 300,
    "00000000-0000-0000-0000-000000000000",
    "%F0%9F%92%A9",
    "%ED%A0%80",  # an encoded lone surrogate
]
QUERIES = [
    "limit=-1",
    "limit=99999999999999999999",
    "cursor=" + "A" * 3000,
    "cursor=%00",
    "q=" + "%27%3B%20DROP%20TABLE%20referrals%3B--",
    "q=%ED%A0%80",
    "since=9999-99-99",
    "limit=1&limit=2",
]


def _tally(record_property, responses) -> None:
    server_errors = [r for r in responses if r.status_code >= 500]
    record_property(
        "figures", ("hostile inputs", {"cases": len(responses), "5xx": len(server_errors)})
    )
    for response in responses:
        text = response.get_data(as_text=True)
        assert "Traceback" not in text and "sqlalchemy" not in text.lower()
        if response.status_code >= 400:
            assert response.mimetype == "application/problem+json", text[:200]
    assert not server_errors, [r.get_data(as_text=True)[:200] for r in server_errors]


@pytest.mark.parametrize(("method", "rule"), sorted(ROUTES))
def test_every_route_refuses_hostile_input_cleanly(
    client, world: World, method, rule, record_property
):
    call, _ = ROUTES[(method, rule)]
    partner, path, kwargs = call(world)
    headers = {**partner.headers(), **kwargs.get("headers", {})}
    responses = []
    if method in ("POST", "PATCH", "PUT"):
        for _, raw in BODIES:
            responses.append(
                client.open(
                    path,
                    method=method,
                    data=raw,
                    headers={**headers, "Content-Type": "application/json"},
                )
            )
        if "json" in kwargs:  # a valid body, sent as something else
            responses.append(
                client.open(
                    path,
                    method=method,
                    data=json.dumps(kwargs["json"]),
                    headers={**headers, "Content-Type": "text/plain"},
                )
            )
    base = path.split("?")[0]
    for bad in PATH_IDS:
        # Every id in the path, one at a time, replaced by something that is not an id.
        segments = base.split("/")
        for index, segment in enumerate(segments):
            if len(segment) == 36 or segment.startswith("chc_") or segment == "btp":
                hostile = "/".join([*segments[:index], bad, *segments[index + 1 :]])
                responses.append(client.open(hostile, method=method, headers=headers))
    for query in QUERIES:
        responses.append(
            client.open(
                f"{base}?{query}",
                method=method,
                headers=headers,
                json=kwargs.get("json"),
            )
        )
    _tally(record_property, responses)
