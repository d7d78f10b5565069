"""The application factory: config → db → auth → api → blueprints → request lifecycle."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from casehub import config as config_module
from casehub import logs, web
from casehub.api import docs, register_blueprints
from casehub.api.base import SECURITY_SCHEME, Api
from casehub.api.ops import init_metrics
from casehub.api.webhooks import document_deliveries
from casehub.audit import chain as audit_chain
from casehub.auth import scopes
from casehub.auth import server as oauth_server
from casehub.auth.keys import KeyStore
from casehub.auth.protector import make_protector
from casehub.auth.tokens import AccessTokenValidator
from casehub.config import MIB
from casehub.db import Database

API_VERSION = "1.0.0"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask("casehub", instance_relative_config=True, static_folder=None)
    settings = config_module.load(config)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    if not settings["DATABASE_URL"]:
        settings["DATABASE_URL"] = "sqlite:///" + os.path.join(app.instance_path, "casehub.db")
    settings["ISSUER"] = str(settings["ISSUER"]).rstrip("/")
    settings["AUDIENCE"] = settings["AUDIENCE"] or settings["ISSUER"]
    app.config.update(settings)
    app.config.update(
        MAX_CONTENT_LENGTH=MIB,
        API_TITLE="casehub",
        API_VERSION=API_VERSION,
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    logs.init_app(app)  # first: whatever starts up below logs in the configured format

    db = Database()
    db.init_app(app)

    key_file = settings["SIGNING_KEYS_FILE"] or os.path.join(app.instance_path, "signing-keys.json")
    keys = KeyStore(
        Path(key_file), token_ttl=settings["TOKEN_TTL"], create=settings["ENV"] != "production"
    )
    validator = AccessTokenValidator(
        keys,
        issuer=settings["ISSUER"],
        audience=settings["AUDIENCE"],
        max_lifetime=settings["TOKEN_TTL"],
    )
    app.extensions["casehub.keys"] = keys
    app.extensions["casehub.validator"] = validator
    app.extensions["casehub.protector"] = make_protector(validator)
    oauth_server.init_app(app, keys, validator)

    api = Api(app, spec_kwargs={"info": _info(), "servers": SERVERS})
    api.spec.components.security_scheme(
        SECURITY_SCHEME,
        {
            "type": "oauth2",
            "description": (
                "RFC 9068 JWT access tokens from POST /oauth/token (client_credentials, or "
                "jwt-bearer for a registered user). Send as `Authorization: Bearer <token>`."
            ),
            "flows": {
                "clientCredentials": {
                    "tokenUrl": "/oauth/token",
                    "scopes": dict(scopes.SCOPES),
                }
            },
        },
    )
    app.extensions["casehub.api"] = api
    if settings["TRUSTED_PROXIES"]:
        # The audit trail records the caller's address, and OAuth checks the scheme: both must
        # come from the proxies' X-Forwarded-* headers, trusting only as many hops as we have.
        hops = settings["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops
        )
    register_blueprints(api)
    document_deliveries(api.spec)
    app.register_blueprint(docs.blp)
    web.init_app(app)
    audit_chain.init_app(app)
    init_metrics(app)
    return app


def _info() -> dict[str, Any]:
    return {
        "description": (
            "casehub shares referrals about children at risk of criminal exploitation between "
            "police forces, charities, local authority children's services and probation.\n\n"
            "Conventions: errors are RFC 9457 `application/problem+json`; lists take `limit` "
            "(1..200, default 50) and an opaque `cursor`, and are ordered by creation time then "
            "id, oldest first, so a cursor walk sees every item that existed when it started "
            "exactly once; unknown query parameters and unknown body fields are 422; "
            "referrals and subjects carry an `ETag` and changes need `If-Match`; creating POSTs "
            "accept `Idempotency-Key`; every response carries `X-Request-Id`. A record the "
            "caller's agency may not see answers 404, exactly like one that does not exist."
        ),
        "contact": {"name": "casehub maintainers"},
        "license": {"name": "Proprietary", "identifier": "LicenseRef-casehub-proprietary"},
    }


SERVERS = [
    {
        "url": "/",
        "description": "The casehub deployment that serves this document: each partnership "
        "runs its own (the local demo is http://127.0.0.1:5000).",
    }
]
