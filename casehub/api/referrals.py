"""Referrals: /v1/referrals and their transitions, history and notes."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app, url_for
from flask.views import MethodView
from sqlalchemy import Row

from casehub.api.base import PROBLEM, Blueprint, GoneProblemSchema, current_actor, problem_response
from casehub.api.etag import etag_for, expected_version
from casehub.db import get_session, utcnow
from casehub.models import Referral
from casehub.schemas.common import ListArgsSchema, page_of
from casehub.schemas.referral import (
    HistoryEntrySchema,
    LegalHoldCreateSchema,
    LegalHoldReleaseSchema,
    NoteCreateSchema,
    NoteSchema,
    ReferralCreateSchema,
    ReferralQueryArgsSchema,
    ReferralSchema,
    ReferralUpdateSchema,
    TransitionCreateSchema,
    referral_document,
)
from casehub.services import referrals

blp = Blueprint("referrals", __name__, url_prefix="/v1/referrals", description="Referrals")

NOT_FOUND = {
    "404": problem_response("No such referral, or not visible to the caller's agency."),
    "410": {
        "description": "The referral was erased at the end of its retention period (CONTRACT "
        "§11). Only to the agencies that could see it (its lead, and every agency it was ever "
        "shared with; others get 404): the problem document carries its `tombstone`.",
        "content": {PROBLEM: {"schema": GoneProblemSchema}},
    },
}


def etag_header(referral: Referral | Row[Any]) -> dict[str, str]:
    return {"ETag": etag_for(referral.id, referral.version)}


@blp.route("")
class Referrals(MethodView):
    @blp.autocommit_read
    @blp.requires("referrals:read")
    @blp.arguments(ReferralQueryArgsSchema, location="query")
    @blp.response(200, page_of(ReferralSchema))
    @blp.doc(
        operationId="listReferrals",
        summary="List referrals the caller's agency can see",
        description="Ordered by created_at, then id (oldest first). A referral the agency "
        "sees through a share of the `summary` profile lists with `narrative` and "
        "`location.description` null.",
    )
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        limit = args.pop("limit")
        cursor = args.pop("cursor", None)
        items, next_cursor = referrals.list_referrals(
            get_session(),
            actor=current_actor(),
            filters=args,
            limit=limit,
            cursor=cursor,
            now=utcnow(),
        )
        return {"items": items, "next_cursor": next_cursor}

    @blp.requires("referrals:write")
    @blp.idempotent
    @blp.arguments(ReferralCreateSchema)
    @blp.response(
        201,
        ReferralSchema,
        headers={
            "ETag": {"schema": {"type": "string"}},
            "Location": {"schema": {"type": "string"}},
        },
    )
    @blp.doc(
        operationId="createReferral",
        summary="Raise a referral",
        description="The caller's agency leads it. Send "
        "`subject_id` of a subject the agency can see, or an inline `subject`. "
        "`discoverable` (default `true`): `false` keeps the referral out of every match "
        "(`POST /v1/matches`), e.g. during a covert investigation.",
    )
    def post(self, data: dict[str, Any]) -> Any:
        referral = referrals.create_referral(
            get_session(), actor=current_actor(), data=data, now=utcnow()
        )
        location = url_for("referrals.ReferralById", referral_id=referral.id)
        return referral, 201, {**etag_header(referral), "Location": location}


@blp.route("/<uuid:referral_id>")
class ReferralById(MethodView):
    @blp.autocommit_read
    @blp.requires("referrals:read")
    @blp.response(200, ReferralSchema, headers={"ETag": {"schema": {"type": "string"}}})
    @blp.doc(
        operationId="getReferral",
        summary="Read a referral",
        description="For the lead agency and agencies holding an active share. The `ETag` "
        "header is the version to send as `If-Match` with a change. The read is audited, with "
        "the basis (`lead` or `share:<id>`) and the purpose. Through a share of the "
        "`summary` profile, `narrative` and `location.description` are null.",
        responses=NOT_FOUND,
    )
    def get(self, referral_id: uuid.UUID) -> Any:
        view = referrals.get_referral(
            get_session(), actor=current_actor(), referral_id=referral_id, now=utcnow()
        )
        # ReferralSchema's document, built directly (the response flask-smorest would build).
        document = current_app.json.response(referral_document(view.referral))
        return document, etag_header(view.referral)

    @blp.requires("referrals:write")
    @blp.etag_required
    @blp.arguments(ReferralUpdateSchema)
    @blp.response(200, ReferralSchema, headers={"ETag": {"schema": {"type": "string"}}})
    @blp.doc(
        operationId="updateReferral",
        summary="Change a referral (lead agency)",
        description="Only the fields sent change. Needs `If-Match` with the current `ETag`: "
        "missing is 428, stale is 412. Another agency that sees the referral gets 403. "
        "`discoverable: false` takes the referral out of existence-only matching from this "
        "moment (a covert investigation); `true` puts it back.",
        responses=NOT_FOUND,
    )
    def patch(self, changes: dict[str, Any], referral_id: uuid.UUID) -> Any:
        version = expected_version(referral_id)
        referral = referrals.update_referral(
            get_session(),
            actor=current_actor(),
            referral_id=referral_id,
            expected_version=version,
            changes=changes,
            now=utcnow(),
        )
        return referral, etag_header(referral)


@blp.route("/<uuid:referral_id>/transitions")
class Transitions(MethodView):
    @blp.requires("referrals:write")
    @blp.etag_required
    @blp.arguments(TransitionCreateSchema)
    @blp.response(200, ReferralSchema, headers={"ETag": {"schema": {"type": "string"}}})
    @blp.doc(
        operationId="transitionReferral",
        summary="Move a referral through its workflow (lead agency)",
        description="submitted → acknowledged → in_assessment → action_agreed | "
        "no_further_action → closed, and closed → in_assessment to reopen. `reason` is "
        "required for no_further_action, closed and reopening. Any other move is 409.",
        responses={**NOT_FOUND, "409": problem_response("Not an allowed move.")},
    )
    def post(self, data: dict[str, Any], referral_id: uuid.UUID) -> Any:
        version = expected_version(referral_id)
        referral = referrals.transition_referral(
            get_session(),
            actor=current_actor(),
            referral_id=referral_id,
            expected_version=version,
            to=data["to"],
            reason=data.get("reason"),
            now=utcnow(),
        )
        return referral, etag_header(referral)


@blp.route("/<uuid:referral_id>/history")
class History(MethodView):
    @blp.autocommit_read
    @blp.requires("referrals:read")
    @blp.arguments(ListArgsSchema, location="query")
    @blp.response(200, page_of(HistoryEntrySchema))
    @blp.doc(
        operationId="listReferralHistory",
        summary="Every status change and transfer, oldest first",
        description="The referral's creation, each transition (with its reason) and each "
        "transfer of the lead (with its lawful basis), by whom and when.",
        responses=NOT_FOUND,
    )
    def get(self, args: dict[str, Any], referral_id: uuid.UUID) -> dict[str, Any]:
        items, next_cursor = referrals.referral_history(
            get_session(),
            actor=current_actor(),
            referral_id=referral_id,
            limit=args["limit"],
            cursor=args.get("cursor"),
            now=utcnow(),
        )
        return {"items": items, "next_cursor": next_cursor}


@blp.route("/<uuid:referral_id>/notes")
class Notes(MethodView):
    @blp.autocommit_read
    @blp.requires("referrals:read")
    @blp.arguments(ListArgsSchema, location="query")
    @blp.response(200, page_of(NoteSchema))
    @blp.doc(
        operationId="listNotes",
        summary="Notes the caller's agency may see, oldest first",
        description="`shared` notes, and the caller's own agency's `agency` notes. Through a "
        "share of the `summary` profile, only the notes the caller's own agency wrote.",
        responses=NOT_FOUND,
    )
    def get(self, args: dict[str, Any], referral_id: uuid.UUID) -> dict[str, Any]:
        items, next_cursor = referrals.list_notes(
            get_session(),
            actor=current_actor(),
            referral_id=referral_id,
            limit=args["limit"],
            cursor=args.get("cursor"),
            now=utcnow(),
        )
        return {"items": items, "next_cursor": next_cursor}

    @blp.requires("referrals:write")
    @blp.idempotent
    @blp.arguments(NoteCreateSchema)
    @blp.response(201, NoteSchema)
    @blp.doc(
        operationId="createNote",
        summary="Add a note (lead agency or a contribute share); notes are append-only",
        description="A correction is a new note. A recipient with a `read` share gets 403.",
        responses=NOT_FOUND,
    )
    def post(self, data: dict[str, Any], referral_id: uuid.UUID) -> Any:
        return referrals.add_note(
            get_session(),
            actor=current_actor(),
            referral_id=referral_id,
            body=data["body"],
            visibility=data["visibility"],
            now=utcnow(),
        )


@blp.route("/<uuid:referral_id>/legal-hold")
class LegalHold(MethodView):
    @blp.requires("referrals:share")
    @blp.arguments(LegalHoldCreateSchema)
    @blp.response(200, ReferralSchema, headers={"ETag": {"schema": {"type": "string"}}})
    @blp.doc(
        operationId="placeLegalHold",
        summary="Place a legal hold (lead agency)",
        description="While held, `casehub retention run` never erases the referral, however "
        "long it has been closed. Placing it again replaces the reason and keeps `since`. "
        "Recorded in the history (`legal_hold`, with the reason). Another agency that sees "
        "the referral gets 403.",
        responses=NOT_FOUND,
    )
    def put(self, data: dict[str, Any], referral_id: uuid.UUID) -> Any:
        referral = referrals.place_legal_hold(
            get_session(),
            actor=current_actor(),
            referral_id=referral_id,
            reason=data["reason"],
            now=utcnow(),
        )
        return referral, etag_header(referral)

    @blp.requires("referrals:share")
    @blp.arguments(LegalHoldReleaseSchema)
    @blp.response(200, ReferralSchema, headers={"ETag": {"schema": {"type": "string"}}})
    @blp.doc(
        operationId="releaseLegalHold",
        summary="Release a legal hold (lead agency)",
        description="Retention counts from the referral's closure again: one closed longer "
        "than `CASEHUB_RETENTION_DAYS` is erased by the next run. Recorded in the history "
        "(`legal_hold_released`, with the reason). 409 when the referral is not held; "
        "another agency that sees the referral gets 403.",
        responses={**NOT_FOUND, "409": problem_response("The referral is not under legal hold.")},
    )
    def delete(self, data: dict[str, Any], referral_id: uuid.UUID) -> Any:
        referral = referrals.release_legal_hold(
            get_session(),
            actor=current_actor(),
            referral_id=referral_id,
            reason=data["reason"],
            now=utcnow(),
        )
        return referral, etag_header(referral)
