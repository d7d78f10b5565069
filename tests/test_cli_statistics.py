"""`casehub statistics refresh` from the command line: it computes what the route answers,
says when, and is audited (a scheduled CronJob runs it)."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import select

from casehub import create_app, migrate
from casehub.cli import main
from casehub.db import get_db, session_scope
from casehub.models import AuditEvent, StatisticsRefresh
from tests.helpers import referral_body
from tests.oauth_support import basic


def test_a_refresh_from_the_command_line_is_what_the_route_answers(tmp_path, monkeypatch):
    settings = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'statistics.db'}",
        "SIGNING_KEYS_FILE": str(tmp_path / "keys.json"),
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

    def partner(scopes: str) -> str:
        made = json.loads(
            run("clients", "add", "--agency", "btp", "--name", scopes, "--scopes", scopes, "--json")
        )
        token = app.test_client().post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic(made["client_id"], made["client_secret"])},
        )
        return f"Bearer {token.get_json()['access_token']}"

    try:
        run("agencies", "add", "btp", "--name", "BTP", "--kind", "police")
        http = app.test_client()
        writer = partner("referrals:write")
        for _ in range(6):
            made = http.post("/v1/referrals", json=referral_body(),
                             headers={"Authorization": writer})  # fmt: skip
            assert made.status_code == 201
        analyst = {"Authorization": partner("statistics:read")}
        assert http.get("/v1/statistics/referrals", headers=analyst).get_json()["items"] == []

        outcome = json.loads(run("statistics", "refresh", "--json"))
        assert outcome["referrals"] == 6
        answer = http.get("/v1/statistics/referrals", headers=analyst).get_json()
        assert answer["items"] == [{"count": 6, "suppressed": False}]
        assert answer["as_of"] == outcome["refreshed_at"]
        assert "6 referrals counted" in run("statistics", "refresh")

        with session_scope(app) as session:
            assert len(session.scalars(select(StatisticsRefresh)).all()) == 1  # the latest only
            refreshes = session.scalars(
                select(AuditEvent).where(AuditEvent.action == "statistics.refresh")
            ).all()
            assert [(e.actor_agency, e.purpose) for e in refreshes] == [(None, "statistics")] * 2
    finally:
        get_db(app).engine.dispose()
