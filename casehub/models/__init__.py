"""ORM models, one aggregate per module; importing this registers every table."""

from casehub.models.audit import AuditEvent
from casehub.models.agency import Agency, AgencyKind, Client, RevokedToken, UsedAssertion, User
from casehub.models.idempotency import IdempotencyRecord
from casehub.models.referral import (
    Note,
    Referral,
    ReferralCategory,
    ReferralHistory,
    ReferralIndicator,
    ReferenceCounter,
    Share,
)
from casehub.models.subject import Subject, SubjectNameKey

__all__ = [
    "Agency",
    "AuditEvent",
    "AgencyKind",
    "Client",
    "IdempotencyRecord",
    "Note",
    "ReferenceCounter",
    "Referral",
    "ReferralCategory",
    "ReferralHistory",
    "ReferralIndicator",
    "RevokedToken",
    "Share",
    "Subject",
    "SubjectNameKey",
    "UsedAssertion",
    "User",
]
