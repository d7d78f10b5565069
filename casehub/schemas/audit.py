"""Audit trail: event and access representations, filters and export arguments."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from casehub.schemas import enums
from casehub.schemas.common import ListArgsSchema, StrictSchema


class AuditActorSchema(ma.Schema):
    agency = ma.fields.String(required=True, allow_none=True)
    client_id = ma.fields.String(required=True, allow_none=True)
    user_id = ma.fields.UUID(
        required=True, allow_none=True, metadata={"description": "Set for a user's token."}
    )


class AuditResourceSchema(ma.Schema):
    type = ma.fields.String(required=True, allow_none=True)
    id = ma.fields.String(required=True, allow_none=True)


class AuditRequestSchema(ma.Schema):
    id = ma.fields.String(required=True, allow_none=True, metadata={"description": "X-Request-Id."})
    method = ma.fields.String(required=True, allow_none=True)
    path = ma.fields.String(required=True, allow_none=True)
    status = ma.fields.Integer(required=True, allow_none=True)
    ip = ma.fields.String(required=True, allow_none=True)


class AuditEventSchema(ma.Schema):
    id = ma.fields.UUID(required=True)
    seq = ma.fields.Integer(
        required=True, metadata={"description": "Position in the hash chain: 1, 2, 3… no gaps."}
    )
    occurred_at = ma.fields.String(required=True, metadata={"format": "date-time"})
    actor = ma.fields.Nested(AuditActorSchema, required=True)
    action = ma.fields.String(
        required=True, metadata={"description": "e.g. referral.read, share.create, access.denied"}
    )
    outcome = enums.AUDIT_OUTCOME.field(required=True)
    resource = ma.fields.Nested(AuditResourceSchema, required=True)
    referral_id = ma.fields.UUID(required=True, allow_none=True)
    subject_ids = ma.fields.List(
        ma.fields.UUID(),
        required=True,
        metadata={"description": "Every child whose data the response carried."},
    )
    basis = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "`lead`, `share:<id>`, `emergency:<id>` (an emergency access, §10), "
            "or the audit scope of an auditor's read."
        },
    )
    purpose = enums.PURPOSE_OF_USE.field(required=True, allow_none=True)
    request = ma.fields.Nested(AuditRequestSchema, required=True)
    prev_hash = ma.fields.String(required=True)
    hash = ma.fields.String(
        required=True,
        metadata={
            "description": (
                "SHA-256 (hex) of the event's canonical record, which includes seq and "
                "prev_hash. GET /v1/audit/verify recomputes the chain."
            )
        },
    )


class AccessSchema(ma.Schema):
    seq = ma.fields.Integer(required=True)
    occurred_at = ma.fields.String(required=True, metadata={"format": "date-time"})
    actor = ma.fields.Nested(AuditActorSchema, required=True)
    action = ma.fields.String(required=True)
    outcome = enums.AUDIT_OUTCOME.field(required=True)
    resource = ma.fields.Nested(AuditResourceSchema, required=True)
    referral_id = ma.fields.UUID(required=True, allow_none=True)
    basis = ma.fields.String(required=True, allow_none=True)
    purpose = enums.PURPOSE_OF_USE.field(required=True, allow_none=True)


class _FilterFields(ma.Schema):
    agency = ma.fields.String(
        validate=validate.Length(min=2, max=40), metadata={"description": "The actor's agency."}
    )
    client_id = ma.fields.String(validate=validate.Length(min=1, max=64))
    user_id = ma.fields.UUID()
    action = ma.fields.String(validate=validate.Length(min=1, max=60))
    outcome = enums.AUDIT_OUTCOME.field()
    referral_id = ma.fields.UUID()
    subject_id = ma.fields.UUID()
    from_ = ma.fields.AwareDateTime(
        data_key="from", metadata={"description": "Events that occurred at or after this time."}
    )
    to = ma.fields.AwareDateTime(metadata={"description": "Events that occurred before this time."})

    @ma.post_load
    def _rename(self, data: dict[str, object], **_: object) -> dict[str, object]:
        if "from_" in data:
            data["from"] = data.pop("from_")
        return data


class AuditEventQueryArgsSchema(ListArgsSchema, _FilterFields):
    pass


class AuditExportArgsSchema(StrictSchema, _FilterFields):
    format = enums.EXPORT_FORMAT.field(
        load_default="ndjson",
        metadata={
            "description": "The export's format, chosen here only (the Accept header is not "
            "consulted): `ndjson` (application/x-ndjson, the default) or `csv` (text/csv)."
        },
    )


class VerifyHeadSchema(ma.Schema):
    seq = ma.fields.Integer(required=True)
    hash = ma.fields.String(required=True)


class VerifySchema(ma.Schema):
    ok = ma.fields.Boolean(required=True, metadata={"description": "True only if the chain holds."})
    events = ma.fields.Integer(required=True, metadata={"description": "Chained events checked."})
    head = ma.fields.Nested(VerifyHeadSchema, required=True)
    checkpoints = ma.fields.Integer(required=True, metadata={"description": "Checkpoints checked."})
    pending = ma.fields.Integer(
        required=True, metadata={"description": "Committed events not yet chained (seconds old)."}
    )
    first_bad_seq = ma.fields.Integer(required=True, allow_none=True)
    problem = ma.fields.String(required=True, allow_none=True)
    seconds = ma.fields.Float(required=True)
    from_seq = ma.fields.Integer(
        required=True,
        metadata={
            "description": "Hashes were recomputed after this seq: the newest signed checkpoint "
            "(0: from the first event). The chain up to it was verified when it was signed; "
            "`casehub audit verify` recomputes it all."
        },
    )
    archived_seq = ma.fields.Integer(
        required=True,
        metadata={
            "description": "The events up to this seq were archived: exported to signed files, "
            "verified and dropped from the database (`casehub audit archive`); the chain here "
            "begins after it, and `casehub audit verify-archive` checks a file. 0: none."
        },
    )
