"""Purposes: why a share exists, and why a caller says it is consulting case data (s62 DPA 2018)."""

from __future__ import annotations

SHARE_PURPOSES = (
    "safeguard_assess",
    "strategy_discussion",
    "mash_triage",
    "support_service",
    "nrm_referral",
    "investigation",
    "offender_management",
    "missing_return_interview",
)

REQUEST_PURPOSES = frozenset(SHARE_PURPOSES) | {"case_work", "audit", "statistics"}
