"""Domain errors, each with its HTTP status, and the one renderer of RFC 9457 problem+json."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from flask import Response, json

PROBLEM_MIMETYPE = "application/problem+json"


class CasehubError(Exception):
    """Base of every error the service raises on purpose; rendered as problem+json."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal Server Error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        return f"urn:casehub:problem:{self.slug}"


class BadRequest(CasehubError):
    status, slug, title = 400, "bad-request", "Bad Request"


class Unauthorized(CasehubError):
    """No usable bearer token (RFC 6750 invalid_token)."""

    status, slug, title = 401, "invalid-token", "Unauthorized"


class Forbidden(CasehubError):
    """The caller sees the record but may not do this to it."""

    status, slug, title = 403, "forbidden", "Forbidden"


class InsufficientScope(Forbidden):
    slug, title = "insufficient-scope", "Insufficient scope"


class NotFound(CasehubError):
    """Absent, or invisible to the caller's agency: the two must look the same."""

    status, slug, title = 404, "not-found", "Not Found"


class Gone(CasehubError):
    """The record existed and the caller could see it, but it has been erased; `members` are
    problem+json extension members (an erased referral's tombstone)."""

    status, slug, title = 410, "gone", "Gone"

    def __init__(self, detail: str | None = None, *, members: Mapping[str, Any]) -> None:
        super().__init__(detail)
        self.members = dict(members)


class Conflict(CasehubError):
    status, slug, title = 409, "conflict", "Conflict"


class PreconditionFailed(CasehubError):
    status, slug, title = 412, "precondition-failed", "Precondition Failed"


class UnsupportedMediaType(CasehubError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported Media Type"


class ValidationFailed(CasehubError):
    status, slug, title = 422, "validation-failed", "Unprocessable Content"

    @classmethod
    def field(cls, field: str, message: str, *, location: str = "json") -> ValidationFailed:
        """A 422 naming one field, as the contract's business rules require."""
        return cls(f"{field}: {message}", errors={location: {field: [message]}})


class MethodNotAllowed(CasehubError):
    status, slug, title = 405, "method-not-allowed", "Method Not Allowed"


class ContentTooLarge(CasehubError):
    status, slug, title = 413, "content-too-large", "Content Too Large"


class TooManyRequests(CasehubError):
    status, slug, title = 429, "too-many-requests", "Too Many Requests"


class InternalError(CasehubError):
    status, slug, title = 500, "internal-error", "Internal Server Error"


class PreconditionRequired(CasehubError):
    status, slug, title = 428, "precondition-required", "Precondition Required"


class ServiceUnavailable(CasehubError):
    status, slug, title = 503, "unavailable", "Service Unavailable"


# One problem type per status for errors raised by the framework (routing, body parsing), so a
# client sees the same `type` and `title` for a 422 whichever layer found the fault.
BY_STATUS: dict[int, type[CasehubError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Gone,
        Conflict,
        PreconditionFailed,
        ContentTooLarge,
        UnsupportedMediaType,
        ValidationFailed,
        PreconditionRequired,
        TooManyRequests,
        InternalError,
        ServiceUnavailable,
    )
}


def problem(
    status: int,
    *,
    detail: str | None = None,
    title: str | None = None,
    type_: str = "about:blank",
    errors: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    members: Mapping[str, Any] | None = None,
) -> Response:
    """Render one problem+json response; the only place error bodies are built. `members` are
    RFC 9457 extension members, after the standard ones."""
    known = BY_STATUS.get(status)
    if type_ == "about:blank" and known is not None:
        type_, title = f"urn:casehub:problem:{known.slug}", known.title
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body: dict[str, Any] = {
        "type": type_,
        "title": title or phrase,
        "status": status,
        "detail": detail or phrase,
    }
    if errors:
        body["errors"] = errors
    for name, value in (members or {}).items():
        body.setdefault(name, value)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def render(error: CasehubError) -> Response:
    return problem(
        error.status,
        detail=error.detail,
        title=error.title,
        type_=error.type,
        errors=error.errors,
        headers=error.headers,
        members=getattr(error, "members", None),
    )
