"""The project's Api and Blueprint: problem+json errors, strict arguments, declared scopes, and
an OpenAPI document in which every operation says what the service really does."""

from __future__ import annotations

import http
import json
from collections.abc import Callable
from copy import deepcopy
from typing import Any, TypeVar

import flask
import flask_smorest
import marshmallow as ma
from apispec import BasePlugin
from apispec.ext.marshmallow.field_converter import FieldConverterMixin
from flask import Response, g
from flask_smorest.utils import prepare_response
from webargs.core import missing
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import HTTPException

from casehub import jsonbody
from casehub.auth.actor import Actor
from casehub.errors import problem
from casehub.schemas import enums

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


class TombstoneSchema(ma.Schema):
    """What remains of an erased referral (CONTRACT §11): ids, never content."""

    id = ma.fields.UUID(required=True)
    reference = ma.fields.String(required=True, metadata={"example": "CH-2026-000123"})
    lead_agency = ma.fields.String(required=True)
    erased_at = ma.fields.DateTime(required=True)


class GoneProblemSchema(ProblemSchema):
    """A 410 for an erased referral: the problem, and the referral's tombstone."""

    tombstone = ma.fields.Nested(TombstoneSchema, required=True)


class Parser(FlaskParser):
    """Unknown query parameters are errors too: a mistyped filter must not list everything."""

    DEFAULT_UNKNOWN_BY_LOCATION = {
        **FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION,
        "query": ma.RAISE,
        "querystring": ma.RAISE,
        "headers": ma.EXCLUDE,
    }

    def _raw_load_json(self, req: flask.Request) -> Any:
        """As webargs does, with casehub's parser: deep nesting and lone surrogates are 400s."""
        if not is_json_request(req):
            return missing
        try:
            return jsonbody.loads(req.get_data(cache=True))
        except UnicodeDecodeError as error:
            raise json.JSONDecodeError("Bytes decoding error", " ", 0) from error


PURPOSE_OF_USE = {
    "in": "header",
    "name": "Purpose-Of-Use",
    "required": False,
    "schema": {"$ref": f"#/components/schemas/{enums.PURPOSE_OF_USE.name}"},
    "description": (
        "Why the caller consults this data (DPA 2018 s62), recorded in the audit event. "
        "Default: the purpose of the share that grants access, or case_work for the lead. "
        "Any other value is 422."
    ),
}


HTTP_METHODS = frozenset({"get", "put", "post", "patch", "delete", "head", "options"})
REQUEST_ID_HEADER = "REQUEST_ID"  # components/headers
WWW_AUTHENTICATE = {
    "description": 'RFC 6750: `Bearer realm="casehub", error="..."` (and `scope` for '
    "insufficient_scope).",
    "schema": {"type": "string"},
}


RATE_CLASS_KEY = "x-rate-limit-class"
RATE_LIMIT_POLICY_HEADER = "RATE_LIMIT_POLICY"  # components/headers
RATE_LIMIT_HEADER = "RATE_LIMIT"
RETRY_AFTER_HEADER = "RETRY_AFTER"
_RATE_BUDGETS = {
    "read": "its client's `read` budget (`CASEHUB_RATE_LIMIT_READ`, default 1200/minute)",
    "write": "its client's `write` budget (`CASEHUB_RATE_LIMIT_WRITE`, default 300/minute)",
    "search": "its client's `search` budget (`CASEHUB_RATE_LIMIT_SEARCH`, default 120/minute)",
    "match": "its client's `match` budget (`CASEHUB_RATE_LIMIT_MATCH`, default 30/minute)",
    "audit": "its client's `audit` budget (`CASEHUB_RATE_LIMIT_AUDIT`, default 120/minute)",
    "public": "its address's `public` budget (`CASEHUB_RATE_LIMIT_PUBLIC`, default 300/minute)",
    "client-auth": (
        "the failed client authentications of the claimed client id "
        "(`CASEHUB_RATE_LIMIT_AUTH_FAILURES`, default 10/minute) or of the address "
        "(`CASEHUB_RATE_LIMIT_AUTH_FAILURES_ADDRESS`, default 30/minute); while either is "
        "spent no credentials are checked, right or wrong"
    ),
}


def _too_many_requests(rate_class: str) -> dict[str, Any]:
    return {
        "description": f"Rate limited: this request would exceed {_RATE_BUDGETS[rate_class]}. "
        "Nothing was done; retry after `Retry-After` seconds.",
        # The plugin runs after schemas are resolved: name the component, not the class.
        "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        "headers": {
            "Retry-After": RETRY_AFTER_HEADER,
            "RateLimit-Policy": RATE_LIMIT_POLICY_HEADER,
            "RateLimit": RATE_LIMIT_HEADER,
        },
    }


def _doc(func: F, *, parameters: list[dict[str, Any]] | None = None, **kwargs: Any) -> F:
    """flask-smorest's `doc`, except that header parameters are appended to the parameters the
    decorators generate (flask-smorest's manual doc would replace that list, and with it every
    query parameter `arguments(location="query")` documents)."""
    if parameters:
        apidoc = deepcopy(getattr(func, "_apidoc", {}))
        names = {p["name"] for p in parameters}
        kept = [p for p in apidoc.get("casehub_headers", []) if p["name"] not in names]
        apidoc["casehub_headers"] = kept + list(parameters)
        func._apidoc = apidoc  # type: ignore[attr-defined]
    if not kwargs:
        return func
    return flask_smorest.Blueprint.doc(**kwargs)(func)  # type: ignore[no-any-return]


def problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM: {"schema": ProblemSchema}}}


def _code_reference(self: FieldConverterMixin, field: ma.fields.Field, ret: dict[str, Any]) -> dict:
    """apispec attribute function: a field of named codes becomes a reference to its component
    (nullable: anyOf the reference and null) instead of an inline copy of the enum."""
    codes = getattr(field, "codes", None)
    if not isinstance(codes, enums.Codes):
        return {}
    kept = {k: v for k, v in ret.items() if k in ("description", "default", "readOnly", "example")}
    reference = {"$ref": f"#/components/schemas/{codes.name}"}
    ret.clear()
    ret.update(kept)
    if field.allow_none:
        ret["anyOf"] = [reference, {"type": "null"}]
    else:
        ret.update(reference)
    return {}


class ContractPlugin(BasePlugin):
    """What holds for every operation is documented on every operation, in one place:
    an operationId (required: a generated client names its functions after it),
    `security: []` on public operations, the `X-Request-Id` header of every response, and
    422 for unknown query parameters (web.py refuses them everywhere)."""

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **_: Any
    ) -> None:
        for method, operation in (operations or {}).items():
            if method not in HTTP_METHODS:
                continue
            if not operation.get("operationId"):
                raise ValueError(
                    f"{method.upper()} {path} has no operationId: add one with "
                    '@blp.doc(operationId="verbNoun")'
                )
            security = operation.setdefault("security", [])
            responses = operation.setdefault("responses", {})
            responses.setdefault("422", http.HTTPStatus.UNPROCESSABLE_ENTITY.name)
            rate_class = operation.pop(RATE_CLASS_KEY, None) or (
                "public" if not security else ("read" if method in ("get", "head") else "write")
            )
            if rate_class != "none":
                operation[RATE_CLASS_KEY] = rate_class
                responses["429"] = _too_many_requests(rate_class)
            for status, response in responses.items():
                if isinstance(response, dict) and "$ref" not in response:
                    headers = response.setdefault("headers", {})
                    headers["X-Request-Id"] = REQUEST_ID_HEADER
                    if rate_class != "none" and str(status).startswith("2"):
                        headers["RateLimit-Policy"] = RATE_LIMIT_POLICY_HEADER
                        headers["RateLimit"] = RATE_LIMIT_HEADER


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ProblemSchema
    DEFAULT_ERROR_RESPONSE_NAME = "DEFAULT_ERROR"

    def _init_spec(self, **kwargs: Any) -> None:
        kwargs["extra_plugins"] = [*(kwargs.get("extra_plugins") or ()), ContractPlugin()]
        super()._init_spec(**kwargs)
        self.ma_plugin.converter.add_attribute_function(_code_reference)  # type: ignore[union-attr]
        for codes in enums.ALL:
            self.spec.components.schema(codes.name, codes.component())
        self.spec.components.header(
            REQUEST_ID_HEADER,
            {
                "description": "The X-Request-Id the caller sent, if it was at most 128 of "
                "`[A-Za-z0-9._-]`; otherwise a fresh one. The audit event records it.",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
            },
        )

        self.spec.components.header(
            RATE_LIMIT_POLICY_HEADER,
            {
                "description": "draft-ietf-httpapi-ratelimit-headers: the limits this request "
                'counted against, e.g. `"read";q=1200;w=60` (quota q per w seconds, per '
                "client and class; `x-rate-limit-class` names the operation's class).",
                "schema": {"type": "string"},
            },
        )
        self.spec.components.header(
            RATE_LIMIT_HEADER,
            {
                "description": "draft-ietf-httpapi-ratelimit-headers: what is left of each "
                'policy, e.g. `"read";r=1187;t=42` (r remaining, t seconds until the window '
                "frees a unit).",
                "schema": {"type": "string"},
            },
        )
        self.spec.components.header(
            RETRY_AFTER_HEADER,
            {
                "description": "Whole seconds to wait before retrying (RFC 9110 §10.2.3).",
                "schema": {"type": "integer", "minimum": 1},
            },
        )

    def _register_responses(self) -> None:
        """The error responses flask-smorest documents itself (422 of `arguments`, `default`):
        problem+json, which is what handle_http_exception sends, with the X-Request-Id header."""
        for status in http.HTTPStatus:
            if status < 400:
                continue
            response = {
                "description": status.phrase,
                "schema": self.ERROR_SCHEMA,
                "headers": {"X-Request-Id": REQUEST_ID_HEADER},
            }
            prepare_response(response, self.spec, PROBLEM)
            self.spec.components.response(status.name, response, lazy=True)
        response = {
            "description": "An error not listed above (problem+json).",
            "schema": self.ERROR_SCHEMA,
            "headers": {"X-Request-Id": REQUEST_ID_HEADER},
        }
        prepare_response(response, self.spec, PROBLEM)
        self.spec.components.response(self.DEFAULT_ERROR_RESPONSE_NAME, response, lazy=True)

    def _register_pagination_header(self) -> None:
        """casehub pages with cursors in the body; flask-smorest's page-number X-Pagination
        header (and its PaginationMetadata schema) would contradict that."""

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prepare_doc_cbks.append(self._prepare_header_doc)

    @staticmethod
    def _prepare_header_doc(doc: dict[str, Any], doc_info: dict[str, Any], **_: Any) -> dict:
        """Header parameters (`requires`, `idempotent`, `etag_required`) join the generated
        parameters instead of replacing them."""
        headers = doc_info.get("casehub_headers")
        if headers:
            doc.setdefault("parameters", []).extend(deepcopy(headers))
        return doc

    def arguments(self, schema: Any, *, location: str = "json", **kwargs: Any) -> Callable[[F], F]:
        """flask-smorest's `arguments`; a JSON body also documents how web.py refuses one, and
        query arguments mark the view as one that takes a query string (web.py refuses a query
        string on every other view). A schema class is instantiated once, here: webargs would
        build one (and its nested schemas) for every request."""
        if isinstance(schema, type):
            schema = schema()
        decorator = super().arguments(schema, location=location, **kwargs)
        if location == "query":
            return lambda func: checks_own_query(decorator(func))
        if location != "json":
            return decorator  # type: ignore[no-any-return]

        def with_refusals(func: F) -> F:
            parsed = decorator(func)
            parsed._casehub_body = True  # type: ignore[attr-defined]  # web.py: takes a body
            return _doc(parsed, responses=BODY_REFUSALS)

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
                    "401": {
                        **problem_response('No valid access token (`error="invalid_token"`).'),
                        "headers": {"WWW-Authenticate": WWW_AUTHENTICATE},
                    },
                    "403": {
                        **problem_response(
                            'The token lacks the scope (`error="insufficient_scope"`, with a '
                            "WWW-Authenticate challenge), or the record is visible but not the "
                            "caller's to change."
                        ),
                        "headers": {"WWW-Authenticate": WWW_AUTHENTICATE},
                    },
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
    def rate_class(name: str) -> Callable[[F], F]:
        """Put a view in a rate-limit class other than its method's (casehub/limits.py):
        `search`, `match`, `audit`, `client-auth` (budgeted by failed client authentications) or
        `none` (never limited: liveness and readiness)."""

        def decorator(func: F) -> F:
            func._casehub_rate_class = name  # type: ignore[attr-defined]
            return _doc(func, **{RATE_CLASS_KEY: name})

        return decorator

    @staticmethod
    def autocommit_read(func: F) -> F:
        """Mark a GET whose only write is its audit event: on PostgreSQL it runs outside a
        transaction (casehub.db.Database.new_session), two round trips fewer. Any other write
        from it is refused before it is sent (casehub.db.WriteInAutocommitRead)."""
        func._casehub_autocommit = True  # type: ignore[attr-defined]
        return func

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
        """Mark (and document) a change that needs If-Match (see api/etag.py)."""
        func._casehub_if_match = True  # type: ignore[attr-defined]
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


def checks_own_query(func: F) -> F:
    """Mark a view whose query string is checked by the view itself (its query arguments, or
    the OAuth endpoints' own refusal), so web.py does not refuse every query string for it."""
    func._casehub_query = True  # type: ignore[attr-defined]
    return func


def public(func: F) -> F:
    """Mark a view that needs no token (well-known, token endpoints, health, docs)."""
    func._casehub_public = True  # type: ignore[attr-defined]
    return func
