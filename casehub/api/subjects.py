"""/v1/subjects: the children and young people referrals are about."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Response, stream_with_context, url_for
from flask.views import MethodView

from casehub.api.base import Blueprint, current_actor, problem_response
from casehub.api.etag import etag_for, expected_version
from casehub.db import get_session, utcnow
from casehub.models import Subject
from casehub.schemas.common import ListArgsSchema, page_of
from casehub.schemas.subject import (
    SubjectCreateSchema,
    SubjectQueryArgsSchema,
    SubjectSchema,
    SubjectUpdateSchema,
)
from casehub.schemas.subject_access import SubjectAccessPackSchema
from casehub.schemas.subject_merge import SubjectMergeCreateSchema, SubjectMergeSchema
from casehub.services import subject_access, subjects

blp = Blueprint(
    "subjects",
    __name__,
    url_prefix="/v1/subjects",
    description=(
        "Subjects: the children and young people referrals are about. An agency sees the "
        "subjects it recorded and those of referrals it can see; only the recording agency "
        "changes a subject, and so only it merges its record into another as a duplicate "
        "(or undoes that)."
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
            "exactly once. Merged records are one child: a duplicate whose survivor the caller "
            "can see is never listed itself; the survivor is listed once, where the first of "
            "the child's records that matches comes in that order (a match on the duplicate's "
            "names or date of birth lists the survivor). Only records the caller can see are "
            "searched: a duplicate it cannot see lends the survivor none of its names, and a "
            "duplicate whose survivor it cannot see is listed as itself, with `merged_into`."
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


MERGE_CONFLICT = problem_response(
    "Merging a subject into itself, into a subject that is itself merged into another "
    "(chains stay one level: merge into that survivor), a duplicate already merged, or a "
    "duplicate that other records are merged into."
)
MERGE_NOTICE = (
    " Every agency that leads, or holds an active share of, a referral about the child (the "
    "survivor, the duplicate, or another record merged into the survivor), except the "
    "caller's, is sent `subject.merged` with `data: {subject_id, duplicate_id, action, "
    "agency}`: ids only, `subject_id` the survivor, `action` `merge` or `unmerge`. Audited as "
    "`subject.{action}` naming both children, and kept in the subject's merge history "
    "(`GET /v1/subjects/{id}/merges`). Answers the survivor. No `If-Match` is needed: the "
    "checks above run under a lock on both records, so a repeat, or a concurrent merge of "
    "either, answers 409 instead of chaining records."
)
MERGE_RULES = (
    "The caller's agency must see both records (404 for the one it cannot see, audited as a "
    "denial) and must have recorded the duplicate: only the recording agency changes a subject "
    "(403 otherwise). A merge changes what lists and searches show, never what an agency may "
    "see: no agency gains sight of a referral or a record through it."
)


@blp.route("/<uuid:subject_id>/merge")
class Merge(MethodView):
    @blp.requires("subjects:write")
    @blp.arguments(SubjectMergeCreateSchema)
    @blp.response(200, SubjectSchema, headers={"ETag": ETAG_HEADER})
    @blp.doc(
        operationId="mergeSubject",
        summary="Merge a duplicate record into this subject",
        description=(
            "The duplicate answers with `merged_into` set to this subject's id; searches list "
            "the pair as one child, matching counts them as one, and `GET /v1/referrals?"
            "subject_id=` of either lists the caller's visible referrals about both. "
            + MERGE_RULES
            + MERGE_NOTICE
        ),
        responses={"404": NOT_FOUND, "409": MERGE_CONFLICT},
    )
    def post(self, data: dict[str, Any], subject_id: uuid.UUID) -> tuple[Subject, dict[str, str]]:
        survivor = subjects.merge_subjects(
            get_session(),
            actor=current_actor(),
            subject_id=subject_id,
            duplicate_id=data["duplicate_id"],
            reason=data["reason"],
            now=utcnow(),
        )
        return survivor, _headers(survivor)


@blp.route("/<uuid:subject_id>/unmerge")
class Unmerge(MethodView):
    @blp.requires("subjects:write")
    @blp.arguments(SubjectMergeCreateSchema)
    @blp.response(200, SubjectSchema, headers={"ETag": ETAG_HEADER})
    @blp.doc(
        operationId="unmergeSubject",
        summary="Undo the merge of a duplicate record into this subject",
        description=(
            "The duplicate's `merged_into` becomes null again: two children's records, listed "
            "and matched apart. 409 when the duplicate is not merged into this subject. "
            + MERGE_RULES
            + " Partners are told as for a merge: `subject.merged` with `action: unmerge` "
            "(one event type, so a subscription to merges also hears of their undoing)."
            + MERGE_NOTICE
        ),
        responses={
            "404": NOT_FOUND,
            "409": problem_response("The duplicate is not merged into this subject."),
        },
    )
    def post(self, data: dict[str, Any], subject_id: uuid.UUID) -> tuple[Subject, dict[str, str]]:
        survivor = subjects.unmerge_subjects(
            get_session(),
            actor=current_actor(),
            subject_id=subject_id,
            duplicate_id=data["duplicate_id"],
            reason=data["reason"],
            now=utcnow(),
        )
        return survivor, _headers(survivor)


@blp.route("/<uuid:subject_id>/merges")
class Merges(MethodView):
    @blp.autocommit_read
    @blp.requires("subjects:read")
    @blp.arguments(ListArgsSchema, location="query")
    @blp.response(200, page_of(SubjectMergeSchema))
    @blp.doc(
        operationId="listSubjectMerges",
        summary="The merges and unmerges of a subject, oldest first",
        description=(
            "Every merge and unmerge this record took part in, as survivor or as duplicate: "
            "who, when and why. An entry is listed when the caller's agency sees the other "
            "record too, or made the entry itself. Ordered by `occurred_at`, then `id`."
        ),
        responses={"404": NOT_FOUND},
    )
    def get(self, args: dict[str, Any], subject_id: uuid.UUID) -> dict[str, Any]:
        items, next_cursor = subjects.merge_history(
            get_session(),
            actor=current_actor(),
            subject_id=subject_id,
            limit=args["limit"],
            cursor=args.get("cursor"),
            now=utcnow(),
        )
        return {"items": items, "next_cursor": next_cursor}
_PACK = SubjectAccessPackSchema()
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
READS = "reads_by_other_agencies"


def _pack_body(head: dict[str, Any], pack: subject_access.SubjectAccessPack) -> Iterator[str]:
    """The pack as one JSON object: everything already dumped (`head`), then its reads by
    other agencies, streamed as the audit trail is read (the last member of the object)."""
    text = _JSON.encode(head)
    yield f'{text[:-1]},"{READS}":['
    session = get_session()
    separator = ""
    for chunk in subject_access.reads_by_other_agencies(session, pack):
        yield separator + ",".join([_JSON.encode(item) for item in chunk])
        separator = ","
    yield "]}"


@blp.route("/<uuid:subject_id>/sar")
class SubjectAccessPack(MethodView):
    @blp.requires("subjects:sar")
    @blp.doc(
        operationId="getSubjectAccessPack",
        summary="Assemble a subject access request pack",
        description=(
            "Everything the caller's agency holds about the child, as one JSON document: its "
            "records of the child (every record of the child's merge group it can see, as it "
            "sees them), the referrals about the child that it leads, in full, with their notes "
            "and history; its disclosure log (every share of those referrals: to whom, when, "
            "access, profile, purpose, lawful basis, consent, expiry, revocation or end; and "
            "every decision not to share them); and who in other agencies read or acted on "
            "those referrals, or read the child's record under those shares, from the audit "
            "trail. A referral only shared with the caller's "
            "agency is not in its pack: the lead holds it and answers for it.\n\n"
            "The audit section (`reads_by_other_agencies`, the last member) is streamed as the "
            "trail is read, in constant memory at any size of the trail; the rest is assembled "
            "before the first byte is sent (if the trail cannot be read to its end, the body stops "
            "short of valid JSON: parse it whole). Audited as one `subject.sar` event naming the "
            "child's records (purpose: `Purpose-Of-Use`, else `audit`). 404 when the caller's "
            "agency cannot see the child, audited as a refusal."
        ),
        responses={
            "200": {
                "description": "The pack.",
                "content": {"application/json": {"schema": SubjectAccessPackSchema}},
            },
            "404": NOT_FOUND,
        },
    )
    @blp.rate_class("audit")
    def get(self, subject_id: uuid.UUID) -> Response:
        pack = subject_access.assemble_pack(
            get_session(), actor=current_actor(), subject_id=subject_id, now=utcnow()
        )
        head = _PACK.dump(pack.document)  # before the commit: any failure is still a 500
        return Response(stream_with_context(_pack_body(head, pack)), mimetype="application/json")
