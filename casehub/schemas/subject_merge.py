"""Merging children's records (CONTRACT §11): the request, and the history kept of each."""

from __future__ import annotations

from typing import Any

import marshmallow as ma

from casehub.schemas import enums
from casehub.schemas.common import StrictSchema, Text
from casehub.schemas.referral import ActorRefSchema, actor_ref


class SubjectMergeCreateSchema(StrictSchema):
    duplicate_id = ma.fields.UUID(
        required=True,
        metadata={"description": "The duplicate record, which the caller's agency recorded."},
    )
    reason = Text(
        2000,
        required=True,
        metadata={"description": "Why the two records are (or are not) the same child."},
    )


class SubjectMergeSchema(ma.Schema):
    """One merge or unmerge of two children's records, as subject_merges keeps it."""

    id = ma.fields.UUID(required=True)
    action = enums.MERGE_ACTION.field(required=True)
    subject_id = ma.fields.UUID(required=True, metadata={"description": "The survivor."})
    duplicate_id = ma.fields.UUID(required=True)
    reason = ma.fields.String(required=True)
    actor = ma.fields.Nested(ActorRefSchema, required=True)
    occurred_at = ma.fields.DateTime(required=True)

    @ma.pre_dump
    def _view(self, entry: Any, **_: Any) -> dict[str, Any]:
        return {
            "id": entry.id,
            "action": entry.action,
            "subject_id": entry.subject_id,
            "duplicate_id": entry.duplicate_id,
            "reason": entry.reason,
            "actor": actor_ref(entry.actor_agency, entry.actor_client_id, entry.actor_user_id),
            "occurred_at": entry.occurred_at,
        }
