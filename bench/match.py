"""Existence-only matching (`POST /v1/matches`, CONTRACT §9) at 10,000 and 1,000,000 children:
seeded with COPY on PostgreSQL, measured in process with real tokens.

    .venv/bin/python -m bench.match [--scales 10000,1000000] [--database-url URL] [--keep]
                                    [--reuse] [--requests N] [--json] [--no-explain]
                                    [--only TEXT] [--load-only]

Each scale loads a fresh database `casehub_bench_match_<scale>` on the server of
`--database-url` (default BENCH_PG, else postgresql+psycopg://postgres@127.0.0.1:5432/postgres),
dropped and created again unless `--reuse` finds one a previous `--keep` left at the same seed
version and migration head; without `--keep` it is dropped after the measurement.

Seeding: the schema from casehub's migrations (casehub.migrate, to head); agencies of every
kind, their partner systems and people through casehub.services.agencies (bench.scale.register)
and a `match-desk` client of Nottinghamshire Children's Services holding `subjects:match`, the
caller. Then N children (subject rows) from bench.scale's generator (its name frequencies, with
"Oliver Smith" and two-letter given names among them, aliases, dates of birth or estimated birth
years, 40 % with an NHS number passing modulus 11, 15 % with a UPN), a fifth of them another
agency's own record of a child already recorded (same names and birth, sometimes without the
alias or the identifiers): the duplicates matching exists to find. Each child has 1-3 referrals
led by the agency that recorded it (bench.scale's referral generator: risk, categories,
indicators, workflow status, ~30 % shared with one or two agencies), 2 % of them
`discoverable: false`. Rows are as the service writes them: subject_name_keys from
casehub.services.names.subject_key_kinds (memoised) with the birth year, subject_identifiers from
names.identifier_value, and a sample of both rebuilt by the service's own
subjects._sync_name_keys and subjects.identifier_rows and compared (a difference stops the run).
Keys, unique constraints and secondary indexes of the loaded tables are dropped for the COPY and
made again from their own definitions (the schema is then compared with the migrations'); the
trigger that completes a name-key row's birth year is off during the COPY (it would look up
every row without one in a subjects table whose key is not yet built, and set what the row
already holds); then VACUUM ANALYZE. referral_history is not loaded (matching never reads it).

Measuring: Flask's test client against `create_app` on that database (in process, one thread;
audit sequencer off; rate limits on but every class, `RATE_LIMIT_MATCH` included, at
100000000/minute so the limiter still counts and never refuses), a client_credentials token from
/oauth/token. Each case is a pool of query bodies built from children actually loaded (held by
another agency, discoverable, not visible to the caller); every body is sent once first and kept
only if the answer has the confidence the case expects, then a warm-up, then `--requests`
requests rotating through the pool. p50/p99 per case and scale, as a table and with `--json` as
JSON; then EXPLAIN (ANALYZE, BUFFERS) of the statements one common-name request sends, at the
largest scale.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from bench import scale as sc
from bench.audit_data import SERVER, _libpq
from casehub import create_app, limits, migrate
from casehub.auth.secrets import generate_secret, hash_secret
from casehub.db import get_db, make_engine
from casehub.models import REFERENCE_SEQUENCE, Subject
from casehub.services import agencies, names
from casehub.services import subjects as subjects_service

SEED_VERSION = 1  # bump when what load() writes changes
DEFAULT_SCALES = (10_000, 1_000_000)
CALLER_AGENCY = "notts-cs"  # children's services: worried about a child, asks who else knows
CALLER_CLIENT = "match-desk"
CALLER_SCOPE = "subjects:match subjects:read referrals:read"
TWINS = 0.20  # subject rows that are another agency's record of a child already recorded
HIDDEN = 0.02  # referrals with discoverable false
REFERRALS_PER_CHILD = sc.Weighted([(1, 65.0), (2, 25.0), (3, 10.0)])
LOADED = (
    "subjects",
    "subject_name_keys",
    "subject_identifiers",
    "referrals",
    "referral_categories",
    "referral_indicators",
    "shares",
)
NAME_KEY_COLUMNS = "subject_id, key, whole_word, subject_created_at, birth_year"
IDENTIFIER_COLUMNS = "subject_id, system, value"
COLUMNS = {
    "subjects": sc.SUBJECT_COLUMNS,
    "subject_name_keys": NAME_KEY_COLUMNS,
    "subject_identifiers": IDENTIFIER_COLUMNS,
    "referrals": sc.REFERRAL_COLUMNS + ", discoverable",
    "referral_categories": sc.LOADED_COLUMNS["referral_categories"],
    "referral_indicators": sc.LOADED_COLUMNS["referral_indicators"],
    "shares": sc.SHARE_COLUMNS,
}
NAME_KEY_TRIGGER = "subject_name_keys_created_at"
RATE_LIMITS_OUT_OF_REACH = {
    **{setting: "100000000/minute" for setting in limits.CLASSES.values()},
    "RATE_LIMIT_MATCH": "100000000/minute",
}
SCRYPT_N = sc.SCRYPT_N


def say(started: float, text: str) -> None:
    print(f"  [{time.perf_counter() - started:7.1f}s] {text}", flush=True)


def server_url(database_url: str | None) -> str:
    return database_url or SERVER


def database_url(server: str, name: str) -> str:
    return make_url(server).set(database=name).render_as_string(hide_password=False)


def database_name(children: int) -> str:
    return f"casehub_bench_match_{children}"


# -- the generated children ---------------------------------------------------------------------
@dataclass
class Children:
    world: sc.World
    hidden: bytearray  # per referral: 1 when not discoverable
    twins: int  # subject rows that repeat an earlier child


def build(children: int, partnership: sc.Partnership, end: float) -> Children:
    """`children` subject rows and their referrals, reproducibly (bench.scale's generator)."""
    gen = sc.Generator(sc.Scale(children, children, 0, 0), partnership, end)
    rng = gen.rng
    subjects: list[sc.SubjectRow] = []
    plan: list[tuple[float, int, bool]] = []  # (moment, subject, creates the subject)
    twins = 0
    for index in range(children):
        first = gen.moment(rng.random())
        if subjects and rng.random() < TWINS:
            original = subjects[int(rng.random() * len(subjects))]
            agency = gen.leads.pick(rng)
            while agency == original.agency:
                agency = gen.leads.pick(rng)
            subject = dataclasses.replace(
                original,
                id=sc._uuid(rng),
                agency=agency,
                created=first,
                aliases=original.aliases if rng.random() < 0.5 else (),
                identifiers=original.identifiers if rng.random() < 0.6 else "[]",
            )
            twins += 1
        else:
            subject = gen.subject(gen.leads.pick(rng), first)
        subjects.append(subject)
        plan.append((first, index, True))
        for _ in range(REFERRALS_PER_CHILD.pick(rng) - 1):
            plan.append((first + rng.random() * (end - first), index, False))
    plan.sort()
    referrals = [
        gen.referral(number, moment, subjects[subject].agency, subject, new)
        for number, (moment, subject, new) in enumerate(plan, start=1)
    ]
    hidden = bytearray(1 if rng.random() < HIDDEN else 0 for _ in referrals)
    shares = [s for r in referrals for s in r.shares]
    shares.sort(key=lambda s: s.created)
    return Children(sc.World(gen.start, end, subjects, referrals, shares), hidden, twins)


def birth_year(subject: sc.SubjectRow) -> int | None:
    return subject.born.year if subject.born is not None else subject.birth_year


# -- rows as the service writes them ------------------------------------------------------------
class NameKeys:
    """subject_name_keys rows: keys and kinds from names.subject_key_kinds (memoised: names
    repeat a lot), the subject's created_at and birth year."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, str, tuple[str, ...]], list[tuple[str, str]]] = {}

    def keys(self, subject: sc.SubjectRow) -> list[tuple[str, str]]:
        names_of = (subject.given, subject.family, subject.aliases)
        found = self.cache.get(names_of)
        if found is None:
            kinds = names.subject_key_kinds(*names_of)
            found = self.cache[names_of] = [
                (sc._text(key), "t" if whole else "f") for key, whole in sorted(kinds.items())
            ]
        return found

    def rows(self, subject: sc.SubjectRow) -> list[tuple[str, ...]]:
        created = sc._iso(subject.created)
        year = birth_year(subject)
        tail = f"{created}\t{sc.NULL if year is None else year}"
        return [(subject.id, key, whole, tail) for key, whole in self.keys(subject)]

    def lines(self, world: sc.World) -> Iterator[str]:
        for subject in world.subjects:
            yield "".join(["\t".join(row) + "\n" for row in self.rows(subject)])


def identifier_rows(subject: sc.SubjectRow) -> list[tuple[str, str, str]]:
    """subject_identifiers rows: one per distinct system and normalised value."""
    if subject.identifiers == "[]":
        return []
    seen = {
        (str(item["system"]), names.identifier_value(str(item["value"])))
        for item in json.loads(subject.identifiers)
        if item.get("system") and item.get("value")
    }
    return [(subject.id, system, value) for system, value in sorted(seen)]


def identifier_lines(world: sc.World) -> Iterator[str]:
    for subject in world.subjects:
        rows = identifier_rows(subject)
        if rows:
            yield "".join(sc._line(*row) for row in rows)


def referral_lines(children: Children) -> Iterator[str]:
    """bench.scale's referral rows with `discoverable` after them."""
    flags = ("\tt\n", "\tf\n")
    for line, hidden in zip(sc.referral_lines(children.world), children.hidden, strict=True):
        yield line[:-1] + flags[hidden]


def _model(subject: sc.SubjectRow) -> Subject:
    created = datetime.fromisoformat(sc._iso(subject.created))  # as stored
    return Subject(
        id=uuid.UUID(subject.id),
        given_name=subject.given,
        family_name=subject.family,
        aliases=list(subject.aliases),
        date_of_birth=subject.born,
        estimated_birth_year=subject.birth_year,
        identifiers=json.loads(subject.identifiers),
        created_at=created,
        updated_at=created,
    )


def _stored(value: object) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    if isinstance(value, bool):
        return "t" if value else "f"
    return sc._text(value)


def check_rows(world: sc.World, name_keys: NameKeys, sample: int = 500) -> int:
    """Rebuild a sample of children's name-key and identifier rows with the service's own
    subjects._sync_name_keys and subjects.identifier_rows; stop loudly on any difference."""
    step = max(1, len(world.subjects) // sample)
    chosen = world.subjects[::step]
    # Every kind of name the generator makes: accents, apostrophes, aliases, two letters.
    chosen += [s for s in world.subjects[:5000] if not (s.given + s.family).isascii()][:50]
    chosen += [s for s in world.subjects[:5000] if len(s.aliases) > 1][:50]
    chosen += [s for s in world.subjects[:5000] if len(s.given) == 2][:20]
    for subject in chosen:
        model = _model(subject)
        subjects_service._sync_name_keys(model)
        theirs = {
            (subject.id, _stored(k.key), _stored(k.whole_word),
             f"{_stored(k.subject_created_at)}\t{_stored(k.birth_year)}")
            for k in model.name_keys
        }  # fmt: skip
        ours = set(name_keys.rows(subject))
        if ours != theirs:
            raise SystemExit(
                f"subject_name_keys rows differ from _sync_name_keys for {subject.given} "
                f"{subject.family}: only ours {sorted(ours - theirs)[:3]}, "
                f"only theirs {sorted(theirs - ours)[:3]}"
            )
        service = {
            (subject.id, str(r["system"]), str(r["value"]))
            for r in subjects_service.identifier_rows(model)
        }
        if set(identifier_rows(subject)) != service:
            raise SystemExit(
                f"subject_identifiers rows differ from identifier_rows for {subject.id}: "
                f"ours {identifier_rows(subject)}, the service's {sorted(service)}"
            )
    return len(chosen)


# -- loading ------------------------------------------------------------------------------------
def check_columns(conn: psycopg.Connection[Any]) -> None:
    """Stop before loading anything if the schema moved away from what this script writes."""
    for table, columns in COLUMNS.items():
        present = sc.table_columns(conn, table)
        written = [c.strip() for c in columns.split(",")]
        gone = [c for c in written if c not in present]
        new = [c for c, required in present.items() if required and c not in written]
        if gone or new:
            raise SystemExit(
                f"bench/match.py cannot load {table}: "
                + (f"the table has no {', '.join(gone)}; " if gone else "")
                + (f"{', '.join(new)} must be given; " if new else "")
                + "teach it how the service fills them."
            )


def drop_for_load(conn: psycopg.Connection[Any], tables: Sequence[str]) -> list[str]:
    """Drop the keys, unique constraints and secondary indexes of `tables` and the foreign keys
    to or from them; return what makes each again, in an order that works."""
    constraints = conn.execute(
        """
        SELECT c.conrelid::regclass::text, c.conname, c.contype, pg_get_constraintdef(c.oid),
               CASE WHEN c.contype IN ('p', 'u') THEN pg_get_indexdef(c.conindid) END,
               CASE WHEN c.contype IN ('p', 'u') THEN c.conindid::regclass::text END
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'public' AND c.contype IN ('p', 'u', 'f')
          AND (c.conrelid::regclass::text = ANY(%(t)s)
               OR (c.contype = 'f' AND c.confrelid::regclass::text = ANY(%(t)s)))
        ORDER BY CASE c.contype WHEN 'f' THEN 0 WHEN 'u' THEN 1 ELSE 2 END
        """,
        {"t": list(tables)},
    ).fetchall()
    indexes = conn.execute(
        """
        SELECT ci.relname, pg_get_indexdef(i.indexrelid)
        FROM pg_index i
        JOIN pg_class ci ON ci.oid = i.indexrelid
        JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE n.nspname = 'public' AND t.relname = ANY(%(t)s) AND NOT EXISTS (
            SELECT 1 FROM pg_constraint c
            WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u')
        )
        """,
        {"t": list(tables)},
    ).fetchall()
    primary: list[str] = []
    unique: list[str] = []
    foreign: list[str] = []
    for table, name, kind, definition, index, index_name in constraints:
        if kind == "f":
            foreign.append(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        else:
            # The index first, then the constraint takes it.
            what, into = ("PRIMARY KEY", primary) if kind == "p" else ("UNIQUE", unique)
            into.append(index)
            into.append(
                f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {what} USING INDEX {index_name}'
            )
        conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    secondary = []
    for name, definition in indexes:
        secondary.append(definition)
        conn.execute(f'DROP INDEX "{name}"')
    return [*primary, *unique, *secondary, *foreign]


@dataclass
class Loaded:
    url: str
    marker: dict[str, Any]
    fresh: bool


def _marker(server: str, name: str) -> dict[str, Any] | None:
    with psycopg.connect(_libpq(database_url(server, "postgres")), autocommit=True) as conn:
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


def load(children: int, server: str, *, name: str | None = None, quiet: bool = False) -> Loaded:
    """A fresh database holding `children` children and their referrals; its marker."""
    started = time.perf_counter()
    report: Callable[[str], None] = (lambda _t: None) if quiet else (lambda t: say(started, t))
    name = name or database_name(children)
    url = database_url(server, name)
    seconds: dict[str, float] = {}
    with psycopg.connect(_libpq(database_url(server, "postgres")), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(url)
    migrate.upgrade(engine, "head")
    sc.check_json_storage(engine)
    with Session(engine) as session, session.begin():
        partnership = sc.register(session, sc.Scale(children, children, 0, 0))
        caller, _secret = agencies.add_client(
            session,
            agency_code=CALLER_AGENCY,
            name=CALLER_CLIENT,
            scope=CALLER_SCOPE,
            scrypt_n=SCRYPT_N,
        )
        caller_id = caller.client_id
    engine.dispose()
    seconds["schema"] = time.perf_counter() - started
    report(f"{name}: migrated to {migrate.head_revision()}, {len(partnership.kinds)} agencies")

    mark = time.perf_counter()
    end = time.time() - 120
    generated = build(children, partnership, end)
    world = generated.world
    name_keys = NameKeys()
    checked = check_rows(world, name_keys)
    seconds["generate"] = time.perf_counter() - mark
    report(
        f"generated {len(world.subjects):,} children ({generated.twins:,} another agency's "
        f"record of one already recorded), {len(world.referrals):,} referrals "
        f"({sum(generated.hidden):,} not discoverable), {len(world.shares):,} shares; "
        f"{checked} children's name keys and identifiers rebuilt by the service's "
        "_sync_name_keys and identifier_rows and identical"
    )

    counts: dict[str, int] = {}
    with psycopg.connect(_libpq(url)) as conn:
        check_columns(conn)
        migrated = sc.schema_of(conn)
        rebuild_after = drop_for_load(conn, LOADED)
        conn.execute(f"ALTER TABLE subject_name_keys DISABLE TRIGGER {NAME_KEY_TRIGGER}")
        conn.commit()
        conn.execute("SET synchronous_commit = off")
        loads: dict[str, Iterator[str]] = {
            "subjects": sc.subject_lines(world),
            "subject_name_keys": name_keys.lines(world),
            "subject_identifiers": identifier_lines(world),
            "referrals": referral_lines(generated),
            "referral_categories": sc.category_lines(world),
            "referral_indicators": sc.indicator_lines(world),
            "shares": sc.share_lines(world),
        }
        for table, lines in loads.items():
            mark = time.perf_counter()
            counts[table] = sc._copy(conn, table, COLUMNS[table], lines)
            seconds[f"copy {table}"] = time.perf_counter() - mark
            report(f"COPY {table}: {counts[table]:,} rows in {seconds[f'copy {table}']:.1f}s")
        conn.execute(f"ALTER TABLE subject_name_keys ENABLE TRIGGER {NAME_KEY_TRIGGER}")
        conn.execute(f"SELECT setval('{REFERENCE_SEQUENCE.name}', %s)", (len(world.referrals),))
        conn.commit()
        del world, generated, loads
        gc.collect()
        mark = time.perf_counter()
        sc.rebuild(conn, rebuild_after)
        conn.commit()
        seconds["indexes"] = time.perf_counter() - mark
        report(f"{len(rebuild_after)} keys, indexes and foreign keys made again in "
               f"{seconds['indexes']:.1f}s")  # fmt: skip
        rebuilt = sc.schema_of(conn)
        if rebuilt != migrated:
            raise SystemExit(
                f"the rebuilt schema differs from the migrations': {sorted(rebuilt ^ migrated)[:5]}"
            )
        conn.commit()
        conn.autocommit = True
        mark = time.perf_counter()
        conn.execute(f"VACUUM ANALYZE {', '.join(LOADED)}")
        seconds["vacuum analyze"] = time.perf_counter() - mark
        report(f"VACUUM ANALYZE in {seconds['vacuum analyze']:.1f}s")
        row = conn.execute("SELECT coalesce(max(pos), 0) FROM audit_events").fetchone()
        max_pos = int(row[0]) if row else 0
    seconds["total"] = time.perf_counter() - started
    marker = {
        "bench": "bench.match",
        "seed": SEED_VERSION,
        "children": children,
        "revision": migrate.head_revision(),
        "caller": caller_id,
        "rows": counts,
        "max_pos": max_pos,
        "seeded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    with psycopg.connect(_libpq(database_url(server, "postgres")), autocommit=True) as conn:
        literal = json.dumps(marker).replace("'", "''")
        conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{literal}'")
    report(f"loaded in {seconds['total']:.1f}s")
    return Loaded(url, marker, fresh=True)


def prepare(children: int, server: str, *, reuse: bool) -> Loaded:
    name = database_name(children)
    if reuse:
        marker = _marker(server, name)
        why = None
        if marker is None:
            why = "there is none"
        elif marker.get("seed") != SEED_VERSION or marker.get("children") != children:
            why = "it was loaded by another version of this script"
        elif marker.get("revision") != migrate.head_revision():
            why = f"the migrations moved on (loaded at {marker.get('revision')})"
        if why is None and marker is not None:
            print(f"{name}: reused (loaded {marker['seeded_at']})")
            return Loaded(database_url(server, name), marker, fresh=False)
        print(f"{name}: not reused: {why}")
    print(f"{name}: loading {children:,} children")
    return load(children, server)


def drop(server: str, name: str) -> None:
    with psycopg.connect(_libpq(database_url(server, "postgres")), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the query children -------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    shown: str  # what the request asks, for the table
    expect: str | None  # the confidence an answer must hold (None: no item at all)
    bodies: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Known:
    given: str
    family: str
    aliases: tuple[str, ...]
    born: date | None
    year: int | None
    identifiers: tuple[tuple[str, str], ...]


FALLBACK_COMMON = {"given_name": "Oliver", "family_name": "Smith", "date_of_birth": "2012-05-01"}
POOL = 20  # query bodies per case, rotated through
CANDIDATES = 6000
# Children held by an agency other than the caller in a discoverable referral, and not visible
# to the caller (no share of any referral about them to it): the answer must list someone.
_CANDIDATES = """
    SELECT s.given_name, s.family_name, s.aliases::text, s.date_of_birth, s.estimated_birth_year,
           s.identifiers::text
    FROM subjects s
    WHERE s.created_by_agency <> %(caller)s {extra}
      AND EXISTS (SELECT 1 FROM referrals r WHERE r.subject_id = s.id AND r.discoverable
                  AND r.lead_agency <> %(caller)s)
      AND NOT EXISTS (SELECT 1 FROM referrals r JOIN shares sh ON sh.referral_id = r.id
                      WHERE r.subject_id = s.id AND sh.agency_code = %(caller)s)
    ORDER BY md5(s.id::text)
    LIMIT %(limit)s
"""


def _known(row: tuple[Any, ...]) -> Known:
    given, family, aliases, born, year, identifiers = row
    return Known(
        given,
        family,
        tuple(json.loads(aliases)),
        born,
        year,
        tuple((i["system"], i["value"]) for i in json.loads(identifiers)),
    )


def candidates(url: str, extra: str = "", limit: int = CANDIDATES, **params: Any) -> list[Known]:
    with psycopg.connect(_libpq(url)) as conn:
        rows = conn.execute(
            _CANDIDATES.format(extra=extra), {"caller": CALLER_AGENCY, "limit": limit, **params}
        ).fetchall()
    return [_known(row) for row in rows]


def _typo(word: str) -> str | None:
    """One letter substituted in the middle of a plain word of five letters or more."""
    if len(word) < 5 or not word.isascii() or not word.isalpha():
        return None
    at = len(word) // 2
    replacement = "x" if word[at].lower() != "x" else "z"
    return word[:at] + replacement + word[at + 1 :]


def _alias_names(known: Known) -> tuple[str, str] | None:
    """(given, family) to ask by through an alias: a nickname with the family name, or an alias
    of two words (a name used with another family name); street names are not asked by."""
    for alias in known.aliases:
        if alias in sc.STREET_NAMES:
            continue
        words = alias.split()
        if len(words) == 1 and alias != known.given:
            return alias, known.family
        if len(words) == 2 and min(len(w) for w in words) >= 2:
            return words[0], words[1]
    return None


def _dob(born: date) -> str:
    return born.isoformat()


def build_cases(url: str) -> list[Case]:
    pool = candidates(url)
    dated = [k for k in pool if k.born is not None]
    cases = {
        c.name: c
        for c in (
            Case("exact", "name + date of birth, as recorded", "strong"),
            Case("typo", "one letter of the family name wrong", "strong"),
            Case("accent/case", "accents dropped, upper/lower case", "strong"),
            Case("alias", "an alias and the date of birth", "strong"),
            Case("possible", "name + birth year only", "possible"),
            Case("identifier", "NHS number only", "identifier"),
            Case("common name", '"Oliver Smith" + a date of birth', "strong"),
            Case("two letters", "two-letter given name + date of birth", "strong"),
            Case("no match", "a known name, born four years later", None),
        )
    }

    def body(given: str, family: str, **rest: Any) -> dict[str, Any]:
        return {"given_name": given, "family_name": family, **rest}

    for k in dated:
        dob = _dob(k.born)  # type: ignore[arg-type]
        cases["exact"].bodies.append(body(k.given, k.family, date_of_birth=dob))
        typo = _typo(k.family)
        if typo:
            cases["typo"].bodies.append(body(k.given, typo, date_of_birth=dob))
        if not (k.given + k.family).isascii():
            cases["accent/case"].bodies.append(
                body(names.fold(k.given).upper(), names.fold(k.family), date_of_birth=dob)
            )
        alias = _alias_names(k)
        if alias:
            cases["alias"].bodies.append(body(*alias, date_of_birth=dob))
        cases["possible"].bodies.append(
            body(k.given, k.family, estimated_birth_year=k.born.year)  # type: ignore[union-attr]
        )
        later = k.born.replace(year=k.born.year + 4) if k.born.month != 2 else None  # type: ignore[union-attr]
        if later:
            cases["no match"].bodies.append(body(k.given, k.family, date_of_birth=_dob(later)))
    for k in pool:
        for system, value in k.identifiers:
            if system == "nhs_number":
                cases["identifier"].bodies.append(
                    {"identifiers": [{"system": system, "value": value}]}
                )
    olivers = candidates(
        url,
        "AND s.given_name = 'Oliver' AND s.family_name = 'Smith' AND s.date_of_birth IS NOT NULL",
        limit=POOL * 3,
    )
    for k in olivers:
        cases["common name"].bodies.append(body("Oliver", "Smith", date_of_birth=_dob(k.born)))  # type: ignore[arg-type]
    two = candidates(
        url,
        "AND length(s.given_name) = 2 AND s.date_of_birth IS NOT NULL",
        limit=POOL * 3,
    )
    for k in two:
        cases["two letters"].bodies.append(body(k.given, k.family, date_of_birth=_dob(k.born)))  # type: ignore[arg-type]
    return list(cases.values())


# -- measuring ----------------------------------------------------------------------------------
@dataclass
class Result:
    case: Case
    times: list[float]
    statements: int
    kept: int  # bodies whose answer had the expected confidence
    tried: int
    note: str = ""
    listed: list[int] = field(default_factory=list)  # agencies in each timed answer

    def p(self, share: float) -> float:
        return _percentile(self.times, share) if self.times else float("nan")


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


class Bench:
    """The app on one database, the caller's token, and the measurements."""

    def __init__(self, loaded: Loaded, folder: Path) -> None:
        self.loaded = loaded
        self.app = create_app(
            {
                "DATABASE_URL": loaded.url,
                "ISSUER": "http://casehub.bench",
                "SIGNING_KEYS_FILE": str(folder / "signing-keys.json"),
                "WEBHOOK_KEY_FILE": str(folder / "webhook-key"),
                "CLIENT_SECRET_SCRYPT_N": SCRYPT_N,
                "AUDIT_SEQUENCER": False,
                "LOG_LEVEL": "warning",  # a line per request would be measured too
                "RATE_LIMITS_ENABLED": True,
                **RATE_LIMITS_OUT_OF_REACH,
            }
        )
        engine = get_db(self.app).engine
        assert engine is not None
        self.engine = engine
        self.http = self.app.test_client()
        self.client_id = str(loaded.marker["caller"])
        self.secret = generate_secret()  # a new one: only its hash was ever stored
        with psycopg.connect(_libpq(loaded.url)) as conn:
            conn.execute(
                "UPDATE clients SET secret_hash = %s WHERE client_id = %s",
                (hash_secret(self.secret, n=SCRYPT_N), self.client_id),
            )
        self.token: tuple[float, str] | None = None

    def headers(self) -> dict[str, str]:
        if self.token is None or time.monotonic() - self.token[0] > 600:  # tokens live 900 s
            basic = sc.base64_credentials(self.client_id, self.secret)
            response = self.http.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {basic}"},
            )
            assert response.status_code == 200, response.get_json()
            self.token = (time.monotonic(), str(response.get_json()["access_token"]))
        return {"Authorization": f"Bearer {self.token[1]}"}

    def ask(self, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        headers = self.headers()
        started = time.perf_counter()
        response = self.http.post("/v1/matches", json=body, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code not in (200, 201):
            raise SystemExit(
                f"POST /v1/matches {json.dumps(body)} answered {response.status_code}: "
                f"{response.get_data(as_text=True)[:500]}"
            )
        return elapsed, response.get_json()

    @staticmethod
    def answered(case: Case, answer: dict[str, Any]) -> bool:
        items = answer.get("items", [])
        if case.expect is None:
            return not items
        return any(item.get("confidence") == case.expect for item in items)

    def statements(self, body: dict[str, Any]) -> list[tuple[str, Any]]:
        sent: list[tuple[str, Any]] = []

        def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            sent.append((statement, parameters))

        self.headers()  # a token fetched now is not the request's
        event.listen(self.engine, "before_cursor_execute", capture)
        try:
            self.ask(body)
        finally:
            event.remove(self.engine, "before_cursor_execute", capture)
        return sent

    def measure(self, case: Case, requests: int) -> Result:
        kept: list[dict[str, Any]] = []
        tried = 0
        for body in case.bodies:
            if len(kept) >= POOL or tried >= POOL * 10:
                break
            tried += 1
            if self.answered(case, self.ask(body)[1]):
                kept.append(body)
        if not kept:
            return Result(case, [], 0, 0, tried, "no query body got the expected answer")
        statements = len(self.statements(kept[0]))
        for index in range(max(20, requests // 10)):  # caches, the pool, the plans
            self.ask(kept[index % len(kept)])
        gc.collect()
        gc.freeze()  # a full collection in the timed loop would make a p99 of its own
        times: list[float] = []
        listed: list[int] = []
        for index in range(requests):
            elapsed, answer = self.ask(kept[index % len(kept)])
            times.append(elapsed)
            listed.append(len(answer["items"]))
        gc.unfreeze()
        return Result(case, times, statements, len(kept), tried, listed=listed)

    def explain(self, body: dict[str, Any]) -> list[str]:
        out: list[str] = []
        self.ask(body)  # warm
        sent = self.statements(body)
        out.append(f"POST /v1/matches {json.dumps(body)}: {len(sent)} statements")
        for number, (statement, parameters) in enumerate(sent, start=1):
            first = statement.lstrip().split(None, 1)[0].upper()
            text = " ".join(statement.split())
            if first not in ("SELECT", "WITH"):
                shown = text if len(text) < 300 else text[:300] + " …"
                out.append(f"\n-- statement {number}: {shown}\n   (a write: not explained)")
                continue
            out.append(f"\n-- statement {number}: {text}")
            if isinstance(parameters, list):  # executemany: the first row's
                parameters = parameters[0] if parameters else None
            out.append(f"   parameters: {parameters!r}"[:2000])
            with self.engine.connect() as connection:
                transaction = connection.begin()
                try:
                    plan = connection.exec_driver_sql(
                        "EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters
                    ).scalars()
                    out.extend(f"   {line}" for line in plan)
                except DBAPIError as error:
                    out.append(f"   (could not be explained: {type(error.orig).__name__})")
                finally:
                    transaction.rollback()
        return out

    def close(self) -> None:
        self.engine.dispose()
        forget_measurements(self.loaded)


def forget_measurements(loaded: Loaded) -> None:
    """Remove the matches and audit events measuring wrote (never chained: the sequencer is
    off), so a kept database meets the next run as loaded. audit_events refuses DELETE by
    trigger; on this scratch copy it is set aside (session_replication_role), as bench.scale
    does."""
    with psycopg.connect(_libpq(loaded.url), autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("DELETE FROM matches")
            after = loaded.marker.get("max_pos", 0)
            conn.execute("DELETE FROM audit_pending WHERE pos > %s", (after,))
            conn.execute("DELETE FROM audit_events WHERE pos > %s", (after,))
        conn.execute("VACUUM ANALYZE matches, audit_events, audit_pending")


def table_sizes(url: str) -> dict[str, str]:
    with psycopg.connect(_libpq(url)) as conn:
        rows = conn.execute(
            "SELECT t, pg_size_pretty(pg_total_relation_size(t::regclass)) "
            "FROM unnest(%s::text[]) t",
            (list(LOADED),),
        ).fetchall()
    return {str(t): str(size) for t, size in rows}


def print_results(children: int, results: list[Result]) -> None:
    print(
        f"\n{database_name(children)}: POST /v1/matches, ms (in process, Flask test client, "
        "real token, after a warm-up)"
    )
    print(
        f"  {'case':12} {'request':42} {'pool':>5} {'n':>5} {'p50':>8} {'p99':>8} {'stmts':>5} "
        f"{'listed':>6}"
    )
    for r in results:
        if not r.times:
            print(f"  {r.case.name:12} {r.case.shown:42} {r.kept:>2}/{r.tried:<2} —  {r.note}")
            continue
        print(
            f"  {r.case.name:12} {r.case.shown:42} {r.kept:>5} {len(r.times):>5} "
            f"{r.p(0.5):8.1f} {r.p(0.99):8.1f} {r.statements:>5} "
            f"{statistics.median(r.listed):>6.0f}"
        )


def _uptime() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default=",".join(str(s) for s in DEFAULT_SCALES))
    parser.add_argument("--database-url", default=None, help="a PostgreSQL server")
    parser.add_argument("--keep", action="store_true", help="keep each database afterwards")
    parser.add_argument("--reuse", action="store_true", help="reuse a kept database")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per case")
    parser.add_argument("--json", action="store_true", help="the figures as JSON too")
    parser.add_argument("--no-explain", action="store_true")
    parser.add_argument("--load-only", action="store_true", help="load, do not measure")
    parser.add_argument("--only", default="", help="measure the cases whose name holds this")
    options = parser.parse_args(argv)
    scales = [int(s.replace("_", "")) for s in options.scales.split(",") if s]
    server = server_url(options.database_url)
    if make_url(server).get_backend_name() != "postgresql":
        raise SystemExit("bench.match needs PostgreSQL (--database-url postgresql+psycopg://…)")
    folder = Path(tempfile.mkdtemp(prefix="casehub-bench-match-"))
    print(
        "rate limits: enabled, every class (RATE_LIMIT_MATCH too) at 100000000/minute; "
        f"load average at start {_uptime()}"
    )
    figures: dict[str, Any] = {}
    explained: list[str] = []
    for index, children in enumerate(scales):
        loaded = prepare(children, server, reuse=options.reuse)
        entry: dict[str, Any] = {
            "loaded_at": loaded.marker["seeded_at"],
            "load_seconds": loaded.marker["seconds"],
            "rows": loaded.marker["rows"],
            "sizes": table_sizes(loaded.url),
        }
        print(
            f"{database_name(children)}: loaded {loaded.marker['seeded_at']} in "
            f"{loaded.marker['seconds']['total']:.0f}s; rows "
            + ", ".join(f"{t} {n:,}" for t, n in loaded.marker["rows"].items())
            + "; sizes "
            + ", ".join(f"{t} {size}" for t, size in entry["sizes"].items())
        )
        figures[str(children)] = entry
        try:
            if not options.load_only:
                bench = Bench(loaded, folder)
                try:
                    cases = build_cases(loaded.url)
                    results = []
                    for case in cases:
                        if options.only not in case.name:
                            continue
                        results.append(bench.measure(case, options.requests))
                    entry["load_average"] = _uptime()
                    entry["cases"] = {
                        r.case.name: {
                            "request": r.case.shown,
                            "p50_ms": round(r.p(0.5), 2) if r.times else None,
                            "p99_ms": round(r.p(0.99), 2) if r.times else None,
                            "requests": len(r.times),
                            "pool": r.kept,
                            "statements": r.statements,
                            "agencies_listed_median": statistics.median(r.listed)
                            if r.listed
                            else None,
                            **({"note": r.note} if r.note else {}),
                        }
                        for r in results
                    }
                    print_results(children, results)
                    print(f"  load average after: {entry['load_average']}")
                    common = next(c for c in cases if c.name == "common name")
                    if index == len(scales) - 1 and not options.no_explain:
                        body = (common.bodies or [FALLBACK_COMMON])[0]
                        explained = bench.explain(body)
                        entry["explain_common_name"] = explained
                        print(f"\nEXPLAIN (ANALYZE, BUFFERS) on {database_name(children)}:")
                        print("\n".join(explained))
                finally:
                    bench.close()
        finally:
            if not options.keep:
                drop(server, database_name(children))
    if options.json:
        print(json.dumps({"scales": figures}, indent=2, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
