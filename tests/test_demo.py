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


def test_demo_subscribes_childrens_services_and_hands_the_receiver_its_secret(
    tmp_path, monkeypatch
):
    import json
    import threading
    import urllib.error
    import urllib.request
    from datetime import UTC, datetime

    from sqlalchemy import select
    from standardwebhooks.webhooks import Webhook as Signer

    from casehub.db import session_scope
    from casehub.models import Event, Webhook, WebhookDelivery
    from casehub.webhooks import receiver

    monkeypatch.setenv("CASEHUB_DATABASE_URL", f"sqlite:///{tmp_path / 'demo.db'}")
    monkeypatch.setenv("CASEHUB_SIGNING_KEYS_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setenv("CASEHUB_WEBHOOK_KEY_FILE", str(tmp_path / "webhook-key"))
    monkeypatch.setenv("CASEHUB_CLIENT_SECRET_SCRYPT_N", "1024")
    secret_file = tmp_path / "secret"
    args = ["demo", "--webhook-url", "http://127.0.0.1:5001/webhooks"]
    args += ["--webhook-secret-file", str(secret_file)]
    runner = CliRunner()
    refused = runner.invoke(main, args)
    assert refused.exit_code != 0 and "ALLOW_PRIVATE" in refused.output

    monkeypatch.setenv("CASEHUB_WEBHOOKS_ALLOW_PRIVATE", "1")
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "watch `note.added` arrive" in first.output
    secret = secret_file.read_text().strip()
    assert secret.startswith("whsec_") and secret not in first.output
    assert secret_file.stat().st_mode & 0o077 == 0
    app = create_app()
    with app.app_context(), session_scope() as session:
        hook = session.execute(select(Webhook)).scalar_one()
        assert hook.agency_code == "nottingham-cs"
        queued = (
            session.execute(
                select(Event.type).join(WebhookDelivery, WebhookDelivery.event_pos == Event.pos)
            )
            .scalars()
            .all()
        )
        assert queued == ["referral.shared"]

    again = runner.invoke(main, args)  # a second run rotates, so the receiver gets a secret
    assert again.exit_code == 0, again.output
    assert secret_file.read_text().strip() != secret
    secret = secret_file.read_text().strip()

    server = receiver.serve(0, secret_file)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/webhooks"
    body = json.dumps({"id": "e1", "type": "note.added", "occurred_at": "x", "data": {}})
    headers = {"webhook-id": "e1", "webhook-timestamp": str(int(datetime.now(UTC).timestamp()))}
    headers["webhook-signature"] = Signer(secret).sign("e1", datetime.now(UTC), body)

    def post(data: str) -> int:
        request = urllib.request.Request(url, data=data.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    try:
        assert post(body) == 204
        assert post(body.replace("note.added", "note.addeD")) == 400
    finally:
        server.shutdown()
        server.server_close()


def test_demo_match_and_access_request_calls_work_as_printed(tmp_path, monkeypatch):
    """The printed example: BTP asks whether Kyle (one typo in his family name) is known
    elsewhere, learns only that Nottingham children's services hold referrals about him, and asks
    them to share; children's services see the request with the referrals it concerns."""
    import json
    import re

    monkeypatch.setenv("CASEHUB_DATABASE_URL", f"sqlite:///{tmp_path / 'demo.db'}")
    monkeypatch.setenv("CASEHUB_SIGNING_KEYS_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setenv("CASEHUB_CLIENT_SECRET_SCRYPT_N", "1024")
    app = create_app()
    printed = CliRunner().invoke(main, ["demo"])
    assert printed.exit_code == 0, printed.output
    fields = dict(
        (part.strip() for part in line.split(": ", 1))
        for line in printed.output.splitlines()
        if line.strip().startswith("client_")
    )
    http = app.test_client()
    basic = base64.b64encode(f"{fields['client_id']}:{fields['client_secret']}".encode()).decode()
    token = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    ).get_json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}

    bodies = re.findall(r"-d '(\{.*?\})'", printed.output, flags=re.DOTALL)
    match_body = json.loads(bodies[0])
    match = http.post("/v1/matches", json=match_body, headers=bearer)
    assert match.status_code == 201, match.get_data(as_text=True)
    answer = match.get_json()
    found = [(i["agency"]["code"], i["confidence"], i["open_referrals"]) for i in answer["items"]]
    assert found == [("nottingham-cs", "strong", 2)]
    for personal in (b"Kyle", b"Mensah", b"missing", b"9434765919"):
        assert personal not in match.get_data()

    request_body = json.loads(bodies[1].replace("'$MATCH'", answer["match_id"]))
    made = http.post("/v1/access-requests", json=request_body, headers=bearer)
    assert made.status_code == 201, made.get_data(as_text=True)
    assert made.get_json()["status"] == "pending" and "referral_ids" not in made.get_json()


def test_demo_summary_share_call_works_as_printed(tmp_path, monkeypatch):
    """The printed charity call: The Children's Society reads the station referral through a
    summary share, without the narrative or where on the station he was."""
    import re

    monkeypatch.setenv("CASEHUB_DATABASE_URL", f"sqlite:///{tmp_path / 'demo.db'}")
    monkeypatch.setenv("CASEHUB_SIGNING_KEYS_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setenv("CASEHUB_CLIENT_SECRET_SCRYPT_N", "1024")
    app = create_app()
    printed = CliRunner().invoke(main, ["demo"])
    assert printed.exit_code == 0, printed.output
    (credentials,) = re.findall(r"CHARITY=\$\(curl -s -u '([^']+)'", printed.output)
    (path,) = re.findall(
        r'Bearer \$CHARITY" http://[^/]+(/v1/referrals/[0-9a-f-]+)', printed.output
    )
    http = app.test_client()
    token = _token(http, credentials)
    read = http.get(path, headers={"Authorization": f"Bearer {token}"})
    assert read.status_code == 200, read.get_data(as_text=True)
    referral = read.get_json()
    assert referral["summary"].startswith("Boy travelling alone")
    assert referral["narrative"] is None
    assert referral["location"]["description"] is None
    assert b"Platform 4" not in read.get_data()


def test_demo_statistics_call_works_as_printed(tmp_path, monkeypatch):
    """The printed analyst call: counts by category and risk level across the partnership's
    demo year, some shown and the small ones suppressed, and no record in the answer."""
    import re

    monkeypatch.setenv("CASEHUB_DATABASE_URL", f"sqlite:///{tmp_path / 'demo.db'}")
    monkeypatch.setenv("CASEHUB_SIGNING_KEYS_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setenv("CASEHUB_CLIENT_SECRET_SCRYPT_N", "1024")
    app = create_app()
    printed = CliRunner().invoke(main, ["demo"])
    assert printed.exit_code == 0, printed.output
    (credentials,) = re.findall(r"STATS=\$\(curl -s -u '([^']+)'", printed.output)
    (path,) = re.findall(r"'http://[^/]+(/v1/statistics/referrals\?[^']+)'", printed.output)
    http = app.test_client()
    token = _token(http, credentials)
    answer = http.get(path, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    items = answer.get_json()["items"]
    shown = [i for i in items if not i["suppressed"]]
    hidden = [i for i in items if i["suppressed"]]
    assert shown and hidden
    assert all(i["count"] >= 5 for i in shown) and all(i["count"] is None for i in hidden)
    assert set(items[0]) == {"category", "risk_level", "count", "suppressed"}
    for personal in (b"Jayden", b"Okafor", b"Platform 4", b"CH-"):
        assert personal not in answer.get_data()


def _token(http, credentials: str) -> str:
    """A client_credentials token for the printed `client_id:client_secret`."""
    basic = base64.b64encode(credentials.encode()).decode()
    return http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    ).get_json()["access_token"]
