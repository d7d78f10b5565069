"""The subject access pack (CONTRACT §12): what an agency holds about a child and disclosed."""

from __future__ import annotations

from typing import Any

import marshmallow as ma

from casehub.schemas import enums
from casehub.schemas.access_request import SharingDecisionSchema
from casehub.schemas.audit import AccessSchema
from casehub.schemas.referral import (
    ActorRefSchema,
    HistoryEntrySchema,
    NoteSchema,
    ReferralSchema,
)
from casehub.schemas.share import ShareSchema
from casehub.schemas.subject import SubjectSchema


class PackSubjectSchema(SubjectSchema):
    """One of the child's records, as the caller's agency sees it."""

    profile = enums.SHARE_PROFILE.field(
        required=True,
        metadata={
            "description": "`full`: the agency recorded the child, leads a referral about it or "
            "holds a full share of one. `summary`: it sees the child only through summary "
            "shares, and `address` and `identifiers` are left out (null and empty)."
        },
    )
    merged_into = ma.fields.UUID(
        allow_none=True,
        required=True,
        metadata={"description": "The record this one was merged into as a duplicate, if any."},
    )
    erased_at = ma.fields.DateTime(
        allow_none=True,
        required=True,
        metadata={"description": "When retention erased the record (it is then a tombstone)."},
    )


class PackReferralSchema(ReferralSchema):
    """A referral the agency leads, in full, with every note it can see and its history."""

    erased_at = ma.fields.DateTime(
        allow_none=True,
        required=True,
        metadata={"description": "When retention erased the referral's content, if it did."},
    )
    notes = ma.fields.List(
        ma.fields.Nested(NoteSchema),
        required=True,
        metadata={
            "description": "Oldest first: shared notes, and agency notes by the caller's own "
            "agency (another agency's agency notes are its own)."
        },
    )
    history = ma.fields.List(
        ma.fields.Nested(HistoryEntrySchema),
        required=True,
        metadata={"description": "Every status change and transfer of lead, oldest first."},
    )

    @ma.pre_dump
    def _view(self, entry: Any, **_: Any) -> dict[str, Any]:
        return {
            **ReferralSchema._view(self, entry["referral"]),
            "erased_at": entry["erased_at"],
            "notes": entry["notes"],
            "history": entry["history"],
        }


class DisclosedShareSchema(ShareSchema):
    """A share of one of the agency's referrals: to whom, when, what it allowed and why."""

    ended_at = ma.fields.DateTime(
        allow_none=True,
        required=True,
        metadata={
            "description": "When the share stopped giving access (revoked, expired, or the "
            "recipient became the lead); null while it is open."
        },
    )

    @ma.pre_dump
    def _view(self, share: Any, **_: Any) -> dict[str, Any]:
        return {
            **ShareSchema._view(self, share),
            "profile": share.profile,
            "ended_at": share.ended_at,
        }


class DisclosureLogSchema(ma.Schema):
    shares = ma.fields.List(
        ma.fields.Nested(DisclosedShareSchema),
        required=True,
        metadata={
            "description": "Every share of the referrals in the pack, oldest first, open or "
            "not: by the agency, by an earlier lead (`created_by_agency`), or an emergency "
            "access (`emergency_access_id`)."
        },
    )
    decisions_not_to_share = ma.fields.List(
        ma.fields.Nested(SharingDecisionSchema),
        required=True,
        metadata={"description": "Every decision not to share those referrals, oldest first."},
    )


class SubjectAccessPackSchema(ma.Schema):
    """Everything the caller's agency holds about a child, what it disclosed and who read it."""

    generated_at = ma.fields.DateTime(required=True)
    generated_by = ma.fields.Nested(
        ActorRefSchema, required=True, metadata={"description": "The caller."}
    )
    subject_id = ma.fields.UUID(required=True, metadata={"description": "The record asked for."})
    subjects = ma.fields.List(
        ma.fields.Nested(PackSubjectSchema),
        required=True,
        metadata={
            "description": "The child's records that the agency can see, the one asked for "
            "first: with a merge (CONTRACT §11), the record it was merged into and every record "
            "merged into that one are the same child, and referrals about any of them are in "
            "the pack. Each as the agency sees it."
        },
    )
    referrals = ma.fields.List(
        ma.fields.Nested(PackReferralSchema),
        required=True,
        metadata={
            "description": "The referrals about the child that the agency leads, oldest first. "
            "A referral only shared with the agency is not here: the lead holds it and answers "
            "for it, and the agency's copy is under the lead's control."
        },
    )
    disclosures = ma.fields.Nested(DisclosureLogSchema, required=True)
    audit_trail_upto_seq = ma.fields.Integer(
        required=True,
        metadata={
            "description": "The audit trail is read up to this `seq` (its head when the pack "
            "was assembled; events are chained about a second after they occur)."
        },
    )
    reads_by_other_agencies = ma.fields.List(
        ma.fields.Nested(AccessSchema),
        required=True,
        metadata={
            "description": "From the audit trail: every allowed read of or action on those "
            "referrals by an actor of another agency (a recipient, an earlier lead, an "
            "emergency access), referral by referral in the order of `referrals`; then every "
            "read of the child's records by another agency under one of the shares listed "
            "(`basis` `share:<id>` or `emergency:<id>`), record by record in the order of "
            "`subjects`; each in `seq` order. Refused attempts disclosed nothing and are "
            "not listed; nor are another agency's events on its own referrals, or its lists "
            "and searches, which name no referral or share. The caller's own agency's events "
            "are never here."
        },
    )
