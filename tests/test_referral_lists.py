"""A list is the merge of two streams, the referrals the agency leads and those shared with it
(issue 10: neither is read further than a page). Walking it page by page gives exactly what the
agency may see, once each, in (created_at, id) order, with each filter applied to both."""

from __future__ import annotations

import pytest

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
