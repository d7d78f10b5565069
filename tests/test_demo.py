"""`casehub demo` leaves a working partnership whose printed credentials call the API."""

from __future__ import annotations

import base64

from click.testing import CliRunner

from casehub import create_app
from casehub.cli import main


def test_demo_prints_credentials_that_work(tmp_path, monkeypatch):
    monkeypatch.setenv("CASEHUB_DATABASE_URL", f"sqlite:///{tmp_path / 'demo.db'}")
    monkeypatch.setenv("CASEHUB_SIGNING_KEYS_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setenv("CASEHUB_CLIENT_SECRET_SCRYPT_N", "1024")
    app = create_app()
    runner = CliRunner()
    first = runner.invoke(main, ["demo"])
    assert first.exit_code == 0, first.output
    assert "demo created" in first.output
    second = runner.invoke(main, ["demo"])
    assert second.exit_code == 0 and "already present" in second.output
    fields = dict(
        (part.strip() for part in line.split(": ", 1))
        for line in second.output.splitlines()
        if line.strip().startswith("client_")
    )
    http = app.test_client()
    basic = base64.b64encode(f"{fields['client_id']}:{fields['client_secret']}".encode()).decode()
    token = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    ).get_json()["access_token"]
    listing = http.get("/v1/referrals", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert [r["lead_agency"] for r in listing["items"]] == ["btp"]
    assert listing["items"][0]["reference"].startswith("CH-")
