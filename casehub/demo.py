"""`casehub demo`: an East Midlands partnership with partner systems, people and referrals."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from casehub import audit
from casehub.auth.actor import Actor
from casehub.db import utcnow
from casehub.models import Agency, Client, Referral, Webhook
from casehub.services import agencies, referrals, shares, statistics, webhooks
from casehub.services.events import EVENT_TYPES
from casehub.webhooks import secrets

CASEWORK = (
    "referrals:read referrals:write referrals:share subjects:read subjects:write "
    "subjects:match referrals:emergency"
)
_AGENCY_ROWS = [
    # code, name, kind, area
    ("casehub", "casehub platform", "other", "East Midlands"),
    ("btp", "British Transport Police", "police", "East Midlands"),
    ("notts-police", "Nottinghamshire Police", "police", "Nottinghamshire"),
    ("nottingham-cs", "Nottingham City Children's Services", "local_authority", "Nottingham"),
    ("derbyshire-cs", "Derbyshire Children's Services", "local_authority", "Derbyshire"),
    ("childrens-society", "The Children's Society", "charity", "East Midlands"),
    ("em-probation", "Probation Service East Midlands", "probation", "East Midlands"),
]
AGENCIES: list[dict[str, Any]] = [
    {"code": c, "name": n, "kind": k, "area": a, "is_platform": c == "casehub"}
    for c, n, k, a in _AGENCY_ROWS
]
USERS = [
    ("btp", "officer.khan@btp.example", "PC Aisha Khan", "caseworker"),
    ("btp", "sgt.morris@btp.example", "Sgt Dan Morris", "safeguarding_lead"),
    ("nottingham-cs", "social.worker@nottingham-cs.example", "Priya Patel", "caseworker"),
    ("nottingham-cs", "mash.lead@nottingham-cs.example", "Tom Ellis", "safeguarding_lead"),
    ("childrens-society", "project.worker@childrens-society.example", "Grace Owen", "caseworker"),
    ("casehub", "auditor@casehub.example", "Partnership Auditor", "auditor"),
]


@dataclass
class DemoResult:
    created: bool
    client_id: str
    client_secret: str
    station_referral_id: uuid.UUID | None = None
    # The Children's Society's system, which sees the station referral through a summary share.
    charity_client_id: str | None = None
    charity_client_secret: str | None = None
    # An analyst's system: partnership statistics only (statistics:read).
    analyst_client_id: str | None = None
    analyst_client_secret: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None  # the demo receiver verifies with it


WEBHOOK_AGENCY = "nottingham-cs"
_WEBHOOK_ACTOR = Actor(
    agency=WEBHOOK_AGENCY,
    agency_kind="local_authority",
    is_platform=False,
    client_id="casehub-demo",
    purpose="case_work",
)


def _demo_webhook(session: Session, url: str, key: secrets.WebhookKey, now: datetime) -> str:
    """Children's services' subscription to every event, at `url`; a fresh secret each run
    (a rotation when it exists, so its secret can be handed to the demo receiver again)."""
    existing = session.execute(
        select(Webhook.id).where(
            Webhook.agency_code == WEBHOOK_AGENCY,
            Webhook.url == url,
            Webhook.deleted_at.is_(None),
        )
    ).scalar_one_or_none()
    if existing is not None:
        return webhooks.rotate_secret(
            session, actor=_WEBHOOK_ACTOR, webhook_id=existing, key=key, now=now
        ).secret
    created = webhooks.create_webhook(
        session,
        actor=_WEBHOOK_ACTOR,
        data={"url": url, "events": list(EVENT_TYPES)},
        key=key,
        allow_private=True,
        now=now,
    )
    return created.secret


def _actor(client: Client, agency: Agency) -> Actor:
    return Actor(
        agency=agency.code,
        agency_kind=agency.kind,
        is_platform=agency.is_platform,
        client_id=client.client_id,
        scopes=frozenset(client.scopes),
        purpose="case_work",
    )


def _referrals(session: Session, btp: Actor, notts_cs: Actor, now: datetime) -> None:
    station = referrals.create_referral(
        session,
        actor=btp,
        now=now,
        data={
            "subject": {
                "given_name": "Jayden",
                "family_name": "Okafor",
                "date_of_birth": datetime(2011, 4, 2).date(),
                "gender": "male",
                "aliases": ["JJ"],
            },
            "categories": ["county_lines", "missing"],
            "indicators": ["TRV-01", "PHN-01", "TRV-05"],
            "summary": (
                "Boy travelling alone in school hours with two phones at Nottingham station."
            ),
            "narrative": (
                "Seen by BTP officers at 10:40 on platform 4. No ticket; would not say where "
                "he was going."
            ),
            "observed_at": now - timedelta(hours=3),
            "location": {
                "description": "Platform 4",
                "postcode": "NG2 3AQ",
                "transport_hub": "Nottingham station",
            },
            "risk_level": "high",
        },
    )
    # Children's services assess the risk; The Children's Society's project worker needs to
    # know a boy at risk was found, to offer him support: not the police narrative, where on the
    # station, or his address (a summary share, §11).
    for agency, access, profile, purpose, necessity in (
        (
            "nottingham-cs",
            "contribute",
            "full",
            "safeguard_assess",
            "Children's services must assess the risk of criminal exploitation.",
        ),
        (
            "childrens-society",
            "read",
            "summary",
            "support_service",
            "A support worker can offer the boy help; the summary is enough for it.",
        ),
    ):
        shares.create_share(
            session,
            actor=btp,
            referral_id=station.id,
            now=now,
            data={
                "agency": agency,
                "access": access,
                "profile": profile,
                "purpose": purpose,
                "necessity": necessity,
                "lawful_basis": {
                    "article_6": "public_task",
                    "condition": "dpa2018_sch8_para4_safeguarding",
                    "gateway": "Children Act 2004 s11",
                },
                "consent": {
                    "status": "not_sought",
                    "rationale": "Seeking consent could place the child at risk.",
                },
                "expires_at": None,
            },
        )
    referrals.create_referral(
        session,
        actor=notts_cs,
        now=now,
        data={
            "subject": {
                "given_name": "Chloé",
                "family_name": "Brennan",
                "estimated_birth_year": now.year - 15,
                "gender": "female",
            },
            "categories": ["missing", "cse"],
            "indicators": ["MIS-01", "REL-04"],
            "summary": (
                "Third missing episode from care this month; returned with new phone and clothes."
            ),
            "observed_at": now - timedelta(days=1),
            "risk_level": "immediate",
            "immediate_action": "Strategy discussion convened; police informed.",
        },
    )


# A child children's services already know (two missing-from-care episodes) and BTP does not:
# the demo's match and access request find him.
KNOWN_CHILD = {
    "given_name": "Kyle",
    "family_name": "Mensah",
    "date_of_birth": datetime(2010, 8, 14).date(),
    "gender": "male",
    "identifiers": [{"system": "nhs_number", "value": "9434765919"}],
}


def _known_child(session: Session, notts_cs: Actor, now: datetime) -> None:
    first = referrals.create_referral(
        session,
        actor=notts_cs,
        now=now,
        data={
            "subject": dict(KNOWN_CHILD),
            "categories": ["missing"],
            "indicators": ["MIS-01"],
            "summary": "Missing from his children's home overnight; returned at 6 a.m.",
            "observed_at": now - timedelta(days=20),
            "risk_level": "medium",
        },
    )
    referrals.create_referral(
        session,
        actor=notts_cs,
        now=now,
        data={
            "subject_id": first.subject_id,
            "categories": ["missing", "county_lines"],
            "indicators": ["MIS-01", "PHN-01"],
            "summary": "Missing again for two nights; came back with a second phone and cash.",
            "observed_at": now - timedelta(days=6),
            "risk_level": "high",
        },
    )


# The partnership's year, for its statistics: referrals raised over the last eleven months by
# the police, children's services and probation (none by BTP, whose demo client lists one).
_YEAR_LEADS = ("notts-police", "nottingham-cs", "derbyshire-cs", "em-probation")
_YEAR_SHAPES = (
    (["county_lines", "missing"], ["TRV-01", "MIS-01"], "high"),
    (["county_lines", "cuckooing"], ["PHN-01"], "medium"),
    (["cse", "missing"], ["MIS-01", "REL-04"], "high"),
    (["acquisitive_crime"], ["MON-01"], "low"),
    (["county_lines"], ["PHN-01", "TRV-05"], "medium"),
    (["serious_youth_violence", "gang_association"], ["REL-04"], "high"),
)
_YEAR_NAMES = (
    ("Amir", "Hussain"),
    ("Ellie", "Marsh"),
    ("Callum", "Reid"),
    ("Sofia", "Nowak"),
    ("Dylan", "Price"),
    ("Maya", "Osei"),
    ("Leon", "Brooks"),
    ("Ruby", "Kaur"),
)


def _partnership_year(session: Session, systems: dict[str, Actor], now: datetime) -> None:
    """Enough referrals across the year for statistics to show counts as well as suppressions."""
    for n in range(48):
        categories, indicators, risk = _YEAR_SHAPES[n % len(_YEAR_SHAPES)]
        given, family = _YEAR_NAMES[n % len(_YEAR_NAMES)]
        raised = now - timedelta(days=7 * n + 1)
        referrals.create_referral(
            session,
            actor=systems[_YEAR_LEADS[n % len(_YEAR_LEADS)]],
            now=raised,
            data={
                "subject": {
                    "given_name": given,
                    "family_name": f"{family}-{n // len(_YEAR_NAMES) + 1}",
                    "estimated_birth_year": now.year - 13 - n % 5,
                    "gender": "unknown",
                },
                "categories": categories,
                "indicators": indicators,
                "summary": "Demo referral for the partnership's statistics.",
                "observed_at": raised - timedelta(hours=4),
                "risk_level": risk,
            },
        )


def seed(
    session: Session,
    *,
    scrypt_n: int = 2**14,
    webhook_url: str | None = None,
    webhook_key: secrets.WebhookKey | None = None,
) -> DemoResult:
    """Create the demo partnership if absent; always mint a fresh BTP client to call it with.
    With `webhook_url`, children's services subscribes to every event there, before the demo
    referrals are raised, so their notifications are the first deliveries."""
    now = utcnow()
    created = session.get(Agency, "btp") is None
    webhook_secret = None
    if created:
        for spec in AGENCIES:
            agencies.add_agency(session, **spec)
        for code, email, name, role in USERS:
            agencies.add_user(session, agency_code=code, email=email, name=name, roles=[role])
        systems = {}
        for spec in AGENCIES:
            scope = (
                "admin webhooks:manage audit:read audit:read:all monitoring:read"
                if spec.get("is_platform")
                else CASEWORK + " audit:read"
            )
            client, _ = agencies.add_client(
                session,
                agency_code=spec["code"],
                name=f"{spec['name']} case system",
                scope=scope,
                scrypt_n=scrypt_n,
            )
            agency = session.get(Agency, spec["code"])
            assert agency is not None
            systems[spec["code"]] = _actor(client, agency)
        if webhook_url is not None:
            assert webhook_key is not None
            webhook_secret = _demo_webhook(session, webhook_url, webhook_key, now)
        _referrals(session, systems["btp"], systems["nottingham-cs"], now)
        _known_child(session, systems["nottingham-cs"], now)
        _partnership_year(session, systems, now)
        statistics.refresh_statistics(session, now=now)
    elif webhook_url is not None:
        assert webhook_key is not None
        webhook_secret = _demo_webhook(session, webhook_url, webhook_key, now)
    client, secret = agencies.add_client(
        session,
        agency_code="btp",
        name=f"BTP demo integration {uuid.uuid4().hex[:6]}",
        scope=CASEWORK,
        scrypt_n=scrypt_n,
    )
    charity, charity_secret = agencies.add_client(
        session,
        agency_code="childrens-society",
        name=f"Children's Society demo integration {uuid.uuid4().hex[:6]}",
        scope="referrals:read subjects:read",
        scrypt_n=scrypt_n,
    )
    analyst, analyst_secret = agencies.add_client(
        session,
        agency_code="casehub",
        name=f"Partnership analyst demo {uuid.uuid4().hex[:6]}",
        scope="statistics:read",
        scrypt_n=scrypt_n,
    )
    audit.write_pending(session, audit.RequestInfo(None, "CLI", "casehub demo", None), status=None)
    assert secret is not None
    station = session.execute(
        select(Referral.id)
        .where(Referral.lead_agency == "btp")
        .order_by(Referral.created_at, Referral.id)
        .limit(1)
    ).scalar_one_or_none()
    return DemoResult(
        created=created,
        client_id=client.client_id,
        client_secret=secret,
        station_referral_id=station,
        charity_client_id=charity.client_id,
        charity_client_secret=charity_secret,
        analyst_client_id=analyst.client_id,
        analyst_client_secret=analyst_secret,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
    )


def instructions(result: DemoResult, base_url: str) -> str:
    users = ", ".join(f"{email} ({role})" for _, email, _, role in USERS)
    state = "created" if result.created else "already present"
    return f"""casehub demo {state}: East Midlands partnership
  agencies: {", ".join(a["code"] for a in AGENCIES)}
  users:    {users}

A partner system of British Transport Police (secret shown once):
  client_id:     {result.client_id}
  client_secret: {result.client_secret}

Get a token and list BTP's referrals:
  TOKEN=$(curl -s -u '{result.client_id}:{result.client_secret}' \\
      -d grant_type=client_credentials {base_url}/oauth/token \\
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -s -H "Authorization: Bearer $TOKEN" {base_url}/v1/referrals

Is a child BTP found known elsewhere? Ask without seeing anything (existence only):
  MATCH=$(curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
      -d '{{"given_name": "Kyle", "family_name": "Mensa", "date_of_birth": "2010-08-14"}}' \\
      {base_url}/v1/matches | tee /dev/stderr \\
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["match_id"])')
Nottingham children's services know him (one typo away: a strong match). Ask them to share:
  curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
      -d '{{"match_id": "'$MATCH'", "agency": "nottingham-cs", "purpose": "safeguard_assess",
           "necessity": "Found alone at Grantham station at 2 a.m.; we need to know the risks.",
           "urgency": "urgent"}}' \\
      {base_url}/v1/access-requests

{_summary_instructions(result, base_url)}
{_statistics_instructions(result, base_url)}
Interactive docs: {base_url}/docs
{_webhook_instructions(result, base_url)}"""


def _summary_instructions(result: DemoResult, base_url: str) -> str:
    if result.station_referral_id is None:
        return ""
    return f"""BTP shared the station referral with The Children's Society under the summary
profile: the charity's system reads it without the narrative, where on the station, notes, or
the boy's address and identifiers (its secret, shown once, is in the command):
  CHARITY=$(curl -s -u '{result.charity_client_id}:{result.charity_client_secret}' \\
      -d grant_type=client_credentials {base_url}/oauth/token \\
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -s -H "Authorization: Bearer $CHARITY" {base_url}/v1/referrals/{result.station_referral_id}
"""


def _statistics_instructions(result: DemoResult, base_url: str) -> str:
    return f"""The partnership's shape, without any child: referrals by category and risk level,
counts of 1 to 4 suppressed (and any that a total would give away), as of the last
`casehub statistics refresh` (the demo ran one; production runs it every 15 minutes):
  STATS=$(curl -s -u '{result.analyst_client_id}:{result.analyst_client_secret}' \\
      -d grant_type=client_credentials {base_url}/oauth/token \\
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -s -H "Authorization: Bearer $STATS" \\
      '{base_url}/v1/statistics/referrals?group_by=category,risk_level'
"""


def _webhook_instructions(result: DemoResult, base_url: str) -> str:
    if result.webhook_url is None or result.station_referral_id is None:
        return ""
    return f"""
Notifications: {WEBHOOK_AGENCY} (children's services) subscribes to every event at
  {result.webhook_url}
and the demo receiver prints each delivery once its signature is verified. BTP shared the
station referral with {WEBHOOK_AGENCY}; add a shared note to it and watch `note.added` arrive:
  curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
      -d '{{"body": "Seen again at Grantham station", "visibility": "shared"}}' \\
      {base_url}/v1/referrals/{result.station_referral_id}/notes
The same events, for partners that cannot take webhooks: GET {base_url}/v1/events
"""
