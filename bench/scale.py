"""casehub's queries at scale 1 and scale 100 (issue 10, part 3): seeded with COPY, measured in
process with real tokens.

    .venv/bin/python -m bench.scale [--scale 1|100|both] [--rebuild] [--requests N]
                                    [--seconds S] [--explain NAME]

Scale 1 is 10,000 referrals, 10,000 children and 100,000 audit events; scale 100 is 1,000,000,
1,000,000 and 10,000,000. Each scale has a database on BENCH_PG (default 127.0.0.1:5432),
`casehub_bench_scale_1` and `casehub_bench_scale_100`, kept between runs and reused while its
marker (a COMMENT ON DATABASE: seed version, alembic head, row counts) still matches;
`--rebuild` seeds it afresh.

Seeding: the schema from the migrations; agencies, partner systems and people registered with
casehub.services.agencies; children, referrals, shares, their history and the outbox generated
in Python, values the service computes taken from its own functions (name keys from
casehub.services.names, checked against subjects._sync_name_keys; references from
referrals.next_reference; the lawful-basis rules of shares.check_lawful_basis; postcodes and NHS
numbers from services.validation; audit fields checked against audit.record), and COPYed with
foreign keys, unique constraints and secondary indexes dropped, rebuilt afterwards from their own
definitions (and the schema then compared with the migrations'). Audit events are COPYed with the
enqueue trigger off (bench.audit_data.load_events) and chained by the real sequencer
(casehub.audit.chain.sequence_all), so every table it fills is filled as in production; then the
hourly signed checkpoints `casehub audit checkpoint` would have left, and VACUUM ANALYZE.

Measuring: Flask's test client against `create_app` (sequencer off, rate limits out of reach),
real client_credentials tokens, a warm-up, then `--requests` of each query or `--seconds` of
it, whichever comes first; each answer must be 200. The events the measurement itself writes
are removed afterwards, so every run meets the same trail. `--explain NAME` prints EXPLAIN
(ANALYZE, BUFFERS) of every statement the named request sends.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import hashlib
import inspect
import json
import math
import multiprocessing
import random
import statistics
import string
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Generic, TypeVar

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import JSON, Engine, Text, bindparam, cast, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from bench.audit_data import _libpq, database_url, load_events
from bench.not_found_timing import _percentile
from casehub import audit, create_app, limits, migrate
from casehub.audit import canonical, chain, checkpoints
from casehub.auth.actor import Actor
from casehub.auth.secrets import generate_secret, hash_secret
from casehub.db import get_db, make_engine
from casehub.models import REFERENCE_SEQUENCE, ReferralHistory, Subject
from casehub.schemas.audit import AuditEventQueryArgsSchema
from casehub.schemas.referral import ReferralQueryArgsSchema
from casehub.services import agencies, names, referrals, shares
from casehub.services import subjects as subjects_service
from casehub.services.purposes import SHARE_PURPOSES
from casehub.services.reference import CATEGORIES, indicator_codes
from casehub.services.validation import nhs_check_digit, normalise_postcode

T = TypeVar("T")

SEED_VERSION = 2  # bump when the generator below changes what it writes
# The service code seeded rows are derived from: reusing a database seeded before a change to it
# is reported.
DERIVED_FROM = (names, chain, canonical, audit, checkpoints)
SCRYPT_N = 1024  # a cheap client-secret hash: nothing here is secret
DAY = 86_400.0
SPAN_DAYS = 3 * 365
RECENT = 60 * DAY  # most reads and lists are about referrals of the last two months
OUTBOX_DAYS = 30  # EVENTS_RETENTION_DAYS: the outbox keeps a month of notifications
SEQUENCER_BATCH = 20_000
COPY_CHUNK = 1 << 20
RATE_LIMITS_OUT_OF_REACH = {setting: "100000000/minute" for setting in limits.CLASSES.values()}


@dataclass(frozen=True)
class Scale:
    factor: int
    referrals: int  # and as many children
    events: int
    requests: int  # the default number of requests per query

    @property
    def database(self) -> str:
        return f"casehub_bench_scale_{self.factor}"


SCALES = {
    1: Scale(1, 10_000, 100_000, 200),
    100: Scale(100, 1_000_000, 10_000_000, 100),
}


# -- the partnership --------------------------------------------------------------------------
CASEWORK = "referrals:read referrals:write referrals:share subjects:read subjects:write"


@dataclass(frozen=True)
class ClientSpec:
    name: str
    scope: str
    traffic: float = 1.0  # how much of its agency's work goes through it


@dataclass(frozen=True)
class AgencySpec:
    code: str
    name: str
    kind: str
    area: str
    leads: float  # its part of all referrals, as their lead
    receives: float  # its weight as a share recipient
    clients: tuple[ClientSpec, ...]
    is_platform: bool = False


LARGE_LEAD = "btp"
SHARE_ONLY = "notts-cs"
PARTNERSHIP = (
    AgencySpec(
        "btp",
        "British Transport Police",
        "police",
        "East Midlands",
        0.27,
        1,
        (
            ClientSpec("niche-rms", CASEWORK, 3),
            ClientSpec("pocketbook-mobile", CASEWORK, 1),
            ClientSpec("audit-console", "audit:read", 0),
        ),
    ),
    AgencySpec(
        "notts-police",
        "Nottinghamshire Police",
        "police",
        "Nottinghamshire",
        0.25,
        2,
        (ClientSpec("niche-rms", CASEWORK, 3), ClientSpec("mash-desk", CASEWORK, 1)),
    ),
    AgencySpec(
        "derbys-police",
        "Derbyshire Constabulary",
        "police",
        "Derbyshire",
        0.13,
        1,
        (ClientSpec("niche-rms", CASEWORK),),
    ),
    AgencySpec(
        "notts-cs",
        "Nottinghamshire Children's Services",
        "local_authority",
        "Nottinghamshire",
        0.0,  # receives shares and records children; leads no referral
        12,
        (ClientSpec("mosaic", CASEWORK),),
    ),
    AgencySpec(
        "derby-cs",
        "Derby City Children's Services",
        "local_authority",
        "Derby",
        0.10,
        4,
        (ClientSpec("liquidlogic", CASEWORK),),
    ),
    AgencySpec(
        "tcs",
        "The Children's Society",
        "charity",
        "East Midlands",
        0.10,
        2,
        (ClientSpec("case-tracker", CASEWORK),),
    ),
    AgencySpec(
        "em-probation",
        "Probation Service East Midlands",
        "probation",
        "East Midlands",
        0.07,
        2,
        (ClientSpec("ndelius", CASEWORK),),
    ),
    AgencySpec(
        "nuh-safeguarding",
        "Nottingham University Hospitals Safeguarding",
        "health",
        "Nottingham",
        0.08,
        2,
        (ClientSpec("safeguarding-hub", CASEWORK),),
    ),
)
PLATFORM = AgencySpec(
    "casehub",
    "casehub platform",
    "other",
    "East Midlands",
    0.0,
    0,
    (ClientSpec("partnership-audit", "audit:read:all", 0),),
    is_platform=True,
)
# The callers the measurement uses, as (agency, client name).
CALLERS = {
    "lead": (LARGE_LEAD, "niche-rms"),
    "share-only": (SHARE_ONLY, "mosaic"),
    "agency-auditor": (LARGE_LEAD, "audit-console"),
    "all-auditor": (PLATFORM.code, "partnership-audit"),
}


# -- names ------------------------------------------------------------------------------------
# Family names per 1,000 people in England and Wales (a heavy head), then a long tail.
COMMON_SURNAMES = {
    "Smith": 12.6, "Jones": 9.2, "Williams": 6.8, "Taylor": 5.7, "Brown": 5.6, "Davies": 5.3,
    "Evans": 3.9, "Wilson": 3.3, "Thomas": 3.3, "Johnson": 3.2, "Roberts": 3.1, "Khan": 2.6,
    "Robinson": 2.5, "Thompson": 2.5, "Wright": 2.5, "Walker": 2.4, "White": 2.3, "Edwards": 2.3,
    "Hughes": 2.2, "Green": 2.2, "Hall": 2.2, "Lewis": 2.1, "Harris": 2.1, "Clarke": 2.1,
    "Patel": 2.4, "Jackson": 2.0, "Wood": 1.9, "Turner": 1.9, "Martin": 1.8, "Cooper": 1.8,
    "Hill": 1.8, "Ward": 1.7, "Morris": 1.7, "Moore": 1.7, "Clark": 1.7, "Lee": 1.6, "King": 1.6,
    "Baker": 1.6, "Harrison": 1.6, "Morgan": 1.5, "Allen": 1.5, "James": 1.5, "Scott": 1.5,
    "Ali": 1.5, "Hussain": 1.4, "Begum": 1.3, "Ahmed": 1.3, "Singh": 1.3, "Kaur": 1.0,
    "Phillips": 1.4, "Watson": 1.4, "Davis": 1.4, "Parker": 1.3, "Price": 1.3, "Bennett": 1.3,
    "Young": 1.3, "Griffiths": 1.3, "Mitchell": 1.3, "Kelly": 1.3, "Cook": 1.3, "Carter": 1.2,
    "Richardson": 1.2, "Bailey": 1.2, "Collins": 1.2, "Bell": 1.2, "Shaw": 1.2, "Murphy": 1.2,
    "Miller": 1.2, "Cox": 1.1, "Richards": 1.1, "Marshall": 1.1, "Anderson": 1.1, "Mahmood": 0.6,
    "Rahman": 0.7, "Iqbal": 0.5, "Akhtar": 0.5, "Gill": 0.5, "Sandhu": 0.3, "Okafor": 0.3,
    "Mensah": 0.3, "Adeyemi": 0.3, "Nowak": 0.4, "Kowalski": 0.3, "Wiśniewski": 0.2,
    "Nguyen": 0.3, "Li": 0.4, "Wang": 0.3, "Chen": 0.3, "O'Brien": 0.5, "O'Connor": 0.4,
    "O'Neill": 0.3, "Smith-Jones": 0.1, "Brown-Reid": 0.1, "Müller": 0.1, "Núñez": 0.1,
    "Gómez": 0.15, "Ferreira": 0.2, "Santos": 0.2, "Popescu": 0.2, "Kovács": 0.1,
    "Lefèvre": 0.1, "Ó Briain": 0.05, "McDonald": 0.8, "MacLeod": 0.3, "Fitzgerald": 0.4,
}  # fmt: skip
_TAIL_STARTS = (
    "Ash", "Black", "Brad", "Brook", "Burn", "Chad", "Clay", "Cran", "Dal", "Dun", "Elm",
    "Fair", "Farn", "Glad", "Hal", "Hart", "Haw", "Hol", "Kings", "Lang", "Lin", "Mar", "Mid",
    "Mor", "New", "North", "Oak", "Pen", "Ray", "Red", "Rid", "Ros", "Rother", "Sand", "Shel",
    "Stan", "Stock", "Strat", "Sut", "Thorn", "Tur", "Wal", "War", "Wen", "West", "Whit",
    "Wick", "Win", "Wood", "Alder", "Bar", "Bel", "Bram", "Brent", "Cal", "Card", "Cart",
    "Cot", "Crom", "Dray", "East", "Ever", "Fen", "Gar", "Gold", "Green", "Hay", "Hen", "Kil",
    "Knot", "Lock", "Mal", "Mel", "Nor", "Pad", "Pres", "Rad", "Rock", "Rush", "Sel", "Sher",
    "Smal", "Ston", "Thurs", "Wad", "Wes", "Wil", "Wor",
)  # fmt: skip
_TAIL_ENDS = (
    "ton", "ley", "field", "worth", "ford", "well", "by", "ham", "wood", "more", "burn", "dale",
    "ridge", "stone", "wick", "cliffe", "land", "hurst", "shaw", "low", "combe", "gate",
    "bury", "den", "ings", "bridge", "brook", "croft", "ey", "hall", "man", "more", "over",
    "row", "sby", "stead", "thwaite", "well", "wright",
)  # fmt: skip
HEAD_SHARE = 0.20  # the common names above are a fifth of the population; the tail the rest
GIVEN_NAMES = (
    "Oliver", "Jack", "Harry", "Muhammad", "Jacob", "Charlie", "Thomas", "George", "Oscar",
    "James", "William", "Noah", "Alfie", "Joshua", "Leo", "Riley", "Archie", "Ethan", "Mason",
    "Logan", "Tyler", "Kai", "Jayden", "Kian", "Callum", "Connor", "Liam", "Dylan", "Lewis",
    "Reece", "Aaron", "Kyle", "Bradley", "Jordan", "Mohammed", "Ibrahim", "Yusuf", "Omar",
    "Zain", "Aarav", "Arjun", "Kacper", "Jakub", "Oskar", "Mateusz", "Filip", "Luca", "Jamal",
    "Tyrese", "Malik", "Kwame", "Chidi", "Seán", "José", "Zoltán", "Olivia", "Amelia", "Emily",
    "Isla", "Ava", "Jessica", "Isabella", "Lily", "Ella", "Mia", "Sophie", "Grace", "Chloe",
    "Evie", "Ruby", "Poppy", "Sophia", "Freya", "Millie", "Daisy", "Phoebe", "Lola", "Holly",
    "Megan", "Lauren", "Courtney", "Shannon", "Demi", "Jade", "Leah", "Aaliyah", "Amira",
    "Fatima", "Maryam", "Aisha", "Zara", "Hana", "Zuzanna", "Julia", "Lena", "Maja", "Zoë",
    "Chloé", "Renée", "Niamh", "Aoife", "Siobhán", "Chantelle", "Precious", "Blessing", "Mei",
    "Łucja", "Małgorzata",
)  # fmt: skip
TWO_LETTER_GIVEN = {"Li": 3.0, "Al": 2.0, "Jo": 2.5, "Ed": 2.0}  # per 1,000
NICKNAMES = {
    "Muhammad": "Mo", "Mohammed": "Mo", "Joshua": "Josh", "Thomas": "Tommy", "William": "Will",
    "James": "Jimmy", "Oliver": "Ollie", "Alfie": "Alf", "Jacob": "Jake", "Charlie": "Chaz",
    "Bradley": "Brad", "Callum": "Cal", "Isabella": "Bella", "Jessica": "Jess", "Sophie": "Soph",
    "Olivia": "Liv", "Amelia": "Millie", "Jayden": "JJ", "Tyrese": "Ty", "Kacper": "Kaz",
}  # fmt: skip
STREET_NAMES = (
    "Tiny", "Ghost", "Smudge", "Bugsy", "Red", "Shorty", "Kiddo", "Spider", "Skinny", "Biscuit",
    "Lil J", "Young K", "Ratty", "Snoops", "Little Man",
)  # fmt: skip
TOWNS = (
    ("Nottingham", "NG1 5FS"), ("Nottingham", "NG7 2QP"), ("Nottingham", "NG5 1AB"),
    ("Mansfield", "NG18 1AA"), ("Derby", "DE1 1AN"), ("Derby", "DE23 8QS"),
    ("Chesterfield", "S40 1LP"), ("Leicester", "LE1 6ZG"), ("Loughborough", "LE11 1AA"),
    ("Lincoln", "LN1 1YX"), ("Worksop", "S80 1AA"), ("Newark", "NG24 1AA"),
)  # fmt: skip
STATIONS = (
    "Nottingham", "Derby", "Leicester", "Sheffield", "Chesterfield", "Loughborough", "Lincoln",
    "Newark Northgate", "Mansfield", "Birmingham New Street", "London St Pancras",
)  # fmt: skip
PLACES = (
    "Platform 4", "Platform 1 waiting room", "Bus station, stand C", "Outside Co-op, High Street",
    "McDonald's, Market Square", "Skate park", "Car park behind the leisure centre",
    "Ticket office", "Train towards Sheffield", "Flat above takeaway", "Retail park",
)  # fmt: skip
SUMMARIES = (
    "Boy travelling alone in school hours with two phones at {place}.",
    "Girl seen getting into cars with older males near {place}.",
    "Young person found with cash and cannabis, would not say who it belonged to.",
    "Child reported missing for three nights; returned with new clothes and trainers.",
    "Repeatedly stopped travelling on trains without a ticket, far from home.",
    "Found in a flat believed to be used for dealing (cuckooing).",
    "Disclosed being made to hold drugs to pay off a debt.",
    "Contacted online by an adult who sent money and asked to meet.",
    "Seen with injuries consistent with an assault; refused medical help.",
    "Absent from school for weeks, associating with known gang members.",
)  # fmt: skip
NARRATIVES = (
    "Seen by officers at {hour:02d}:{minute:02d}; would not say where they were going.",
    "Staff at {place} raised the concern; the child gave a false name at first.",
    "Mother reports the child comes home late with unexplained money and a second phone.",
    "School safeguarding lead made the referral after a disclosure to a teacher.",
    "Found during a welfare check; several adults present, one left through the back door.",
)  # fmt: skip
IMMEDIATE = ("999 called", "Taken to a place of safety", "Police protection (s46)")
REASONS = {
    "no_further_action": (
        "Concerns not substantiated after assessment.",
        "Family engaging with early help; no statutory threshold met.",
    ),
    "closed": (
        "Plan completed; risk reduced.",
        "Moved out of area; case transferred.",
        "Child turned 18; adult services informed.",
    ),
    "reopen": ("New intelligence of exploitation.", "Missing again; risk increased."),
}
NECESSITY = {
    "safeguard_assess": "Children's services must assess the risk of exploitation (s47).",
    "strategy_discussion": "Needed for the strategy discussion under Working Together 2023.",
    "mash_triage": "MASH triage of the referral's risk and the right response.",
    "support_service": "Specialist support worker to engage the young person.",
    "nrm_referral": "A National Referral Mechanism referral as first responder.",
    "investigation": "Investigation of offences against the child.",
    "offender_management": "Risk management of an adult linked to the child.",
    "missing_return_interview": "Return home interview after a missing episode.",
}
PURPOSE_WEIGHTS = {
    "safeguard_assess": 40, "strategy_discussion": 15, "mash_triage": 20, "support_service": 10,
    "nrm_referral": 4, "investigation": 4, "offender_management": 4, "missing_return_interview": 3,
}  # fmt: skip
CATEGORY_WEIGHTS = {
    "county_lines": 30, "missing": 22, "cce": 14, "cse": 12, "cannabis_cultivation": 3,
    "acquisitive_crime": 4, "financial_exploitation": 3, "trafficking": 3, "labour_exploitation": 1,
    "domestic_servitude": 1, "serious_youth_violence": 8, "gang_association": 7,
    "online_grooming": 6, "cuckooing": 5, "other": 2,
}  # fmt: skip
RISK_WEIGHTS = {"low": 20, "medium": 45, "high": 28, "immediate": 7}


class Weighted(Generic[T]):
    """Picks from items by weight in O(log n), from an explicit generator (reproducible)."""

    def __init__(self, items: Sequence[tuple[T, float]]) -> None:
        self.items = [item for item, _ in items]
        self.cumulative: list[float] = []
        total = 0.0
        for _, weight in items:
            total += weight
            self.cumulative.append(total)
        self.total = total

    def pick(self, rng: random.Random) -> T:
        index = bisect.bisect_right(self.cumulative, rng.random() * self.total)
        return self.items[min(index, len(self.items) - 1)]


def _surnames() -> Weighted[str]:
    head = sum(COMMON_SURNAMES.values())
    tail = sorted({a + b for a in _TAIL_STARTS for b in _TAIL_ENDS})
    random.Random("surnames").shuffle(tail)
    # A flat tail: its commonest name is about a twentieth as common as Smith.
    tail_weights = [1 / (rank + 200) ** 0.8 for rank in range(len(tail))]
    scale = head / HEAD_SHARE * (1 - HEAD_SHARE) / sum(tail_weights)
    return Weighted(
        [
            *COMMON_SURNAMES.items(),
            *((n, w * scale) for n, w in zip(tail, tail_weights, strict=True)),
        ]
    )


def _given_names() -> Weighted[str]:
    ranked = [(name, 1000 / (rank + 8) ** 0.8) for rank, name in enumerate(GIVEN_NAMES)]
    total = sum(w for _, w in ranked)
    two = [(name, per_mille / 1000 * total) for name, per_mille in TWO_LETTER_GIVEN.items()]
    return Weighted([*ranked, *two])


# -- the generated world ----------------------------------------------------------------------
@dataclass(slots=True)
class SubjectRow:
    id: str
    given: str
    family: str
    aliases: tuple[str, ...]
    born: date | None
    birth_year: int | None
    gender: str
    identifiers: str  # the stored JSON
    address: tuple[str | None, str | None, str | None]
    agency: str
    created: float


@dataclass(slots=True)
class ShareRow:
    id: str
    referral: int
    agency: str
    access: str
    purpose: str
    article_6: str
    condition: str | None
    consent: str
    rationale: str | None
    created: float
    expires: float | None
    acknowledged: float | None
    revoked: float | None
    by_client: Caller
    ack_client: Caller

    def active_at(self, moment: float) -> bool:
        return (
            self.created <= moment
            and (self.revoked is None or self.revoked > moment)
            and (self.expires is None or self.expires > moment)
        )


@dataclass(slots=True)
class ReferralRow:
    id: str
    number: int
    subject: int
    new_subject: bool
    lead: str
    caller: Caller
    created: float
    observed: float
    risk: str
    immediate: str | None
    categories: tuple[str, ...]
    indicators: tuple[str, ...]
    summary: str
    narrative: str | None
    location: tuple[str | None, str | None, str | None] | None
    steps: list[tuple[float, str, str, str | None]] = field(default_factory=list)
    shares: list[ShareRow] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sends a request: a partner system, perhaps on behalf of one of its agency's people."""

    agency: str
    client_id: str
    user_id: str | None
    ip: str


@dataclass
class Partnership:
    """The registered agencies: their partner systems (ids and addresses) and people."""

    kinds: dict[str, str]
    clients: dict[tuple[str, str], str]  # (agency, client name) -> client_id
    case_clients: dict[str, Weighted[tuple[str, str]]]  # agency -> (client_id, ip)
    users: dict[str, list[str]]

    def caller(self, rng: random.Random, agency: str) -> Caller:
        client_id, ip = self.case_clients[agency].pick(rng)
        people = self.users[agency]
        user = people[int(rng.random() * len(people))] if rng.random() < 0.3 else None
        return Caller(agency, client_id, user, ip)

    def auditor(self, agency: str, name: str) -> Caller:
        return Caller(agency, self.clients[(agency, name)], None, _ip(agency, name))


def _ip(agency: str, client: str) -> str:
    digest = hashlib.sha256(f"{agency}/{client}".encode()).digest()
    return f"10.{digest[0]}.{digest[1]}.{digest[2] % 250 + 2}"


_VERSION_4 = (0x4000 << 64) | (0x8000 << 48)
_VERSION_MASK = ~((0xF000 << 64) | (0xC000 << 48))


def _hex(rng: random.Random) -> str:
    """A random version-4 UUID as 32 hex digits (what uuid.uuid4().hex gives), from `rng`:
    uuid.UUID's constructor costs more than everything else an audit row needs."""
    return f"{rng.getrandbits(128) & _VERSION_MASK | _VERSION_4:032x}"


def _uuid(rng: random.Random) -> str:
    h = _hex(rng)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_HOURS: dict[int, str] = {}


def _iso(moment: float) -> str:
    """A Unix time as a timestamptz literal to the microsecond (datetime's isoformat costs five
    times as much, and this runs for every row)."""
    micros = round(moment * 1_000_000)
    hour, rest = divmod(micros, 3_600_000_000)
    prefix = _HOURS.get(hour)
    if prefix is None:
        prefix = _HOURS[hour] = datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%d %H:")
    minute, rest = divmod(rest, 60_000_000)
    second, micro = divmod(rest, 1_000_000)
    return f"{prefix}{minute:02d}:{second:02d}.{micro:06d}+00"


def _one(rng: random.Random, items: Sequence[T]) -> T:
    """rng.choice without its rejection sampling (a tenth of the cost; as uniform as needed)."""
    return items[int(rng.random() * len(items))]


class _Sequence:
    """Stands in for a session in next_reference: PostgreSQL's reference sequence at `number`,
    so references come from the service's own function and format."""

    def __init__(self) -> None:
        self.number = 0
        self._bind = SimpleNamespace(dialect=SimpleNamespace(name="postgresql"))
        self._result = SimpleNamespace(scalar_one=lambda: self.number)

    def get_bind(self) -> Any:
        return self._bind

    def execute(self, _statement: Any) -> Any:
        return self._result


@dataclass
class World:
    start: float
    end: float
    subjects: list[SubjectRow]
    referrals: list[ReferralRow]
    shares: list[ShareRow]


class Generator:
    """Children, referrals, shares and their history over SPAN_DAYS, reproducibly."""

    def __init__(self, scale: Scale, partnership: Partnership, end: float) -> None:
        self.scale = scale
        self.partnership = partnership
        self.rng = random.Random(f"casehub-scale-{scale.factor}")
        self.end = end
        self.start = end - SPAN_DAYS * DAY
        self.surnames = _surnames()
        self.given = _given_names()
        leads = [(a.code, a.leads) for a in PARTNERSHIP if a.leads]
        self.leads = Weighted(leads)
        self.recipients = [(a.code, a.receives) for a in PARTNERSHIP if a.receives]
        self.categories = Weighted(list(CATEGORY_WEIGHTS.items()))
        self.risks = Weighted(list(RISK_WEIGHTS.items()))
        self.purposes = Weighted(list(PURPOSE_WEIGHTS.items()))
        self.genders = Weighted([("male", 52), ("female", 42), ("non_binary", 1), ("unknown", 5)])
        self.indicator_codes = sorted(indicator_codes())
        assert set(CATEGORY_WEIGHTS) == set(CATEGORIES), "a category without a weight"
        assert set(PURPOSE_WEIGHTS) == set(SHARE_PURPOSES), "a share purpose without a weight"

    def moment(self, fraction: float) -> float:
        """The time `fraction` of the way through the referrals: volume grows linearly over the
        span (from half the average to one and a half times it)."""
        return self.start + (math.sqrt(0.25 + 2 * fraction) - 0.5) * SPAN_DAYS * DAY

    def build(self) -> World:
        rng = self.rng
        count = self.scale.referrals
        created = sorted(self.moment(rng.random()) for _ in range(count))
        subjects: list[SubjectRow] = []
        own_subjects: dict[str, list[int]] = {}
        referral_rows: list[ReferralRow] = []
        for number, moment in enumerate(created, start=1):
            lead = self.leads.pick(rng)
            earlier = own_subjects.get(lead)
            if earlier and rng.random() < 0.12:  # a child this agency referred before
                subject, new = earlier[int(rng.random() * len(earlier))], False
            else:
                subject, new = len(subjects), True
                subjects.append(self.subject(lead, moment))
                own_subjects.setdefault(lead, []).append(subject)
            referral_rows.append(self.referral(number, moment, lead, subject, new))
        # Children's services record the other children themselves (POST /v1/subjects).
        recorders = Weighted([(SHARE_ONLY, 0.7), ("derby-cs", 0.3)])
        while len(subjects) < count:
            subjects.append(self.subject(recorders.pick(rng), self.moment(rng.random())))
        share_rows = [s for r in referral_rows for s in r.shares]
        share_rows.sort(key=lambda s: s.created)
        return World(self.start, self.end, subjects, referral_rows, share_rows)

    def subject(self, agency: str, moment: float) -> SubjectRow:
        rng = self.rng
        given, family = self.given.pick(rng), self.surnames.pick(rng)
        aliases: tuple[str, ...] = ()
        if rng.random() < 0.10:
            roll = rng.random()
            if roll < 0.4:
                aliases = (NICKNAMES.get(given, given[:3] if len(given) > 3 else given + "y"),)
            elif roll < 0.75:
                aliases = (f"{given} {self.surnames.pick(rng)}",)
            else:
                aliases = (_one(rng, STREET_NAMES),)
            if rng.random() < 0.2:
                aliases = (*aliases, f"{self.given.pick(rng)} {family}")
        today = datetime.fromtimestamp(moment, UTC).date()
        age_days = int((10 + rng.random() * 7.9) * 365.25)
        born: date | None = None
        birth_year: int | None = None
        roll = rng.random()
        if roll < 0.80:
            born = today - timedelta(days=age_days)
        elif roll < 0.95:
            birth_year = (today - timedelta(days=age_days)).year
        identifiers: list[dict[str, str]] = []
        if rng.random() < 0.4:
            identifiers.append({"system": "nhs_number", "value": self.nhs_number()})
        if rng.random() < 0.15:
            identifiers.append({"system": "upn", "value": f"H{rng.getrandbits(40):012d}"[:13]})
        address: tuple[str | None, str | None, str | None] = (None, None, None)
        if rng.random() < 0.6:
            town, postcode = _one(rng, TOWNS)
            line = f"{rng.randint(1, 240)} {_one(rng, _TAIL_STARTS)} Road"
            address = (line, town, normalise_postcode(postcode))
        return SubjectRow(
            id=_uuid(rng),
            given=given,
            family=family,
            aliases=aliases,
            born=born,
            birth_year=birth_year,
            gender=self.genders.pick(rng),
            identifiers=_JSON(identifiers) if identifiers else "[]",
            address=address,
            agency=agency,
            created=moment,
        )

    def nhs_number(self) -> str:
        while True:
            first = f"{self.rng.randrange(400_000_000, 999_999_999):09d}"
            check = nhs_check_digit(first)
            if check is not None:
                return first + str(check)

    def referral(
        self, number: int, moment: float, lead: str, subject: int, new: bool
    ) -> ReferralRow:
        rng = self.rng
        place = _one(rng, PLACES)
        categories = tuple(
            dict.fromkeys(self.categories.pick(rng) for _ in range(_one(rng, (1, 1, 2, 2, 3))))
        )
        indicators = tuple(
            dict.fromkeys(
                _one(rng, self.indicator_codes) for _ in range(_one(rng, (0, 1, 2, 3, 4, 5)))
            )
        )
        risk = self.risks.pick(rng)
        location = None
        if rng.random() < 0.85:
            _town, postcode = _one(rng, TOWNS)
            hub = _one(rng, STATIONS) if lead == "btp" or rng.random() < 0.2 else None
            location = (place, normalise_postcode(postcode) if rng.random() < 0.7 else None, hub)
        hour, minute = rng.randrange(24), rng.randrange(60)
        row = ReferralRow(
            id=_uuid(rng),
            number=number,
            subject=subject,
            new_subject=new,
            lead=lead,
            caller=self.partnership.caller(rng, lead),
            created=moment,
            observed=moment - rng.random() * 6 * 3600,
            risk=risk,
            immediate=_one(rng, IMMEDIATE) if risk == "immediate" else None,
            categories=categories,
            indicators=indicators,
            summary=_one(rng, SUMMARIES).format(place=place.lower()),
            narrative=_one(rng, NARRATIVES).format(hour=hour, minute=minute, place=place)
            if rng.random() < 0.7
            else None,
            location=location,
        )
        row.steps = self.steps(moment)
        row.shares = self.shares(number - 1, row)
        return row

    def steps(self, moment: float) -> list[tuple[float, str, str, str | None]]:
        """The referral's workflow to date: each (time, from, to, reason) up to the end."""
        rng = self.rng
        plan: list[tuple[str, float, tuple[float, float]]] = [
            ("acknowledged", 0.97, (0.05, 2)),
            ("in_assessment", 0.93, (1, 10)),
            ("decision", 0.85, (5, 60)),
            ("closed", 0.90, (14, 200)),
            ("reopen", 0.03, (10, 120)),
        ]
        steps: list[tuple[float, str, str, str | None]] = []
        status, when = "submitted", moment
        for target, chance, (low, high) in plan:
            if rng.random() >= chance:
                break
            when += (low + rng.random() * (high - low)) * DAY
            if when > self.end:
                break
            reason = None
            if target == "decision":
                target = "action_agreed" if rng.random() < 0.55 else "no_further_action"
            if target == "reopen":
                target, reason = "in_assessment", _one(rng, REASONS["reopen"])
            elif target in REASONS:
                reason = _one(rng, REASONS[target])
            steps.append((when, status, target, reason))
            status = target
        return steps

    def shares(self, index: int, referral: ReferralRow) -> list[ShareRow]:
        rng = self.rng
        if rng.random() >= 0.30:
            return []
        kind = self.partnership.kinds[referral.lead]
        candidates = [(code, w) for code, w in self.recipients if code != referral.lead]
        chosen: list[str] = []
        for _ in range(1 if rng.random() < 0.7 else 2):
            pick = Weighted([(c, w) for c, w in candidates if c not in chosen]).pick(rng)
            chosen.append(pick)
        rows = []
        for agency in chosen:
            created = referral.created + (0.02 + rng.random() * 12) * DAY
            if created > self.end:
                continue
            purpose = self.purposes.pick(rng)
            article_6 = "legitimate_interests" if kind == "charity" else "public_task"
            condition = "dpa2018_sch1_para18_safeguarding"
            if kind == "police" and rng.random() < 0.4:
                condition = "dpa2018_sch8_para4_safeguarding"
            roll = rng.random()
            consent, rationale = ("not_sought", "Seeking consent would place the child at risk.")
            if roll < 0.2:
                consent, rationale = "given", None
            elif roll < 0.3:
                consent, rationale = "not_possible", "The child could not be reached."
            # The contract's rules, as the service applies them to a share request.
            shares.check_lawful_basis(
                kind,
                {"article_6": article_6, "condition": condition},
                {"status": consent, "rationale": rationale},
            )
            expires = created + _one(rng, (30, 90)) * DAY if rng.random() < 0.2 else None
            revoked = created + (1 + rng.random() * 89) * DAY if rng.random() < 0.08 else None
            if revoked is not None and (revoked > self.end or (expires and revoked >= expires)):
                revoked = None
            acknowledged = created + (0.01 + rng.random() * 3) * DAY if rng.random() < 0.8 else None
            if acknowledged is not None and (
                acknowledged > self.end
                or (revoked is not None and acknowledged >= revoked)
                or (expires is not None and acknowledged >= expires)
            ):
                acknowledged = None
            rows.append(
                ShareRow(
                    id=_uuid(rng),
                    referral=index,
                    agency=agency,
                    access="contribute" if rng.random() < 0.3 else "read",
                    purpose=purpose,
                    article_6=article_6,
                    condition=condition,
                    consent=consent,
                    rationale=rationale,
                    created=created,
                    expires=expires,
                    acknowledged=acknowledged,
                    revoked=revoked,
                    by_client=self.partnership.caller(rng, referral.lead),
                    ack_client=self.partnership.caller(rng, agency),
                )
            )
        return rows


# -- COPY text --------------------------------------------------------------------------------
_JSON: Callable[[Any], str] = json.dumps  # how the engine stores a JSON column (checked below)
NULL = "\\N"


def _text(value: object) -> str:
    """A value in COPY's text format (tabs, newlines and backslashes escaped)."""
    if value is None:
        return NULL
    text = value if isinstance(value, str) else str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = (
            text.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return text


def _line(*values: object) -> str:
    return "\t".join(_text(v) for v in values) + "\n"


def _chunked(lines: Iterator[str]) -> Iterator[str]:
    buffer: list[str] = []
    size = 0
    for line in lines:
        buffer.append(line)
        size += len(line)
        if size >= COPY_CHUNK:
            yield "".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer)


def _copy(conn: psycopg.Connection[Any], table: str, columns: str, lines: Iterator[str]) -> int:
    rows = 0
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for chunk in _chunked(lines):
            copy.write(chunk)
            rows += chunk.count("\n")
    return rows


def check_json_storage(engine: Engine) -> None:
    """Fail loudly if the engine stores JSON other than as _JSON writes it (then every seeded
    subject_ids, aliases and identifiers would differ from the service's own rows)."""
    sample = ["Zoë", {"system": "nhs_number", "value": "9434765919"}]
    stmt = select(cast(bindparam("value", type_=JSON), Text))
    with engine.connect() as connection:
        stored = connection.execute(stmt, {"value": sample}).scalar_one()
    assert stored == _JSON(sample), f"JSON is stored as {stored!r}, not {_JSON(sample)!r}"


# -- rows as the service writes them ------------------------------------------------------------
SUBJECT_COLUMNS = (
    "id, given_name, family_name, aliases, date_of_birth, estimated_birth_year, gender, "
    "identifiers, address_line, address_town, address_postcode, created_by_agency, created_at, "
    "updated_at, version"
)
REFERRAL_COLUMNS = (
    "id, reference, subject_id, lead_agency, created_by_agency, created_by_client_id, "
    "created_by_user_id, summary, narrative, observed_at, location_description, "
    "location_postcode, location_transport_hub, risk_level, immediate_action, status, "
    "created_at, updated_at, version"
)
HISTORY_COLUMNS = (
    "id, referral_id, kind, from_status, to_status, reason, lawful_basis, actor_agency, "
    "actor_client_id, actor_user_id, occurred_at"
)
SHARE_COLUMNS = (
    "id, referral_id, referral_created_at, referral_updated_at, agency_code, access, purpose, "
    "necessity, article_6, condition, gateway, consent_status, consent_rationale, expires_at, "
    "created_at, "
    "created_by_agency, created_by_client_id, created_by_user_id, acknowledged_at, revoked_at, "
    "revoked_reason, ended_at"
)
LOADED_COLUMNS = {
    "subjects": SUBJECT_COLUMNS,
    "referrals": REFERRAL_COLUMNS,
    "referral_categories": "referral_id, category, position",
    "referral_indicators": "referral_id, code, position",
    "referral_history": HISTORY_COLUMNS,
    "shares": SHARE_COLUMNS,
    "events": "id, tx, agency_code, type, occurred_at, data",
}
GATEWAY = "Children Act 2004 s11"
REVOKED_REASON = "No longer necessary: the case is held by the receiving agency's own team."


def key_kinds(given: str, family: str, aliases: Sequence[str]) -> dict[str, bool]:
    """A subject's search keys and whether each is a whole word, from casehub.services.names
    (before subject_key_kinds existed every key counted as one: there was no such column)."""
    kinds = getattr(names, "subject_key_kinds", None)
    if kinds is not None:
        return dict(kinds(given, family, aliases))
    return dict.fromkeys(names.subject_keys(given, family, aliases), True)


# The columns of subject_name_keys this script knows how the service fills.
NAME_KEY_VALUES = ("subject_id", "key", "whole_word", "subject_created_at")


class NameKeys:
    """subject_name_keys rows as the service writes them: the columns today's schema has, the
    keys from key_kinds (memoised: names repeat a lot)."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self.cache: dict[tuple[str, str, tuple[str, ...]], dict[str, bool]] = {}

    def kinds(self, subject: SubjectRow) -> dict[str, bool]:
        names_of = (subject.given, subject.family, subject.aliases)
        found = self.cache.get(names_of)
        if found is None:
            found = self.cache[names_of] = key_kinds(*names_of)
        return found

    def rows(self, subject: SubjectRow) -> list[list[str]]:
        """The subject's rows, each its columns' values in COPY text."""
        values = {"subject_id": subject.id, "subject_created_at": _iso(subject.created)}
        rows = []
        for key, whole in self.kinds(subject).items():
            values["key"] = _text(key)
            values["whole_word"] = "t" if whole else "f"
            rows.append([values[c] for c in self.columns])
        return rows

    def lines(self, world: World) -> Iterator[str]:
        for subject in world.subjects:
            yield "".join(["\t".join(row) + "\n" for row in self.rows(subject)])

    def check(self, world: World, sample: int = 300) -> int:
        """Rebuild a sample of subjects' rows with the service's own _sync_name_keys (too slow
        for a million children: ~0.8 ms each through the ORM) and fail loudly on a difference."""
        sync = getattr(subjects_service, "_sync_name_keys", None)
        if sync is None:
            return 0
        step = max(1, len(world.subjects) // sample)
        checked = 0
        for subject in world.subjects[::step]:
            created = datetime.fromisoformat(_iso(subject.created))  # as stored
            model = Subject(
                id=uuid.UUID(subject.id),
                given_name=subject.given,
                family_name=subject.family,
                aliases=list(subject.aliases),
                created_at=created,
                updated_at=created,
            )
            sync(model)
            theirs = set()
            for row in model.name_keys:
                values = []
                for column in self.columns:
                    value = getattr(row, column)
                    if column == "subject_id":
                        value = subject.id  # set from the relationship at flush
                    elif isinstance(value, datetime):
                        value = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
                    elif isinstance(value, bool):
                        value = "t" if value else "f"
                    values.append(_text(value))
                theirs.add(tuple(values))
            ours = {tuple(row) for row in self.rows(subject)}
            assert ours == theirs, (
                f"subject_name_keys rows differ from the service's for {subject.given} "
                f"{subject.family}: only ours {sorted(ours - theirs)[:3]}, "
                f"only theirs {sorted(theirs - ours)[:3]}"
            )
            checked += 1
        return checked


def table_columns(conn: psycopg.Connection[Any], table: str) -> dict[str, bool]:
    """The table's columns, each with whether an INSERT must give it a value."""
    rows = conn.execute(
        """
        SELECT column_name, is_nullable = 'NO' AND column_default IS NULL
               AND is_identity = 'NO' AND is_generated = 'NEVER'
        FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s
        ORDER BY ordinal_position
        """,
        (table,),
    ).fetchall()
    return {str(name): bool(required) for name, required in rows}


def check_columns(conn: psycopg.Connection[Any], table: str, columns: str) -> None:
    """Fail before loading anything if the schema moved away from what this script writes."""
    present = table_columns(conn, table)
    written = [c.strip() for c in columns.split(",")]
    gone = [c for c in written if c not in present]
    new = [c for c, required in present.items() if required and c not in written]
    if gone or new:
        raise SystemExit(
            f"bench/scale.py cannot load {table} as the schema has it now: "
            + (f"it writes {', '.join(gone)}, which the table no longer has; " if gone else "")
            + (f"{', '.join(new)} must be given and it does not know how; " if new else "")
            + "teach it how the service fills them."
        )


def subject_lines(world: World) -> Iterator[str]:
    for s in sorted(world.subjects, key=lambda s: s.created):
        when = _iso(s.created)
        yield _line(
            s.id, s.given, s.family, _JSON(list(s.aliases)), s.born, s.birth_year, s.gender,
            s.identifiers, *s.address, s.agency, when, when, 1,
        )  # fmt: skip


def referral_lines(world: World) -> Iterator[str]:
    numbers = _Sequence()
    subjects = world.subjects
    for r in world.referrals:
        numbers.number = r.number
        created = datetime.fromtimestamp(r.created, UTC)
        reference = referrals.next_reference(numbers, created.year)  # type: ignore[arg-type]
        status = r.steps[-1][2] if r.steps else "submitted"
        updated = r.steps[-1][0] if r.steps else r.created
        location = r.location or (None, None, None)
        yield _line(
            r.id, reference, subjects[r.subject].id, r.lead, r.lead, r.caller.client_id,
            r.caller.user_id, r.summary, r.narrative, _iso(r.observed), *location, r.risk,
            r.immediate, status, created.isoformat(), _iso(updated), 1 + len(r.steps),
        )  # fmt: skip


def category_lines(world: World) -> Iterator[str]:
    for r in world.referrals:
        yield "".join(f"{r.id}\t{c}\t{i}\n" for i, c in enumerate(r.categories))


def indicator_lines(world: World) -> Iterator[str]:
    for r in world.referrals:
        yield "".join(f"{r.id}\t{c}\t{i}\n" for i, c in enumerate(r.indicators))


def calibrate_history(engine: Engine, partnership: Partnership) -> dict[str, str]:
    """How the service stores `lawful_basis` (SQL NULL or JSON null) in each kind of history
    row a create and a transition write, learnt from one real create and transition through
    casehub.services.referrals in a transaction that is rolled back."""
    agency = LARGE_LEAD
    client_id = partnership.clients[(agency, "niche-rms")]
    actor = Actor(
        agency=agency,
        agency_kind=partnership.kinds[agency],
        is_platform=False,
        client_id=client_id,
        scopes=frozenset(CASEWORK.split()),
    )
    now = datetime.now(UTC)
    child = {"given_name": "Calibration", "family_name": "Probe", "aliases": [],
             "date_of_birth": None, "estimated_birth_year": None, "gender": "unknown",
             "identifiers": [], "address": None}  # fmt: skip
    data = {"subject": child, "categories": ["missing"], "indicators": [],
            "summary": "Calibration probe.", "observed_at": now, "risk_level": "low"}  # fmt: skip
    with Session(engine) as session, session.begin():
        created = referrals.create_referral(session, actor=actor, data=data, now=now)
        referrals.transition_referral(
            session, actor=actor, referral_id=created.id, expected_version=1,
            to="acknowledged", reason=None, now=now,
        )  # fmt: skip
        session.flush()
        stored = session.execute(
            select(ReferralHistory.kind, cast(ReferralHistory.lawful_basis, Text)).where(
                ReferralHistory.referral_id == created.id
            )
        ).all()
        session.rollback()
    found = {kind: NULL if text is None else _text(text) for kind, text in stored}
    assert set(found) == {"created", "transition"}, found
    return found


def history_lines(world: World, rng: random.Random, basis: dict[str, str]) -> Iterator[str]:
    """`basis`: what calibrate_history found each kind of row stores as its lawful_basis."""
    created, moved = basis["created"], basis["transition"]
    # Every value here is an id, a code or one of REASONS: nothing COPY needs to escape.
    for r in world.referrals:
        c = r.caller
        actor = f"{c.agency}\t{c.client_id}\t{c.user_id or NULL}"
        yield (
            f"{_uuid(rng)}\t{r.id}\tcreated\t{NULL}\tsubmitted\t{NULL}\t{created}\t{actor}\t"
            f"{_iso(r.created)}\n"
        )
        for when, before, after, reason in r.steps:
            yield (
                f"{_uuid(rng)}\t{r.id}\ttransition\t{before}\t{after}\t{reason or NULL}\t"
                f"{moved}\t{actor}\t{_iso(when)}\n"
            )


def share_lines(world: World) -> Iterator[str]:
    for s in world.shares:
        r = world.referrals[s.referral]
        by = s.by_client
        revoked = _iso(s.revoked) if s.revoked is not None else None
        updated = r.steps[-1][0] if r.steps else r.created  # as referral_lines writes it
        yield _line(
            s.id, r.id, _iso(r.created), _iso(updated), s.agency, s.access, s.purpose,
            NECESSITY[s.purpose], s.article_6,
            s.condition, GATEWAY, s.consent, s.rationale,
            _iso(s.expires) if s.expires is not None else None, _iso(s.created), r.lead,
            by.client_id, by.user_id, _iso(s.acknowledged) if s.acknowledged else None, revoked,
            REVOKED_REASON if revoked else None, revoked,
        )  # fmt: skip


def outbox_lines(world: World, tx: int) -> Iterator[str]:
    """The notifications of the last OUTBOX_DAYS (retention purges older ones), as emit writes
    them: one event per recipient, `{referral_id, share_id?, agency}` in compact JSON."""
    since = world.end - OUTBOX_DAYS * DAY
    rng = random.Random("outbox")
    found: list[tuple[float, str, str, dict[str, str]]] = []
    for s in world.shares:
        r = world.referrals[s.referral]
        ids = {"referral_id": r.id, "share_id": s.id}
        if s.created >= since:
            found.append((s.created, s.agency, "referral.shared", {**ids, "agency": r.lead}))
        if s.acknowledged is not None and s.acknowledged >= since:
            found.append(
                (s.acknowledged, r.lead, "share.acknowledged", {**ids, "agency": s.agency})
            )
        if s.revoked is not None and s.revoked >= since:
            found.append((s.revoked, s.agency, "share.revoked", {**ids, "agency": r.lead}))
    for r in world.referrals:
        for when, _before, _after, _reason in r.steps:
            if when < since:
                continue
            for s in r.shares:
                if s.active_at(when):
                    data = {"referral_id": r.id, "agency": r.lead}
                    found.append((when, s.agency, "referral.status_changed", data))
    found.sort(key=lambda item: item[0])
    for when, agency, type_, data in found:
        payload = json.dumps(data, separators=(",", ":"))
        yield _line(_uuid(rng), tx, agency, type_, _iso(when), payload)


# -- the audit trail ----------------------------------------------------------------------------
EVENT_COLUMNS = (
    "id, occurred_at, actor_agency, actor_client_id, actor_user_id, action, outcome, "
    "resource_type, resource_id, referral_id, subject_ids, basis, purpose, request_id, "
    "request_method, request_path, request_status, request_ip"
)
TOKEN_ALPHABET = string.ascii_letters + string.digits
CHECK_EVERY = 997  # one event in this many is rebuilt by audit.record and compared
# Requests that read or list, by weight (writes come from the seeded rows themselves).
ACCESS_WEIGHTS = {
    "read.lead": 30, "read.share": 14, "list": 9, "search": 8, "subject.read": 5, "token": 14,
    "denied": 2, "audit.list": 2, "event.list": 8, "accesses": 2, "history": 3, "share.list": 3,
}  # fmt: skip
# Scheduled writes: (time, kind, referral or subject index, step or share index).
CREATE, SUBJECT, TRANSITION, SHARE, ACK, REVOKE, ACCESS = range(7)


class _Recorder:
    """The one thing audit.record needs of a session."""

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}


class Trail:
    """Audit events in time order as the service records them: every write the seeded rows
    imply (creates, transitions, shares, acknowledgements, revocations) and reads, lists,
    searches, token issues, refusals and audit reads by the agencies that could make them."""

    def __init__(self, world: World, partnership: Partnership, total: int) -> None:
        self.world = world
        self.partnership = partnership
        self.total = total
        self.rng = random.Random(f"casehub-trail-{total}")
        self.kinds = Weighted(list(ACCESS_WEIGHTS.items()))
        self.written = 0
        self.checked = 0
        self.recorder = _Recorder()
        lead_weights = {a.code: a.leads for a in PARTNERSHIP if a.leads}
        self.lead_agencies = Weighted(list(lead_weights.items()))
        receive = {a.code: a.receives for a in PARTNERSHIP if a.receives}
        self.recipient_agencies = Weighted(list(receive.items()))
        self.any_agency = Weighted([(a.code, a.leads * 40 + a.receives) for a in PARTNERSHIP])
        self.led_times: dict[str, list[float]] = {}
        self.led: dict[str, list[int]] = {}
        for index, r in enumerate(world.referrals):
            self.led_times.setdefault(r.lead, []).append(r.created)
            self.led.setdefault(r.lead, []).append(index)
        self.shared_times: dict[str, list[float]] = {}
        self.shared: dict[str, list[ShareRow]] = {}
        for s in world.shares:
            self.shared_times.setdefault(s.agency, []).append(s.created)
            self.shared.setdefault(s.agency, []).append(s)
        self.agency_auditor = partnership.auditor(LARGE_LEAD, "audit-console")
        self.all_auditor = partnership.auditor(PLATFORM.code, "partnership-audit")

    # -- scheduling ---------------------------------------------------------------------------
    def writes(self) -> list[list[tuple[float, int, int, int]]]:
        world = self.world
        days: list[list[tuple[float, int, int, int]]] = [[] for _ in range(SPAN_DAYS + 1)]

        def at(moment: float, kind: int, index: int, sub: int = 0) -> None:
            days[min(SPAN_DAYS, int((moment - world.start) / DAY))].append(
                (moment, kind, index, sub)
            )

        for i, r in enumerate(world.referrals):
            at(r.created, CREATE, i)
            for k, step in enumerate(r.steps):
                at(step[0], TRANSITION, i, k)
            for k, s in enumerate(r.shares):
                at(s.created, SHARE, i, k)
                if s.acknowledged is not None:
                    at(s.acknowledged, ACK, i, k)
                if s.revoked is not None:
                    at(s.revoked, REVOKE, i, k)
        first = {r.subject for r in world.referrals if r.new_subject}
        for j, subject in enumerate(world.subjects):
            if j not in first:
                at(subject.created, SUBJECT, j)
        return days

    def lines(self) -> Iterator[str]:
        world = self.world
        days = self.writes()
        writes = sum(len(day) for day in days) + sum(r.new_subject for r in world.referrals)
        reads = self.total - writes
        assert reads > 0, f"{writes:,} writes leave no room in {self.total:,} events"
        rng = self.rng
        allotted = 0
        for day, scheduled in enumerate(days):
            # Reads grow with the referrals (the same linear growth), day by day.
            upto = (day + 1) / (SPAN_DAYS + 1)
            share = 0.5 * upto + 0.5 * upto * upto
            count = round(reads * share) - allotted
            allotted += count
            base = world.start + day * DAY
            items = scheduled + [(base + rng.random() * DAY, ACCESS, 0, 0) for _ in range(count)]
            items.sort()
            for moment, kind, index, sub in items:
                if moment > world.end:
                    moment = world.end - rng.random() * 60
                yield from self.event(moment, kind, index, sub)

    # -- one request's events -----------------------------------------------------------------
    def record(
        self,
        moment: float,
        caller: Caller,
        action: str,
        request: tuple[str, str, int],
        *,
        outcome: str = "allowed",
        resource_type: str | None = None,
        resource_id: str | None = None,
        referral_id: str | None = None,
        subject_ids: Sequence[str] = (),
        basis: str | None = None,
        purpose: str | None = None,
        request_id: str | None = None,
    ) -> str:
        """One audit_events line: the fields audit.record derives, the request lifecycle's."""
        if not subject_ids:
            stored = "[]"
        elif len(subject_ids) == 1:
            stored = f'["{subject_ids[0]}"]'
        else:
            stored = _JSON(sorted(set(subject_ids)))
        self.written += 1
        if self.written % CHECK_EVERY == 0:
            self.check(caller, action, outcome, resource_type, resource_id, referral_id,
                       subject_ids, basis, purpose, stored)  # fmt: skip
        method, path, status = request
        rid = request_id or _hex(self.rng)
        eid = _uuid(self.rng)
        return (
            f"{eid}\t{_iso(moment)}\t{caller.agency}\t{caller.client_id}\t"
            f"{caller.user_id or NULL}\t{action}\t{outcome}\t{resource_type or NULL}\t"
            f"{resource_id or NULL}\t{referral_id or NULL}\t{stored}\t{basis or NULL}\t"
            f"{purpose or NULL}\t{rid}\t{method}\t{path}\t{status}\t{caller.ip}\n"
        )

    def check(
        self,
        caller: Caller,
        action: str,
        outcome: str,
        resource_type: str | None,
        resource_id: str | None,
        referral_id: str | None,
        subject_ids: Sequence[str],
        basis: str | None,
        purpose: str | None,
        stored: str,
    ) -> None:
        """Rebuild the event with audit.record itself and fail loudly on any difference."""
        actor = SimpleNamespace(
            agency=caller.agency,
            client_id=caller.client_id,
            user_id=uuid.UUID(caller.user_id) if caller.user_id else None,
            purpose=None,
        )
        pending = audit.record(
            self.recorder,  # type: ignore[arg-type]
            actor,
            action,
            outcome=outcome,
            resource_type=resource_type,
            resource_id=resource_id,
            referral_id=uuid.UUID(referral_id) if referral_id else None,
            subject_ids=[uuid.UUID(s) for s in subject_ids],
            basis=basis,
            purpose=purpose,
        )
        audit.discard_pending(self.recorder)  # type: ignore[arg-type]
        theirs = (
            pending.actor_agency,
            pending.actor_client_id,
            str(pending.actor_user_id) if pending.actor_user_id else None,
            pending.action,
            pending.outcome,
            pending.resource_type,
            pending.resource_id,
            str(pending.referral_id) if pending.referral_id else None,
            _JSON(pending.subject_ids),
            pending.basis,
            pending.purpose,
        )
        ours = (
            caller.agency, caller.client_id, caller.user_id, action, outcome, resource_type,
            resource_id, referral_id, stored, basis, purpose,
        )  # fmt: skip
        assert ours == theirs, f"seeded event differs from audit.record's: {ours} != {theirs}"
        self.checked += 1

    def event(self, moment: float, kind: int, index: int, sub: int) -> Iterator[str]:
        world = self.world
        if kind == ACCESS:
            yield from self.access(moment)
            return
        if kind == SUBJECT:
            subject = world.subjects[index]
            caller = self.partnership.caller(self.rng, subject.agency)
            yield self.record(
                moment, caller, "subject.create", ("POST", "/v1/subjects", 201),
                resource_type="subject", resource_id=subject.id, subject_ids=[subject.id],
                basis="creator", purpose="case_work",
            )  # fmt: skip
            return
        r = world.referrals[index]
        sid = world.subjects[r.subject].id
        path = f"/v1/referrals/{r.id}"
        if kind == CREATE:
            request_id = _hex(self.rng)
            post = ("POST", "/v1/referrals", 201)
            if r.new_subject:
                yield self.record(
                    moment + 0.002, r.caller, "subject.create", post, resource_type="subject",
                    resource_id=sid, subject_ids=[sid], basis="creator", purpose="case_work",
                    request_id=request_id,
                )  # fmt: skip
            yield self.record(
                moment + 0.004, r.caller, "referral.create", post, resource_type="referral",
                resource_id=r.id, referral_id=r.id, subject_ids=[sid], basis="lead",
                purpose="case_work", request_id=request_id,
            )  # fmt: skip
        elif kind == TRANSITION:
            yield self.record(
                moment, r.caller, "referral.transition", ("POST", f"{path}/transitions", 200),
                resource_type="referral", resource_id=r.id, referral_id=r.id, subject_ids=[sid],
                basis="lead", purpose="case_work",
            )  # fmt: skip
        else:
            s = r.shares[sub]
            if kind == SHARE:
                yield self.record(
                    moment, s.by_client, "share.create", ("POST", f"{path}/shares", 201),
                    resource_type="share", resource_id=s.id, referral_id=r.id, subject_ids=[sid],
                    basis="lead", purpose="case_work",
                )  # fmt: skip
            elif kind == ACK:
                yield self.record(
                    moment, s.ack_client, "share.acknowledge",
                    ("POST", f"{path}/shares/{s.id}/acknowledge", 200), resource_type="share",
                    resource_id=s.id, referral_id=r.id, subject_ids=[sid], basis=f"share:{s.id}",
                    purpose=s.purpose,
                )  # fmt: skip
            else:
                yield self.record(
                    moment, s.by_client, "share.revoke",
                    ("POST", f"{path}/shares/{s.id}/revoke", 200), resource_type="share",
                    resource_id=s.id, referral_id=r.id, subject_ids=[sid], basis="lead",
                    purpose="case_work",
                )  # fmt: skip

    def _recent(self, times: list[float], moment: float) -> int | None:
        """The position of something created before `moment`, mostly of the last RECENT."""
        upto = bisect.bisect_right(times, moment)
        if upto == 0:
            return None
        since = bisect.bisect_left(times, moment - RECENT)
        if since < upto and self.rng.random() < 0.75:
            return since + int(self.rng.random() * (upto - since))
        return int(self.rng.random() * upto)

    def _led(self, agency: str, moment: float) -> ReferralRow | None:
        found = self._recent(self.led_times.get(agency, []), moment)
        return None if found is None else self.world.referrals[self.led[agency][found]]

    def _share(self, agency: str, moment: float) -> ShareRow | None:
        found = self._recent(self.shared_times.get(agency, []), moment)
        return None if found is None else self.shared[agency][found]

    def _page(self, agency: str, moment: float, size: int) -> list[str]:
        """The children of a page of referrals the agency sees (a run of its own, or shared)."""
        subjects = self.world.subjects
        referral_rows = self.world.referrals
        if agency in self.led:
            upto = bisect.bisect_right(self.led_times[agency], moment)
            start = max(0, upto - size - int(self.rng.random() * upto * 0.5))
            picked = [referral_rows[i] for i in self.led[agency][start : start + size]]
        else:
            upto = bisect.bisect_right(self.shared_times.get(agency, []), moment)
            start = max(0, upto - size - int(self.rng.random() * upto * 0.5))
            shared = self.shared.get(agency, [])[start : start + size]
            picked = [referral_rows[s.referral] for s in shared if s.active_at(moment)]
        return [subjects[r.subject].id for r in picked]

    def access(self, moment: float) -> Iterator[str]:
        rng = self.rng
        kind = self.kinds.pick(rng)
        subjects = self.world.subjects
        get = "GET"
        if kind in ("read.lead", "subject.read", "accesses", "history", "denied"):
            agency = self.lead_agencies.pick(rng)
            r = self._led(agency, moment)
            if r is None:
                kind = "token"
            else:
                caller = self.partnership.caller(rng, agency)
                sid = subjects[r.subject].id
                path = f"/v1/referrals/{r.id}"
                fields: dict[str, Any] = {
                    "resource_type": "referral", "resource_id": r.id, "referral_id": r.id,
                    "subject_ids": [sid], "basis": "lead", "purpose": "case_work",
                }  # fmt: skip
                if kind == "read.lead":
                    yield self.record(moment, caller, "referral.read", (get, path, 200), **fields)
                elif kind == "history":
                    request = (get, f"{path}/history", 200)
                    yield self.record(moment, caller, "referral.history", request, **fields)
                elif kind == "accesses":
                    fields["subject_ids"] = []
                    request = (get, f"{path}/accesses", 200)
                    yield self.record(moment, caller, "referral.accesses", request, **fields)
                elif kind == "subject.read":
                    basis = "creator" if subjects[r.subject].agency == agency else "lead"
                    yield self.record(
                        moment, caller, "subject.read", (get, f"/v1/subjects/{sid}", 200),
                        resource_type="subject", resource_id=sid, subject_ids=[sid], basis=basis,
                        purpose="case_work",
                    )  # fmt: skip
                else:  # another agency's referral, asked for by an agency that cannot see it
                    other = agency
                    while other == agency or any(
                        s.agency == other and s.active_at(moment) for s in r.shares
                    ):
                        other = self.any_agency.pick(rng)
                    caller = self.partnership.caller(rng, other)
                    yield self.record(
                        moment, caller, "access.denied", (get, path, 404), outcome="denied",
                        resource_type="referral", resource_id=r.id, referral_id=r.id,
                    )  # fmt: skip
                return
        if kind in ("read.share", "share.list"):
            agency = self.recipient_agencies.pick(rng)
            s = self._share(agency, moment)
            if s is None:
                kind = "token"
            else:
                r = self.world.referrals[s.referral]
                caller = self.partnership.caller(rng, agency)
                path = f"/v1/referrals/{r.id}" + ("/shares" if kind == "share.list" else "")
                action = "share.list" if kind == "share.list" else "referral.read"
                if s.active_at(moment):
                    yield self.record(
                        moment, caller, action, (get, path, 200), resource_type="referral",
                        resource_id=r.id, referral_id=r.id, subject_ids=[subjects[r.subject].id],
                        basis=f"share:{s.id}", purpose=s.purpose,
                    )  # fmt: skip
                else:  # revoked or expired: the same answer as a referral it never saw
                    yield self.record(
                        moment, caller, "access.denied", (get, path, 404), outcome="denied",
                        resource_type="referral", resource_id=r.id, referral_id=r.id,
                    )  # fmt: skip
                return
        if kind in ("list", "search"):
            agency = self.any_agency.pick(rng)
            caller = self.partnership.caller(rng, agency)
            if kind == "list":
                roll = rng.random()
                size = (
                    rng.randint(0, 3) if roll < 0.35 else 50 if roll < 0.75 else rng.randint(4, 49)
                )
                request, action = (get, "/v1/referrals", 200), "referral.list"
                resource = "referral"
            else:
                size = _one(rng, (0, 1, 1, 1, 2, 2, 3, 5, 8))
                request, action, resource = (get, "/v1/subjects", 200), "subject.search", "subject"
            yield self.record(
                moment, caller, action, request, resource_type=resource,
                subject_ids=self._page(agency, moment, size), purpose="case_work",
            )  # fmt: skip
            return
        if kind == "audit.list":
            caller = self.agency_auditor if rng.random() < 0.6 else self.all_auditor
            basis = "audit:read" if caller is self.agency_auditor else "audit:read:all"
            yield self.record(
                moment, caller, "audit.list", (get, "/v1/audit/events", 200),
                resource_type="audit_event", basis=basis, purpose="audit",
            )  # fmt: skip
            return
        caller = self.partnership.caller(rng, self.any_agency.pick(rng))
        if kind == "event.list":
            yield self.record(
                moment, caller, "event.list", (get, "/v1/events", 200), resource_type="event"
            )
            return
        jti = "".join(rng.choices(TOKEN_ALPHABET, k=16))
        yield self.record(
            moment, caller, "token.issue", ("POST", "/oauth/token", 200), resource_type="token",
            resource_id=jti,
        )  # fmt: skip


# -- schema: indexes and constraints off for the load, rebuilt from their own definitions --------
# Tables bulk-loaded here lose even their primary key for the load; audit_events keeps its own,
# which the sequencer joins on.
LOADED = (
    "subjects",
    "subject_name_keys",
    "referrals",
    "referral_categories",
    "referral_indicators",
    "referral_history",
    "shares",
    "events",
)


# Seeding loads at this revision, then migrates to the head: its audit tables are plain heaps,
# whose indexes and keys the load drops and rebuilds (a partitioned table's cannot be swapped
# in USING INDEX), and 0013 partitions them as a production database's would be.
SEED_REVISION = "0012"

ALL_KINDS = frozenset({"pk", "unique", "index", "fk"})


@dataclass
class Deferred:
    """CREATE/ADD statements of what was dropped, to run again in their order."""

    statements: list[tuple[str, str, str]] = field(default_factory=list)  # (table, kind, sql)

    def take(self, tables: Callable[[str], bool], kinds: frozenset[str] = ALL_KINDS) -> list[str]:
        """The statements for the chosen tables and kinds (no longer deferred)."""
        order = {"pk": 0, "unique": 1, "index": 2, "fk": 3}
        chosen = [s for s in self.statements if tables(s[0]) and s[1] in kinds]
        self.statements = [s for s in self.statements if s not in chosen]
        return [sql for _, _, sql in sorted(chosen, key=lambda s: order[s[1]])]


def _case_table(table: str) -> bool:
    return not table.startswith("audit_")


def drop_for_load(conn: psycopg.Connection[Any]) -> Deferred:
    """Drop foreign keys, unique constraints and secondary indexes everywhere, and the primary
    keys of the LOADED tables, keeping what it takes to make each again exactly as it was."""
    deferred = Deferred()
    constraints = conn.execute(
        """
        SELECT c.conrelid::regclass::text, c.conname, c.contype, pg_get_constraintdef(c.oid),
               coalesce(c.confrelid::regclass::text, ''),
               CASE WHEN c.contype IN ('p', 'u') THEN pg_get_indexdef(c.conindid) END,
               CASE WHEN c.contype IN ('p', 'u') THEN c.conindid::regclass::text END
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'public' AND c.contype IN ('p', 'u', 'f')
          AND c.conrelid::regclass::text <> 'alembic_version'
        ORDER BY CASE c.contype WHEN 'f' THEN 0 WHEN 'u' THEN 1 ELSE 2 END
        """
    ).fetchall()
    indexes = conn.execute(
        """
        SELECT t.relname, ci.relname, pg_get_indexdef(i.indexrelid)
        FROM pg_index i
        JOIN pg_class ci ON ci.oid = i.indexrelid
        JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE n.nspname = 'public' AND NOT EXISTS (
            SELECT 1 FROM pg_constraint c
            WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u')
        )
        """
    ).fetchall()
    for table, name, kind, definition, referenced, index, index_name in constraints:
        if kind == "p" and table not in LOADED:
            continue
        if kind == "f":
            # A foreign key between an audit table and another comes back with the audit tables.
            owner = referenced if referenced.startswith("audit_") else table
            sql = f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}'
            deferred.statements.append((owner, "fk", sql))
        else:
            # The index first (a SHARE lock, so readers go on), then the constraint takes it.
            group, what = ("pk", "PRIMARY KEY") if kind == "p" else ("unique", "UNIQUE")
            deferred.statements.append((table, group, index))
            using = f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {what} USING INDEX {index_name}'
            deferred.statements.append((table, group, using))
        conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for table, name, definition in indexes:
        deferred.statements.append((table, "index", definition))
        conn.execute(f'DROP INDEX "{name}"')
    return deferred


def schema_of(conn: psycopg.Connection[Any]) -> set[tuple[str, ...]]:
    """Every constraint and index of the public schema, as PostgreSQL describes them."""
    constraints = conn.execute(
        """
        SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'public'
        """
    ).fetchall()
    indexes = conn.execute(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
    ).fetchall()
    return {("constraint", *row) for row in constraints} | {("index", *row) for row in indexes}


def rebuild(conn: psycopg.Connection[Any], statements: list[str]) -> float:
    started = time.perf_counter()
    conn.execute("SET maintenance_work_mem = '1GB'")
    for sql in statements:
        conn.execute(sql)
    return time.perf_counter() - started


# -- seeding ------------------------------------------------------------------------------------
def checkpoint_key(scale: Scale) -> checkpoints.CheckpointKey:
    """The scratch database's checkpoint key, derived from its name: every run (and the app it
    measures) holds the key that signed its checkpoints without keeping a file anywhere."""
    seed = hashlib.sha256(f"casehub bench {scale.database} checkpoints".encode()).digest()
    private = Ed25519PrivateKey.from_private_bytes(seed)
    return checkpoints.CheckpointKey(private.public_key(), private)


def fingerprint() -> dict[str, str]:
    sources = {module.__name__: inspect.getsource(module) for module in DERIVED_FROM}
    return {name: hashlib.sha256(text.encode()).hexdigest()[:12] for name, text in sources.items()}


def _marker(url: str) -> dict[str, Any] | None:
    name = psycopg.conninfo.conninfo_to_dict(_libpq(url))["dbname"]
    with psycopg.connect(_libpq(database_url("postgres")), autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
    if row is None:
        return None
    try:
        found = json.loads(row[0] or "")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _stale(scale: Scale, url: str, marker: dict[str, Any]) -> str | None:
    """Why a kept database cannot be reused, or None when it can."""
    if not marker:
        return "it carries no marker (a seeding that did not finish?)"
    if marker.get("seed") != SEED_VERSION or marker.get("scale") != scale.factor:
        return "it was seeded by another version of this script"
    head = migrate.head_revision()
    if marker.get("revision") != head and not _upgrade_in_place(url, marker):
        return f"the migrations moved on (seeded at {marker.get('revision')}, head {head})"
    with psycopg.connect(_libpq(url)) as conn:
        current = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        counted = conn.execute(
            "SELECT (SELECT count(*) FROM referrals), (SELECT count(*) FROM audit_chain)"
        ).fetchone()
    if current is None or current[0] != head:
        return "its schema is not at the migrations' head"
    if counted is None or (counted[0], counted[1]) != (scale.referrals, marker["events"]):
        return "its rows are not the ones seeded"
    return None


def register(session: Session, scale: Scale) -> Partnership:
    """Agencies, their partner systems and people, through casehub.services.agencies."""
    partnership = Partnership({}, {}, {}, {})
    people = 5 if scale.factor == 1 else 50
    for spec in (*PARTNERSHIP, PLATFORM):
        agencies.add_agency(
            session,
            code=spec.code,
            name=spec.name,
            kind=spec.kind,
            area=spec.area,
            is_platform=spec.is_platform,
        )
        partnership.kinds[spec.code] = spec.kind
        traffic: list[tuple[tuple[str, str], float]] = []
        for client in spec.clients:
            registered, _secret = agencies.add_client(
                session,
                agency_code=spec.code,
                name=client.name,
                scope=client.scope,
                scrypt_n=SCRYPT_N,
            )
            partnership.clients[(spec.code, client.name)] = registered.client_id
            if client.traffic:
                traffic.append(
                    ((registered.client_id, _ip(spec.code, client.name)), client.traffic)
                )
        if traffic:
            partnership.case_clients[spec.code] = Weighted(traffic)
        partnership.users[spec.code] = [
            str(
                agencies.add_user(
                    session,
                    agency_code=spec.code,
                    email=f"caseworker{n:03d}@{spec.code}.example",
                    name=f"Caseworker {n:03d}",
                    roles=["caseworker"],
                ).id
            )
            for n in range(1, people + 1)
        ]
    return partnership


# The sequencer's batch query (pending JOIN events LEFT JOIN referrals ORDER BY pos LIMIT n) is
# planned as a merge join that reads the events from the first pos, chained or not: with ten
# million queued at once each batch re-reads every event already chained, and the load slows
# to a crawl (1,800,000 chained in half an hour, then 700 a second). A service's queue is a
# second deep, so this only shows after an outage or a bulk load like this one: the seeding
# sequencer's session plans with nested loops, which reads each batch's rows only. The rows
# it writes are the same; the plan choice is reported under issue 10.
SEQUENCER_SESSION = "-c enable_mergejoin=off -c enable_hashjoin=off"


def _sequence(url: str, report: Any) -> None:
    """The real sequencer over everything pending (the body of start_sequencer's process);
    sends (events chained, seconds) to `report`."""
    planned = make_url(url).update_query_dict({"options": SEQUENCER_SESSION})
    engine = make_engine(planned.render_as_string(hide_password=False))
    started = time.perf_counter()
    chained = chain.sequence_all(engine, limit=SEQUENCER_BATCH)
    engine.dispose()
    report.send((chained, time.perf_counter() - started))


def start_sequencer(url: str) -> tuple[Any, Any]:
    """_sequence(url) in a forked process, so it chains on one core while this process works on
    the other; returns the process and the end of the pipe its result comes from."""
    fork = multiprocessing.get_context("fork")
    receiving, sending = fork.Pipe(duplex=False)
    process = fork.Process(target=_sequence, args=(url, sending))
    process.start()
    sending.close()
    return process, receiving


def _sign_checkpoints(
    conn: psycopg.Connection[Any], key: checkpoints.CheckpointKey, end: float
) -> int:
    """The checkpoints an hourly `casehub audit checkpoint` would have left: at the end of every
    hour, the chain's head then, signed (an hour without events signs the same head again)."""
    hours = conn.execute(
        """
        SELECT floor(extract(epoch FROM e.occurred_at) / 3600)::bigint AS hour, max(c.seq)
        FROM audit_chain c JOIN audit_events e ON e.pos = c.event_pos
        GROUP BY 1 ORDER BY 1
        """
    ).fetchall()
    heads = dict(
        conn.execute(
            "SELECT seq, hash FROM audit_chain WHERE seq = ANY(%s)", ([seq for _, seq in hours],)
        ).fetchall()
    )
    last_hour = int(end // 3600) - 1  # the hour in progress at the end has no checkpoint yet
    by_hour = dict(hours)
    seq, head = 0, canonical.GENESIS_HASH
    lines: list[str] = []
    for hour in range(hours[0][0], last_hour + 1):
        if hour in by_hour:
            seq = by_hour[hour]
            head = heads[seq]
        signed_at = datetime.fromtimestamp((hour + 1) * 3600 + 20, UTC)
        signature = key.sign(checkpoints.message(seq, head, signed_at))
        lines.append(_line(seq, head, signed_at.isoformat(), key.key_id, signature))
    columns = "seq, hash, signed_at, key_id, signature"
    return _copy(conn, "audit_checkpoints", columns, iter(lines))


def _load_case_tables(
    url: str,
    world: World,
    name_keys: NameKeys,
    columns: dict[str, str],
    history_basis: dict[str, str],
    rebuild_after: list[str],
    results: Any,
    started: float,
) -> None:
    """In the forked child: COPY the children, referrals, shares, their history and the
    outbox, then rebuild those tables' keys, indexes and foreign keys; timings to `results`."""
    timings: dict[str, float] = {}
    try:
        with psycopg.connect(_libpq(url)) as conn:
            conn.execute("SET synchronous_commit = off")
            tx = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
            assert tx is not None
            loads: dict[str, Iterator[str]] = {
                "subjects": subject_lines(world),
                "subject_name_keys": name_keys.lines(world),
                "referrals": referral_lines(world),
                "referral_categories": category_lines(world),
                "referral_indicators": indicator_lines(world),
                "referral_history": history_lines(world, random.Random("h"), history_basis),
                "shares": share_lines(world),
                "events": outbox_lines(world, tx[0]),
            }
            for table, lines in loads.items():
                mark = time.perf_counter()
                rows = _copy(conn, table, columns[table], lines)
                timings[table] = time.perf_counter() - mark
                _say(started, f"COPY {table}: {rows:,} rows in {timings[table]:.1f}s")
            count = len(world.referrals)
            conn.execute(f"SELECT setval('{REFERENCE_SEQUENCE.name}', %s)", (count,))
            conn.commit()
            timings["indexes"] = rebuild(conn, rebuild_after)
            conn.commit()
        _say(started, f"keys, indexes and constraints of the case tables in "
             f"{timings['indexes']:.1f}s")  # fmt: skip
        results.put(timings)
    except BaseException as error:
        results.put({"error": f"{type(error).__name__}: {error}"})
        raise


def _say(started: float, text: str) -> None:
    print(f"  [{time.perf_counter() - started:7.1f}s] {text}", flush=True)


def seed(scale: Scale, url: str) -> dict[str, Any]:
    """A fresh database at `url` holding the scale's rows; returns its marker."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    name = scale.database
    with psycopg.connect(_libpq(database_url("postgres")), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(url)
    migrate.upgrade(engine, SEED_REVISION)
    check_json_storage(engine)
    with Session(engine) as session, session.begin():
        partnership = register(session, scale)
    history_basis = calibrate_history(engine, partnership)
    engine.dispose()
    with psycopg.connect(_libpq(url)) as conn:
        present = table_columns(conn, "subject_name_keys")
        name_keys = NameKeys([c for c in present if c in NAME_KEY_VALUES])
        columns = {**LOADED_COLUMNS, "subject_name_keys": ", ".join(name_keys.columns)}
        for table, written in (*columns.items(), ("audit_events", EVENT_COLUMNS)):
            check_columns(conn, table, written)
    end = time.time() - 120
    world = Generator(scale, partnership, end).build()
    timings["generate"] = time.perf_counter() - started
    checked = name_keys.check(world)
    _say(started, f"generated {len(world.referrals):,} referrals, {len(world.subjects):,} "
         f"children, {len(world.shares):,} shares ({checked} children's name keys rebuilt "
         "by the service's _sync_name_keys and identical)")  # fmt: skip

    with psycopg.connect(_libpq(url)) as conn:
        migrated = schema_of(conn)
        deferred = drop_for_load(conn)
        conn.commit()

    # The case tables load in a forked child (it shares the generated rows) while this process
    # loads the audit events: two cores, two generators.
    fork = multiprocessing.get_context("fork")
    results: Any = fork.SimpleQueue()
    child = fork.Process(
        target=_load_case_tables,
        args=(
            url,
            world,
            name_keys,
            columns,
            history_basis,
            deferred.take(_case_table),
            results,
            started,
        ),
    )
    child.start()
    with psycopg.connect(_libpq(url)) as conn:
        mark = time.perf_counter()
        trail = Trail(world, partnership, scale.events)
        load_events(conn, _chunked(trail.lines()), EVENT_COLUMNS)
        conn.commit()
        timings["audit_events"] = time.perf_counter() - mark
        _say(started, f"COPY audit_events: {trail.written:,} events "
             f"({trail.checked:,} rebuilt by audit.record and identical)")  # fmt: skip
        assert trail.written == scale.events, trail.written
    del world, trail
    child.join()
    outcome = results.get() if not results.empty() else {"error": f"exit {child.exitcode}"}
    if "error" in outcome or child.exitcode != 0:
        raise SystemExit(f"loading the case tables failed: {outcome.get('error')}")
    timings.update(outcome)

    # Every table the sequencer might read is loaded and indexed: it chains as in production.
    # Meanwhile audit_events, which it only reads, gets its indexes, and the case tables their
    # visibility maps and statistics.
    sequencer, report = start_sequencer(url)
    try:
        with psycopg.connect(_libpq(url)) as conn:
            only_read = deferred.take(lambda t: t == "audit_events", frozenset({"unique", "index"}))
            timings["audit_events_indexes"] = rebuild(conn, only_read)
            conn.commit()
            _say(started, f"indexes of audit_events in {timings['audit_events_indexes']:.1f}s")
            conn.autocommit = True
            mark = time.perf_counter()
            conn.execute(f"VACUUM ANALYZE {', '.join(LOADED)}")
            timings["vacuum_case_tables"] = time.perf_counter() - mark
            _say(started, f"VACUUM ANALYZE of the case tables in "
                 f"{timings['vacuum_case_tables']:.1f}s")  # fmt: skip
        while not report.poll(60):
            if not sequencer.is_alive():
                raise SystemExit(f"the sequencer exited {sequencer.exitcode} before it finished")
            with psycopg.connect(_libpq(url), autocommit=True) as conn:
                row = conn.execute("SELECT max(seq) FROM audit_chain").fetchone()
                # What autovacuum does for a service (it is off on some servers): without it
                # every batch walks the queue's index past the entries already chained.
                conn.execute("VACUUM audit_pending")
            _say(started, f"sequencer: {row[0] if row and row[0] else 0:,} chained so far")
        chained, seconds = report.recv()
    finally:
        sequencer.join(30)
        if sequencer.is_alive():
            sequencer.terminate()
            sequencer.join()
    assert sequencer.exitcode == 0, f"the sequencer exited {sequencer.exitcode}"
    timings["sequencer"] = seconds
    _say(started, f"sequencer chained {chained:,} events in {seconds:.1f}s "
         f"({chained / seconds:,.0f} events/s)")  # fmt: skip
    assert chained == scale.events, chained

    with psycopg.connect(_libpq(url)) as conn:
        conn.execute("SET synchronous_commit = off")
        mark = time.perf_counter()
        signed = _sign_checkpoints(conn, checkpoint_key(scale), end)
        conn.commit()
        timings["checkpoints"] = time.perf_counter() - mark
        _say(started, f"{signed:,} hourly checkpoints signed in {timings['checkpoints']:.1f}s")
        timings["audit_indexes"] = rebuild(conn, deferred.take(lambda _table: True))
        conn.commit()
        _say(started, f"indexes and constraints of the audit tables in "
             f"{timings['audit_indexes']:.1f}s")  # fmt: skip
        assert not deferred.statements, deferred.statements
        if schema_of(conn) != migrated:
            raise SystemExit(
                "the rebuilt schema differs from the migrations': "
                f"{sorted(schema_of(conn) ^ migrated)[:5]}"
            )
        conn.commit()
        conn.autocommit = True
        mark = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        timings["vacuum_analyze"] = time.perf_counter() - mark
        _say(started, f"VACUUM ANALYZE in {timings['vacuum_analyze']:.1f}s")
        max_pos = conn.execute("SELECT max(pos) FROM audit_events").fetchone()
    timings["total"] = time.perf_counter() - started
    marker = {
        "bench": "bench.scale",
        "seed": SEED_VERSION,
        "scale": scale.factor,
        "revision": SEED_REVISION,
        "sources": fingerprint(),
        "events": scale.events,
        "checkpoints": signed,
        "max_pos": int(max_pos[0]) if max_pos else 0,
        "end": end,
        "seeded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    _write_marker(name, marker)
    # The rest of the way as production goes: the migrations partition the audit tables as
    # loaded (their time at this scale is printed and kept in the marker).
    _upgrade_in_place(url, marker)
    return marker


def _write_marker(name: str, marker: dict[str, Any]) -> None:
    """Keep the marker on the database itself (a COMMENT), where _marker reads it back."""
    with psycopg.connect(_libpq(database_url("postgres")), autocommit=True) as conn:
        conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{json.dumps(marker)}'")


def _upgrade_in_place(url: str, marker: dict[str, Any]) -> bool:
    """Bring a kept database at its seeded revision to the head with the migrations themselves
    (as production would be; they must backfill what they add), and say so in its marker.
    False when it is not at the revision it was seeded at. The upgrade's time is printed and
    kept; a migration the generator would have to follow is a reason for --rebuild."""
    with psycopg.connect(_libpq(url)) as conn:
        found = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    seeded = marker.get("revision")
    if found is None or found[0] != seeded:
        return False
    head = migrate.head_revision()
    print(f"  upgrading {seeded} -> {head} in place with the migrations ...", flush=True)
    started = time.perf_counter()
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    took = round(time.perf_counter() - started, 1)
    print(f"  upgraded in {took}s", flush=True)
    marker["revision"] = head
    marker.setdefault("upgrades", []).append({"from": seeded, "to": head, "seconds": took})
    _write_marker(str(make_url(url).database), marker)
    return True


def prepare(scale: Scale, *, rebuild_it: bool) -> tuple[str, dict[str, Any]]:
    url = database_url(scale.database)
    marker = None if rebuild_it else _marker(url)
    reason = "--rebuild" if rebuild_it else "it does not exist" if marker is None else None
    if marker is not None:
        try:
            reason = _stale(scale, url, marker)
        except (psycopg.Error, KeyError) as exc:
            reason = f"it could not be read ({type(exc).__name__})"
    if reason is None:
        assert marker is not None
        print(f"reusing {scale.database} (seeded {marker['seeded_at']} in "
              f"{marker['seconds']['total']:.0f}s)")  # fmt: skip
        changed = [m for m, d in fingerprint().items() if marker["sources"].get(m) != d]
        if changed:
            # A change to what is stored comes with a migration (and then a reseed): this may
            # be a refactoring. Say so rather than spend half an hour reseeding scale 100.
            print(f"  note: {', '.join(changed)} changed since; --rebuild if it changes the rows")
        forget_measurements(url, marker)
        return url, marker
    print(f"seeding {scale.database}: {reason}")
    return url, seed(scale, url)


def forget_measurements(url: str, marker: dict[str, Any]) -> None:
    """Remove the audit events measuring wrote (never chained: the sequencer is off), so every
    run meets the trail as seeded. audit_events refuses DELETE by trigger; on this scratch copy
    the bench sets the trigger aside (session_replication_role) to put the trail back."""
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("DELETE FROM audit_pending WHERE pos > %s", (marker["max_pos"],))
            deleted = conn.execute(
                "DELETE FROM audit_events WHERE pos > %s", (marker["max_pos"],)
            ).rowcount
        if deleted:
            conn.execute("VACUUM audit_events, audit_pending")


def table_sizes(url: str) -> list[tuple[str, int, int]]:
    with psycopg.connect(_libpq(url)) as conn:
        rows = conn.execute(
            """
            SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind = 'r'
            ORDER BY 3 DESC
            """
        ).fetchall()
    return [(str(name), int(count), int(size)) for name, count, size in rows]


def print_seeding(scale: Scale, url: str, marker: dict[str, Any]) -> None:
    seconds = marker["seconds"]
    print(f"\n{scale.database}: seeding took {seconds['total']:.0f}s "
          f"({', '.join(f'{k} {v:.0f}s' for k, v in seconds.items() if k != 'total')}); "
          f"{marker['checkpoints']:,} hourly checkpoints")  # fmt: skip
    sizes = table_sizes(url)
    total = sum(size for _, _, size in sizes)
    print(f"  {'table':28} {'rows (estimate)':>16} {'total size':>12}")
    for name, count, size in sizes:
        if size > 64 * 1024:
            print(f"  {name:28} {count:>16,} {size / 2**20:>9,.1f} MB")
    print(f"  {'all tables':28} {'':>16} {total / 2**20:>9,.1f} MB")


# -- measuring ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    name: str
    caller: str  # a key of CALLERS
    path: str  # with its query string
    shown: str  # the same, with placeholders for ids and names
    group: str  # list | walk | search | audit | accesses | verify

    @property
    def target(self) -> str:
        if self.group == "search":
            return "≤ 2x; p99 ≤ 50 ms"
        if self.group == "verify":
            return "≤ 1 s"
        return "≤ 2x"


@dataclass
class Result:
    query: Query
    times: list[float]  # ms
    statements: int
    totals: list[float] = field(default_factory=list)  # ms, for walks: all 20 pages

    @property
    def p50(self) -> float:
        return statistics.median(self.times)

    @property
    def p99(self) -> float:
        return _percentile(self.times, 0.99)


@dataclass(frozen=True)
class Targets:
    """Ids and names the queries ask about, read from the seeded database."""

    values: dict[str, str]


def find_targets(url: str, marker: dict[str, Any]) -> Targets:
    end = float(marker["end"])
    values: dict[str, str] = {}
    with psycopg.connect(_libpq(url)) as conn:

        def one(sql: str, *params: object) -> tuple[Any, ...]:
            row = conn.execute(sql, params).fetchone()
            assert row is not None, f"the seeded database has no row for: {sql}"
            return tuple(row)

        for role, (agency, client) in CALLERS.items():
            values[f"client.{role}"] = one(
                "SELECT client_id FROM clients WHERE agency_code = %s AND name = %s", agency, client
            )[0]
        # The large lead's busiest kind of referral: recent, shared with the share-only agency.
        referral, subject = one(
            """
            SELECT r.id, r.subject_id FROM referrals r JOIN shares s ON s.referral_id = r.id
            WHERE r.lead_agency = %s AND s.agency_code = %s AND s.revoked_at IS NULL
              AND s.expires_at IS NULL
            ORDER BY r.created_at DESC LIMIT 1 OFFSET 5
            """,
            LARGE_LEAD,
            SHARE_ONLY,
        )
        values["referral"] = str(referral)
        values["subject"] = str(subject)
        values["subject.lead"] = str(
            one(
                """
                SELECT subject_id FROM referrals WHERE lead_agency = %s
                GROUP BY subject_id HAVING count(*) > 1 ORDER BY max(created_at) DESC LIMIT 1
                """,
                LARGE_LEAD,
            )[0]
        )
        values["subject.share-only"] = str(subject)
        values["user"] = str(
            one(
                "SELECT actor_user_id FROM audit_events WHERE actor_agency = %s "
                "AND actor_user_id IS NOT NULL ORDER BY pos DESC LIMIT 1",
                LARGE_LEAD,
            )[0]
        )
        for role, join in (
            ("lead", "WHERE r.lead_agency = %s"),
            (
                "share-only",
                "JOIN shares sh ON sh.referral_id = r.id WHERE sh.agency_code = %s "
                "AND sh.revoked_at IS NULL AND sh.expires_at IS NULL",
            ),
        ):
            agency = LARGE_LEAD if role == "lead" else SHARE_ONLY
            rows = conn.execute(
                "SELECT s.given_name, s.family_name, s.aliases::text FROM subjects s "
                f"JOIN referrals r ON r.subject_id = s.id {join} "
                "ORDER BY r.created_at DESC LIMIT 2000",
                (agency,),
            ).fetchall()
            named = next(
                (g, f) for g, f, _ in rows
                if f not in COMMON_SURNAMES and len(f) >= 6 and len(g) >= 3 and " " not in g
            )  # fmt: skip
            values[f"name.{role}"] = f"{named[0]} {named[1]}"
            family = named[1]
            at = next(i for i in range(2, len(family) - 1) if family[i] != family[i + 1])
            swapped = family[:at] + family[at + 1] + family[at] + family[at + 2 :]
            values[f"typo.{role}"] = f"{named[0]} {swapped}"  # two letters swapped: one edit
            values[f"alias.{role}"] = next(
                alias
                for _, _, aliases in rows
                for alias in json.loads(aliases)
                if all(len(t) >= 3 for t in names.query_tokens(alias))
            )
    values["since"] = _iso(end - 30 * DAY)
    values["to"] = _iso(end - 730 * DAY)
    values["window.from"] = _iso(end - 400 * DAY)
    values["window.to"] = _iso(end - 393 * DAY)
    return Targets(values)


def _query_string(params: dict[str, str]) -> str:
    return urllib.parse.urlencode(params)


def build_queries(targets: Targets) -> tuple[list[Query], list[str]]:
    """Every query to measure, and the list/audit filters the API offers that none covers."""
    v = targets.values
    queries: list[Query] = []
    unknown: list[str] = []
    referral_filters = {
        "status": ("in_assessment", "in_assessment"),
        "risk_level": ("high", "high"),
        "category": ("county_lines", "county_lines"),
        "indicator": ("TRV-01", "TRV-01"),
        "lead_agency": (LARGE_LEAD, LARGE_LEAD),
        "shared_with_me": ("true", "true"),
        "updated_since": (v["since"], "<30 days ago>"),
    }
    offered = [n for n in ReferralQueryArgsSchema().fields if n not in ("limit", "cursor")]
    unknown += [
        f"referrals?{n}" for n in offered if n not in referral_filters and n != "subject_id"
    ]
    for role in ("lead", "share-only"):
        filters: dict[str, tuple[str, str]] = {"none": ("", "")}
        for name in offered:
            if name == "subject_id":
                filters[name] = (v[f"subject.{role}"], "<subject_id>")
            elif name in referral_filters:
                filters[name] = referral_filters[name]
        if "shared_with_me" in offered:
            filters["shared_with_me=false"] = ("false", "false")
        for label, (value, shown) in filters.items():
            name = label.split("=")[0]
            params = {"limit": "50"} | ({name: value} if value else {})
            shown_params = {"limit": "50"} | ({name: shown} if value else {})
            queries.append(
                Query(
                    f"list.{role}.{label.replace('=false', '-false')}",
                    role,
                    f"/v1/referrals?{_query_string(params)}",
                    "/v1/referrals?" + "&".join(f"{k}={s}" for k, s in shown_params.items()),
                    "list",
                )
            )
    for role in ("lead", "share-only"):
        queries.append(
            Query(
                f"walk.{role}",
                role,
                "/v1/referrals?limit=50",
                "page 20 of /v1/referrals?limit=50",
                "walk",
            )
        )
    # The commonest given name with the commonest surname: each word's keys match tens of
    # thousands of children at scale 100 and the two together a few hundred. Then the same with
    # one letter of the given name wrong ("Olivar"), which also shares a key with Olivia.
    given, family = GIVEN_NAMES[0], max(COMMON_SURNAMES, key=COMMON_SURNAMES.__getitem__)
    common = f"{given} {family}"
    common_typo = f"{given[:-2]}{'e' if given[-2] == 'a' else 'a'}{given[-1]} {family}"
    for role in ("lead", "share-only"):
        for label, q, shown in (
            ("exact", v[f"name.{role}"], "<given family>"),
            ("typo", v[f"typo.{role}"], "<given famliy>"),
            ("alias", v[f"alias.{role}"], "<alias>"),
            ("smith", "Smith", "Smith"),
            ("li", "Li", "Li"),
            ("common", common, common),
            ("common-typo", common_typo, common_typo),
        ):
            path = f"/v1/subjects?{_query_string({'q': q, 'limit': '50'})}"
            queries.append(
                Query(f"search.{role}.{label}", role, path, f"/v1/subjects?q={shown}", "search")
            )
    audit_filters = {
        "agency": (LARGE_LEAD, LARGE_LEAD),
        "client_id": (v["client.lead"], "<client_id>"),
        "user_id": (v["user"], "<user_id>"),
        "action": ("referral.read", "referral.read"),
        "outcome": ("denied", "denied"),
        "referral_id": (v["referral"], "<referral_id>"),
        "subject_id": (v["subject"], "<subject_id>"),
        "from": (v["since"], "<30 days ago>"),
        "to": (v["to"], "<2 years ago>"),
    }
    offered_audit = [
        field_.data_key or name
        for name, field_ in AuditEventQueryArgsSchema().fields.items()
        if name not in ("limit", "cursor")
    ]
    unknown += [f"audit/events?{n}" for n in offered_audit if n not in audit_filters]
    for role, label in (("agency-auditor", "agency"), ("all-auditor", "all")):
        chosen = {"none": {}} | {
            n: {n: audit_filters[n]} for n in offered_audit if n in audit_filters
        }
        if "from" in offered_audit and "to" in offered_audit:
            chosen["from+to"] = {
                "from": (v["window.from"], "<400 days ago>"),
                "to": (v["window.to"], "<393 days ago>"),
            }
        for filter_name, params in chosen.items():
            query = {"limit": "50"} | {k: value for k, (value, _) in params.items()}
            shown = "&".join(["limit=50", *(f"{k}={s}" for k, (_, s) in params.items())])
            queries.append(
                Query(
                    f"audit.{label}.{filter_name}",
                    role,
                    f"/v1/audit/events?{_query_string(query)}",
                    f"/v1/audit/events?{shown}",
                    "audit",
                )
            )
    for role, label in (("agency-auditor", "agency"), ("all-auditor", "all")):
        queries.append(
            Query(
                f"accesses.subject.{label}",
                role,
                f"/v1/audit/subjects/{v['subject']}/accesses?limit=50",
                "/v1/audit/subjects/<subject_id>/accesses?limit=50",
                "accesses",
            )
        )
    queries.append(
        Query(
            "accesses.referral.lead",
            "lead",
            f"/v1/referrals/{v['referral']}/accesses?limit=50",
            "/v1/referrals/<referral_id>/accesses?limit=50",
            "accesses",
        )
    )
    queries.append(Query("verify", "all-auditor", "/v1/audit/verify", "/v1/audit/verify", "verify"))
    return queries, unknown


class Bench:
    """One app on one scale's database, its callers' tokens, and the measurements."""

    def __init__(self, scale: Scale, url: str, marker: dict[str, Any], folder: Path) -> None:
        self.scale = scale
        self.url = url
        self.marker = marker
        key_file = folder / f"checkpoint-{scale.factor}.pem"
        checkpoint_key(scale).save(key_file)
        self.app = create_app(
            {
                "DATABASE_URL": url,
                "ISSUER": "http://casehub.bench",
                "SIGNING_KEYS_FILE": str(folder / "signing-keys.json"),
                "WEBHOOK_KEY_FILE": str(folder / "webhook-key"),
                "AUDIT_CHECKPOINT_KEY_FILE": str(key_file),
                "CLIENT_SECRET_SCRYPT_N": SCRYPT_N,
                "AUDIT_SEQUENCER": False,
                "LOG_LEVEL": "warning",  # a line per request would be measured too
                **RATE_LIMITS_OUT_OF_REACH,
            }
        )
        self.engine = get_db(self.app).engine
        assert self.engine is not None
        self.http = self.app.test_client()
        self.targets = find_targets(url, marker)
        self.secrets = self._fresh_secrets()
        self.tokens: dict[str, tuple[float | None, str]] = {}

    def _fresh_secrets(self) -> dict[str, str]:
        """A new secret for each calling client (only its hash was ever stored)."""
        found: dict[str, str] = {}
        with psycopg.connect(_libpq(self.url)) as conn:
            for role in CALLERS:
                secret = generate_secret()
                conn.execute(
                    "UPDATE clients SET secret_hash = %s WHERE client_id = %s",
                    (hash_secret(secret, n=SCRYPT_N), self.targets.values[f"client.{role}"]),
                )
                found[role] = secret
        return found

    def headers(self, role: str) -> dict[str, str]:
        # No sentinel time: the monotonic clock starts near 0 on a machine just booted.
        fetched, token = self.tokens.get(role, (None, ""))
        if fetched is None or time.monotonic() - fetched > 600:  # tokens live 900 s
            client_id = self.targets.values[f"client.{role}"]
            basic = base64_credentials(client_id, self.secrets[role])
            response = self.http.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {basic}"},
            )
            assert response.status_code == 200, response.get_json()
            token = str(response.get_json()["access_token"])
            self.tokens[role] = (time.monotonic(), token)
        return {"Authorization": f"Bearer {token}"}

    def get(self, query: Query, path: str | None = None) -> tuple[float, dict[str, Any]]:
        headers = self.headers(query.caller)
        started = time.perf_counter()
        response = self.http.get(path or query.path, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise SystemExit(
                f"{query.name}: {query.shown} answered {response.status_code}: "
                f"{response.get_data(as_text=True)[:500]}"
            )
        return elapsed, response.get_json()

    def walk(self, query: Query) -> tuple[float, float]:
        """(page 20's time, all 20 pages' time) of one cursor walk."""
        path: str | None = query.path
        total = 0.0
        last = 0.0
        for page in range(20):
            assert path is not None, f"{query.name}: fewer than 20 pages (ended at {page})"
            last, body = self.get(query, path)
            total += last
            cursor = body.get("next_cursor")
            path = f"{query.path}&{_query_string({'cursor': cursor})}" if cursor else None
        return last, total

    def statements(self, query: Query) -> list[tuple[str, Any]]:
        """The statements one request of `query` sends (for walks: page 20's)."""
        sent: list[tuple[str, Any]] = []

        def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            sent.append((statement, parameters))

        self.headers(query.caller)  # a token fetched now is not this request's
        if query.group == "walk":
            path: str | None = query.path
            for _ in range(19):
                _, body = self.get(query, path)
                path = f"{query.path}&{_query_string({'cursor': body['next_cursor']})}"
        else:
            path = None
        event.listen(self.engine, "before_cursor_execute", capture)
        try:
            self.get(query, path)
        finally:
            event.remove(self.engine, "before_cursor_execute", capture)
        return sent

    def measure(self, query: Query, requests: int, seconds: float) -> Result:
        """`requests` timings of `query` (walks: a fifth as many walks), or as many as `seconds`
        allows (at least one), after a warm-up that takes at most a fifth of that time; the
        first warm-up request also counts the statements a request sends."""
        warm_until = time.monotonic() + seconds / 5
        statements = len(self.statements(query))  # the first warm-up request
        for _ in range(max(2, requests // 20) - 1):  # caches, the pool, the plans
            if time.monotonic() >= warm_until:
                break
            if query.group == "walk":
                self.walk(query)
            else:
                self.get(query)
        # The warm-up's garbage collected and what survives it frozen: a full collection in
        # the timed loop paused one request for ~160 ms and made a single p99 of it.
        gc.collect()
        gc.freeze()
        times: list[float] = []
        totals: list[float] = []
        wanted = max(1, requests // 5) if query.group == "walk" else requests
        deadline = time.monotonic() + seconds
        while len(times) < wanted and (time.monotonic() < deadline or not times):
            if query.group == "walk":
                last, total = self.walk(query)
                times.append(last)
                totals.append(total)
            else:
                times.append(self.get(query)[0])
        return Result(query, times, statements, totals)

    def explain(self, query: Query) -> None:
        self.get(query)  # warm-up
        sent = self.statements(query)
        print(f"\n{query.name} on {self.scale.database}: {query.shown} ({len(sent)} statements)")
        for number, (statement, parameters) in enumerate(sent, start=1):
            first = statement.lstrip().split(None, 1)[0].upper()
            print(f"\n-- statement {number}: {' '.join(statement.split())}")
            if first not in ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH"):
                print("   (not explained)")
                continue
            if isinstance(parameters, list):  # executemany: the first row's
                parameters = parameters[0] if parameters else None
            if first == "INSERT" and isinstance(parameters, dict):
                # The request already inserted this row: the same id again would be refused.
                parameters = {
                    k: uuid.uuid4() if k == "id" and isinstance(v, uuid.UUID) else v
                    for k, v in parameters.items()
                }
            with self.engine.connect() as connection:
                transaction = connection.begin()
                try:
                    plan = connection.exec_driver_sql(
                        "EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters
                    ).scalars()
                    for line in plan:
                        print(f"   {line}")
                except DBAPIError as error:
                    print(f"   (could not be explained: {type(error.orig).__name__})")
                finally:
                    transaction.rollback()  # an explained INSERT leaves nothing behind

    def close(self) -> None:
        forget_measurements(self.url, self.marker)
        self.engine.dispose()


def base64_credentials(client_id: str, secret: str) -> str:
    import base64

    return base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def print_results(scale: Scale, results: list[Result], unknown: list[str]) -> None:
    print(f"\n{scale.database}: p50 and p99 in ms (in process, real tokens, after a warm-up)")
    print(f"  {'name':37} {'request':62} {'n':>4} {'p50':>9} {'p99':>9} {'stmts':>5}")
    for r in results:
        extra = ""
        if r.totals:
            whole = statistics.median(r.totals), _percentile(r.totals, 0.99)
            extra = f"   all 20 pages: p50 {whole[0]:.1f}, p99 {whole[1]:.1f}"
        print(
            f"  {r.query.name:37} {r.query.shown[:62]:62} {len(r.times):>4} {r.p50:>9.1f} "
            f"{r.p99:>9.1f} {r.statements:>5}{extra}"
        )
    for name in unknown:
        print(f"  not measured (a filter this script has no value for): {name}")


def print_ratios(small: list[Result], large: list[Result]) -> None:
    print("\np99 at scale 100 against scale 1, and the issue's targets")
    print(f"  {'name':37} {'p99 at 1':>9} {'p99 at 100':>10} {'ratio':>7}  {'target':20} verdict")
    by_name = {r.query.name: r for r in small}
    for r in large:
        base = by_name.get(r.query.name)
        if base is None:
            continue
        ratio = r.p99 / base.p99
        verdict = ratio <= 2
        if r.query.group == "search":
            verdict = verdict and r.p99 <= 50
        if r.query.group == "verify":
            verdict = r.p99 <= 1000
        print(
            f"  {r.query.name:37} {base.p99:>9.1f} {r.p99:>10.1f} {ratio:>6.1f}x  "
            f"{r.query.target:20} {'meets' if verdict else 'MISSES'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["1", "100", "both"], default="1")
    parser.add_argument("--rebuild", action="store_true", help="seed afresh even if kept")
    parser.add_argument("--requests", type=int, help="per query (default 200 at 1, 100 at 100)")
    parser.add_argument("--seconds", type=float, default=120, help="at most this long per query")
    parser.add_argument("--explain", metavar="NAME", help="EXPLAIN (ANALYZE, BUFFERS) one query")
    parser.add_argument("--only", default="", help="measure only the queries whose name has this")
    options = parser.parse_args()
    factors = [1, 100] if options.scale == "both" else [int(options.scale)]
    folder = Path(tempfile.mkdtemp(prefix="casehub-bench-scale-"))
    measured: dict[int, list[Result]] = {}
    for factor in factors:
        scale = SCALES[factor]
        url, marker = prepare(scale, rebuild_it=options.rebuild)
        print_seeding(scale, url, marker)
        bench = Bench(scale, url, marker, folder)
        try:
            queries, unknown = build_queries(bench.targets)
            if options.explain:
                chosen = [q for q in queries if q.name == options.explain]
                if not chosen:
                    raise SystemExit(
                        f"no query {options.explain!r}; one of: "
                        + " ".join(q.name for q in queries)
                    )
                bench.explain(chosen[0])
                continue
            queries = [q for q in queries if options.only in q.name]
            requests = options.requests or scale.requests
            print(f"\nmeasuring {len(queries)} queries, {requests} requests each "
                  f"(at most {options.seconds:.0f}s each)", flush=True)  # fmt: skip
            results = []
            for query in queries:
                results.append(bench.measure(query, requests, options.seconds))
                r = results[-1]
                print(f"  {query.name:37} p50 {r.p50:8.1f}  p99 {r.p99:8.1f} ms", flush=True)
            measured[factor] = results
            print_results(scale, results, unknown)
        finally:
            bench.close()
    if 1 in measured and 100 in measured:
        print_ratios(measured[1], measured[100])


if __name__ == "__main__":
    sys.exit(main())
