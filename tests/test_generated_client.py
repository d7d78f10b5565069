"""The #LookCloser journey as partner systems would make it: a Python client generated from
openapi/casehub.json by openapi-python-client, against casehub served by gunicorn on a database of
its own, with tokens from authlib's stock OAuth 2 client. No request to the API is made by hand,
so a step the generated client cannot make is a defect in the contract."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import chain
from pathlib import Path
from typing import Any

import pytest
from authlib.oauth2.rfc7523 import JWTBearerGrant
from joserfc.jwk import ECKey

from tests.live_server import (
    BIN,
    REPO,
    LiveServer,
    casehub,
    casehub_json,
    free_port,
    fresh_database,
    gunicorn,
    server_environment,
)
from tests.oauth_support import JWT_BEARER, OAuth2Client, segments

SPEC = REPO / "openapi" / "casehub.json"
PACKAGE = "casehub_client"
AUDIT_CHAINED_WITHIN = 10.0  # seconds; the sequencer runs every 0.5 s

CASE_SCOPES = "referrals:read referrals:write referrals:share subjects:read subjects:write"
# referrals:write, so that the charity's refused note is its read-only share speaking, not a scope.
PARTNER_SCOPES = "referrals:read referrals:write subjects:read"
AGENCIES = {
    "btp": {"name": "British Transport Police", "kind": "police"},
    "nottingham-cs": {
        "name": "Nottingham City Children's Services",
        "kind": "local_authority",
        "area": "Nottingham",
    },
    "tcs": {"name": "The Children's Society", "kind": "charity"},
    "probation-em": {"name": "Probation Service East Midlands", "kind": "probation"},
    "notts-police": {"name": "Nottinghamshire Police", "kind": "police"},
    "partnership": {
        "name": "Nottingham Safeguarding Partnership",
        "kind": "other",
        "platform": True,
    },
}
PARTNER_SYSTEMS = {  # one per agency, registered by the operator
    "btp": {"agency": "btp", "scopes": f"{CASE_SCOPES} admin"},
    "la": {"agency": "nottingham-cs", "scopes": CASE_SCOPES},
    "charity": {"agency": "tcs", "scopes": PARTNER_SCOPES},
    "probation": {"agency": "probation-em", "scopes": PARTNER_SCOPES},
    "auditor": {"agency": "partnership", "scopes": "audit:read:all"},
    "la-integration": {"agency": "nottingham-cs", "scopes": "webhooks:manage referrals:read"},
    # Joining the dots (CONTRACT §9, §10): BTP's and the county force's matching systems.
    "btp-dots": {"agency": "btp", "scopes": "subjects:match referrals:read"},
    # referrals:write, so that the refused note is the emergency access being read-only.
    "police-dots": {
        "agency": "notts-police",
        "scopes": "subjects:match referrals:emergency referrals:read referrals:write",
    },
    # A child's record over time (CONTRACT §11, §12): children's services' data protection
    # officer's system, its case system, and the partnership's analysts'.
    "la-records": {"agency": "nottingham-cs", "scopes": f"{CASE_SCOPES} subjects:sar"},
    "analyst": {"agency": "partnership", "scopes": "statistics:read"},
}


# -- the generated client ------------------------------------------------------------------------
@dataclass
class Generated:
    output: str  # everything the generator printed
    package: Path


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generated]:
    """openapi-python-client run on the committed contract; its package importable meanwhile."""
    folder = tmp_path_factory.mktemp("generated")
    config = folder / "config.json"
    config.write_text(
        json.dumps(
            {
                "package_name_override": PACKAGE,
                "project_name_override": PACKAGE,
                "post_hooks": [],  # formatting the generated code is not what is tested
            }
        )
    )
    package = folder / PACKAGE
    options = {"--path": SPEC, "--config": config, "--meta": "none", "--output-path": package}
    run = subprocess.run(
        [str(BIN / "openapi-python-client"), "generate", *map(str, chain(*options.items()))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    sys.path.insert(0, str(folder))
    yield Generated(output, package)
    sys.path.remove(str(folder))
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def test_the_contract_generates_a_client_without_warnings(generated):
    assert generated.output.splitlines() == [f"Generating {generated.package}"]


# -- the partnership, served live ----------------------------------------------------------------
@dataclass
class Credentials:
    client_id: str
    client_secret: str


@dataclass
class Partnership:
    server: LiveServer
    systems: dict[str, Credentials]
    env: dict[str, str]


@pytest.fixture(scope="module")
def partnership(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Partnership]:
    """gunicorn on a fresh database that the `casehub` command set up: five agencies and a
    partner system for each. (Each command costs a second or so, mostly imports: what partners
    can do for themselves, such as registering another system, is left to the journey.)"""
    folder = tmp_path_factory.mktemp("live")
    with fresh_database(folder) as database_url:
        env = server_environment(folder, database_url, free_port())
        casehub(env, ["db", "upgrade"])
        casehub(env, *(cli("agencies add", code, **about) for code, about in AGENCIES.items()))
        systems = casehub_json(
            env,
            *(
                cli("clients add", name=f"{name} system", json=True, **about)
                for name, about in PARTNER_SYSTEMS.items()
            ),
        )
        with gunicorn(env, folder) as server:
            yield Partnership(
                server,
                {
                    name: Credentials(**created)
                    for name, created in zip(PARTNER_SYSTEMS, systems, strict=True)
                },
                env,
            )


@pytest.fixture
def connect(generated, partnership) -> Iterator[Callable[[str], Any]]:
    """An AuthenticatedClient of the generated package for a bearer token, closed afterwards."""
    from casehub_client import AuthenticatedClient

    with ExitStack() as open_clients:

        def connect(token: str) -> AuthenticatedClient:
            client = AuthenticatedClient(base_url=partnership.server.base_url, token=token)
            return open_clients.enter_context(client)

        yield connect


def cli(command: str, *arguments: str, **options: object) -> list[str]:
    """`cli("users add", agency="btp", json=True)` is `casehub users add --agency btp --json`."""
    flags = [
        [f"--{name}"] if value is True else [f"--{name}", str(value)]
        for name, value in options.items()
    ]
    return [*command.split(), *arguments, *chain(*flags)]


def system_token(server: LiveServer, system: Credentials) -> str:
    """client_credentials with client_secret_basic, as a partner system acting as itself."""
    with OAuth2Client(system.client_id, system.client_secret) as oauth:
        token = oauth.fetch_token(server.token_url, grant_type="client_credentials")
    return str(token["access_token"])


def person_token(server: LiveServer, app: Credentials, key: ECKey, user_id: str) -> dict[str, Any]:
    """The jwt-bearer grant: the partner system signs an assertion naming one of its people."""
    assertion = JWTBearerGrant.sign(
        key,
        issuer=app.client_id,
        audience=server.token_url,
        subject=user_id,
        expires_at=int(time.time()) + 120,
        header={"kid": key.kid},
        alg="ES256",
    )
    with OAuth2Client(app.client_id, app.client_secret) as oauth:
        return dict(oauth.fetch_token(server.token_url, grant_type=JWT_BEARER, assertion=assertion))


def every_page(operation: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
    """Call a list operation's `sync` and follow `next_cursor` until it is null."""
    page = operation(*args, **kwargs)
    yield page
    while page.next_cursor is not None:
        page = operation(*args, **kwargs, cursor=page.next_cursor)
        yield page


def every_item(operation: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
    for page in every_page(operation, *args, **kwargs):
        yield from page.items


def fifteen_years_ago() -> date:
    return date(date.today().year - 15, 1, 1)


# -- the journey ---------------------------------------------------------------------------------
def test_look_closer_journey(partnership, connect):
    from casehub_client.api.admin import create_client, create_user
    from casehub_client.api.audit import (
        export_audit_events,
        list_audit_events,
        list_referral_accesses,
        verify_audit_chain,
    )
    from casehub_client.api.indicators import list_indicators
    from casehub_client.api.ops import get_readiness
    from casehub_client.api.referrals import (
        create_note,
        create_referral,
        get_referral,
        list_referrals,
        transition_referral,
    )
    from casehub_client.api.shares import (
        acknowledge_share,
        revoke_share,
        share_referral,
        transfer_referral,
    )
    from casehub_client.api.subjects import search_subjects
    from casehub_client.models import (
        Address,
        Article6Basis,
        AuditExportFormat,
        AuditOutcome,
        Category,
        ClientCreate,
        Consent,
        ConsentStatus,
        Gender,
        Jwks,
        JwksKeysItem,
        LawfulBasis,
        Location,
        NoteCreate,
        NoteVisibility,
        ProcessingCondition,
        PurposeOfUse,
        Referral,
        ReferralCreate,
        ReferralStatus,
        RiskLevel,
        Role,
        Scope,
        ShareAccess,
        ShareCreate,
        SharePurpose,
        ShareRevoke,
        ShareStatus,
        SubjectCreate,
        Transfer,
        TransitionCreate,
        UserCreate,
    )

    server = partnership.server

    btp, la, charity, probation, auditor = (
        connect(system_token(server, partnership.systems[name]))
        for name in ("btp", "la", "charity", "probation", "auditor")
    )
    assert get_readiness.sync_detailed(client=btp).status_code == 200

    # BTP's form maps the officer's ticks to #LookCloser indicator codes from the reference list.
    indicators = {i.label: i.code for i in every_item(list_indicators.sync, client=btp)}
    seen = [
        indicators["Travelling alone during school hours"],
        next(code for label, code in indicators.items() if label.startswith("Multiple phones")),
    ]

    # -- BTP raises a referral about a boy at Nottingham station, with an Idempotency-Key ---------
    def sighting(risk: RiskLevel = RiskLevel.HIGH, **child: Any) -> ReferralCreate:
        """A report from the station; `child` is `subject=` (a new child) or `subject_id=`."""
        return ReferralCreate(
            categories=[Category.COUNTY_LINES, Category.CCE],
            indicators=seen,
            summary="Boy, 15, travelling alone in school hours with two phones.",
            narrative="Seen by officers on platform 4 at 10:40; would not say where he was going.",
            observed_at=datetime.now(UTC) - timedelta(hours=2),
            location=Location(
                description="Platform 4", postcode="NG2 3AQ", transport_hub="Nottingham station"
            ),
            risk_level=risk,
            **child,
        )

    jayden = SubjectCreate(
        given_name="Jayden",
        family_name="Okafor",
        date_of_birth=fifteen_years_ago(),
        gender=Gender.MALE,
        address=Address(line="12 Hartley Road", town="Nottingham", postcode="NG7 3AF"),
    )
    first_report = sighting(subject=jayden)
    once = f"btp-niche-{uuid.uuid4()}"
    created = create_referral.sync_detailed(client=btp, body=first_report, idempotency_key=once)
    assert created.status_code == 201, created.content
    referral = created.parsed
    assert isinstance(referral, Referral)
    assert referral.lead_agency == "btp"
    assert referral.status is ReferralStatus.SUBMITTED
    assert referral.risk_level is RiskLevel.HIGH
    assert referral.categories == [Category.COUNTY_LINES, Category.CCE]
    assert referral.indicators == seen
    assert referral.reference.startswith("CH-")
    # The officer's radio dropped and the system sent it again: the same referral comes back.
    replayed = create_referral.sync_detailed(client=btp, body=first_report, idempotency_key=once)
    assert replayed.status_code == 201
    assert replayed.parsed.id == referral.id

    # -- BTP finds the child again under a misspelt name ------------------------------------------
    found = search_subjects.sync(client=btp, q="Jaydn Okafor")
    assert [s.id for s in found.items] == [referral.subject_id]
    (child,) = found.items
    assert child.date_of_birth == jayden.date_of_birth
    assert child.address.postcode == "NG7 3AF"

    # -- two more sightings; BTP pages through its referrals and filters them ----------------------
    later = [
        create_referral.sync(client=btp, body=sighting(risk, subject_id=child.id))
        for risk in (RiskLevel.MEDIUM, RiskLevel.HIGH)
    ]
    pages = list(every_page(list_referrals.sync, client=btp, limit=2))
    assert [len(page.items) for page in pages] == [2, 1]
    walked = [r.id for page in pages for r in page.items]
    assert sorted(walked) == sorted([referral.id, *(r.id for r in later)])  # each exactly once
    high = every_item(list_referrals.sync, client=btp, risk_level=RiskLevel.HIGH, limit=2)
    assert sorted(r.id for r in high) == sorted([referral.id, later[1].id])

    # -- BTP shares the first referral with the child's local authority ---------------------------
    safeguarding = LawfulBasis(
        article_6=Article6Basis.PUBLIC_TASK,
        condition=ProcessingCondition.DPA2018_SCH1_PARA18_SAFEGUARDING,
        gateway="Children Act 2004 s11",
    )
    shared = share_referral.sync_detailed(
        referral.id,
        client=btp,
        body=ShareCreate(
            agency="nottingham-cs",
            access=ShareAccess.CONTRIBUTE,
            purpose=SharePurpose.MASH_TRIAGE,
            necessity="The MASH needs the sighting to assess risk to the child today.",
            lawful_basis=safeguarding,
            consent=Consent(
                status=ConsentStatus.NOT_SOUGHT,
                rationale="Seeking consent could alert those exploiting him.",
            ),
        ),
    )
    assert shared.status_code == 201, shared.content
    la_share = shared.parsed
    assert la_share.status is ShareStatus.ACTIVE
    assert la_share.acknowledged_at is None

    # -- the local authority reads it for MASH triage, acknowledges and adds a note ----------------
    read = get_referral.sync_detailed(
        referral.id, client=la, purpose_of_use=PurposeOfUse.MASH_TRIAGE
    )
    assert read.status_code == 200
    assert read.parsed.summary == referral.summary
    acknowledged = acknowledge_share.sync(referral.id, la_share.id, client=la)
    assert acknowledged.acknowledged_at is not None
    note = create_note.sync_detailed(
        referral.id,
        client=la,
        body=NoteCreate(
            body="Known to early help; strategy discussion tomorrow 09:30.",
            visibility=NoteVisibility.SHARED,
        ),
    )
    assert note.status_code == 201, note.content
    assert note.parsed.author.agency == "nottingham-cs"

    # -- BTP transfers the lead to the local authority ---------------------------------------------
    at_btp = get_referral.sync_detailed(referral.id, client=btp)
    transfer = Transfer(
        agency="nottingham-cs",
        reason="Children's services lead the safeguarding response from here.",
        lawful_basis=safeguarding,
    )
    transferred = transfer_referral.sync_detailed(
        referral.id, client=btp, body=transfer, if_match=at_btp.headers["ETag"]
    )
    assert transferred.status_code == 200, transferred.content
    assert transferred.parsed.lead_agency == "nottingham-cs"

    # -- the new lead moves it through its workflow, guarded by If-Match ---------------------------
    at_la = get_referral.sync_detailed(referral.id, client=la)
    etag = at_la.headers["ETag"]
    moved = transition_referral.sync_detailed(
        referral.id, client=la, body=TransitionCreate(to=ReferralStatus.ACKNOWLEDGED), if_match=etag
    )
    assert moved.status_code == 200, moved.content
    assert moved.parsed.status is ReferralStatus.ACKNOWLEDGED
    stale = transition_referral.sync_detailed(
        referral.id,
        client=la,
        body=TransitionCreate(to=ReferralStatus.IN_ASSESSMENT),
        if_match=etag,
    )
    assert stale.status_code == 412
    moved = transition_referral.sync_detailed(
        referral.id,
        client=la,
        body=TransitionCreate(to=ReferralStatus.IN_ASSESSMENT),
        if_match=moved.headers["ETag"],
    )
    assert moved.status_code == 200, moved.content
    assert moved.parsed.status is ReferralStatus.IN_ASSESSMENT

    # -- the local authority shares it read-only with The Children's Society -----------------------
    shared = share_referral.sync_detailed(
        referral.id,
        client=la,
        body=ShareCreate(
            agency="tcs",
            access=ShareAccess.READ,
            purpose=SharePurpose.SUPPORT_SERVICE,
            necessity="A Children's Society worker will offer him support at school.",
            lawful_basis=safeguarding,
            consent=Consent(status=ConsentStatus.GIVEN),
        ),
    )
    assert shared.status_code == 201, shared.content
    charity_share = shared.parsed
    read = get_referral.sync_detailed(
        referral.id, client=charity, purpose_of_use=PurposeOfUse.SUPPORT_SERVICE
    )
    assert read.status_code == 200
    assert read.parsed.lead_agency == "nottingham-cs"
    refused = create_note.sync_detailed(
        referral.id,
        client=charity,
        body=NoteCreate(body="Met him at school.", visibility=NoteVisibility.SHARED),
    )
    assert refused.status_code == 403
    assert refused.parsed.status == 403  # a Problem (application/problem+json)

    # -- probation, never shared with, cannot tell the referral exists -----------------------------
    assert get_referral.sync_detailed(referral.id, client=probation).status_code == 404

    # -- the lead revokes the charity's share; from then on it has no access -----------------------
    revoked = revoke_share.sync_detailed(
        referral.id,
        charity_share.id,
        client=la,
        body=ShareRevoke(reason="Support offer declined; no further need to know."),
    )
    assert revoked.status_code == 200, revoked.content
    assert revoked.parsed.status is ShareStatus.REVOKED
    assert get_referral.sync_detailed(referral.id, client=charity).status_code == 404

    # -- the partnership's auditor follows the referral through the audit trail --------------------
    deadline = time.monotonic() + AUDIT_CHAINED_WITHIN
    while True:
        events = list(
            every_item(list_audit_events.sync, client=auditor, referral_id=referral.id, limit=200)
        )
        actions = [e.action for e in events]
        if "share.revoke" in actions and any(
            e.actor.agency == "tcs" and e.outcome is AuditOutcome.DENIED
            for e in events[actions.index("share.revoke") :]
        ):
            # The charity's refused read after the revocation is the last thing done. (It was
            # refused a note earlier too, so the revocation must be seen before it counts.)
            break
        assert time.monotonic() < deadline, [(e.action, e.actor.agency) for e in events]
        time.sleep(0.2)
    actions = {e.action for e in events}
    assert {"referral.create", "share.create", "referral.transfer", "share.revoke"} <= actions
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert {e.referral_id for e in events} == {referral.id}

    ndjson = export_audit_events.sync_detailed(
        client=auditor, referral_id=referral.id, format_=AuditExportFormat.NDJSON
    )
    assert ndjson.status_code == 200
    exported = [json.loads(line) for line in ndjson.parsed.splitlines()]
    assert [e["id"] for e in exported] == [str(e.id) for e in events]
    as_csv = export_audit_events.sync_detailed(
        client=auditor, referral_id=referral.id, format_=AuditExportFormat.CSV
    )
    assert as_csv.status_code == 200
    rows = list(csv.DictReader(io.StringIO(as_csv.parsed)))
    assert [row["id"] for row in rows] == [str(e.id) for e in events]

    verified = verify_audit_chain.sync(client=auditor)
    assert verified.ok is True
    assert verified.first_bad_seq is None
    assert verified.events >= len(events)

    # -- the lead sees who used what was shared, and on what basis ---------------------------------
    accesses = list(every_item(list_referral_accesses.sync, referral.id, client=la))
    reads = {
        (a.actor.agency, a.basis, a.purpose)
        for a in accesses
        if a.action == "referral.read" and a.outcome is AuditOutcome.ALLOWED
    }
    assert ("nottingham-cs", f"share:{la_share.id}", PurposeOfUse.MASH_TRIAGE) in reads
    assert ("tcs", f"share:{charity_share.id}", PurposeOfUse.SUPPORT_SERVICE) in reads
    refusals = {(a.actor.agency, a.outcome) for a in accesses if a.outcome is AuditOutcome.DENIED}
    assert refusals >= {("tcs", AuditOutcome.DENIED), ("probation-em", AuditOutcome.DENIED)}
    assert get_referral.sync_detailed(referral.id, client=btp).status_code == 200  # contribute
    assert list_referral_accesses.sync_detailed(referral.id, client=btp).status_code == 404

    # -- BTP registers its officers' app with a public key, and an officer who uses it ------------
    key = ECKey.generate_key("P-256", auto_kid=True)
    registered = create_client.sync_detailed(
        client=btp,
        body=ClientCreate(
            name="BTP officers' app",
            scopes=[Scope.REFERRALS_READ, Scope.REFERRALS_WRITE, Scope.SUBJECTS_READ],
            jwks=Jwks(keys=[JwksKeysItem.from_dict(key.as_dict(private=False))]),
        ),
    )
    assert registered.status_code == 201, registered.content
    app = Credentials(registered.parsed.client_id, registered.parsed.client_secret)
    added = create_user.sync_detailed(
        client=btp,
        body=UserCreate(
            email="pc.ahmed@btp.example", name="PC Sara Ahmed", roles=[Role.CASEWORKER]
        ),
    )
    assert added.status_code == 201, added.content
    officer = added.parsed

    # -- the officer acts in person through the app (the jwt-bearer grant) ------------------------
    token = person_token(server, app, key, str(officer.id))
    assert token["scope"] == "referrals:read referrals:write subjects:read"
    _, claims = segments(token["access_token"])
    assert claims["sub"] == str(officer.id)
    assert claims["roles"] == ["caseworker"]
    assert claims["agency"] == "btp"
    in_person = connect(token["access_token"])
    mine = list(every_item(list_referrals.sync, client=in_person, lead_agency="btp"))
    assert sorted(r.id for r in mine) == sorted(r.id for r in later)
    with_btp = list(every_item(list_referrals.sync, client=in_person, shared_with_me=True))
    assert [r.id for r in with_btp] == [referral.id]  # the share BTP kept on transferring
    noted = create_note.sync_detailed(
        referral.id,
        client=in_person,
        body=NoteCreate(
            body="Saw him again at the station, 16:10.", visibility=NoteVisibility.SHARED
        ),
    )
    assert noted.status_code == 201, noted.content
    assert noted.parsed.author.user_id == officer.id


# -- notifications, as a partner's integration meets them ----------------------------------------
@contextmanager
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A webhook receiver on loopback that keeps every request (headers, body) and answers 204."""
    received: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/casehub/events", received
    finally:
        server.shutdown()
        server.server_close()


def test_a_partner_hears_of_a_share_by_webhook_and_by_feed(partnership, connect):
    """The local authority's integration subscribes with the generated client, BTP shares a
    referral with it, a `casehub webhooks worker` delivers, the integration verifies the
    signature, takes the ids and reads the referral with its own token; its feed holds the same
    event."""
    from casehub_client.api.referrals import create_referral, get_referral
    from casehub_client.api.shares import share_referral
    from casehub_client.api.webhooks import (
        create_webhook,
        list_events,
        list_webhook_deliveries,
    )
    from casehub_client.models import (
        Article6Basis,
        Category,
        Consent,
        ConsentStatus,
        EventType,
        Gender,
        LawfulBasis,
        ReferralCreate,
        RiskLevel,
        ShareAccess,
        ShareCreate,
        SharePurpose,
        SubjectCreate,
        WebhookCreate,
        WebhookStatus,
    )
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    server, systems = partnership.server, partnership.systems
    btp = connect(system_token(server, systems["btp"]))
    la = connect(system_token(server, systems["la-integration"]))

    with receiver() as (url, received):
        made = create_webhook.sync_detailed(
            client=la,
            body=WebhookCreate(url=url, events=[EventType.REFERRAL_SHARED, EventType.NOTE_ADDED]),
        )
        assert made.status_code == 201, made.content
        hook = made.parsed
        assert hook.status is WebhookStatus.ACTIVE and hook.secret.startswith("whsec_")

        child = SubjectCreate(
            given_name="Kai",
            family_name="Webb",
            date_of_birth=fifteen_years_ago(),
            gender=Gender.MALE,
        )
        referral = create_referral.sync_detailed(
            client=btp,
            body=ReferralCreate(
                categories=[Category.COUNTY_LINES],
                summary="Boy, 15, with two phones at Nottingham station in school hours.",
                narrative="Would not say where he was going.",
                observed_at=datetime.now(UTC) - timedelta(hours=1),
                risk_level=RiskLevel.HIGH,
                subject=child,
            ),
        ).parsed
        shared = share_referral.sync_detailed(
            referral.id,
            client=btp,
            body=ShareCreate(
                agency="nottingham-cs",
                access=ShareAccess.READ,
                purpose=SharePurpose.MASH_TRIAGE,
                necessity="The MASH needs the sighting to assess risk to the child today.",
                lawful_basis=LawfulBasis(article_6=Article6Basis.PUBLIC_TASK),
                consent=Consent(
                    status=ConsentStatus.NOT_SOUGHT,
                    rationale="Seeking consent could alert those exploiting him.",
                ),
            ),
        )
        assert shared.status_code == 201, shared.content
        printed = casehub(partnership.env, ["webhooks", "worker", "--once"])[0]
        assert printed.strip() == "made 1 delivery attempt", printed

    assert len(received) == 1
    headers, body = received[0]
    verifier = Webhook(hook.secret)
    event = verifier.verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        verifier.verify(body.replace(b"referral.shared", b"referral.sharex"), headers)
    assert event["type"] == "referral.shared" and headers["webhook-id"] == event["id"]
    assert event["data"] == {
        "referral_id": str(referral.id),
        "share_id": str(shared.parsed.id),
        "agency": "btp",
    }
    for personal in (b"Kai", b"Webb", b"two phones", b"where he was going"):
        assert personal not in body

    # The payload carries ids only: the integration reads the referral with its own token.
    read = get_referral.sync_detailed(uuid.UUID(event["data"]["referral_id"]), client=la)
    assert read.status_code == 200 and read.parsed.summary.startswith("Boy, 15")

    # The feed holds the same event (after those of the journey above, which ran first). On
    # PostgreSQL the feed serves only what transactions older than every running one wrote, and
    # that horizon is the cluster's: a transaction open in another test's database holds it back
    # for as long as it runs, so the event is there soon, not necessarily at once.
    deadline = time.monotonic() + 30
    while True:
        fed = list(every_item(list_events.sync, client=la, limit=2))
        if (fed and str(fed[-1].id) == event["id"]) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert str(fed[-1].id) == event["id"] and fed[-1].type_ is EventType.REFERRAL_SHARED
    assert sorted(str(e.id) for e in fed) == sorted({str(e.id) for e in fed})
    poll = list_events.sync(client=la, limit=200)
    later = list_events.sync(client=la, cursor=poll.poll_cursor)
    assert later.items == [] and later.next_cursor is None
    attempts = list_webhook_deliveries.sync(hook.id, client=la).items
    assert [(str(a.event_id), a.attempt, a.http_status) for a in attempts] == [
        (event["id"], 1, 204)
    ]


# -- joining the dots, as partner systems meet it (CONTRACT §9, §10) -----------------------------
def test_joining_the_dots_journey(partnership, connect):
    """Children's services hold a referral about a girl; BTP, worried about her, asks whether she
    is known elsewhere (a name with a typo and her date of birth, then her NHS number alone),
    requests access and is granted a share; the county force, declined, breaks the glass, which
    the holder ends early; a partnership auditor reviews it. Existence only until a share.
    (It runs after the journeys above, in file order: the share it gives BTP would otherwise be
    in the BTP officer's `shared_with_me` list there.)"""
    from casehub_client.api.access_requests import (
        create_access_request,
        create_sharing_decision,
        decide_access_request,
        get_access_request,
        list_access_requests,
        list_sharing_decisions,
    )
    from casehub_client.api.audit import list_referral_accesses
    from casehub_client.api.emergency import (
        create_emergency_access,
        end_emergency_access,
        get_emergency_access,
        list_reviews,
        review_emergency_access,
    )
    from casehub_client.api.matches import create_match
    from casehub_client.api.referrals import create_note, create_referral, get_referral
    from casehub_client.models import (
        AccessDecision,
        AccessDecisionOutcome,
        AccessRequestCreate,
        AccessRequestDirection,
        AccessRequestStatus,
        AccessRequestUrgency,
        AgencyKind,
        Article6Basis,
        AuditOutcome,
        Category,
        Consent,
        ConsentStatus,
        DecisionCreate,
        EmergencyAccessCreate,
        EmergencyAccessStatus,
        Gender,
        Identifier,
        IdentifierSystem,
        LawfulBasis,
        MatchConfidence,
        MatchCreate,
        NoteCreate,
        NoteVisibility,
        ProcessingCondition,
        ReferralCreate,
        RequestedShare,
        ReviewCreate,
        ReviewOutcome,
        ReviewStatus,
        RiskLevel,
        ShareAccess,
        SharePurpose,
        SubjectCreate,
    )
    from casehub_client.types import UNSET

    server = partnership.server
    la, btp, police, auditor = (
        connect(system_token(server, partnership.systems[name]))
        for name in ("la", "btp-dots", "police-dots", "auditor")
    )
    holder = "nottingham-cs"

    # -- children's services record their worry about a girl, with her NHS number ---------------
    born = date(date.today().year - 14, 3, 9)
    nhs_number = "9434765919"
    made = create_referral.sync_detailed(
        client=la,
        body=ReferralCreate(
            categories=[Category.CSE, Category.MISSING],
            summary="Girl, 14, missing from home three nights this month; older boyfriend.",
            narrative="Returned with new clothes and a phone she will not explain.",
            observed_at=datetime.now(UTC) - timedelta(days=1),
            risk_level=RiskLevel.HIGH,
            subject=SubjectCreate(
                given_name="Precious",
                family_name="Adeyemi",
                date_of_birth=born,
                gender=Gender.FEMALE,
                identifiers=[Identifier(system=IdentifierSystem.NHS_NUMBER, value=nhs_number)],
            ),
        ),
    )
    assert made.status_code == 201, made.content
    referral = made.parsed

    # -- BTP finds her on a train with an older man: is she known elsewhere? ---------------------
    by_name = create_match.sync_detailed(
        client=btp,
        body=MatchCreate(given_name="Precious", family_name="Adeyemy", date_of_birth=born),
    )
    assert by_name.status_code == 201, by_name.content
    (item,) = by_name.parsed.items
    assert item.agency.code == holder and item.agency.kind is AgencyKind.LOCAL_AUTHORITY
    assert item.confidence is MatchConfidence.STRONG
    assert item.open_referrals == 1
    answer = by_name.content.lower()
    for secret in ("Precious", "Adeyemi", "Adeyemy", referral.subject_id, referral.id):
        assert str(secret).lower().encode() not in answer, secret
    assert referral.reference.lower().encode() not in answer
    unsure = create_match.sync_detailed(
        client=btp,
        body=MatchCreate(
            given_name="Precious", family_name="Adeyemi", estimated_birth_year=born.year + 1
        ),
    )
    assert unsure.status_code == 201, unsure.content
    assert [(i.agency.code, i.confidence) for i in unsure.parsed.items] == [
        (holder, MatchConfidence.POSSIBLE)
    ]
    by_number = create_match.sync_detailed(
        client=btp,
        body=MatchCreate(
            identifiers=[Identifier(system=IdentifierSystem.NHS_NUMBER, value=nhs_number)]
        ),
    )
    assert by_number.status_code == 201, by_number.content
    assert [(i.agency.code, i.confidence) for i in by_number.parsed.items] == [
        (holder, MatchConfidence.IDENTIFIER)
    ]

    # -- BTP asks children's services for a share ------------------------------------------------
    asked = create_access_request.sync_detailed(
        client=btp,
        body=AccessRequestCreate(
            match_id=by_number.parsed.match_id,
            agency=holder,
            purpose=SharePurpose.INVESTIGATION,
            necessity="Found with an older man on a train at 23:00; we need to know the risks.",
            urgency=AccessRequestUrgency.URGENT,
        ),
    )
    assert asked.status_code == 201, asked.content
    request = asked.parsed
    assert request.status is AccessRequestStatus.PENDING
    assert (request.from_agency, request.to_agency) == ("btp", holder)
    assert request.referral_ids is UNSET  # the requester never learns which referrals

    incoming = list(
        every_item(
            list_access_requests.sync,
            client=la,
            direction=AccessRequestDirection.INCOMING,
            status=AccessRequestStatus.PENDING,
        )
    )
    assert [(r.id, r.referral_ids) for r in incoming] == [(request.id, [referral.id])]
    at_holder = get_access_request.sync_detailed(request.id, client=la)
    assert at_holder.status_code == 200, at_holder.content
    assert at_holder.parsed.referral_ids == [referral.id]
    assert at_holder.parsed.urgency is AccessRequestUrgency.URGENT
    at_requester = get_access_request.sync_detailed(request.id, client=btp)
    assert at_requester.status_code == 200, at_requester.content
    assert at_requester.parsed.referral_ids is UNSET
    assert b"referral_ids" not in at_requester.content

    # -- the holder shares it; BTP reads the referral --------------------------------------------
    safeguarding = LawfulBasis(
        article_6=Article6Basis.PUBLIC_TASK,
        condition=ProcessingCondition.DPA2018_SCH1_PARA18_SAFEGUARDING,
        gateway="Children Act 2004 s11",
    )
    decided = decide_access_request.sync_detailed(
        request.id,
        client=la,
        body=AccessDecision(
            decision=AccessDecisionOutcome.SHARE,
            referral_id=referral.id,
            share=RequestedShare(
                access=ShareAccess.READ,
                purpose=SharePurpose.INVESTIGATION,
                necessity="BTP need her history to safeguard her tonight.",
                lawful_basis=safeguarding,
                consent=Consent(
                    status=ConsentStatus.NOT_SOUGHT,
                    rationale="Asking her could alert the man she was found with.",
                ),
            ),
        ),
    )
    assert decided.status_code == 200, decided.content
    assert decided.parsed.status is AccessRequestStatus.SHARED
    share_id = decided.parsed.share_id
    assert share_id is not None
    granted = get_access_request.sync(request.id, client=btp)
    assert (granted.status, granted.share_id) == (AccessRequestStatus.SHARED, share_id)
    assert granted.decided_at is not None and granted.referral_ids is UNSET
    again = decide_access_request.sync_detailed(
        request.id,
        client=la,
        body=AccessDecision(decision=AccessDecisionOutcome.DECLINE, reason="Changed our mind."),
    )
    assert again.status_code == 409 and again.parsed.status == 409  # a Problem
    read = get_referral.sync_detailed(referral.id, client=btp)
    assert read.status_code == 200, read.content
    assert read.parsed.summary == referral.summary and read.parsed.lead_agency == holder

    # -- decisions not to share: one the holder records, one a declined request records ----------
    noted = create_sharing_decision.sync_detailed(
        referral.id,
        client=la,
        body=DecisionCreate(
            agency="probation-em",
            purpose=SharePurpose.OFFENDER_MANAGEMENT,
            reason="Her history does not bear on managing the man's licence; not necessary.",
        ),
    )
    assert noted.status_code == 201, noted.content
    by_police = create_match.sync_detailed(
        client=police,
        body=MatchCreate(given_name="precious", family_name="ADEYEMI", date_of_birth=born),
    )
    assert by_police.status_code == 201, by_police.content
    assert [(i.agency.code, i.confidence) for i in by_police.parsed.items] == [
        (holder, MatchConfidence.STRONG)
    ]
    match_id = by_police.parsed.match_id
    asked = create_access_request.sync_detailed(
        client=police,
        body=AccessRequestCreate(
            match_id=match_id,
            agency=holder,
            purpose=SharePurpose.INVESTIGATION,
            necessity="A man she is linked to is under investigation for exploitation.",
            urgency=AccessRequestUrgency.ROUTINE,
        ),
    )
    assert asked.status_code == 201, asked.content
    declined = decide_access_request.sync_detailed(
        asked.parsed.id,
        client=la,
        body=AccessDecision(
            decision=AccessDecisionOutcome.DECLINE,
            reason="A strategy discussion is set for Monday; the force is invited to it.",
        ),
    )
    assert declined.status_code == 200, declined.content
    assert declined.parsed.status is AccessRequestStatus.DECLINED
    assert declined.parsed.decision_reason.startswith("A strategy discussion")
    decisions = list(every_item(list_sharing_decisions.sync, referral.id, client=la))
    assert [(d.agency, d.access_request_id, d.referral_id) for d in decisions] == [
        ("probation-em", None, referral.id),
        ("notts-police", asked.parsed.id, referral.id),
    ]
    assert decisions[0].reason == noted.parsed.reason

    # -- that night she is missing again: the county force breaks the glass ----------------------
    broken = create_emergency_access.sync_detailed(
        client=police,
        body=EmergencyAccessCreate(
            match_id=match_id,
            agency=holder,
            reason="Missing overnight and believed to be with the man under investigation.",
            purpose=SharePurpose.INVESTIGATION,
        ),
    )
    assert broken.status_code == 201, broken.content
    grant = broken.parsed
    assert grant.referral_ids == [referral.id]
    assert grant.expires_at > datetime.now(UTC) + timedelta(hours=3)
    read = get_referral.sync_detailed(referral.id, client=police)
    assert read.status_code == 200, read.content
    refused = create_note.sync_detailed(
        referral.id,
        client=police,
        body=NoteCreate(body="Search under way.", visibility=NoteVisibility.SHARED),
    )
    assert refused.status_code == 403 and refused.parsed.status == 403  # read-only
    ended = end_emergency_access.sync_detailed(grant.id, client=la)
    assert ended.status_code == 200, ended.content
    assert ended.parsed.status is EmergencyAccessStatus.ENDED
    assert ended.parsed.ended_by_agency == holder
    assert get_referral.sync_detailed(referral.id, client=police).status_code == 404

    # -- a partnership auditor reviews it ---------------------------------------------------------
    pending = list(every_item(list_reviews.sync, client=auditor, status=ReviewStatus.PENDING))
    (queued,) = [r for r in pending if r.id == grant.id]
    assert (queued.agency, queued.holder_agency) == ("notts-police", holder)
    assert queued.referral_ids == [referral.id]
    assert queued.access_status is EmergencyAccessStatus.ENDED
    reviewed = review_emergency_access.sync_detailed(
        grant.id,
        client=auditor,
        body=ReviewCreate(
            outcome=ReviewOutcome.JUSTIFIED,
            note="A missing child at immediate risk; ended by the holder within the hour.",
        ),
    )
    assert reviewed.status_code == 200, reviewed.content
    assert reviewed.parsed.status is ReviewStatus.REVIEWED
    assert reviewed.parsed.outcome is ReviewOutcome.JUSTIFIED
    still = every_item(list_reviews.sync, client=auditor, status=ReviewStatus.PENDING)
    assert grant.id not in {r.id for r in still}
    seen_by_holder = get_emergency_access.sync(grant.id, client=la)
    assert seen_by_holder.review_status is ReviewStatus.REVIEWED
    assert seen_by_holder.review_outcome is ReviewOutcome.JUSTIFIED

    # -- the holder's access report shows who asked after her, and on what basis each read was -----
    expected = {
        ("btp", "subject.match", None),
        ("notts-police", "subject.match", None),
        ("btp", "referral.read", f"share:{share_id}"),
        ("notts-police", "referral.read", f"emergency:{grant.id}"),
    }
    deadline = time.monotonic() + AUDIT_CHAINED_WITHIN
    while True:
        accesses = {
            (a.actor.agency, a.action, a.basis if a.action == "referral.read" else None)
            for a in every_item(list_referral_accesses.sync, referral.id, client=la)
            if a.outcome is AuditOutcome.ALLOWED
        }
        if expected <= accesses or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert expected <= accesses, accesses


def test_a_childs_record_over_time_journey(partnership, connect):
    """Children's services share a referral with The Children's Society under the summary
    profile (the charity reads it without the narrative or the boy's address), merge a duplicate
    record of him, put the referral under legal hold, and assemble his subject access pack; the
    partnership's analyst counts referrals by category, small numbers suppressed."""
    from casehub_client.api.referrals import create_referral, get_referral, place_legal_hold
    from casehub_client.api.shares import share_referral
    from casehub_client.api.statistics import get_referral_statistics
    from casehub_client.api.subjects import (
        create_subject,
        get_subject,
        get_subject_access_pack,
        merge_subject,
    )
    from casehub_client.models import (
        Address,
        Article6Basis,
        Category,
        Consent,
        ConsentStatus,
        Gender,
        LawfulBasis,
        LegalHoldCreate,
        ProcessingCondition,
        ReferralCreate,
        RiskLevel,
        ShareAccess,
        ShareCreate,
        ShareProfile,
        SharePurpose,
        StatisticsDimension,
        SubjectCreate,
        SubjectMergeCreate,
    )

    server = partnership.server
    la, charity, analyst = (
        connect(system_token(server, partnership.systems[name]))
        for name in ("la-records", "charity", "analyst")
    )
    child = SubjectCreate(
        given_name="Marcus",
        family_name="Ogunleye",
        date_of_birth=fifteen_years_ago(),
        gender=Gender.MALE,
        address=Address(line="14 Hidden Lane", town="Nottingham", postcode="NG7 1AA"),
    )
    made = create_referral.sync_detailed(
        client=la,
        body=ReferralCreate(
            categories=[Category.COUNTY_LINES],
            summary="Boy, 15, seen handing over packages outside the school gates.",
            narrative="An older man collects him in a grey car most afternoons.",
            observed_at=datetime.now(UTC) - timedelta(hours=5),
            risk_level=RiskLevel.HIGH,
            subject=child,
        ),
    )
    assert made.status_code == 201, made.content
    referral = made.parsed

    shared = share_referral.sync_detailed(
        referral.id,
        client=la,
        body=ShareCreate(
            agency="tcs",
            access=ShareAccess.READ,
            profile=ShareProfile.SUMMARY,
            purpose=SharePurpose.SUPPORT_SERVICE,
            necessity="A support worker can offer him help; the summary is enough.",
            lawful_basis=LawfulBasis(
                article_6=Article6Basis.PUBLIC_TASK,
                condition=ProcessingCondition.DPA2018_SCH1_PARA18_SAFEGUARDING,
            ),
            consent=Consent(status=ConsentStatus.NOT_SOUGHT, rationale="It could alert the man."),
        ),
    )
    assert shared.status_code == 201, shared.content
    assert shared.parsed.profile is ShareProfile.SUMMARY

    seen = get_referral.sync(referral.id, client=charity)
    assert seen.summary == referral.summary and seen.narrative is None
    record = get_subject.sync(referral.subject_id, client=charity)
    assert record.given_name == "Marcus" and record.address is None and record.identifiers == []

    duplicate = create_subject.sync(client=la, body=child)
    merged = merge_subject.sync_detailed(
        referral.subject_id,
        client=la,
        body=SubjectMergeCreate(duplicate_id=duplicate.id, reason="Entered twice at triage."),
    )
    assert merged.status_code == 200, merged.content
    assert get_subject.sync(duplicate.id, client=la).merged_into == referral.subject_id

    held = place_legal_hold.sync_detailed(
        referral.id, client=la, body=LegalHoldCreate(reason="Criminal proceedings against the man.")
    )
    assert held.status_code == 200, held.content
    assert held.parsed.legal_hold.reason == "Criminal proceedings against the man."

    pack = get_subject_access_pack.sync_detailed(referral.subject_id, client=la)
    assert pack.status_code == 200, pack.content
    assert [r.id for r in pack.parsed.referrals] == [referral.id]
    (disclosed,) = pack.parsed.disclosures.shares
    assert (disclosed.agency, disclosed.profile) == ("tcs", ShareProfile.SUMMARY)

    casehub(partnership.env, ["statistics", "refresh"])
    counted = get_referral_statistics.sync_detailed(
        client=analyst, group_by=[StatisticsDimension.CATEGORY]
    )
    assert counted.status_code == 200, counted.content
    assert counted.parsed.as_of is not None
    by_category = {item.category: item for item in counted.parsed.items}
    assert Category.COUNTY_LINES in by_category
    assert all(
        (item.count is None) == item.suppressed and (item.suppressed or item.count >= 5)
        for item in counted.parsed.items
    )
