"""The project's Api and Blueprint: problem+json errors, strict arguments, declared scopes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import flask_smorest
import marshmallow as ma
from flask import Response, g
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException

from casehub.auth.actor import Actor
from casehub.errors import problem
from casehub.services.purposes import REQUEST_PURPOSES

F = TypeVar("F", bound=Callable[..., Any])

SECURITY_SCHEME = "oauth2"
PROBLEM = "application/problem+json"


class ProblemSchema(ma.Schema):
    """RFC 9457 problem details."""

    type = ma.fields.String(required=True, metadata={"description": "A URI naming the problem."})
    title = ma.fields.String(required=True)
    status = ma.fields.Integer(required=True)
    detail = ma.fields.String(required=True)
    errors = ma.fields.Dict(
        metadata={
            "description": "Validation errors: {location: {field: [message, ...]}}.",
        }
    )


class Parser(FlaskParser):
    """Unknown query parameters are errors too: a mistyped filter must not list everything."""

    DEFAULT_UNKNOWN_BY_LOCATION = {
        **FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION,
        "query": ma.RAISE,
        "querystring": ma.RAISE,
        "headers": ma.EXCLUDE,
    }


PURPOSE_OF_USE = {
    "in": "header",
    "name": "Purpose-Of-Use",
    "required": False,
    "schema": {"type": "string", "enum": sorted(REQUEST_PURPOSES)},
    "description": (
        "Why the caller consults this data (DPA 2018 s62), recorded in the audit event. "
        "Default: the purpose of the share that grants access, or case_work for the lead. "
        "Any other value is 422."
    ),
}


def _doc(func: F, *, parameters: list[dict[str, Any]] | None = None, **kwargs: Any) -> F:
    """flask-smorest's `doc`, but header parameters from several decorators add up."""
    existing = getattr(func, "_apidoc", {}).get("manual_doc", {}).get("parameters", [])
    names = {p["name"] for p in parameters or []}
    merged = [p for p in existing if p["name"] not in names] + list(parameters or [])
    return flask_smorest.Blueprint.doc(parameters=merged, **kwargs)(func)  # type: ignore[no-any-return]


def problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM: {"schema": ProblemSchema}}}


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ProblemSchema
    DEFAULT_ERROR_RESPONSE_NAME = "DEFAULT_ERROR"

    def _register_responses(self) -> None:
        """The error responses flask-smorest documents itself (422 of `arguments`, `default`)
        say problem+json, which is what handle_http_exception sends."""
        self.DEFAULT_RESPONSE_CONTENT_TYPE = PROBLEM
        try:
            super()._register_responses()
        finally:
            del self.DEFAULT_RESPONSE_CONTENT_TYPE  # successes stay application/json

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        """Every framework HTTP error (404, 405, webargs 400/422, 413…) as problem+json."""
        data = getattr(error, "data", None) or {}
        headers = {
            k: v
            for k, v in error.get_headers()
            if k.lower() not in ("content-type", "content-length")
        }
        headers.update(data.get("headers") or {})
        errors = data.get("errors") or data.get("messages")
        status = error.code or 500
        detail = data.get("message")
        if detail is None:
            detail = {
                400: "The request body is not valid JSON.",
                404: "No such resource.",
                405: "Method not allowed on this resource.",
                413: "The request body is larger than 1 MiB.",
                422: "The request has invalid fields.",
            }.get(status, error.name)
        return problem(status, detail=detail, errors=errors, headers=headers)


BODY_REFUSALS = {
    "400": problem_response("The body is not valid JSON."),
    "413": problem_response("The body is larger than 1 MiB."),
    "415": problem_response("The body is not sent as application/json."),
}


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = Parser()

    def arguments(self, schema: Any, *, location: str = "json", **kwargs: Any) -> Callable[[F], F]:
        """flask-smorest's `arguments`; a JSON body also documents how web.py refuses one."""
        decorator = super().arguments(schema, location=location, **kwargs)
        if location != "json":
            return decorator  # type: ignore[no-any-return]

        def with_refusals(func: F) -> F:
            return _doc(decorator(func), responses=BODY_REFUSALS)

        return with_refusals

    @staticmethod
    def requires(scope: str, *alternatives: str) -> Callable[[F], F]:
        """Declare (and document) the scope a view needs; web.py enforces it on every request.

        Several scopes mean any one of them will do. `scopes.ANY_SCOPE` means any valid token.
        """
        accepted = tuple(s for s in (scope, *alternatives) if s)

        def decorator(func: F) -> F:
            func._casehub_scope = accepted  # type: ignore[attr-defined]
            doc = {
                "security": [{SECURITY_SCHEME: [s]} for s in accepted] or [{SECURITY_SCHEME: []}],
                "parameters": [PURPOSE_OF_USE],
                "responses": {
                    "401": problem_response('No valid access token (`error="invalid_token"`).'),
                    "403": problem_response(
                        'The token lacks the scope (`error="insufficient_scope"`), or the record '
                        "is visible but not the caller's to change."
                    ),
                },
            }
            apidoc = getattr(func, "_apidoc", {})
            documented = {
                str(code)
                for part in (apidoc.get("arguments", {}), apidoc.get("manual_doc", {}))
                for code in part.get("responses", {})
            }
            if "422" not in documented:  # arguments document their own 422
                doc["responses"]["422"] = problem_response(
                    "A Purpose-Of-Use that is not a known purpose."
                )
            return _doc(func, **doc)

        return decorator

    @staticmethod
    def idempotent(func: F) -> F:
        """Mark a creating POST as honouring `Idempotency-Key` (see web.py)."""
        func._casehub_idempotent = True  # type: ignore[attr-defined]
        return _doc(
            func,
            parameters=[
                {
                    "in": "header",
                    "name": "Idempotency-Key",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    "description": (
                        "Repeating a key with the same body within 24 h returns the first "
                        "response and creates nothing; the same key with another body is 422. "
                        "Only successful (2xx) responses are kept."
                    ),
                }
            ],
        )

    @staticmethod
    def replay_without(*fields: str) -> Callable[[F], F]:
        """Top-level response fields (secrets shown once) stored as null for idempotent replays."""

        def decorator(func: F) -> F:
            func._casehub_replay_without = fields  # type: ignore[attr-defined]
            return func

        return decorator

    @staticmethod
    def etag_required(func: F) -> F:
        return _doc(
            func,
            parameters=[
                {
                    "in": "header",
                    "name": "If-Match",
                    "required": True,
                    "schema": {"type": "string", "maxLength": 100},
                    "description": "The record's current ETag.",
                }
            ],
            responses={
                "412": problem_response("If-Match does not match the current ETag."),
                "428": problem_response("If-Match is missing."),
            },
        )


def current_actor() -> Actor:
    """The authenticated caller; web.py sets it before any scoped view runs."""
    actor: Actor = g.actor
    return actor


def public(func: F) -> F:
    """Mark a view that needs no token (well-known, token endpoints, health, docs)."""
    func._casehub_public = True  # type: ignore[attr-defined]
    return func
