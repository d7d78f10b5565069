"""ORM models, one aggregate per module; importing this registers every table."""

from casehub.models.agency import Agency, AgencyKind, Client, RevokedToken, UsedAssertion, User
from casehub.models.audit import AuditEvent
from casehub.models.idempotency import IdempotencyRecord
from casehub.models.matching import AccessRequest, EmergencyAccess, Match, SharingDecision
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
from casehub.models.statistics import StatisticsCell, StatisticsRefresh
from casehub.models.subject import Subject, SubjectIdentifier, SubjectMerge, SubjectNameKey
from casehub.models.webhook import (
    Event,
    Webhook,
    WebhookAttempt,
    WebhookAttemptCount,
    WebhookDelivery,
)

__all__ = [
    "REFERENCE_SEQUENCE",
    "AccessRequest",
    "Agency",
    "AgencyKind",
    "AuditEvent",
    "Client",
    "EmergencyAccess",
    "Event",
    "IdempotencyRecord",
    "Match",
    "Note",
    "ReferenceCounter",
    "Referral",
    "ReferralCategory",
    "ReferralHistory",
    "ReferralIndicator",
    "RevokedToken",
    "Share",
    "SharingDecision",
    "StatisticsCell",
    "StatisticsRefresh",
    "Subject",
    "SubjectIdentifier",
    "SubjectMerge",
    "SubjectNameKey",
    "UsedAssertion",
    "User",
    "Webhook",
    "WebhookAttempt",
    "WebhookAttemptCount",
    "WebhookDelivery",
]
