"""/v1/statistics: partnership-wide counts of referrals, small numbers suppressed (CONTRACT §12)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from flask import Response
from flask.views import MethodView

from casehub.api.base import Blueprint, current_actor
from casehub.db import get_session
from casehub.schemas.statistics import ReferralStatisticsSchema, StatisticsQueryArgsSchema
from casehub.services import statistics

blp = Blueprint(
    "statistics",
    __name__,
    url_prefix="/v1/statistics",
    description=(
        "Aggregate statistics across the partnership for analysts: counts, never a record. "
        "Small numbers are suppressed."
    ),
)


@blp.route("/referrals")
class ReferralStatistics(MethodView):
    @blp.requires("statistics:read")
    @blp.arguments(StatisticsQueryArgsSchema, location="query")
    @blp.response(200, ReferralStatisticsSchema)
    @blp.doc(
        operationId="getReferralStatistics",
        summary="Counts of referrals across the partnership",
        description=(
            "Counts of referrals made by every agency of the partnership (not only the "
            "caller's), grouped by up to two dimensions (`group_by`), for the calendar months "
            "`from`..`to` (UTC, both included; either may be left out) of `created_at`. No "
            "`group_by`: one item, the total. Erased referrals are never counted.\n\n"
            "Each item carries the value of each dimension asked, `count` and `suppressed`. "
            "`category` and `indicator` are multi-valued: a referral counts once in each of its "
            "categories (indicators), so counts across them add up to more than the referrals. "
            "`month` is `YYYY-MM`; `lead_agency_kind` and `area` are the lead agency's now. "
            "A combination with no referral is absent (never a zero). Items are ordered by the "
            "first dimension's value, then the second's (codes and months ascending, a null "
            "`area` last).\n\n"
            "**Suppression.** A count from 1 to 4 is `null` with `suppressed: true` (primary). "
            "So that no suppressed count can be worked out from a total (secondary): with one "
            "dimension, when exactly one item is suppressed the smallest other one is too (the "
            "total would give it away); with two, every row and every column (whose totals are "
            "what the one-dimension questions answer) that has exactly one suppressed item gets "
            "its smallest other item suppressed, repeated until none does. Totals across a "
            "multi-valued dimension are not sums (see above) and are treated as if they were, "
            "which only suppresses more. Answers for different periods are not protected "
            "against each other: every question is audited (who asked what, for which "
            "months).\n\n"
            "**Freshness.** Counts are computed ahead of the question by `casehub statistics "
            "refresh` (run on a schedule, every 15 minutes in the deployment's example); "
            "`as_of` says when. Referrals made, changed or erased since are not reflected "
            "until the next refresh; `as_of: null` with no items means they have never been "
            "computed.\n\n"
            "Never an id, a name or free text. Audited as `statistics.read` with purpose "
            "`statistics` (resource: the dimensions and months asked); a `Purpose-Of-Use` "
            "other than `statistics` is 422 (statistics are no case work), audited as denied. "
            "Budgeted by the `search` rate limit (default 120 a minute per client)."
        ),
    )
    @blp.rate_class("search")
    @blp.autocommit_read
    def get(self, args: dict[str, Any]) -> Response:
        answer = statistics.referral_statistics(
            get_session(),
            actor=current_actor(),
            group_by=args["group_by"],
            start=args.get("from_"),
            end=args.get("to"),
        )
        # The answer is plain values already (the schema above documents it): dumped through
        # marshmallow, a 3,000-cell table (indicator by month) cost some 100 ms of CPU.
        return Response(json.dumps(answer, default=_iso), mimetype="application/json")


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")
