"""A list is the merge of two streams, the referrals the agency leads and those shared with it
(issue 10: neither is read further than a page). Walking it page by page gives exactly what the
agency may see, once each, in (created_at, id) order, with each filter applied to both."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, select, update

from casehub.models import Referral, Share
from tests.helpers import referral_body, share_body, transfer_lead


@pytest.fixture
def world(client, factory):
    notts = factory.partner("notts-cs", kind="local_authority")
    btp = factory.partner("btp")
    police = factory.partner("notts-police")
    made: dict[str, list[dict]] = {"led": [], "shared": [], "revoked": [], "unseen": []}
    for i in range(12):  # interleaved in time: led, shared, revoked, unseen, ...
        kind = ("led", "shared", "revoked", "unseen")[i % 4]
        author = notts if kind == "led" else (btp if i % 8 < 4 else police)
        body = referral_body(risk_level="high" if i % 3 == 0 else "medium")
        referral = client.post("/v1/referrals", json=body, headers=author.headers()).get_json()
        made[kind].append(referral)
        if kind in ("shared", "revoked"):
            share = client.post(
                f"/v1/referrals/{referral['id']}/shares",
                json=share_body("notts-cs"),
                headers=author.headers(),
            ).get_json()
            if kind == "revoked":
                revoked = client.post(
                    f"/v1/referrals/{referral['id']}/shares/{share['id']}/revoke",
                    json={"reason": "No longer needed."},
                    headers=author.headers(),
                )
                assert revoked.status_code == 200, revoked.get_json()
    return notts, made


def _walk(client, partner, query: str, limit: int) -> list[dict]:
    seen: list[dict] = []
    cursor = None
    for _ in range(50):
        url = f"/v1/referrals?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=partner.headers())
        assert page.status_code == 200, page.get_json()
        body = page.get_json()
        assert len(body["items"]) <= limit
        seen.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("the walk did not end")


def _order(items: list[dict]) -> list[str]:
    return [r["id"] for r in sorted(items, key=lambda r: (r["created_at"], r["id"]))]


@pytest.mark.parametrize("limit", [1, 2, 5, 100])
def test_a_walk_gives_what_is_led_and_shared_once_each_in_order(client, world, limit):
    notts, made = world
    walked = _walk(client, notts, "", limit)
    assert [r["id"] for r in walked] == _order(made["led"] + made["shared"])


@pytest.mark.parametrize(
    ("query", "kinds"),
    [
        ("&shared_with_me=true", ("shared",)),
        ("&shared_with_me=false", ("led",)),
        ("&lead_agency=notts-cs", ("led",)),
        ("&lead_agency=btp", ("shared",)),
        ("&lead_agency=notts-cs&shared_with_me=true", ()),
    ],
)
def test_filters_choose_the_stream(client, world, query, kinds):
    notts, made = world
    expected = [r for kind in kinds for r in made[kind]]
    if "lead_agency=btp" in query:
        expected = [r for r in expected if r["lead_agency"] == "btp"]
    assert [r["id"] for r in _walk(client, notts, query, 2)] == _order(expected)


def test_a_filter_applies_to_both_streams(client, world):
    notts, made = world
    expected = [r for r in made["led"] + made["shared"] if r["risk_level"] == "high"]
    assert expected and {r["lead_agency"] for r in expected} != {"notts-cs"}
    assert [r["id"] for r in _walk(client, notts, "&risk_level=high", 1)] == _order(expected)


def test_shares_made_in_any_order_list_in_their_referrals_order(client, factory):
    """The shared stream is read in the order of its referrals' creation, whenever each was
    shared, and a referral transferred away stays in place through the retained share."""
    btp = factory.partner("btp")
    tcs = factory.partner("tcs", kind="charity")
    factory.partner("notts-cs", kind="local_authority")
    made = [
        client.post("/v1/referrals", json=referral_body(), headers=btp.headers()).get_json()
        for _ in range(5)
    ]
    for referral in reversed(made):  # the newest referral is shared first
        shared = client.post(
            f"/v1/referrals/{referral['id']}/shares",
            json=share_body("tcs"),
            headers=btp.headers(),
        )
        assert shared.status_code == 201, shared.get_json()
    led_then_transferred = client.post(
        "/v1/referrals", json=referral_body(), headers=btp.headers()
    ).get_json()
    transfer_lead(client, btp, led_then_transferred["id"], "notts-cs")
    expected = _order(made)
    for limit in (1, 2, 10):
        assert [r["id"] for r in _walk(client, tcs, "", limit)] == expected
    # btp keeps a share of the referral it handed over; it lists after those it still leads.
    walked = [r["id"] for r in _walk(client, btp, "", 2)]
    assert walked == _order([*made, led_then_transferred])


def _patch(client, partner, referral_id: str, **changes) -> dict:
    etag = client.get(f"/v1/referrals/{referral_id}", headers=partner.headers()).headers["ETag"]
    response = client.patch(
        f"/v1/referrals/{referral_id}", json=changes, headers=partner.headers(**{"If-Match": etag})
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _transition(client, partner, referral_id: str, to: str) -> dict:
    etag = client.get(f"/v1/referrals/{referral_id}", headers=partner.headers()).headers["ETag"]
    response = client.post(
        f"/v1/referrals/{referral_id}/transitions",
        json={"to": to},
        headers=partner.headers(**{"If-Match": etag}),
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_updated_since_lists_what_changed_in_both_streams_however_it_changed(
    client, factory, db_session
):
    """`updated_since` reads each stream from what changed (a share keeps a copy of its
    referral's updated_at): an update, a transition or a transfer after the moment lists the
    referral for every agency that sees it, in (created_at, id) order; sharing an unchanged
    referral does not; and the copies never differ from the referrals, whoever wrote them."""
    btp = factory.partner("btp")
    notts = factory.partner("notts-cs", kind="local_authority")
    factory.partner("tcs", kind="charity")

    def raise_one(author) -> dict:
        made = client.post("/v1/referrals", json=referral_body(), headers=author.headers())
        assert made.status_code == 201, made.get_json()
        return made.get_json()

    def share(referral: dict, agency: str) -> None:
        shared = client.post(
            f"/v1/referrals/{referral['id']}/shares",
            json=share_body(agency),
            headers=btp.headers(),
        )
        assert shared.status_code == 201, shared.get_json()

    patched, untouched, shared_late, handed, moved_on = (raise_one(btp) for _ in range(5))
    own = raise_one(notts)
    for referral in (patched, untouched, moved_on):
        share(referral, "notts-cs")
    since = max(r["updated_at"] for r in (patched, untouched, shared_late, handed, moved_on, own))
    time.sleep(0.002)  # every change below is strictly later than `since`

    patched = _patch(client, btp, patched["id"], summary="Seen again at the station.")
    share(shared_late, "notts-cs")  # shared now, but unchanged since
    own = _transition(client, notts, own["id"], "acknowledged")
    transfer_lead(client, btp, handed["id"], "notts-cs")  # notts-cs leads it now
    transfer_lead(client, btp, moved_on["id"], "tcs")  # notts-cs's share stays open

    query = "&" + urlencode({"updated_since": since})
    expected_notts = _order([patched, own, handed, moved_on])
    expected_btp = _order([patched, handed, moved_on])  # the last two through retained shares
    for limit in (1, 2, 50):
        assert [r["id"] for r in _walk(client, notts, query, limit)] == expected_notts
        assert [r["id"] for r in _walk(client, btp, query, limit)] == expected_btp
    for item in _walk(client, notts, query, 50):
        assert item["updated_at"] > since
    unchanged = _walk(
        client, notts, "&" + urlencode({"updated_since": since}) + "&risk_level=low", 5
    )
    assert unchanged == []

    # An operator's UPDATE moves the copies too (a trigger, on both databases).
    later = datetime.now(UTC) + timedelta(minutes=5)
    db_session.execute(
        update(Referral).where(Referral.id == uuid.UUID(untouched["id"])).values(updated_at=later)
    )
    differing = db_session.execute(
        select(func.count())
        .select_from(Share)
        .join(Referral, Referral.id == Share.referral_id)
        .where(Share.referral_updated_at != Referral.updated_at)
    ).scalar_one()
    assert differing == 0
    moved = "&" + urlencode({"updated_since": (later - timedelta(seconds=1)).isoformat()})
    assert [r["id"] for r in _walk(client, notts, moved, 5)] == [untouched["id"]]
