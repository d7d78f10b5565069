"""The audit trail over HTTP: /v1/audit/* for auditors, and /v1/referrals/{id}/accesses for a
referral's lead agency."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Response, current_app, stream_with_context
from flask.views import MethodView

from casehub.api.base import Blueprint, current_actor, problem_response
from casehub.api.referrals import NOT_FOUND as REFERRAL_NOT_FOUND
from casehub.audit.checkpoints import app_key
from casehub.db import get_session, utcnow
from casehub.schemas.audit import (
    AccessSchema,
    AuditEventQueryArgsSchema,
    AuditEventSchema,
    AuditExportArgsSchema,
    VerifySchema,
)
from casehub.schemas.common import ListArgsSchema, page_of
from casehub.services import audit_queries

blp = Blueprint("audit", __name__, url_prefix="/v1", description="Audit trail")

EXPORT_TYPES = {"ndjson": "application/x-ndjson", "csv": "text/csv"}


VISIBILITY = (
    "`audit:read` sees events of its own agency's actors and anyone's events on referrals its "
    "agency leads; `audit:read:all` sees every event. Ordered by `seq`. Events appear about a "
    "second after the work they record. This read is itself audited."
)


@blp.route("/audit/events")
class AuditEvents(MethodView):
    @blp.autocommit_read
    @blp.requires(audit_queries.AUDIT_READ, audit_queries.AUDIT_READ_ALL)
    @blp.arguments(AuditEventQueryArgsSchema, location="query")
    @blp.response(200, page_of(AuditEventSchema))
    @blp.doc(operationId="listAuditEvents", summary="List audit events", description=VISIBILITY)
    @blp.rate_class("audit")
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        limit = args.pop("limit")
        cursor = args.pop("cursor", None)
        items, next_cursor = audit_queries.list_events(
            get_session(), actor=current_actor(), filters=args, limit=limit, cursor=cursor
        )
        return {"items": items, "next_cursor": next_cursor}


@blp.route("/audit/events/export")
class AuditExport(MethodView):
    @blp.requires(audit_queries.AUDIT_READ, audit_queries.AUDIT_READ_ALL)
    @blp.arguments(AuditExportArgsSchema, location="query")
    @blp.doc(
        operationId="exportAuditEvents",
        summary="Export audit events",
        description=(
            "The same filters and visibility as the list, every matching event chained before "
            "the export started, streamed in `seq` order: NDJSON (one event per line, as in the "
            "list) or CSV (flattened; `subject_ids` space-separated). " + VISIBILITY
        ),
        responses={
            "200": {
                "description": "The events.",
                "content": {
                    EXPORT_TYPES["ndjson"]: {"schema": {"type": "string"}},
                    EXPORT_TYPES["csv"]: {"schema": {"type": "string"}},
                },
            }
        },
    )
    @blp.rate_class("audit")
    def get(self, args: dict[str, Any]) -> Response:
        fmt = args.pop("format")
        session = get_session()
        reach, upto = audit_queries.start_export(session, actor=current_actor())
        body = audit_queries.export_lines(session, reach=reach, filters=args, fmt=fmt, upto=upto)
        response = Response(stream_with_context(body), mimetype=EXPORT_TYPES[fmt])
        response.headers["Content-Disposition"] = f'attachment; filename="audit-events.{fmt}"'
        return response


@blp.route("/audit/subjects/<uuid:subject_id>/accesses")
class SubjectAccesses(MethodView):
    @blp.autocommit_read
    @blp.requires(audit_queries.AUDIT_READ, audit_queries.AUDIT_READ_ALL)
    @blp.arguments(ListArgsSchema, location="query")
    @blp.response(200, page_of(AccessSchema))
    @blp.doc(
        operationId="listSubjectAccesses",
        summary="Who saw this child's data",
        description="Every event whose response carried the child's data: who, when, how it "
        "went and on what basis (a share's id, or the lead). " + VISIBILITY,
        responses={"404": problem_response("subject_id is not a UUID.")},
    )
    @blp.rate_class("audit")
    def get(self, args: dict[str, Any], subject_id: uuid.UUID) -> dict[str, Any]:
        items, next_cursor = audit_queries.subject_accesses(
            get_session(),
            actor=current_actor(),
            subject_id=subject_id,
            limit=args["limit"],
            cursor=args.get("cursor"),
        )
        return {"items": items, "next_cursor": next_cursor}


@blp.route("/audit/verify")
class Verify(MethodView):
    @blp.requires(audit_queries.AUDIT_READ_ALL)
    @blp.response(200, VerifySchema)
    @blp.doc(
        operationId="verifyAuditChain",
        summary="Verify the audit chain",
        description=(
            "Finds the newest checkpoint whose signature holds, checks that it still matches "
            "its row and recomputes every hash after it (`from_seq`), checking the signatures "
            "of the checkpoints from it on: the events since the last checkpoint (they are "
            "signed hourly), not the whole trail, so it answers in moments at any size. "
            "`ok` is true only when all hold; otherwise `first_bad_seq` names where the "
            "chain first breaks. The whole recomputation, from the first event, is `casehub "
            "audit verify` (run daily). For the partnership's auditors (`audit:read:all`, "
            "platform agency only)."
        ),
    )
    @blp.rate_class("audit")
    def get(self) -> dict[str, Any]:
        result = audit_queries.verify_trail(
            get_session(), actor=current_actor(), key=app_key(current_app)
        )
        return result.as_dict()


@blp.route("/referrals/<uuid:referral_id>/accesses")
class ReferralAccesses(MethodView):
    @blp.autocommit_read
    @blp.requires("referrals:read")
    @blp.arguments(ListArgsSchema, location="query")
    @blp.response(200, page_of(AccessSchema))
    @blp.doc(
        operationId="listReferralAccesses",
        summary="Who used this referral",
        description=(
            "For the lead agency: who, in any agency, read or acted on this referral (or was "
            "refused), when, and on what basis — so the lead sees how what it shared is used. "
            "Ordered by `seq`. Any other agency gets 404."
        ),
        responses={
            "404": problem_response("No such referral, or the caller does not lead it."),
            "410": REFERRAL_NOT_FOUND["410"],
        },
    )
    @blp.rate_class("audit")
    def get(self, args: dict[str, Any], referral_id: uuid.UUID) -> dict[str, Any]:
        items, next_cursor = audit_queries.referral_accesses(
            get_session(),
            actor=current_actor(),
            referral_id=referral_id,
            limit=args["limit"],
            cursor=args.get("cursor"),
            now=utcnow(),
        )
        return {"items": items, "next_cursor": next_cursor}
