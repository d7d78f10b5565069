"""Operations endpoints: liveness, readiness, metrics, offline docs and request ids."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from casehub import create_app, migrate
from casehub.db import get_db, session_scope
from casehub.services import agencies as agency_service

HEX_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_at_head(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "ready"


@pytest.fixture
def unmigrated_app(tmp_path: Path) -> Iterator[Flask]:
    """An app on an empty SQLite database: reachable, but no migration has run."""
    application = create_app(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}",
            "SIGNING_KEYS_FILE": str(tmp_path / "keys.json"),
            "AUDIT_SEQUENCER": False,  # no audit tables here for a background sequencer
        }
    )
    yield application
    engine = get_db(application).engine
    assert engine is not None
    engine.dispose()


def test_readyz_when_schema_is_behind(unmigrated_app: Flask) -> None:
    response = unmigrated_app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert "migration" in response.get_json()["detail"]


def test_readyz_on_a_schema_one_migration_behind_and_one_release_ahead(
    unmigrated_app: Flask,
) -> None:
    """Behind (a migration this code needs has not run): not ready. Ahead (the next release's
    additive migration ran first, as a rolling upgrade does): the old pods stay ready."""
    engine = get_db(unmigrated_app).engine
    assert engine is not None
    head = migrate.head_revision()
    script = migrate.ScriptDirectory.from_config(migrate.alembic_config())
    previous = script.get_revision(head).down_revision
    migrate.upgrade(engine, str(previous))
    behind = unmigrated_app.test_client().get("/readyz")
    assert behind.status_code == 503
    assert behind.headers["Retry-After"] == "5"
    migrate.upgrade(engine)
    with engine.begin() as connection:  # as if a newer release had migrated past this one
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_next_release'"))
    ahead = unmigrated_app.test_client().get("/readyz")
    assert ahead.status_code == 200, ahead.get_json()
    assert ahead.get_json()["schema"] == "9999_next_release"


def test_readyz_when_database_is_unreachable(tmp_path: Path) -> None:
    application = create_app(
        {
            # A SQLite file in a folder that does not exist cannot be opened.
            "DATABASE_URL": f"sqlite:///{tmp_path / 'missing' / 'casehub.db'}",
            "SIGNING_KEYS_FILE": str(tmp_path / "keys.json"),
            "AUDIT_SEQUENCER": False,  # no database here for a background sequencer
        }
    )
    response = application.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert "reachable" in response.get_json()["detail"]
    assert "sqlite" not in response.get_data(as_text=True).lower()


def test_metrics_needs_a_token(client: FlaskClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_metrics_need_the_platform_monitoring_scope(client: FlaskClient, factory) -> None:
    """Platform-wide counts: not for an agency's admin, only the platform's monitoring."""
    for scopes in ("referrals:read", "admin webhooks:manage audit:read"):
        reader = factory.partner(f"ops-reader-{len(scopes)}", scopes=scopes)
        response = client.get("/metrics", headers=reader.headers())
        assert response.status_code == 403
        assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
        assert 'scope="monitoring:read"' in response.headers["WWW-Authenticate"]


def test_only_the_platform_agency_may_hold_monitoring_or_audit_everything(
    client: FlaskClient, factory
) -> None:
    admin = factory.partner("agency-a", scopes="admin")
    for scope in ("monitoring:read", "audit:read:all"):
        response = client.post(
            "/v1/admin/clients",
            json={"name": "Prometheus", "scopes": [scope]},
            headers=admin.headers(),
        )
        assert response.status_code == 422, scope
        assert "platform agency only" in response.get_json()["errors"]["json"]["scopes"][0]


def _sample(text: str, name: str, labels: str) -> float:
    """The value of one Prometheus sample, 0 when it has not been exported yet."""
    match = re.search(rf"^{re.escape(name + '{' + labels + '}')} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_requests_by_route_and_time_them(client: FlaskClient, factory) -> None:
    factory.agency("ops-admin", "other", platform=True)
    admin = factory.partner("ops-admin", scopes="monitoring:read")
    headers = admin.headers()
    healthz = 'method="GET",route="/healthz",status="200"'
    before = client.get("/metrics", headers=headers).get_data(as_text=True)

    client.get("/healthz")
    client.get("/healthz")
    client.get("/docs/assets/swagger-ui.css").close()
    client.get(f"/v1/agencies?unused={'x' * 10}")

    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    counted = _sample(text, "casehub_http_requests_total", healthz)
    assert counted == _sample(before, "casehub_http_requests_total", healthz) + 2
    # Concrete paths never become labels: the file name stays out, the template goes in.
    assert 'route="/docs/assets/<path:filename>"' in text
    assert "swagger-ui.css" not in text
    # A refused request is counted with its status and timed as well.
    assert 'method="GET",route="/v1/agencies",status="401"' in text
    assert (
        _sample(
            text,
            "casehub_http_request_duration_seconds_count",
            'method="GET",route="/v1/agencies"',
        )
        >= 1
    )
    assert "# TYPE casehub_http_request_duration_seconds histogram" in text
    bucket = 'le="0.005",method="GET",route="/healthz"'
    assert f"casehub_http_request_duration_seconds_bucket{{{bucket}}}" in text


def test_docs_work_without_internet(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert not re.search(r"https?://", page), "the docs page must not load anything remote"
    assert "/openapi.json" in page
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert "/docs/assets/swagger-ui-bundle.js" in assets
    for asset in assets:
        assert asset.startswith("/docs/assets/")
        with client.get(asset) as served:
            assert served.status_code == 200, asset
            assert served.data


def test_docs_bundle_is_served(client: FlaskClient) -> None:
    with client.get("/docs/assets/swagger-ui-bundle.js") as response:
        assert response.status_code == 200
        assert "javascript" in response.mimetype
        assert b"SwaggerUIBundle" in response.data


@pytest.mark.parametrize(
    "path", ["/healthz", "/v1/agencies", "/no/such/route", "/docs/assets/no-such-file.js"]
)
def test_every_response_has_a_request_id(client: FlaskClient, path: str) -> None:
    with client.get(path) as response:
        assert HEX_ID.match(response.headers.get("X-Request-Id", ""))


@pytest.mark.parametrize("supplied", ["abc-123", "a.b_C-9", "x" * 128])
def test_valid_caller_request_id_is_echoed(client: FlaskClient, supplied: str) -> None:
    for path in ("/healthz", "/v1/agencies"):
        response = client.get(path, headers={"X-Request-Id": supplied})
        assert response.headers["X-Request-Id"] == supplied


@pytest.mark.parametrize("supplied", ["has spaces", "x" * 129, "semi;colon", "ünïcode", ""])
def test_invalid_caller_request_id_is_replaced(client: FlaskClient, supplied: str) -> None:
    response = client.get("/healthz", headers={"X-Request-Id": supplied})
    replaced = response.headers["X-Request-Id"]
    assert replaced != supplied
    assert HEX_ID.match(replaced)


def test_request_ids_are_unique(client: FlaskClient) -> None:
    ids = {client.get("/healthz").headers["X-Request-Id"] for _ in range(5)}
    assert len(ids) == 5


# -- the deploy configuration, end to end --------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _call(
    url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def _try_status(url: str) -> int | None:
    try:
        return _call(url)[0]
    except OSError:
        return None


def _all_gone(pids: set[int]) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


@pytest.fixture
def gunicorn_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """casehub under gunicorn with deploy/gunicorn.conf.py and two workers, on SQLite."""
    database = f"sqlite:///{tmp_path / 'casehub.db'}"
    keys = str(tmp_path / "signing-keys.json")
    setup = create_app({"DATABASE_URL": database, "SIGNING_KEYS_FILE": keys})
    engine = get_db(setup).engine
    assert engine is not None
    migrate.upgrade(engine)
    with session_scope(setup) as session:
        agency_service.add_agency(
            session, code="ops", name="Operations", kind="other", is_platform=True
        )
        client, secret = agency_service.add_client(
            session, agency_code="ops", name="prometheus", scope="monitoring:read", scrypt_n=2**10
        )
        client_id = client.client_id
    engine.dispose()

    home = tmp_path / "home"
    home.mkdir()
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CASEHUB_", "PROMETHEUS_", "XDG_RUNTIME_DIR", "GUNICORN_"))
    }
    env.update(
        HOME=str(home),
        CASEHUB_BIND=f"127.0.0.1:{port}",
        CASEHUB_WORKERS="2",
        CASEHUB_THREADS="2",
        CASEHUB_DATABASE_URL=database,
        CASEHUB_SIGNING_KEYS_FILE=keys,
        CASEHUB_ISSUER=f"http://127.0.0.1:{port}",
        CASEHUB_LOG_FORMAT="text",  # the demo's lines, read below (JSON: test_log_canary.py)
    )
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while _try_status(f"{base}/readyz") != 200:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "not ready in 30 s:\n" + log_path.read_text()
            time.sleep(0.2)
        yield {
            "base": base,
            "client_id": client_id,
            "client_secret": str(secret),
            "home": str(home),
            "log": str(log_path),
        }
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_gunicorn_config_serves_and_sums_metrics_over_workers(
    gunicorn_server: dict[str, str],
) -> None:
    base = gunicorn_server["base"]
    log_path = Path(gunicorn_server["log"])
    for _ in range(20):
        assert _call(f"{base}/healthz")[0] == 200
    time.sleep(0.3)  # let the access log lines be written
    served_by = {
        int(pid) for pid in re.findall(r'"GET /healthz .* worker=<(\d+)>', log_path.read_text())
    }
    # Stop every worker that counted those requests; gunicorn replaces them. Whichever worker
    # the scrape below lands on never saw them, so it can only report them by summing over
    # every worker's files, including the exited ones'.
    for pid in served_by:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while not _all_gone(served_by) or _try_status(f"{base}/readyz") != 200:
        assert time.monotonic() < deadline, "gunicorn did not replace its workers"
        time.sleep(0.2)

    # A query carrying a child's name (as a subject search would) must not reach the log.
    status, _ = _call(
        f"{base}/v1/agencies?q=Jayden%20Okafor", headers={"X-Request-Id": "ops-check-1"}
    )
    assert status == 401

    basic = base64.b64encode(
        f"{gunicorn_server['client_id']}:{gunicorn_server['client_secret']}".encode()
    ).decode()
    status, body = _call(
        f"{base}/oauth/token",
        data=b"grant_type=client_credentials&scope=monitoring:read",
        headers={
            "Authorization": f"Basic {basic}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert status == 200, body
    token = json.loads(body)["access_token"]
    status, body = _call(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    text = body.decode()
    healthz = 'method="GET",route="/healthz",status="200"'
    assert _sample(text, "casehub_http_requests_total", healthz) == 20
    timed = _sample(
        text, "casehub_http_request_duration_seconds_count", 'method="GET",route="/healthz"'
    )
    assert timed == 20

    time.sleep(0.5)  # let the access log lines of the last requests be written
    log = log_path.read_text()
    assert "rid=ops-check-1" in log
    assert "Jayden" not in log and "Okafor" not in log
    assert '"GET /v1/agencies HTTP/1.1" 401' in log
    # No control socket (gunicorn 27 would create $HOME/.gunicorn/gunicorn.ctl by default).
    assert list(Path(gunicorn_server["home"]).iterdir()) == []


def test_behind_a_trusted_proxy_the_audit_trail_records_the_callers_address(tmp_path):
    from sqlalchemy import select

    from casehub import create_app, migrate
    from casehub.db import get_db, session_scope
    from casehub.models import AuditEvent
    from casehub.services import agencies

    app = create_app(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'proxy.db'}",
            "SIGNING_KEYS_FILE": str(tmp_path / "keys.json"),
            "TRUSTED_PROXIES": 1,
            "CLIENT_SECRET_SCRYPT_N": 1024,
        }
    )
    migrate.upgrade(get_db(app).engine)
    with app.app_context(), session_scope() as session:
        agencies.add_agency(session, code="btp", name="BTP", kind="police")
        client, secret = agencies.add_client(
            session, agency_code="btp", name="sys", scope="referrals:read", scrypt_n=1024
        )
        client_id = client.client_id
    http = app.test_client()
    forwarded = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    token = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
        headers=forwarded,
        environ_base={"REMOTE_ADDR": "10.0.0.2"},
    ).get_json()["access_token"]
    http.get(
        "/v1/referrals",
        headers={"Authorization": f"Bearer {token}", **forwarded},
        environ_base={"REMOTE_ADDR": "10.0.0.2"},
    )
    with app.app_context(), session_scope() as session:
        listed = session.execute(
            select(AuditEvent.request_ip).where(AuditEvent.action == "referral.list")
        ).scalar_one()
    assert listed == "203.0.113.9"
    get_db(app).engine.dispose()


def test_the_audit_sequencer_command_stops_at_once_on_sigterm(tmp_path: Path) -> None:
    """`casehub audit sequence` is PID 1 of its container: SIGTERM must end it between passes,
    not leave the orchestrator to wait out its grace period and kill it."""
    from tests.live_server import BIN, REPO, casehub

    env = {k: v for k, v in os.environ.items() if not k.startswith("CASEHUB_")}
    env.update(
        CASEHUB_DATABASE_URL=f"sqlite:///{tmp_path / 'seq.db'}",
        CASEHUB_SIGNING_KEYS_FILE=str(tmp_path / "keys.json"),
        CASEHUB_AUDIT_CHECKPOINT_KEY_FILE=str(tmp_path / "checkpoint.pem"),
        CASEHUB_LOG_FORMAT="text",
    )
    casehub(env, ["db", "upgrade"])
    process = subprocess.Popen(
        [str(BIN / "casehub"), "audit", "sequence", "--interval", "0.2"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # It says when SIGTERM will stop it cleanly (imports take seconds on a busy machine).
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        line = ""
        while "audit sequencer started" not in line:
            assert process.poll() is None and time.monotonic() < deadline, line
            if select.select([process.stdout], [], [], 1)[0]:
                line = process.stdout.readline()
        time.sleep(0.5)  # a pass or two
        assert process.poll() is None, process.communicate()[0]
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
        assert process.returncode == 0, output
        # Bounded loosely: under a load of 11 on two cores it took 3.9 s to exit cleanly; one
        # that hung on its connection or a lock would not exit at all.
        assert time.monotonic() - stopped_at < 10
        assert "audit sequencer stopped" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
