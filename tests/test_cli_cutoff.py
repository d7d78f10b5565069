"""Incident response from the server's command line: `casehub clients deactivate` and
`casehub agencies deactivate` cut a partner off at once, whichever agency it belongs to, and
are audited."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from casehub import create_app, migrate
from casehub.cli import main
from casehub.db import get_db, session_scope
from casehub.models import AuditEvent
from tests.oauth_support import basic


@pytest.fixture
def site(tmp_path, monkeypatch):
    settings = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'cutoff.db'}",
        "SIGNING_KEYS_FILE": str(tmp_path / "keys.json"),
        "AUDIT_CHECKPOINT_KEY_FILE": str(tmp_path / "checkpoint.pem"),
        "CLIENT_SECRET_SCRYPT_N": "1024",
        "AUDIT_SEQUENCER": "0",
        "LOG_LEVEL": "warning",
    }
    for name, value in settings.items():
        monkeypatch.setenv(f"CASEHUB_{name}", value)
    app = create_app()
    migrate.upgrade(get_db(app).engine)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(main, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    run("agencies", "add", "btp", "--name", "BTP", "--kind", "police")
    run("agencies", "add", "leics", "--name", "Leicestershire Police", "--kind", "police")
    yield app, run
    get_db(app).engine.dispose()


def _partner(run, agency):
    output = run(
        "clients",
        "add",
        "--agency",
        agency,
        "--name",
        "system",
        "--scopes",
        "referrals:read",
        "--json",
    )
    return json.loads(output)


def _token(http, partner):
    response = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic(partner["client_id"], partner["client_secret"])},
    )
    return response


def test_a_client_is_cut_off_at_once_and_its_agency_goes_on(site):
    app, run = site
    http = app.test_client()
    cut, kept = _partner(run, "btp"), _partner(run, "btp")
    live = _token(http, cut).get_json()["access_token"]
    assert http.get("/v1/referrals", headers={"Authorization": f"Bearer {live}"}).status_code == 200

    assert "deactivated" in run("clients", "deactivate", cut["client_id"])

    assert http.get("/v1/referrals", headers={"Authorization": f"Bearer {live}"}).status_code == 401
    assert _token(http, cut).status_code == 401
    assert _token(http, kept).status_code == 200
    with app.app_context(), session_scope() as session:
        (event,) = session.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "admin.client.deactivate",
                AuditEvent.resource_id == cut["client_id"],
            )
        )
        assert (event.outcome, event.actor_client_id) == ("allowed", None)


def test_an_agency_is_cut_off_with_every_client_and_token(site):
    app, run = site
    http = app.test_client()
    btp, leics = _partner(run, "btp"), _partner(run, "leics")
    live = _token(http, btp).get_json()["access_token"]
    run("agencies", "deactivate", "btp")
    assert http.get("/v1/referrals", headers={"Authorization": f"Bearer {live}"}).status_code == 401
    assert _token(http, btp).status_code == 401
    assert _token(http, leics).status_code == 200


def test_an_unknown_client_or_the_platform_is_refused(site):
    _, run = site
    result = CliRunner().invoke(main, ["clients", "deactivate", "chc_nobody"])
    assert result.exit_code == 2 and "No such client" in result.output
    run("agencies", "add", "platform", "--name", "Platform", "--kind", "other", "--platform")
    result = CliRunner().invoke(main, ["agencies", "deactivate", "platform"])
    assert result.exit_code == 2 and "cannot be deactivated" in result.output
