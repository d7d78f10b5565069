"""ORM models, one aggregate per module; importing this registers every table."""

from casehub.models.agency import Agency, AgencyKind, Client, RevokedToken, UsedAssertion, User
from casehub.models.audit import AuditEvent
from casehub.models.idempotency import IdempotencyRecord
from casehub.models.referral import (
    REFERENCE_SEQUENCE,
    Note,
    ReferenceCounter,
    Referral,
    ReferralCategory,
    ReferralHistory,
    ReferralIndicator,
    Share,
)
from casehub.models.subject import Subject, SubjectNameKey
from casehub.models.webhook import (
    Event,
    Webhook,
    WebhookAttempt,
    WebhookAttemptCount,
    WebhookDelivery,
)

__all__ = [
    "REFERENCE_SEQUENCE",
    "Agency",
    "AgencyKind",
    "AuditEvent",
    "Client",
    "Event",
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
    "Webhook",
    "WebhookAttempt",
    "WebhookAttemptCount",
    "WebhookDelivery",
]
