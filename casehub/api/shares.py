"""Shares of a referral, and transfer of its lead."""

from __future__ import annotations

import uuid
from typing import Any

from flask import url_for
from flask.views import MethodView

from casehub.api.base import Blueprint, current_actor, problem_response
from casehub.api.etag import expected_version
from casehub.api.referrals import NOT_FOUND, etag_header
from casehub.db import get_session, utcnow
from casehub.schemas.common import ListArgsSchema, page_of
from casehub.schemas.referral import ReferralSchema
from casehub.schemas.share import ShareCreateSchema, ShareRevokeSchema, ShareSchema, TransferSchema
from casehub.services import shares

blp = Blueprint("shares", __name__, url_prefix="/v1/referrals", description="Information sharing")

CONFLICT = {
    "409": problem_response(
        "Sharing with the caller's own agency, with an inactive agency, or a second active share "
        "to the same agency."
    )
}


@blp.route("/<uuid:referral_id>/shares")
class Shares(MethodView):
    @blp.requires("referrals:read")
    @blp.arguments(ListArgsSchema, location="query")
    @blp.response(200, page_of(ShareSchema))
    @blp.doc(
        operationId="listShares",
        summary="Shares of a referral",
        description="The lead sees every share; a "
        "recipient sees its own. Ordered by created_at, then id.",
        responses=NOT_FOUND,
    )
    def get(self, args: dict[str, Any], referral_id: uuid.UUID) -> dict[str, Any]:
        items, next_cursor = shares.list_shares(
            get_session(),
            actor=current_actor(),
            referral_id=referral_id,
            limit=args["limit"],
            cursor=args.get("cursor"),
            now=utcnow(),
        )
        return {"items": items, "next_cursor": next_cursor}

    @blp.requires("referrals:share")
    @blp.idempotent
    @blp.arguments(ShareCreateSchema)
    @blp.response(201, ShareSchema, headers={"Location": {"schema": {"type": "string"}}})
    @blp.doc(
        operationId="shareReferral",
        summary="Share a referral the caller's agency leads",
        description="Records the sharing decision: purpose, necessity, lawful basis and consent. "
        "422 (naming the field) when: consent.rationale is missing and consent was not given; "
        "article_6 is consent without consent given; a charity relies on public_task; a "
        "Schedule 8 (Part 3) condition is used by an agency that is not police.",
        responses={**NOT_FOUND, **CONFLICT},
    )
    def post(self, data: dict[str, Any], referral_id: uuid.UUID) -> Any:
        share = shares.create_share(
            get_session(), actor=current_actor(), referral_id=referral_id, data=data, now=utcnow()
        )
        location = url_for("shares.Shares", referral_id=referral_id) + f"/{share.id}"
        return share, 201, {"Location": location}


@blp.route("/<uuid:referral_id>/shares/<uuid:share_id>/acknowledge")
class Acknowledge(MethodView):
    @blp.requires("referrals:write")
    @blp.response(200, ShareSchema)
    @blp.doc(
        operationId="acknowledgeShare",
        summary="Acknowledge a share to the caller's agency (recipient)",
        description="Records that the recipient agency has received the share; the lead sees "
        "`acknowledged_at`. Acknowledging again keeps the first time.",
        responses=NOT_FOUND,
    )
    def post(self, referral_id: uuid.UUID, share_id: uuid.UUID) -> Any:
        return shares.acknowledge_share(
            get_session(),
            actor=current_actor(),
            referral_id=referral_id,
            share_id=share_id,
            now=utcnow(),
        )


@blp.route("/<uuid:referral_id>/shares/<uuid:share_id>/revoke")
class Revoke(MethodView):
    @blp.requires("referrals:share")
    @blp.arguments(ShareRevokeSchema)
    @blp.response(200, ShareSchema)
    @blp.doc(
        operationId="revokeShare",
        summary="Revoke a share (lead agency)",
        description="The recipient loses access from this moment. 409 if it already ended.",
        responses={**NOT_FOUND, "409": problem_response("The share has already ended.")},
    )
    def post(self, data: dict[str, Any], referral_id: uuid.UUID, share_id: uuid.UUID) -> Any:
        return shares.revoke_share(
            get_session(),
            actor=current_actor(),
            referral_id=referral_id,
            share_id=share_id,
            reason=data["reason"],
            now=utcnow(),
        )


@blp.route("/<uuid:referral_id>/transfer")
class Transfer(MethodView):
    @blp.requires("referrals:share")
    @blp.etag_required
    @blp.arguments(TransferSchema)
    @blp.response(200, ReferralSchema, headers={"ETag": {"schema": {"type": "string"}}})
    @blp.doc(
        operationId="transferReferral",
        summary="Transfer the lead to another agency",
        description="The new agency leads; the previous lead keeps a `contribute` share "
        f"(purpose `{shares.RETAINED_SHARE_PURPOSE}`, necessity = the reason). "
        "Recorded in history.",
        responses={**NOT_FOUND, **CONFLICT},
    )
    def post(self, data: dict[str, Any], referral_id: uuid.UUID) -> Any:
        version = expected_version(referral_id)
        referral = shares.transfer_lead(
            get_session(),
            actor=current_actor(),
            referral_id=referral_id,
            expected_version=version,
            data=data,
            now=utcnow(),
        )
        return referral, etag_header(referral)
