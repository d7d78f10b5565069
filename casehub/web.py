"""The request lifecycle every route passes through.

before: request id → token (401) → scope (403) → transport form (413/415) → Purpose-Of-Use
        (422) → rate limit (429, limits.py) → Idempotency-Key replay.
after:  success → audit events and idempotency record join the request's transaction → one
        commit; failure → rollback, then refused attempts are audited in their own transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

from authlib.oauth2.rfc6749.errors import OAuth2Error
from flask import Flask, Response, current_app, g, request
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from casehub import audit, jsonbody, limits
from casehub.auth.actor import Actor, invalid_token, load_actor
from casehub.db import get_session, utcnow
from casehub.errors import (
    CasehubError,
    Forbidden,
    InsufficientScope,
    NotFound,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
    problem,
    render,
)
from casehub.models import IdempotencyRecord
from casehub.services.purposes import REQUEST_PURPOSES

log = logging.getLogger("casehub.request")

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
BODY_METHODS = {"POST", "PUT", "PATCH"}
# flask-smorest's own view of the OpenAPI document, which cannot carry the `public` marker.
PUBLIC_ENDPOINTS = frozenset({"api-docs.openapi_json"})


def _view_target(app: Flask, endpoint: str | None, method: str) -> Any:
    """The function that serves `method` at `endpoint`: the view, or its MethodView method."""
    view = app.view_functions.get(endpoint or "")
    view_class = getattr(view, "view_class", None)
    if view_class is None:
        return view
    return getattr(view_class, "get" if method == "HEAD" else method.lower(), None)


def endpoint_policy(
    app: Flask, endpoint: str | None, method: str
) -> tuple[str, tuple[str, ...] | None]:
    """('public', None), ('scope', accepted scopes) or ('undeclared', None) for one endpoint and
    method. An empty tuple of accepted scopes means any valid token."""
    if endpoint is None or endpoint in PUBLIC_ENDPOINTS:
        return ("public", None)  # no route matched: routing answers 404/405 itself
    if endpoint not in app.view_functions:
        return ("undeclared", None)
    target = _view_target(app, endpoint, method)
    if target is None:
        return ("public", None)  # MethodView answers 405 itself
    view = app.view_functions[endpoint]
    if getattr(target, "_casehub_public", False) or getattr(view, "_casehub_public", False):
        return ("public", None)
    accepted = getattr(target, "_casehub_scope", None)
    if accepted is None:
        return ("undeclared", None)
    return ("scope", tuple(accepted))


def _start_request() -> None:
    g.started = time.perf_counter()
    supplied = request.headers.get("X-Request-Id", "")
    g.request_id = supplied if REQUEST_ID.match(supplied) else uuid.uuid4().hex
    if "\x00" in request.path:
        # No record has NUL in its id (PostgreSQL cannot even compare one): such a path names
        # nothing, like one that routes nowhere.
        raise NotFound("No such resource.")
    if request.method in ("GET", "HEAD"):
        target = _view_target(current_app, request.endpoint, request.method)
        g.casehub_autocommit = getattr(target, "_casehub_autocommit", False)


def _refuse_query_string(target: Any) -> None:
    """An API operation that declares no query arguments takes none: `?bogus=1` (or a mistyped
    filter sent to the wrong operation) is 422 naming it, never silently ignored. The docs page
    and its files are not API operations (no `_apidoc`) and are left alone."""
    if not request.args or request.endpoint in PUBLIC_ENDPOINTS:
        return
    if target is None or not hasattr(target, "_apidoc"):
        return  # no such method (405), or a page outside the API (/docs)
    if getattr(target, "_casehub_query", False):
        return  # the view's own arguments check its query string
    raise ValidationFailed(
        "This operation takes no query parameters.",
        errors={"query": {name[:100]: ["Unknown field."] for name in request.args}},
    )


def _refuse_body(target: Any) -> None:
    """An operation that declares no body takes none: fields sent to it (`{"id": ...}` to an
    acknowledgement) are 422 naming them, as unknown fields are everywhere, never ignored.
    An empty body, `{}` or `null` is no body."""
    if request.method not in BODY_METHODS or target is None or not hasattr(target, "_apidoc"):
        return
    if getattr(target, "_casehub_body", False) or not request.get_data(cache=True):
        return
    try:
        sent = jsonbody.loads(request.get_data(cache=True))
    except ValueError:
        sent = ...
    if sent in ({}, None):
        return
    if isinstance(sent, dict):
        raise ValidationFailed(
            "This operation takes no body.",
            errors={"json": {str(name)[:100]: ["Unknown field."] for name in sent}},
        )
    raise ValidationFailed(
        "This operation takes no body.", errors={"json": ["This operation takes no body."]}
    )


def _authorize() -> Response | None:
    app = current_app
    kind, accepted = endpoint_policy(app, request.endpoint, request.method)
    target = _view_target(app, request.endpoint, request.method)
    if kind == "public":
        _refuse_query_string(target)
        return None
    protector = app.extensions["casehub.protector"]
    try:
        claims = protector.acquire_token(None)
        actor = load_actor(get_session(), claims)
    except (OAuth2Error, Unauthorized) as exc:
        # Nobody we can name: the event says what was aimed at, never the token presented.
        _audit_refusal(None, action="auth.failure")
        raise invalid_token() from exc
    g.actor = actor
    if kind == "undeclared":
        # Deny by default: a route nobody declared a scope for serves nobody.
        _audit_refusal(actor)
        raise Forbidden("This operation is not available.")
    if accepted and not any(actor.has_scope(scope) for scope in accepted):
        _audit_refusal(actor)
        wanted = " ".join(accepted)
        raise InsufficientScope(
            f"This operation needs the scope {' or '.join(accepted)}.",
            headers={
                "WWW-Authenticate": (
                    f'Bearer realm="casehub", error="insufficient_scope", scope="{wanted}"'
                )
            },
        )
    _check_transport()
    _refuse_body(target)
    _refuse_query_string(target)
    purpose = request.headers.get("Purpose-Of-Use")
    if purpose is not None:
        if purpose not in REQUEST_PURPOSES:
            _audit_refusal(actor)
            raise ValidationFailed(
                "Purpose-Of-Use must be a share purpose code, case_work, audit or statistics.",
                errors={"headers": {"Purpose-Of-Use": ["Unknown purpose of use."]}},
            )
        g.actor = actor = replace(actor, purpose=purpose)
    return None


def _replay() -> Response | None:
    """After the rate limit (casehub/limits.py): a replay is a request like any other."""
    actor = g.get("actor")
    if actor is None or request.method != "POST":
        return None
    target = _view_target(current_app, request.endpoint, request.method)
    if getattr(target, "_casehub_idempotent", False):
        return _idempotency_replay(actor)
    return None


RESOURCE_ARGS = (
    ("referral_id", "referral"),
    ("subject_id", "subject"),
    ("client_id", "client"),
    ("user_id", "user"),
    ("code", "agency"),
)


def _audit_refusal(actor: Actor | None, *, action: str = "access.denied") -> None:
    """A refused attempt is audited even when no service ran: name the record it aimed at.
    Like every refusal, it carried no child's data, so `subject_ids` stays empty."""
    args = request.view_args or {}
    resource_type, resource_id = None, None
    for name, kind in RESOURCE_ARGS:
        if name in args:
            resource_type, resource_id = kind, args[name]
            break
    referral_id = args.get("referral_id")
    audit.record(
        get_session(),
        actor,
        action,
        outcome="denied",
        resource_type=resource_type,
        resource_id=resource_id,
        referral_id=referral_id if isinstance(referral_id, uuid.UUID) else None,
    )


def _check_transport() -> None:
    if request.method not in BODY_METHODS:
        return
    length = request.content_length
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if length is not None and length > limit:
        raise RequestEntityTooLarge()
    has_body = bool(length) or request.headers.get("Transfer-Encoding", "").lower() == "chunked"
    if has_body and not (
        request.mimetype == "application/json" or request.mimetype.endswith("+json")
    ):
        raise UnsupportedMediaType("Send the body as application/json.")


# -- Idempotency-Key -------------------------------------------------------------------------
def _request_fingerprint() -> str:
    raw = request.get_data(cache=True)
    try:
        canonical = json.dumps(jsonbody.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = raw
    digest = hashlib.sha256()
    digest.update(f"{request.method} {request.path}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


def _idempotency_replay(actor: Actor) -> Response | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255:
        raise ValidationFailed(
            "Idempotency-Key must be 1 to 255 characters.",
            errors={"headers": {"Idempotency-Key": ["Length must be between 1 and 255."]}},
        )
    if not key.isprintable():  # control characters (NUL) cannot be stored in PostgreSQL
        raise ValidationFailed(
            "Idempotency-Key must be printable characters.",
            errors={"headers": {"Idempotency-Key": ["Must not contain control characters."]}},
        )
    fingerprint = _request_fingerprint()
    session = get_session()
    record = session.get(IdempotencyRecord, (actor.client_id, key))
    if record is not None and record.expires_at > utcnow():
        if record.request_hash != fingerprint:
            raise ValidationFailed(
                "This Idempotency-Key was used with a different request.",
                errors={"headers": {"Idempotency-Key": ["Already used with another body."]}},
            )
        _authorise_replay(session, actor, record)
        g.idempotent_replay = True
        response = Response(record.body, status=record.status, headers=record.headers)
        response.headers["Idempotent-Replayed"] = "true"
        return response
    if record is not None:
        session.delete(record)
        session.flush()
    g.idempotency = (key, fingerprint)
    return None


def _authorise_replay(session: Session, actor: Actor, record: IdempotencyRecord) -> None:
    """A replay discloses what the first response did, so it passes the same gate as a read of
    it now (404, audited as denied, when the caller's agency no longer sees the referral or the
    child) and is audited like the original: same resource and children, today's basis."""
    from casehub.models import Subject
    from casehub.services import policy
    from casehub.services.referrals import reach_referral

    now = utcnow()
    basis, purpose = None, actor.purpose
    if record.resource_type == "access_request" and record.resource_id:
        # Filed under the holder's referral, which the requester does not see: the gate is the
        # request itself (its two agencies).
        from casehub.services.access_requests import reach_access_request

        request = reach_access_request(session, actor, uuid.UUID(record.resource_id))
        basis = "holder" if request.to_agency == actor.agency else "requester"
    elif record.referral_id is not None:
        view = reach_referral(session, actor=actor, referral_id=record.referral_id, now=now)
        basis, purpose = view.access.basis, view.access.purpose_for(actor)
    elif record.resource_type == "subject" and record.resource_id:
        subject_id = uuid.UUID(record.resource_id)
        visible = session.execute(
            policy.visible_subjects(actor, now).where(Subject.id == subject_id)
        ).scalar_one_or_none()
        if visible is None:
            audit.record(
                session,
                actor,
                "access.denied",
                outcome="denied",
                resource_type="subject",
                resource_id=subject_id,
                purpose=actor.purpose,
            )
            raise NotFound("No such subject.")
    audit.record(
        session,
        actor,
        f"{record.audit_action or 'request'}.replay",
        resource_type=record.resource_type,
        resource_id=record.resource_id,
        referral_id=record.referral_id,
        subject_ids=record.subject_ids or (),
        basis=basis,
        purpose=purpose,
    )


def _keep_idempotent_response(response: Response) -> None:
    pending = g.get("idempotency")
    if pending is None or not 200 <= response.status_code < 300:
        return
    actor: Actor = g.actor
    key, fingerprint = pending
    headers = {
        name: value
        for name, value in response.headers.items()
        if name in ("Content-Type", "Location", "ETag")
    }
    body = response.get_data()
    target = _view_target(current_app, request.endpoint, request.method)
    shown_once = getattr(target, "_casehub_replay_without", None)
    if shown_once:
        # A secret is shown once and stored only as a hash: the kept replay carries null.
        kept = json.loads(body)
        kept.update(dict.fromkeys(shown_once))
        body = json.dumps(kept).encode()
    session = get_session()
    # What the first response gave access to: the last allowed event is the creation's own.
    created = next((e for e in reversed(audit.pending(session)) if e.outcome == "allowed"), None)
    session.add(
        IdempotencyRecord(
            client_id=actor.client_id,
            key=key,
            request_hash=fingerprint,
            status=response.status_code,
            headers=headers,
            body=body,
            expires_at=utcnow() + timedelta(seconds=current_app.config["IDEMPOTENCY_TTL"]),
            audit_action=created.action if created else None,
            resource_type=created.resource_type if created else None,
            resource_id=created.resource_id if created else None,
            referral_id=created.referral_id if created else None,
            subject_ids=list(created.subject_ids) if created else None,
        )
    )


# -- finishing ---------------------------------------------------------------------------------
def _finish_request(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id", "")
    response.headers.setdefault("Cache-Control", "no-store")
    _secure(response)
    session = g.get("casehub_session")
    if session is None:
        return response
    info = request_info()
    if g.get("idempotent_replay"):
        # Nothing to keep or commit but the replay's own audit event.
        audit.write_pending(session, info, status=response.status_code)
        session.commit()
        return response
    committing = False
    try:
        if response.status_code < 400:
            _keep_idempotent_response(response)
            audit.write_pending(session, info, status=response.status_code)
            committing = True
            session.commit()
        else:
            session.rollback()
            if audit.write_pending(session, info, status=response.status_code, only_denied=True):
                session.commit()
    except IntegrityError as error:
        session.rollback()
        audit.discard_pending(session)
        if "idempotency_records" not in str(error.orig):
            # The work itself was flushed (and checked) by the service; what fails at commit is
            # the audit trail, which is a server fault: nothing is saved.
            log.error("commit refused", extra={"request_id": g.request_id})
            return _finalise(
                problem(500, detail="The request could not be recorded; nothing was saved.")
            )
        # Two requests with one Idempotency-Key at once: the other one won.
        log.warning("idempotency race", extra={"request_id": g.request_id})
        return _finalise(problem(409, detail="A request with this Idempotency-Key is in progress."))
    except Exception as error:
        try:
            session.rollback()
        except Exception:  # the connection may be gone: nothing was committed
            session.invalidate()
        audit.discard_pending(session)
        if _database_gone(error):
            # Lost while COMMIT was on its way, the server may have committed before the
            # connection died: the outcome is unknown, and only a retry can tell.
            return _finalise(_unavailable(outcome_unknown=committing))
        log.exception("commit failed", extra={"request_id": g.request_id})
        return _finalise(
            problem(500, detail="The request could not be completed; nothing was saved.")
        )
    return response


def request_info() -> audit.RequestInfo:
    return audit.RequestInfo(
        request_id=g.get("request_id"),
        method=request.method,
        path=request.path[:500],
        ip=(request.remote_addr or "")[:45] or None,
    )


# What every response carries: nothing here is to be sniffed, framed, or leak its URL onward.
# An API response runs no script and loads nothing; /docs sets its own, narrower policy.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}
API_CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'; sandbox"
HSTS = "max-age=63072000; includeSubDomains"


def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    response.headers.setdefault("Content-Security-Policy", API_CONTENT_SECURITY_POLICY)
    if current_app.config["ISSUER"].startswith("https://"):
        response.headers["Strict-Transport-Security"] = HSTS
    return response


def _finalise(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id", "")
    response.headers["Cache-Control"] = "no-store"
    return _secure(response)


def _handle_domain_error(error: CasehubError) -> Response:
    return render(error)


def _handle_integrity_error(error: IntegrityError) -> Response:
    return problem(409, detail="The request conflicts with an existing record.")


def _handle_stale(error: StaleDataError) -> Response:
    # Another request changed the record between our read and our write (optimistic lock).
    return problem(412, detail="The record has changed; fetch it again and retry.")


RETRY_AFTER_SECONDS = "2"


def _database_gone(error: BaseException) -> bool:
    """The connection to the database went away (or the server is shutting down), as opposed to
    a bug, a conflict or a full disk: PostgreSQL's SQLSTATE classes 08 (connection exception)
    and 57P (operator intervention), a connection SQLAlchemy found dead, or no connection to be
    had from the pool within its timeout (every one is stuck on a server that does not answer)."""
    if isinstance(error, PoolTimeout):
        return True
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated or isinstance(error, InterfaceError):
        return True
    state = str(getattr(error.orig, "sqlstate", "") or "")
    return state.startswith(("08", "57P"))


def _unavailable(*, outcome_unknown: bool = False) -> Response:
    log.error("database unavailable", extra={"request_id": g.get("request_id")})
    detail = "The database is unavailable; nothing was saved. Try again shortly."
    if outcome_unknown:
        detail = (
            "The database connection was lost while the request was being committed, so it "
            "may or may not have been saved. Retry it with the same Idempotency-Key: a saved "
            "request is answered again, one that was not is done."
        )
    return problem(503, detail=detail, headers={"Retry-After": RETRY_AFTER_SECONDS})


def _handle_operational_error(error: OperationalError) -> Response:
    return _unavailable()


def _handle_unexpected(error: Exception) -> Response:
    if isinstance(error, HTTPException):
        return current_app.extensions["casehub.api"].handle_http_exception(error)  # type: ignore[no-any-return]
    if _database_gone(error):
        return _unavailable()
    log.exception("unhandled error", extra={"request_id": g.get("request_id")})
    return problem(500, detail="An unexpected error occurred; nothing was saved.")


def init_app(app: Flask) -> None:
    app.before_request(_start_request)
    app.before_request(_authorize)
    limits.init_app(app)  # its check runs here: the caller is known, nothing is served yet
    app.before_request(_replay)
    app.after_request(_finish_request)
    app.register_error_handler(CasehubError, _handle_domain_error)
    app.register_error_handler(IntegrityError, _handle_integrity_error)
    app.register_error_handler(OperationalError, _handle_operational_error)
    app.register_error_handler(InterfaceError, _handle_operational_error)
    app.register_error_handler(PoolTimeout, _handle_operational_error)
    app.register_error_handler(StaleDataError, _handle_stale)
    app.register_error_handler(Exception, _handle_unexpected)
