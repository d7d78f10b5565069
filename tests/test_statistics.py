"""Partnership statistics (CONTRACT §12): GET /v1/statistics/referrals over HTTP with real tokens,
against a small world whose every answer is worked out by hand below."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from casehub.db import utcnow
from casehub.models import (
    AuditEvent,
    Referral,
    ReferralCategory,
    ReferralIndicator,
    StatisticsCell,
    Subject,
)
from casehub.services import statistics
from casehub.services.statistics import Cell, suppress_secondary
from tests.helpers import referral_body

PATH = "/v1/statistics/referrals"


@dataclass(frozen=True)
class Batch:
    """`n` referrals alike: created on `day`, led by `lead`, with these categories/indicators."""

    n: int
    day: str
    lead: str
    risk: str
    status: str
    categories: tuple[str, ...]
    indicators: tuple[str, ...] = ()
    erased: bool = False


# The world. Lead agencies: btp (police, East Midlands), notts-cs (local_authority,
# Nottinghamshire), tcs (charity, no area).
WORLD = (
    Batch(12, "2026-01-15", "btp", "high", "submitted", ("county_lines",), ("TRV-01",)),
    Batch(6, "2026-02-10", "btp", "medium", "closed", ("county_lines", "missing"),
          ("TRV-01", "PHN-01")),
    Batch(3, "2026-02-20", "notts-cs", "low", "submitted", ("cse",), ("PHN-01",)),
    Batch(5, "2026-03-31", "tcs", "medium", "in_assessment", ("missing",), ("TRV-01",)),
    # Erased: never counted, whatever it was.
    Batch(7, "2026-01-05", "btp", "low", "closed", ("cse",), ("PHN-01",), erased=True),
)  # fmt: skip


def _at(day: str, hour: int = 12) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


def build(session: Any, batches: tuple[Batch, ...] = WORLD) -> None:
    """Rows as the service writes them (referrals, their categories and indicators)."""
    for batch in batches:
        for _ in range(batch.n):
            subject = Subject(
                id=uuid.uuid4(), given_name="A", family_name="B", created_by_agency=batch.lead
            )
            session.add(subject)
            session.flush()
            referral_id = uuid.uuid4()
            session.add(
                Referral(
                    id=referral_id,
                    reference=f"CH-T-{referral_id.hex[:12]}",
                    subject_id=subject.id,
                    lead_agency=batch.lead,
                    created_by_agency=batch.lead,
                    created_by_client_id="seed",
                    summary="A summary that must never appear in statistics.",
                    observed_at=_at(batch.day, 9),
                    risk_level=batch.risk,
                    immediate_action=None,
                    status=batch.status,
                    created_at=_at(batch.day),
                    updated_at=_at(batch.day),
                    erased_at=_at("2026-04-01") if batch.erased else None,
                )
            )
            session.flush()
            for position, category in enumerate(batch.categories):
                session.add(ReferralCategory(referral_id=referral_id, category=category,
                                             position=position))  # fmt: skip
            for position, code in enumerate(batch.indicators):
                session.add(ReferralIndicator(referral_id=referral_id, code=code,
                                              position=position))  # fmt: skip
    session.flush()


@pytest.fixture
def analyst(factory):
    factory.agency("btp", "police", area="East Midlands")
    factory.agency("notts-cs", "local_authority", area="Nottinghamshire")
    factory.agency("tcs", "charity")
    factory.agency("ons", "other", area="East Midlands")
    return factory.partner("ons", "statistics:read", kind="other")


@pytest.fixture
def world(db_session, analyst):
    build(db_session)
    statistics.refresh_statistics(db_session, now=utcnow())
    db_session.commit()
    return analyst


def ask(client, partner, query: str = "", status: int = 200, **headers: str) -> dict[str, Any]:
    response = client.get(f"{PATH}{query}", headers=partner.headers(**headers))
    assert response.status_code == status, response.get_json()
    return response.get_json()


def items(client, partner, query: str = "") -> list[dict[str, Any]]:
    return ask(client, partner, query)["items"]


def shown(n: int) -> dict[str, Any]:
    return {"count": n, "suppressed": False}


HIDDEN = {"count": None, "suppressed": True}


# -- no dimension, one dimension -----------------------------------------------------------
def test_the_total_counts_every_referral_but_the_erased(client, world):
    answer = ask(client, world)
    assert answer["items"] == [shown(26)]  # 12 + 6 + 3 + 5; the 7 erased are not counted
    assert answer["group_by"] == [] and answer["from"] is None and answer["to"] is None
    assert answer["as_of"] is not None


def test_one_dimension_suppresses_small_counts_and_the_next_smallest(client, world):
    # high 12, medium 6 + 5 = 11, low 3: low is 1-4 (primary); alone, it would be the total
    # (26) minus the others, so the next smallest, medium (11), goes too (secondary).
    assert items(client, world, "?group_by=risk_level") == [
        {"risk_level": "high", **shown(12)},
        {"risk_level": "low", **HIDDEN},
        {"risk_level": "medium", **HIDDEN},
    ]


def test_one_dimension_without_small_counts_shows_everything(client, world):
    assert items(client, world, "?group_by=month") == [
        {"month": "2026-01", **shown(12)},
        {"month": "2026-02", **shown(9)},
        {"month": "2026-03", **shown(5)},
    ]


def test_a_multi_valued_dimension_counts_a_referral_in_each_of_its_values(client, world):
    # county_lines 12 + 6 = 18, missing 6 + 5 = 11, cse 3: cse primary, missing secondary.
    # The cells add up to 32 for 26 referrals: the 6 of February are in two categories.
    assert items(client, world, "?group_by=category") == [
        {"category": "county_lines", **shown(18)},
        {"category": "cse", **HIDDEN},
        {"category": "missing", **HIDDEN},
    ]
    # TRV-01 12 + 6 + 5 = 23, PHN-01 6 + 3 = 9: nothing small.
    assert items(client, world, "?group_by=indicator") == [
        {"indicator": "PHN-01", **shown(9)},
        {"indicator": "TRV-01", **shown(23)},
    ]


def test_the_lead_agencys_kind_and_area(client, world):
    # police (btp) 18, local_authority (notts-cs) 3, charity (tcs) 5: local_authority is
    # primary, and the smallest shown cell, charity (5), secondary.
    assert items(client, world, "?group_by=lead_agency_kind") == [
        {"lead_agency_kind": "charity", **HIDDEN},
        {"lead_agency_kind": "local_authority", **HIDDEN},
        {"lead_agency_kind": "police", **shown(18)},
    ]
    # East Midlands 18, Nottinghamshire 3, none (tcs) 5; a null area sorts last.
    assert items(client, world, "?group_by=area") == [
        {"area": "East Midlands", **shown(18)},
        {"area": "Nottinghamshire", **HIDDEN},
        {"area": None, **HIDDEN},
    ]


# -- two dimensions ----------------------------------------------------------------------------
def test_two_dimensions_suppress_until_no_row_or_column_has_one_suppressed_cell(client, world):
    # category by month, rows by category:
    #                 2026-01  2026-02  2026-03
    #   county_lines     12        6        .
    #   cse               .       [3]       .
    #   missing           .        6        5
    # cse/02 is primary. Column 02 then has one suppressed cell: its smallest shown cells are
    # county_lines/02 and missing/02 (6 each); missing/02 would do, but county_lines/02 comes
    # first in answer order and neither is alone in its row, so county_lines/02 goes. Row
    # county_lines then has one (12 is the only one left to take), and column 01 holds
    # county_lines/01 alone. Row missing and column 03 have none suppressed; stable.
    assert items(client, world, "?group_by=category,month") == [
        {"category": "county_lines", "month": "2026-01", **HIDDEN},
        {"category": "county_lines", "month": "2026-02", **HIDDEN},
        {"category": "cse", "month": "2026-02", **HIDDEN},
        {"category": "missing", "month": "2026-02", **shown(6)},
        {"category": "missing", "month": "2026-03", **shown(5)},
    ]


def test_two_multi_valued_dimensions(client, world):
    # category by indicator (a referral counts in every pair it carries):
    #                 PHN-01  TRV-01
    #   county_lines     6      18
    #   cse             [3]      .
    #   missing          6      11
    # cse/PHN-01 primary; column PHN-01 then has one: county_lines/PHN-01 and missing/PHN-01
    # tie at 6, county_lines first; row county_lines then has one: TRV-01 (18) goes; column
    # TRV-01 then has one: missing/TRV-01 (11) goes; row missing then has one: PHN-01 goes.
    # Every cell is suppressed: five cells are too few to hide one small count among.
    assert items(client, world, "?group_by=category&group_by=indicator") == [
        {"category": "county_lines", "indicator": "PHN-01", **HIDDEN},
        {"category": "county_lines", "indicator": "TRV-01", **HIDDEN},
        {"category": "cse", "indicator": "PHN-01", **HIDDEN},
        {"category": "missing", "indicator": "PHN-01", **HIDDEN},
        {"category": "missing", "indicator": "TRV-01", **HIDDEN},
    ]
    # Either order of the two dimensions asks the same table, rows and columns swapped.
    swapped = items(client, world, "?group_by=indicator,category")
    assert [(i["indicator"], i["category"]) for i in swapped] == [
        ("PHN-01", "county_lines"),
        ("PHN-01", "cse"),
        ("PHN-01", "missing"),
        ("TRV-01", "county_lines"),
        ("TRV-01", "missing"),
    ]
    assert all(i["suppressed"] for i in swapped)


def test_two_single_valued_dimensions_and_the_order_of_group_by(client, world):
    # status by risk_level:
    #                high  low  medium
    #   closed         .    .     6
    #   in_assessment  .    .     5
    #   submitted     12   [3]    .
    # low/submitted primary; row submitted has one: high/submitted (12) is alone in column
    # high, but nothing else is left to take, so it goes. Column medium has none; stable.
    assert items(client, world, "?group_by=status,risk_level") == [
        {"status": "closed", "risk_level": "medium", **shown(6)},
        {"status": "in_assessment", "risk_level": "medium", **shown(5)},
        {"status": "submitted", "risk_level": "high", **HIDDEN},
        {"status": "submitted", "risk_level": "low", **HIDDEN},
    ]


def test_from_and_to_are_whole_months_both_included(client, world):
    assert items(client, world, "?group_by=month&from=2026-02&to=2026-03") == [
        {"month": "2026-02", **shown(9)},
        {"month": "2026-03", **shown(5)},
    ]
    assert items(client, world, "?from=2026-02&to=2026-02") == [shown(9)]
    assert items(client, world, "?to=2026-01") == [shown(12)]
    assert items(client, world, "?from=2026-04") == []  # nothing counted: no item, not a zero


def test_an_answer_carries_no_id_or_text(client, world):
    answer = ask(client, world, "?group_by=category,month")
    text = str(answer)
    assert "summary" not in text and "CH-T-" not in text
    keys = {key for item in answer["items"] for key in item}
    assert keys == {"category", "month", "count", "suppressed"}


def test_counts_are_as_of_the_last_refresh(client, db_session, world):
    before = ask(client, world)
    build(db_session, (Batch(5, "2026-03-01", "btp", "low", "submitted", ("cse",)),))
    db_session.commit()
    assert ask(client, world)["items"] == [shown(26)]  # not refreshed yet
    statistics.refresh_statistics(db_session, now=utcnow())
    db_session.commit()
    after = ask(client, world)
    assert after["items"] == [shown(31)]
    assert after["as_of"] > before["as_of"]


def test_never_refreshed_answers_nothing_and_says_so(client, analyst):
    assert ask(client, analyst) == {
        "group_by": [],
        "from": None,
        "to": None,
        "as_of": None,
        "items": [],
    }


def test_a_refresh_counts_through_the_api_as_the_service_writes(client, db_session, factory):
    lead = factory.partner("btp", kind="police")
    for _ in range(5):
        body = referral_body(categories=["cce", "cce", "missing"], indicators=["TRV-01"])
        assert client.post("/v1/referrals", json=body, headers=lead.headers()).status_code == 201
    statistics.refresh_statistics(db_session, now=utcnow())
    cells = db_session.scalars(
        select(StatisticsCell).where(StatisticsCell.kind == "category.risk_level")
    ).all()
    month = utcnow().strftime("%Y-%m")
    assert sorted((c.category, c.month, c.risk_level, c.referrals) for c in cells) == [
        ("cce", month, "high", 5),
        ("missing", month, "high", 5),
    ]


# -- suppression on its own -----------------------------------------------------------------
def _cells(table: dict[tuple[str, ...], int | None]) -> list[Cell]:
    return [Cell(values=key, count=n, suppressed=n is None) for key, n in table.items()]


def test_secondary_suppression_leaves_no_line_with_one_suppressed_cell():
    #        x     y     z
    #   a   [3]    7    20
    #   b    6    30     9
    #   c   40     8    50
    # Rows, then columns, in turn, until nothing changes: row a takes (a,y) 7; column x takes
    # (b,x) 6; column y takes (c,y) 8; then row b takes (b,z) 9, row c (c,x) 40, and column z
    # (a,z) 20. Greedy, not the fewest possible (four would do), but no line is left with one.
    cells = _cells(
        {
            ("a", "x"): None, ("a", "y"): 7, ("a", "z"): 20,
            ("b", "x"): 6, ("b", "y"): 30, ("b", "z"): 9,
            ("c", "x"): 40, ("c", "y"): 8, ("c", "z"): 50,
        }
    )  # fmt: skip
    suppress_secondary(cells, 2)
    assert sorted(c.values for c in cells if c.suppressed) == [
        ("a", "x"), ("a", "y"), ("a", "z"), ("b", "x"), ("b", "z"), ("c", "x"), ("c", "y"),
    ]  # fmt: skip
    for axis in (0, 1):
        for value in "abc" if axis == 0 else "xyz":
            line = [c for c in cells if c.values[axis] == value]
            assert sum(1 for c in line if c.suppressed) != 1
    assert all(c.count is None for c in cells if c.suppressed)
    assert [c.count for c in cells if not c.suppressed] == [30, 50]


def test_one_dimension_with_two_small_counts_needs_nothing_more():
    cells = _cells({("a",): None, ("b",): None, ("c",): 5})
    suppress_secondary(cells, 1)
    assert [c.suppressed for c in cells] == [True, True, False]


# -- the question's form, scope, purpose and audit ------------------------------------------
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?group_by=postcode", "group_by"),
        ("?group_by=category,month,status", "group_by"),
        ("?group_by=month,month", "group_by"),
        ("?from=2026-03&to=2026-02", "from"),
        ("?from=2026-13", "from"),
        ("?to=2026-1", "to"),
        ("?group_by=month&bogus=1", "bogus"),
    ],
)
def test_a_malformed_question_is_422_naming_the_field(client, world, query, field):
    answer = ask(client, world, query, status=422)
    assert field in answer["errors"]["query"], answer


def test_statistics_need_their_scope(client, factory, world):
    caseworker = factory.partner("notts-cs", "referrals:read referrals:write")
    response = client.get(PATH, headers=caseworker.headers())
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert 'scope="statistics:read"' in response.headers["WWW-Authenticate"]


def test_counts_cover_the_partnership_not_the_callers_agency(client, factory, world):
    # A client of btp sees every agency's referrals counted, exactly as ons does.
    police_analyst = factory.partner("btp", "statistics:read")
    assert items(client, police_analyst, "?group_by=month") == items(
        client, world, "?group_by=month"
    )


def test_one_audit_event_with_purpose_statistics(client, db_session, world):
    ask(client, world, "?group_by=category,month&from=2026-01&to=2026-03")
    events = db_session.scalars(
        select(AuditEvent).where(AuditEvent.action == "statistics.read")
    ).all()
    assert len(events) == 1
    event = events[0]
    assert (event.outcome, event.purpose, event.actor_agency) == ("allowed", "statistics", "ons")
    assert (event.resource_type, event.resource_id) == (
        "statistics",
        "category,month:2026-01..2026-03",
    )
    assert event.referral_id is None and event.subject_ids == []


def test_purpose_statistics_may_be_declared_and_no_other(client, db_session, world):
    declared = ask(client, world, **{"Purpose-Of-Use": "statistics"})
    assert declared["items"] == [shown(26)]
    refused = ask(client, world, status=422, **{"Purpose-Of-Use": "case_work"})
    assert "Purpose-Of-Use" in refused["errors"]["headers"]
    denied = db_session.scalars(
        select(AuditEvent).where(
            AuditEvent.action == "access.denied", AuditEvent.resource_type == "statistics"
        )
    ).all()
    assert [(e.outcome, e.purpose) for e in denied] == [("denied", "case_work")]


# -- every question against a count of the world by hand ------------------------------------
KIND = {"btp": "police", "notts-cs": "local_authority", "tcs": "charity"}
AREA = {"btp": "East Midlands", "notts-cs": "Nottinghamshire", "tcs": None}


def _values(batch: Batch, dimension: str) -> tuple[str | None, ...]:
    return {
        "category": batch.categories,
        "indicator": batch.indicators,
        "month": (batch.day[:7],),
        "lead_agency_kind": (KIND[batch.lead],),
        "area": (AREA[batch.lead],),
        "risk_level": (batch.risk,),
        "status": (batch.status,),
    }[dimension]


def _counted(group_by: tuple[str, ...]) -> dict[tuple[str | None, ...], int]:
    counts: dict[tuple[str | None, ...], int] = {}
    for batch in WORLD:
        if batch.erased:
            continue
        for key in itertools.product(*(_values(batch, d) for d in group_by)):
            counts[key] = counts.get(key, 0) + batch.n
    return counts


QUESTIONS = [
    question
    for size in (0, 1, 2)
    for question in itertools.permutations(statistics.DIMENSIONS, size)
]


@pytest.mark.parametrize("group_by", QUESTIONS, ids=lambda q: ",".join(q) or "total")
def test_every_question_counts_the_world(client, world, group_by):
    query = f"?group_by={','.join(group_by)}" if group_by else ""
    answer = items(client, world, query)
    expected = _counted(group_by)
    cells = {tuple(item[d] for d in group_by): item for item in answer}
    assert set(cells) == set(expected)
    for key, item in cells.items():
        if expected[key] < 5:
            assert item == {**item, **HIDDEN}, key
        elif not item["suppressed"]:
            assert item["count"] == expected[key], key
