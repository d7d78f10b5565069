"""Configuration: defaults, then the CASEHUB_* environment, then explicit overrides."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

MIB = 1024 * 1024
LOG_FORMATS = ("json", "text")  # casehub/logs.py; either may be given in upper case
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
AUDIT_PARTITION_PERIODS = ("day", "week", "month")  # casehub.audit.partitions.PERIODS


class ConfigError(RuntimeError):
    """The configuration cannot run the service safely."""


DEFAULTS: dict[str, Any] = {
    "ENV": "development",
    "DATABASE_URL": None,  # None: a SQLite file in the instance folder
    "ISSUER": "http://127.0.0.1:5000",
    "AUDIENCE": None,  # None: the issuer
    "TOKEN_TTL": 900,
    "SIGNING_KEYS_FILE": None,  # None: instance/signing-keys.json, generated when missing
    "WEBHOOKS_ALLOW_PRIVATE": False,
    "WEBHOOK_KEY_FILE": None,  # None: instance/webhook-key, generated when missing (not production)
    "WEBHOOKS_CA_FILE": None,  # None: the system's trusted CAs verify receivers' certificates
    "WEBHOOK_LEASE_SECONDS": 60,  # a claimed delivery is retried by another worker after this
    "WEBHOOK_POLL_INTERVAL_MS": 1000,
    "WEBHOOK_CONCURRENCY": 8,  # deliveries one worker makes at once
    "EVENTS_RETENTION_DAYS": 30,
    # CONTRACT §11: a referral closed this many days ago is erased by `casehub retention run`
    # unless it is under legal hold (2190 days: six years).
    "RETENTION_DAYS": 2190,
    "IDEMPOTENCY_TTL": 24 * 3600,
    "CLIENT_SECRET_SCRYPT_N": 2**14,
    "SQL_ECHO": False,
    "LOG_FORMAT": "json",  # json: one JSON object per line (casehub/logs.py); text: the demo's
    "LOG_LEVEL": "info",  # debug, info, warning, error or critical
    # How many reverse proxies in front of casehub set X-Forwarded-For/-Proto/-Host (0: none).
    "TRUSTED_PROXIES": 0,
    "AUDIT_SEQUENCER": True,  # serving processes chain audit events in a background thread
    "AUDIT_SEQUENCE_INTERVAL_MS": 500,
    "AUDIT_CHECKPOINT_KEY_FILE": None,  # None: instance/audit-checkpoint-key.pem (Ed25519)
    # Comma-separated PEM files of the public halves of earlier checkpoint keys: after a
    # rotation, checkpoints they signed still verify.
    "AUDIT_CHECKPOINT_RETIRED_KEYS": "",
    # How long a period of the audit tables' partitions runs on PostgreSQL before `casehub
    # audit partitions --ensure` starts the next: day, week or month (casehub.audit.partitions).
    "AUDIT_PARTITION_PERIOD": "month",
    # Rate limits (casehub/limits.py): per client and route class; per address without a token;
    # failed client authentications per claimed client id and per address.
    "RATE_LIMITS_ENABLED": True,
    "RATE_LIMIT_STORAGE": "memory://",  # production: redis://host:6379/0, shared by every process
    "RATE_LIMIT_KEY_PREFIX": "casehub",
    "RATE_LIMIT_READ": "1200/minute",
    "RATE_LIMIT_WRITE": "300/minute",
    "RATE_LIMIT_SEARCH": "120/minute",
    "RATE_LIMIT_MATCH": "30/minute",  # CONTRACT §9: at most 30 match requests a minute
    "RATE_LIMIT_AUDIT": "120/minute",
    "RATE_LIMIT_PUBLIC": "300/minute",
    "RATE_LIMIT_AUTH_FAILURES": "10/minute",
    "RATE_LIMIT_AUTH_FAILURES_ADDRESS": "30/minute",
}

_BOOL = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False, "": False}


def _coerce(key: str, raw: str) -> Any:
    default = DEFAULTS.get(key)
    if isinstance(default, bool):
        try:
            return _BOOL[raw.strip().lower()]
        except KeyError as exc:
            raise ConfigError(f"CASEHUB_{key} must be 0 or 1") from exc
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(f"CASEHUB_{key} must be an integer") from exc
    return raw


def load(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Return the casehub settings (un-prefixed keys) from defaults, environment and overrides."""
    env = os.environ if environ is None else environ
    settings = dict(DEFAULTS)
    for key in DEFAULTS:
        value = env.get(f"CASEHUB_{key}")
        if value is not None:
            settings[key] = _coerce(key, value)
    settings.update(overrides or {})
    validate(settings)
    return settings


def validate(settings: Mapping[str, Any]) -> None:
    """Fail fast on settings that would make the service unsafe or broken."""
    ttl = settings["TOKEN_TTL"]
    if not 60 <= ttl <= 900:
        raise ConfigError("CASEHUB_TOKEN_TTL must be between 60 and 900 seconds")
    if settings["WEBHOOK_LEASE_SECONDS"] < 20:
        raise ConfigError("CASEHUB_WEBHOOK_LEASE_SECONDS must be at least 20 (deliveries take 15)")
    if settings["EVENTS_RETENTION_DAYS"] < 2:
        raise ConfigError("CASEHUB_EVENTS_RETENTION_DAYS must be at least 2 (retries last a day)")
    if settings["RETENTION_DAYS"] < 1:
        raise ConfigError("CASEHUB_RETENTION_DAYS must be at least 1")
    if str(settings["LOG_FORMAT"]).lower() not in LOG_FORMATS:
        raise ConfigError("CASEHUB_LOG_FORMAT must be json or text")
    if settings["AUDIT_PARTITION_PERIOD"] not in AUDIT_PARTITION_PERIODS:
        raise ConfigError("CASEHUB_AUDIT_PARTITION_PERIOD must be day, week or month")
    if str(settings["LOG_LEVEL"]).lower() not in LOG_LEVELS:
        raise ConfigError("CASEHUB_LOG_LEVEL must be " + ", ".join(LOG_LEVELS))
    from casehub import limits

    bad_limits = limits.check_settings(dict(settings))
    if bad_limits:
        raise ConfigError(
            ", ".join(bad_limits) + " must be a rate limit such as 600/minute or 10/second"
        )
    storage = str(settings["RATE_LIMIT_STORAGE"])
    if not storage.startswith(("memory://", "redis://", "rediss://", "redis+sentinel://")):
        raise ConfigError("CASEHUB_RATE_LIMIT_STORAGE must be memory:// or a redis:// URL")
    if settings["ENV"] == "production":
        missing = [
            f"CASEHUB_{key}"
            for key in ("DATABASE_URL", "SIGNING_KEYS_FILE", "WEBHOOK_KEY_FILE")
            if not settings.get(key)
        ]
        if missing:
            raise ConfigError("production needs " + ", ".join(missing))
        if not str(settings["ISSUER"]).startswith("https://"):
            raise ConfigError("production needs an https CASEHUB_ISSUER")
        if settings["WEBHOOKS_ALLOW_PRIVATE"]:
            raise ConfigError("CASEHUB_WEBHOOKS_ALLOW_PRIVATE is for local demos and tests only")
        serving = settings.get("SERVING", True)  # False for `casehub` commands
        if serving and not settings["RATE_LIMITS_ENABLED"]:
            raise ConfigError("production needs rate limits (CASEHUB_RATE_LIMITS_ENABLED=1)")
        if serving and storage.startswith("memory://"):
            # Each process would keep its own counters: N pods would allow N times the limit.
            raise ConfigError("production needs a shared CASEHUB_RATE_LIMIT_STORAGE (redis://...)")
