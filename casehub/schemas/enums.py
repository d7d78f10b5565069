"""Named lists of codes: each is one OpenAPI component, used by request and response schemas
alike, so a generated client has one type per list instead of a copy per field."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import marshmallow as ma
from marshmallow import validate

from casehub.auth.scopes import ROLE_SCOPES, SCOPES
from casehub.models import AgencyKind
from casehub.services import access_requests
from casehub.services.emergency import REVIEW_OUTCOMES, REVIEW_STATUSES
from casehub.services.events import EVENT_TYPES
from casehub.services.purposes import REQUEST_PURPOSES, SHARE_PURPOSES
from casehub.services.reference import CATEGORIES
from casehub.services.referrals import RISK_LEVELS, STATUSES
from casehub.services.shares import ARTICLE_6, CONDITIONS, CONSENT_STATUSES
from casehub.services.statistics import DIMENSIONS as STATISTICS_DIMENSIONS


@dataclass(frozen=True)
class Codes:
    """A list of codes with its component name (`#/components/schemas/<name>`)."""

    name: str
    values: tuple[str, ...]
    description: str

    def component(self) -> dict[str, Any]:
        schema = {"type": "string", "enum": list(self.values), "description": self.description}
        if any(not value.isidentifier() for value in self.values):
            # Generators name enum members after the values; `audit:read:all` would become
            # AUDITREADALL without these names.
            schema["x-enum-varnames"] = [re.sub(r"\W+", "_", v).upper() for v in self.values]
        return schema

    def field(self, **kwargs: Any) -> CodeField:
        return CodeField(self, **kwargs)


class CodeField(ma.fields.String):
    """A string that must be one of `codes`; documented as a reference to its component."""

    def __init__(self, codes: Codes, **kwargs: Any) -> None:
        extra = kwargs.pop("validate", None)
        validators: list[Any] = [validate.OneOf(codes.values)]
        if extra is not None:
            validators.extend(extra if isinstance(extra, Sequence) else [extra])
        super().__init__(validate=validators, **kwargs)
        self.codes = codes


def _codes(name: str, values: Sequence[str], description: str) -> Codes:
    return Codes(name, tuple(values), description)


AGENCY_KIND = _codes("AgencyKind", [k.value for k in AgencyKind], "What kind of agency.")
CATEGORY = _codes(
    "Category",
    list(CATEGORIES),
    "Kinds of exploitation or harm a referral is about: "
    + "; ".join(f"`{code}` {label}" for code, label in CATEGORIES.items())
    + ".",
)
RISK_LEVEL = _codes(
    "RiskLevel", RISK_LEVELS, "`immediate` needs `immediate_action` (e.g. 999 called)."
)
REFERRAL_STATUS = _codes(
    "ReferralStatus",
    STATUSES,
    "submitted → acknowledged → in_assessment → action_agreed | no_further_action → closed; "
    "closed → in_assessment reopens.",
)
SHARE_PURPOSE = _codes("SharePurpose", SHARE_PURPOSES, "Why information is shared.")
PURPOSE_OF_USE = _codes(
    "PurposeOfUse",
    sorted(REQUEST_PURPOSES),
    "Why the caller consults case data (DPA 2018 s62): a share purpose, `case_work`, `audit` "
    "or `statistics`.",
)
ARTICLE_6_BASIS = _codes("Article6Basis", ARTICLE_6, "The UK GDPR Article 6 lawful basis.")
PROCESSING_CONDITION = _codes(
    "ProcessingCondition",
    CONDITIONS,
    "The condition for special-category (DPA 2018 Schedule 1) or law-enforcement sensitive "
    "(Schedule 8, police agencies only) processing.",
)
CONSENT_STATUS = _codes(
    "ConsentStatus", CONSENT_STATUSES, "Whether consent to share was sought, and its answer."
)
SHARE_ACCESS = _codes(
    "ShareAccess", ("read", "contribute"), "`contribute` may also add notes; `read` may not."
)
SHARE_PROFILE = _codes(
    "ShareProfile",
    ("full", "summary"),
    "What the recipient sees (CONTRACT §11). `full`: the whole referral and child's record. "
    "`summary`: the referral without `narrative`, `location.description` and other agencies' "
    "notes, and the child without `address` and `identifiers`.",
)
SHARE_STATUS = _codes(
    "ShareStatus",
    ("active", "expired", "revoked", "ended"),
    "`ended`: the recipient became the lead (transfer), or the lead shared the referral with "
    "the agency that held it through an emergency access (the share replaced that access).",
)
ACCESS_REQUEST_URGENCY = _codes(
    "AccessRequestUrgency", access_requests.URGENCIES, "How soon the requester needs an answer."
)
ACCESS_REQUEST_STATUS = _codes(
    "AccessRequestStatus",
    access_requests.STATUSES,
    "`pending` until the holder shares (`shared`, with `share_id`) or declines (`declined`, "
    "with `decision_reason`), or the requester withdraws it (`withdrawn`).",
)
ACCESS_REQUEST_DIRECTION = _codes(
    "AccessRequestDirection",
    access_requests.DIRECTIONS,
    "`incoming`: requests to the caller's agency; `outgoing`: requests it made.",
)
ACCESS_DECISION = _codes(
    "AccessDecisionOutcome",
    ("share", "decline"),
    "`share` needs `referral_id` and `share`; `decline` needs `reason`.",
)
NOTE_VISIBILITY = _codes(
    "NoteVisibility",
    ("shared", "agency"),
    "`shared` notes are seen by every agency that sees the referral; `agency` notes only by the "
    "author's agency.",
)
MERGE_ACTION = _codes(
    "MergeAction",
    ("merge", "unmerge"),
    "`merge`: the duplicate was merged into the survivor; `unmerge`: that merge was undone.",
)
HISTORY_KIND = _codes(
    "HistoryKind",
    ("created", "transition", "transfer", "legal_hold", "legal_hold_released"),
    "What happened: `legal_hold` a legal hold was placed (or its reason replaced), "
    "`legal_hold_released` it was released; the entry's `reason` says why.",
)
GENDER = _codes("Gender", ("female", "male", "non_binary", "other", "unknown"), "Gender.")
IDENTIFIER_SYSTEM = _codes(
    "IdentifierSystem",
    ("nhs_number", "upn", "pnc_id", "la_case_ref", "other"),
    "`nhs_number` (modulus 11 checked), `upn` (unique pupil number), `pnc_id` (Police National "
    "Computer), `la_case_ref` (a local authority's case reference) or `other`.",
)
MATCH_CONFIDENCE = _codes(
    "MatchConfidence",
    ("identifier", "strong", "possible"),
    "How a match was made, best first: `identifier` the same identifier (system and value); "
    "`strong` the same date of birth and names that match ignoring case and accents, allowing "
    "one typo per name or an alias; `possible` names as for `strong` and a birth year within "
    "one year.",
)
SCOPE = _codes("Scope", list(SCOPES), "An OAuth scope (see the oauth2 security scheme).")
ROLE = _codes(
    "Role",
    list(ROLE_SCOPES),
    "A person's role: "
    + "; ".join(
        f"`{role}` grants {' '.join(sorted(scopes))}" for role, scopes in ROLE_SCOPES.items()
    )
    + ".",
)
AUDIT_OUTCOME = _codes("AuditOutcome", ("allowed", "denied"), "Whether the attempt was allowed.")
INDICATOR_KIND = _codes(
    "IndicatorKind", ("indicator", "vulnerability"), "A sign, or a vulnerability factor (context)."
)
EXPORT_FORMAT = _codes(
    "AuditExportFormat",
    ("ndjson", "csv"),
    "`ndjson`: one event per line, as in the list; `csv`: flattened, `subject_ids` "
    "space-separated.",
)
EVENT_TYPE = _codes(
    "EventType",
    list(EVENT_TYPES),
    "A notification's type: "
    + "; ".join(f"`{code}` {text}" for code, text in EVENT_TYPES.items())
    + " Types from CONTRACT §9 to §11 may be subscribed to now and are sent once those "
    "features are live.",
)
WEBHOOK_STATUS = _codes(
    "WebhookStatus",
    ("active", "disabled"),
    "`disabled`: nothing more is delivered (the receiver answered 410, or failed for 24 hours); "
    "the agency was told with `webhook.disabled` in its event feed.",
)
WEBHOOK_DISABLED_REASON = _codes(
    "WebhookDisabledReason",
    ("gone", "failing"),
    "`gone`: the receiver answered 410 Gone; `failing`: every attempt failed for 24 hours.",
)
DELIVERY_OUTCOME = _codes(
    "DeliveryOutcome",
    ("delivered", "failed", "gone"),
    "`delivered`: a 2xx answer; `failed`: any other answer (3xx included: redirects are never "
    "followed) or no answer in time, retried with back-off; `gone`: 410, which disables the "
    "subscription.",
)
# CONTRACT §10: emergency (break-glass) access and its review.
EMERGENCY_ACCESS_STATUS = _codes(
    "EmergencyAccessStatus",
    ("active", "ended", "expired"),
    "`active`: its shares give read-only access now; `ended`: ended early (by the agency that "
    "broke the glass, or by the holder: ending it, or revoking or replacing its last open "
    "share); `expired`: its four hours are over.",
)
REVIEW_STATUS = _codes(
    "ReviewStatus", REVIEW_STATUSES, "Whether a partnership auditor has reviewed it yet."
)
REVIEW_OUTCOME = _codes(
    "ReviewOutcome", REVIEW_OUTCOMES, "The auditor's judgement of an emergency access."
)

# CONTRACT §12: what partnership statistics may be grouped by.
STATISTICS_DIMENSION = _codes(
    "StatisticsDimension",
    STATISTICS_DIMENSIONS,
    "What referrals are counted by: `category` and `indicator` (a referral counts once in each "
    "of its own), `month` (of `created_at`, UTC, `YYYY-MM`), `lead_agency_kind` and `area` (of "
    "the lead agency), `risk_level`, `status`.",
)
ALL: tuple[Codes, ...] = tuple(value for value in globals().values() if isinstance(value, Codes))
