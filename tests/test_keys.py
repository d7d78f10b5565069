"""Token-signing keys: rotation, publication until the last token expires, and several
processes sharing one key file."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from casehub.auth.keys import RECHECK_SECONDS, RETIRE_MARGIN, KeyStore, KeysUnavailable
from casehub.cli import main
from tests.oauth_support import RESOURCE, segments

TTL = 900


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def published_kids(store: KeyStore) -> list[str]:
    return [k["kid"] for k in store.published()["keys"]]


def signing_kid(store: KeyStore) -> str:
    return str(store.signing_keys().keys[0].kid)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "signing-keys.json"


# -- the store on its own -----------------------------------------------------------------------
def test_a_retired_key_is_published_until_its_last_token_expired(key_file, clock):
    store = KeyStore(key_file, token_ttl=TTL, create=True, clock=clock)
    first = signing_kid(store)
    clock.now += 10
    second = store.rotate()
    assert signing_kid(store) == second != first
    assert published_kids(store) == [first, second]
    assert store.key_for(first) is not None

    clock.now += TTL + RETIRE_MARGIN - 1
    assert published_kids(store) == [first, second]
    clock.now += 2  # no change to the file: time alone retires the key
    assert published_kids(store) == [second]
    assert store.key_for(first) is None
    assert not store.is_live(first)

    clock.now += 5
    third = store.rotate()
    entries = json.loads(key_file.read_text())["keys"]
    assert [e["private"]["kid"] for e in entries] == [second, third]  # dead keys leave the file


def test_a_key_published_first_verifies_everywhere_before_it_signs(key_file, clock):
    """`casehub keys rotate --publish-first 300`: every host that reads the new file within
    five minutes knows the key before any token signed with it can reach it."""
    store = KeyStore(key_file, token_ttl=TTL, create=True, clock=clock)
    first = signing_kid(store)
    clock.now += 10
    second = store.rotate(publish_first=300)
    assert published_kids(store) == [first, second]
    assert store.key_for(second) is not None
    assert signing_kid(store) == first  # the old key signs during the delay
    clock.now += 299
    assert signing_kid(store) == first
    clock.now += 2  # no change to the file: time alone hands over
    assert signing_kid(store) == second
    # The old key retired at the handover: published until its last token has expired.
    clock.now += TTL + RETIRE_MARGIN - 2
    assert first in published_kids(store)
    clock.now += 2
    assert published_kids(store) == [second]


def test_the_cli_publishes_first(key_file, clock, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from casehub.cli import main

    for name, value in {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "SIGNING_KEYS_FILE": str(key_file),
        "AUDIT_SEQUENCER": "0",
    }.items():
        monkeypatch.setenv(f"CASEHUB_{name}", value)
    result = CliRunner().invoke(main, ["keys", "rotate", "--publish-first", "300"])
    assert result.exit_code == 0, result.output
    entries = json.loads(key_file.read_text())["keys"]
    # The app made the first key at start; the rotation published a second that signs later.
    assert "signs from 300 s from now" in result.output
    assert entries[-1]["active_at"] == entries[-1]["created_at"] + 300
    assert entries[0]["retired_at"] == entries[-1]["active_at"]


def test_published_keys_are_public_and_marked_for_signing(key_file, clock):
    store = KeyStore(key_file, token_ttl=TTL, create=True, clock=clock)
    (jwk,) = store.published()["keys"]
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-256"
    assert jwk["use"] == "sig" and jwk["alg"] == "ES256"
    assert "d" not in jwk


def test_the_key_file_is_private(key_file, clock):
    store = KeyStore(key_file, token_ttl=TTL, create=True, clock=clock)
    store.rotate()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_production_never_invents_keys(key_file):
    store = KeyStore(key_file, token_ttl=TTL, create=False)
    with pytest.raises(KeysUnavailable, match="casehub keys rotate"):
        store.signing_keys()
    assert not key_file.exists()


def test_a_file_without_an_active_key_is_an_error(key_file, clock):
    store = KeyStore(key_file, token_ttl=TTL, create=True, clock=clock)
    entries = json.loads(key_file.read_text())["keys"]
    entries[0]["retired_at"] = int(clock.now)
    key_file.write_text(json.dumps({"keys": entries}))
    store.reload()
    with pytest.raises(RuntimeError, match="no active signing key"):
        store.signing_keys()


def test_the_file_is_looked_at_at_most_once_a_second(key_file, clock, monkeypatch):
    store = KeyStore(key_file, token_ttl=TTL, create=True, clock=clock)
    kid = signing_kid(store)
    looks = 0
    real_stat = Path.stat

    def counting_stat(self: Path, **kwargs: object) -> os.stat_result:
        nonlocal looks
        if self == key_file:
            looks += 1
        return real_stat(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "stat", counting_stat)
    for _ in range(1000):
        assert store.is_live(kid)
        store.signing_keys()
    assert looks == 0
    clock.now += RECHECK_SECONDS
    store.signing_keys()
    assert looks == 1


def test_another_process_rotation_is_seen(key_file, clock):
    """Two stores on one file stand for two workers: a rotation by one is used for signing by
    the other within a second, and the other verifies the new key's tokens at once."""
    worker_a = KeyStore(key_file, token_ttl=TTL, create=True, clock=clock)
    worker_b = KeyStore(key_file, token_ttl=TTL, create=False, clock=clock)
    old = signing_kid(worker_b)
    new = worker_a.rotate()
    assert signing_kid(worker_b) == old  # not looked at the file yet this second
    assert worker_b.key_for(new) is not None  # an unknown kid makes it look at once
    clock.now += RECHECK_SECONDS
    assert signing_kid(worker_b) == new
    assert published_kids(worker_b) == [old, new]


def test_concurrent_rotations_lose_no_key(key_file):
    store = KeyStore(key_file, token_ttl=TTL, create=True)
    others = [KeyStore(key_file, token_ttl=TTL, create=False) for _ in range(4)]
    made: list[str] = []

    def rotate(target: KeyStore) -> None:
        for _ in range(5):
            made.append(target.rotate())

    threads = [threading.Thread(target=rotate, args=(other,)) for other in others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entries = json.loads(key_file.read_text())["keys"]
    kids = [e["private"]["kid"] for e in entries]
    assert set(made) <= set(kids)
    assert len(kids) == 1 + 20
    assert sum(e["retired_at"] is None for e in entries) == 1
    store.reload()
    assert signing_kid(store) == kids[-1]


def test_casehub_keys_rotate_in_another_process(key_file, tmp_path):
    store = KeyStore(key_file, token_ttl=TTL, create=True)
    old = signing_kid(store)
    env = {
        **os.environ,
        "CASEHUB_SIGNING_KEYS_FILE": str(key_file),
        "CASEHUB_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
    }
    command = [sys.executable, "-c", "from casehub.cli import main; main()", "keys", "rotate"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    new = result.stdout.strip().rsplit(" ", 1)[-1]
    assert new != old
    assert store.key_for(new) is not None
    time.sleep(RECHECK_SECONDS)
    assert signing_kid(store) == new
    assert published_kids(store) == [old, new]


# -- rotation seen over HTTP ----------------------------------------------------------------------
@pytest.fixture
def app_keys(app, tmp_path):
    """The app's key store on a key file of this test's own (other tests keep theirs)."""
    keys: KeyStore = app.extensions["casehub.keys"]
    original_path, original_clock = keys.path, keys.clock
    keys.path = tmp_path / "app-keys.json"
    keys.rotate()
    yield keys
    keys.path, keys.clock = original_path, original_clock
    keys.reload()
    app.extensions["casehub.validator"].cache.clear()


def test_rotation_over_http(app, client, factory, app_keys):
    btp = factory.partner("btp", "referrals:read")
    old_token = btp.token()
    old_kid = segments(old_token)[0]["kid"]
    assert client.get(RESOURCE, headers={"Authorization": f"Bearer {old_token}"}).status_code == 200

    result = app.test_cli_runner().invoke(main, ["keys", "rotate"])
    assert result.exit_code == 0, result.output
    new_token = btp.token()
    new_kid = segments(new_token)[0]["kid"]
    assert new_kid != old_kid and new_kid in result.output

    jwks = client.get("/.well-known/jwks.json").get_json()
    assert [k["kid"] for k in jwks["keys"]] == [old_kid, new_kid]
    for token in (old_token, new_token):
        assert client.get(RESOURCE, headers={"Authorization": f"Bearer {token}"}).status_code == 200

    # Once the old key's last token could have expired, it is neither published nor trusted,
    # even for a token whose verified claims this process had cached.
    later = time.time() + TTL + RETIRE_MARGIN + 1
    app_keys.clock = lambda: later
    jwks = client.get("/.well-known/jwks.json").get_json()
    assert [k["kid"] for k in jwks["keys"]] == [new_kid]
    refused = client.get(RESOURCE, headers={"Authorization": f"Bearer {old_token}"})
    assert refused.status_code == 401
    assert client.get(RESOURCE, headers={"Authorization": f"Bearer {new_token}"}).status_code == 200


def test_production_starts_without_a_key_file_but_is_not_ready_until_one_is_made(
    tmp_path, monkeypatch
):
    from click.testing import CliRunner

    from casehub import create_app, migrate
    from casehub.cli import main
    from casehub.db import get_db

    keys = tmp_path / "keys.json"
    webhook_key = tmp_path / "webhook-key"
    settings = {
        "ENV": "production",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'prod.db'}",
        "SIGNING_KEYS_FILE": str(keys),
        "WEBHOOK_KEY_FILE": str(webhook_key),
        "ISSUER": "https://casehub.example",
        "RATE_LIMIT_STORAGE": "redis://127.0.0.1:6379/0",  # production refuses per-process ones
    }
    app = create_app(settings)
    engine = get_db(app).engine
    migrate.upgrade(engine)
    assert not keys.exists()
    not_ready = app.test_client().get("/readyz")
    assert not_ready.status_code == 503
    assert "signing key" in not_ready.get_json()["detail"]
    for name, value in settings.items():
        monkeypatch.setenv(f"CASEHUB_{name}", value)
    rotated = CliRunner().invoke(main, ["keys", "rotate"])
    assert rotated.exit_code == 0, rotated.output
    assert keys.exists()
    # Production never generates the webhook key either: without it, not ready.
    not_ready = app.test_client().get("/readyz")
    assert not_ready.status_code == 503
    assert "webhook key" in not_ready.get_json()["detail"]
    webhook_key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    assert app.test_client().get("/readyz").status_code == 200
    engine.dispose()
