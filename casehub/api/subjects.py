"""/v1/subjects: the children and young people referrals are about."""

from __future__ import annotations

import uuid
from typing import Any

from flask import url_for
from flask.views import MethodView

from casehub.api.base import Blueprint, current_actor, problem_response
from casehub.api.etag import etag_for, expected_version
from casehub.db import get_session, utcnow
from casehub.models import Subject
from casehub.schemas.common import page_of
from casehub.schemas.subject import (
    SubjectCreateSchema,
    SubjectQueryArgsSchema,
    SubjectSchema,
    SubjectUpdateSchema,
)
from casehub.services import subjects

blp = Blueprint(
    "subjects",
    __name__,
    url_prefix="/v1/subjects",
    description=(
        "Subjects: the children and young people referrals are about. An agency sees the "
        "subjects it recorded and those of referrals it can see; only the recording agency "
        "changes a subject."
    ),
)

ETAG_HEADER = {
    "description": "The subject's current version, to send back as If-Match.",
    "schema": {"type": "string"},
}
NOT_FOUND = problem_response("No such subject, or not visible to the caller's agency.")


def _headers(subject: Subject | Any) -> dict[str, str]:
    return {"ETag": etag_for(subject.id, subject.version)}


@blp.route("")
class Subjects(MethodView):
    @blp.autocommit_read
    @blp.requires("subjects:read")
    @blp.arguments(SubjectQueryArgsSchema, location="query")
    @blp.response(200, page_of(SubjectSchema))
    @blp.doc(
        operationId="searchSubjects",
        summary="List or search subjects",
        description=(
            "Only subjects the caller's agency can see. `q` matches given names, family names and "
            "aliases, ignoring case and accents and tolerating one typo per word; "
            "`date_of_birth` narrows to that exact date. Ordered by `created_at`, then `id`, "
            "oldest first (not by closeness of match), so a cursor walk returns every match "
            "exactly once."
        ),
    )
    @blp.rate_class("search")
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        items, next_cursor = subjects.search_subjects(
            get_session(),
            actor=current_actor(),
            now=utcnow(),
            limit=args["limit"],
            cursor=args.get("cursor"),
            q=args.get("q"),
            date_of_birth=args.get("date_of_birth"),
        )
        return {"items": items, "next_cursor": next_cursor}

    @blp.requires("subjects:write")
    @blp.idempotent
    @blp.arguments(SubjectCreateSchema)
    @blp.response(
        201,
        SubjectSchema,
        headers={
            "Location": {"description": "The new subject's URL.", "schema": {"type": "string"}},
            "ETag": ETAG_HEADER,
        },
    )
    @blp.doc(
        operationId="createSubject",
        summary="Record a subject",
        description="The caller's agency becomes its recorder.",
    )
    def post(self, data: dict[str, Any]) -> tuple[Subject, int, dict[str, str]]:
        subject = subjects.create_subject(
            get_session(), actor=current_actor(), data=data, now=utcnow()
        )
        location = url_for("subjects.SubjectById", subject_id=subject.id)
        return subject, 201, {**_headers(subject), "Location": location}


@blp.route("/<uuid:subject_id>")
class SubjectById(MethodView):
    @blp.autocommit_read
    @blp.requires("subjects:read")
    @blp.response(200, SubjectSchema, headers={"ETag": ETAG_HEADER})
    @blp.doc(
        operationId="getSubject",
        summary="Read a subject",
        description="A child the caller's agency recorded, or sees a referral about. The "
        "`ETag` header is the version to send as `If-Match` with a change. An agency that "
        "sees the child only through shares of the `summary` profile gets `address` null and "
        "`identifiers` empty.",
        responses={"404": NOT_FOUND},
    )
    def get(self, subject_id: uuid.UUID) -> tuple[Any, dict[str, str]]:
        subject = subjects.get_subject(
            get_session(), actor=current_actor(), subject_id=subject_id, now=utcnow()
        )
        return subject, _headers(subject)

    @blp.requires("subjects:write")
    @blp.etag_required
    @blp.arguments(SubjectUpdateSchema)
    @blp.response(200, SubjectSchema, headers={"ETag": ETAG_HEADER})
    @blp.doc(
        operationId="updateSubject",
        summary="Change a subject",
        responses={"404": NOT_FOUND},
        description=(
            "Only the fields sent change; `aliases`, `identifiers` and `address` are replaced "
            "whole. Only the agency that recorded the subject may change it (403 otherwise)."
        ),
    )
    def patch(self, data: dict[str, Any], subject_id: uuid.UUID) -> tuple[Subject, dict[str, str]]:
        version = expected_version(subject_id)
        subject = subjects.update_subject(
            get_session(),
            actor=current_actor(),
            subject_id=subject_id,
            data=data,
            expected_version=version,
            now=utcnow(),
        )
        return subject, _headers(subject)
