"""The single list of scopes and roles: enforcement and the OpenAPI document both read it."""

from __future__ import annotations

SCOPES: dict[str, str] = {
    "referrals:read": "Read referrals, notes and shares that the caller's agency can see.",
    "referrals:write": (
        "Create referrals; update and transition those the agency leads; add notes where it "
        "leads or holds a contribute share; acknowledge shares to it."
    ),
    "referrals:share": "Share referrals the agency leads, revoke those shares, transfer the lead.",
    "subjects:read": "Read and search children's records the agency can see.",
    "subjects:write": "Create and update children's records the agency can see.",
    "audit:read": (
        "Audit events of the agency's own actors, and of anyone's actions on referrals it leads."
    ),
    "audit:read:all": "Every audit event (partnership auditors).",
    "webhooks:manage": "The agency's webhook subscriptions.",
    "admin": "Clients and users of the agency; agencies themselves for the platform agency.",
    "subjects:match": (
        "Ask whether a child is known to other agencies (existence only), and request access."
    ),
    "referrals:emergency": (
        "Time-boxed, read-only emergency access to a matched child's referrals; police and "
        "local-authority agencies only."
    ),
    "subjects:sar": (
        "Assemble a subject access request pack: what the agency holds about a child and what "
        "it disclosed, to whom and on what basis."
    ),
    "statistics:read": (
        "Partnership-wide counts of referrals with small numbers suppressed; never a record."
    ),
    "monitoring:read": "Operational metrics (`/metrics`), for the platform's monitoring "
    "(Prometheus). Platform agency only.",
}
# Scopes over the whole partnership: only the platform agency's clients may hold them.
PLATFORM_ONLY = frozenset({"audit:read:all", "monitoring:read"})
# Scopes that give no sight of case content (referrals, notes, shares, children's records):
# administration, webhook subscriptions (payloads carry ids only), the audit trail and metrics.
# Every other scope is a case scope, so a scope added later is one unless it is listed here.
WITHOUT_CASE_CONTENT = frozenset(
    {
        "admin",
        "webhooks:manage",
        "audit:read",
        "audit:read:all",
        "monitoring:read",
        "statistics:read",
    }
)
# Case scopes on a client registered by a person need a second administrator's approval
# (casehub.services.admin) before any token carries them.
CASE_SCOPES = frozenset(SCOPES) - WITHOUT_CASE_CONTENT

ROLE_SCOPES: dict[str, frozenset[str]] = {
    "caseworker": frozenset(
        {"referrals:read", "referrals:write", "subjects:read", "subjects:write", "subjects:match"}
    ),
    "safeguarding_lead": frozenset(
        {
            "referrals:read",
            "referrals:write",
            "subjects:read",
            "subjects:write",
            "subjects:match",
            "referrals:share",
            "referrals:emergency",
        }
    ),
    "auditor": frozenset({"audit:read"}),
    "agency_admin": frozenset({"admin", "webhooks:manage"}),
    "data_protection_officer": frozenset({"referrals:read", "subjects:read", "subjects:sar"}),
    "analyst": frozenset({"statistics:read"}),
}

# Declared on routes that need a valid token but no particular scope (e.g. GET /v1/agencies).
ANY_SCOPE = ""


def normalise(scope: str) -> list[str]:
    """Split a space-delimited scope string, keeping order and dropping repeats."""
    seen: dict[str, None] = {}
    for item in scope.split():
        seen.setdefault(item, None)
    return list(seen)


def unknown(scopes: list[str]) -> list[str]:
    return [s for s in scopes if s not in SCOPES]


def for_roles(roles: list[str]) -> frozenset[str]:
    granted: set[str] = set()
    for role in roles:
        granted |= ROLE_SCOPES.get(role, frozenset())
    return frozenset(granted)
