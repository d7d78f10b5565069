"""The `casehub` command: a Flask CLI group that works the same on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import signal
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext

from casehub import migrate
from casehub.db import get_db, session_scope
from casehub.errors import CasehubError
from casehub.services import agencies as agency_service


def _create_app() -> object:
    from casehub import create_app

    # Commands serve no requests: the settings only serving needs (rate-limit storage) are
    # not asked of them, so a migration Job or a key rotation holds no Redis credentials.
    return create_app({"SERVING": False})


@click.group(
    cls=FlaskGroup, create_app=_create_app, add_default_commands=True, add_version_option=False
)
def main() -> None:
    """casehub: multi-agency referrals about children at risk of exploitation."""


def _fail(error: CasehubError) -> None:
    click.echo(f"error: {error.detail}", err=True)
    if error.errors:
        click.echo(json.dumps(error.errors), err=True)
    sys.exit(2)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Bring the schema to the newest migration."""
    engine = get_db().engine
    assert engine is not None
    migrate.upgrade(engine, revision)
    click.echo(f"database at {migrate.head_revision() if revision == 'head' else revision}")


@main.group("agencies")
def agencies_group() -> None:
    """Agencies."""


def _cut_off(what: str, cut: Any) -> None:
    from casehub import audit

    try:
        with session_scope() as session:
            cut(session)
            audit.write_pending(session, None, status=200)
    except CasehubError as error:
        _fail(error)
    click.echo(f"{what} deactivated: its tokens are refused from the next request")


@agencies_group.command("deactivate")
@click.argument("code")
@with_appcontext
def agencies_deactivate(code: str) -> None:
    """Cut a whole agency off (incident response): its clients, users and tokens stop at once."""
    from casehub.services import admin

    _cut_off(f"agency {code}", lambda session: admin.cut_off_agency(session, code=code))


@agencies_group.command("add")
@click.argument("code")
@click.option("--name", required=True)
@click.option("--kind", required=True)
@click.option("--area")
@click.option("--platform", is_flag=True, help="The platform agency (administers agencies).")
@with_appcontext
def agencies_add(code: str, name: str, kind: str, area: str | None, platform: bool) -> None:
    """Add an agency."""
    try:
        with session_scope() as session:
            agency_service.add_agency(
                session, code=code, name=name, kind=kind, area=area, is_platform=platform
            )
    except CasehubError as error:
        _fail(error)
    click.echo(f"agency {code} added")


@main.group("clients")
def clients_group() -> None:
    """Partner systems (OAuth clients)."""


@clients_group.command("deactivate")
@click.argument("client_id")
@with_appcontext
def clients_deactivate(client_id: str) -> None:
    """Cut one partner system off (incident response), whichever agency it belongs to."""
    from casehub.services import admin

    _cut_off(
        f"client {client_id}", lambda session: admin.cut_off_client(session, client_id=client_id)
    )


@clients_group.command("add")
@click.option("--agency", "agency_code", required=True)
@click.option("--name", required=True)
@click.option(
    "--scopes", required=True, help='Space-separated, e.g. "referrals:read referrals:write".'
)
@click.option("--jwks", "jwks_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print {client_id, client_secret} as JSON.")
@with_appcontext
def clients_add(
    agency_code: str, name: str, scopes: str, jwks_file: Path | None, as_json: bool
) -> None:
    """Add a partner system; its secret is printed once and stored only as a hash."""
    jwks = json.loads(jwks_file.read_text()) if jwks_file else None
    try:
        with session_scope() as session:
            client, secret = agency_service.add_client(
                session,
                agency_code=agency_code,
                name=name,
                scope=scopes,
                jwks=jwks,
                scrypt_n=current_app.config["CLIENT_SECRET_SCRYPT_N"],
            )
            client_id = client.client_id
    except CasehubError as error:
        _fail(error)
    if as_json:
        click.echo(json.dumps({"client_id": client_id, "client_secret": secret}))
    else:
        click.echo(f"client_id:     {client_id}\nclient_secret: {secret}  (shown once)")


@main.group("users")
def users_group() -> None:
    """People acting through their agency's partner systems."""


@users_group.command("add")
@click.option("--agency", "agency_code", required=True)
@click.option("--email", required=True)
@click.option("--name", required=True)
@click.option("--roles", required=True, help='Space-separated, e.g. "caseworker".')
@click.option("--json", "as_json", is_flag=True)
@with_appcontext
def users_add(agency_code: str, email: str, name: str, roles: str, as_json: bool) -> None:
    """Add a user."""
    try:
        with session_scope() as session:
            user = agency_service.add_user(
                session, agency_code=agency_code, email=email, name=name, roles=roles.split()
            )
            user_id = str(user.id)
    except CasehubError as error:
        _fail(error)
    click.echo(json.dumps({"id": user_id}) if as_json else f"user {user_id} added")


@main.group("keys")
def keys_group() -> None:
    """Token-signing keys."""


@keys_group.command("rotate")
@click.option(
    "--publish-first",
    type=click.IntRange(0, 86400),
    default=0,
    show_default=True,
    help="Seconds the new key is only published before it signs: longer than it takes every "
    "host to read the new file (e.g. 300 for a Kubernetes Secret).",
)
@with_appcontext
def keys_rotate(publish_first: int) -> None:
    """Start signing with a new key; the old one stays published until its tokens expire."""
    kid = current_app.extensions["casehub.keys"].rotate(publish_first=publish_first)
    if publish_first:
        click.echo(f"key {kid} published; it signs from {publish_first} s from now")
    else:
        click.echo(f"now signing with key {kid}")


@main.group("openapi")
def openapi_group() -> None:
    """The OpenAPI document."""


@openapi_group.command("export")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@with_appcontext
def openapi_export(file: Path | None) -> None:
    """Write the OpenAPI document (default: standard output)."""
    from casehub.openapi import render_spec

    text = render_spec(current_app)
    if file is None:
        click.echo(text, nl=False)
    else:
        file.write_text(text)
        click.echo(f"wrote {file}", err=True)


@main.command("demo")
@click.option(
    "--webhook-url",
    help="Subscribe children's services to every event here (a local demo receiver).",
)
@click.option(
    "--webhook-secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write that subscription's signing secret here, for the receiver (mode 0600).",
)
@with_appcontext
def demo(webhook_url: str | None, webhook_secret_file: Path | None) -> None:
    """Seed the East Midlands demo partnership and print how to call it."""
    from casehub import demo as demo_module
    from casehub.webhooks import secrets as webhook_secrets

    if webhook_url is not None and not current_app.config["WEBHOOKS_ALLOW_PRIVATE"]:
        raise click.UsageError("--webhook-url needs CASEHUB_WEBHOOKS_ALLOW_PRIVATE=1 (demo only)")
    engine = get_db().engine
    assert engine is not None
    migrate.upgrade(engine)
    with session_scope() as session:
        result = demo_module.seed(
            session,
            scrypt_n=current_app.config["CLIENT_SECRET_SCRYPT_N"],
            webhook_url=webhook_url,
            webhook_key=webhook_secrets.load_key(current_app) if webhook_url else None,
        )
    if webhook_secret_file is not None and result.webhook_secret is not None:
        webhook_secret_file.parent.mkdir(parents=True, exist_ok=True)
        webhook_secret_file.touch(mode=0o600)
        webhook_secret_file.write_text(result.webhook_secret + "\n")
    click.echo(demo_module.instructions(result, current_app.config["ISSUER"]))


@main.group("audit")
def audit_group() -> None:
    """The audit trail: sequencing, verification, signed checkpoints and partitions."""


def _record_operator_action(action: str, status: int) -> None:
    """Operators' audit commands are audited too (no actor: the command line)."""
    from casehub import audit

    with session_scope() as session:
        audit.record(session, None, action, resource_type="audit_chain", purpose="audit")
        audit.write_pending(session, None, status=status)


@audit_group.command("sequence")
@click.option("--once", is_flag=True, help="Chain everything pending now, then exit.")
@click.option("--interval", default=0.5, show_default=True, help="Seconds between passes.")
@with_appcontext
def audit_sequence(once: bool, interval: float) -> None:
    """Chain committed events (serving processes do this themselves unless
    CASEHUB_AUDIT_SEQUENCER=0)."""
    from casehub.audit import chain

    engine = get_db().engine
    assert engine is not None
    if once:
        click.echo(f"chained {chain.sequence_all(engine)} events")
        return
    sequencer = chain.BackgroundSequencer(engine, interval=interval)

    def finish(signum: int, _frame: object) -> None:
        # Each pass is one transaction: stopping between passes loses nothing. As PID 1 in a
        # container nothing else would answer SIGTERM, and a stop would wait out its grace.
        sequencer._stop.set()

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    # From here a SIGTERM stops it cleanly: said so, for an operator and for a readiness wait.
    click.echo(f"audit sequencer started (a pass every {interval:g} s)")
    sequencer.run()
    click.echo("audit sequencer stopped")


@audit_group.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@with_appcontext
def audit_verify(as_json: bool) -> None:
    """Recompute the hash chain and check every checkpoint; exit 0 only when all hold."""
    from casehub.audit import checkpoints, verify

    engine = get_db().engine
    assert engine is not None
    result = verify.verify(engine, key=checkpoints.app_key(current_app))
    _record_operator_action("audit.verify", 200 if result.ok else 409)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    elif result.ok:
        click.echo(
            f"ok: {result.events} events, head seq {result.head_seq}, "
            f"{result.checkpoints} checkpoints, {result.pending} pending ({result.seconds:.2f}s)"
        )
    else:
        click.echo(f"BROKEN at seq {result.first_bad_seq}: {result.problem}", err=True)
    sys.exit(0 if result.ok else 1)


@audit_group.command("checkpoint")
@with_appcontext
def audit_checkpoint() -> None:
    """Chain what is pending, verify since the last checkpoint, and sign the head (Ed25519)."""
    from casehub.audit import chain, checkpoints, verify

    engine = get_db().engine
    assert engine is not None
    try:
        key = checkpoints.app_key(current_app, create=True)
    except checkpoints.CheckpointKeyError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    assert key is not None
    chain.sequence_all(engine)
    with engine.begin() as connection:
        signed, result = verify.make_checkpoint(connection, key)
    _record_operator_action("audit.checkpoint", 201 if signed else 409)
    if signed is None:
        click.echo(f"not signed: broken at seq {result.first_bad_seq}: {result.problem}", err=True)
        sys.exit(1)
    click.echo(json.dumps(signed.as_dict()))


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "kB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _period_line(period: Any) -> str:
    seqs = f"{period.seq_from}..{period.seq_to}" if period.seq_to else f"{period.seq_from}.. (none)"
    occurred = (
        f"{period.occurred_from:%Y-%m-%d %H:%M} .. {period.occurred_to:%Y-%m-%d %H:%M}"
        if period.occurred_from and period.occurred_to
        else "-"
    )
    state = "sealed" if period.sealed else "open"
    return (
        f"{period.name}  {state:6}  seq {seqs:>23}  {period.events:>12,} events  "
        f"occurred {occurred}  {_size(period.size):>9}  "
        f"events partitions {', '.join(p.rsplit('_', 1)[1] for p in period.events_partitions)}"
    )


@audit_group.command("partitions")
@click.option(
    "--ensure",
    is_flag=True,
    help="Create the events partitions ahead of need, and start a new period when one is due "
    "(run it hourly).",
)
@click.option("--roll", "force_roll", is_flag=True, help="With --ensure: start a new period now.")
@click.option(
    "--period",
    type=click.Choice(("day", "week", "month")),
    help="How long a period runs (default: CASEHUB_AUDIT_PARTITION_PERIOD, month).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the periods as JSON.")
@with_appcontext
def audit_partitions(ensure: bool, force_roll: bool, period: str | None, as_json: bool) -> None:
    """List the audit tables' partitions by period (PostgreSQL): seqs, events partitions, when
    the events occurred, how many and their size on disk."""
    from casehub.audit import partitions
    from casehub.db import utcnow

    engine = get_db().engine
    assert engine is not None
    with engine.connect() as connection:
        if not partitions.supported(connection):
            click.echo("SQLite keeps one table per audit table: nothing is partitioned")
            return
    if force_roll and not ensure:
        raise click.UsageError("--roll goes with --ensure")
    ensured = None
    if ensure:
        try:
            ensured = partitions.ensure(
                engine,
                now=utcnow(),
                period=period or current_app.config["AUDIT_PARTITION_PERIOD"],
                force_roll=force_roll,
            )
        except partitions.PartitionError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)
    with engine.begin() as connection:
        periods = partitions.periods(connection)
        stray = partitions.default_holds_events(connection)
    if as_json:
        body = {
            "periods": [p.as_dict() for p in periods],
            "default_partition_holds_events": stray,
            "ensured": None if ensured is None else ensured.as_dict(),
        }
        click.echo(json.dumps(body))
        return
    if ensured is not None:
        for name in ensured.freed:
            click.echo(f"freed {name} from an interrupted roll")
        for name in ensured.created:
            click.echo(f"created {name}")
        if ensured.rolled is not None:
            roll = ensured.rolled
            click.echo(
                f"rolled: events from pos {roll.cut_pos} go to {roll.events_partition}"
                + (f", the chain from seq {roll.cut_seq}" if roll.cut_seq else "")
                + f" ({roll.seconds:.2f}s)"
            )
    for line in map(_period_line, periods):
        click.echo(line)
    if stray:
        click.echo("warning: audit_events_default holds events (ranges were not made ahead)")


@audit_group.command("archive")
@click.option(
    "--before",
    required=True,
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Archive the sealed periods whose every event occurred before this day (UTC).",
)
@click.option(
    "--to",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The directory the archive files are written to (created if missing).",
)
@click.option("--dry-run", is_flag=True, help="Say which periods would go, and change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@with_appcontext
def audit_archive(before: datetime, directory: Path, dry_run: bool, as_json: bool) -> None:
    """Export old periods of the trail (PostgreSQL) to signed files, verify them from the hash
    the chain had before them, record them and drop their partitions, oldest first. The chain
    stays whole: verification then begins at the newest archive's head."""
    from casehub.audit import archive, checkpoints, partitions

    engine = get_db().engine
    assert engine is not None
    with engine.connect() as connection:
        if not partitions.supported(connection):
            click.echo("SQLite keeps one table per audit table: there is no period to archive")
            sys.exit(2)
    try:
        key = checkpoints.app_key(current_app)
    except checkpoints.CheckpointKeyError as error:
        key = None
        click.echo(f"error: {error}", err=True)
    if key is None or key.private is None:
        click.echo("error: archiving signs each file with the audit checkpoint key", err=True)
        sys.exit(2)
    try:
        planned, made = archive.archive(
            engine,
            key=key,
            before=before.replace(tzinfo=UTC),
            directory=directory,
            dry_run=dry_run,
        )
    except (archive.ArchiveError, partitions.PartitionError) as error:
        _record_operator_action("audit.archive", 409)
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    if not dry_run:
        _record_operator_action("audit.archive", 201 if made else 200)
    if as_json:
        body = {
            "dry_run": dry_run,
            "planned": [{**item.period.as_dict(), "file": item.file_name} for item in planned],
            "archived": [item.as_dict() for item in made],
        }
        click.echo(json.dumps(body))
        return
    if not planned:
        click.echo("nothing to archive: no sealed period ended before that day")
    for item in planned if dry_run else []:
        click.echo(f"would archive {_period_line(item.period)} to {item.file_name}")
    for done in made:
        click.echo(
            f"archived {done.period}: seq {done.seq_from}..{done.seq_to}, {done.events:,} "
            f"events to {done.file} ({_size(done.bytes)}, sha256 {done.content_sha256[:16]}...), "
            f"dropped {len(done.dropped)} partitions ({done.seconds:.1f}s)"
        )


@audit_group.command("verify-archive")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The checkpoint key's public half (PEM); default: the service's checkpoint key.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@with_appcontext
def audit_verify_archive(file: Path, key_file: Path | None, as_json: bool) -> None:
    """Check an archive file on its own (no database): every event's hash and link, its count,
    the checkpoints it carries, its digest and signature; exit 0 only when all hold."""
    from casehub.audit import archive, checkpoints

    try:
        key = (
            checkpoints.CheckpointKey(checkpoints.load_public_key(key_file))
            if key_file
            else checkpoints.app_key(current_app)
        )
    except checkpoints.CheckpointKeyError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    result = archive.verify_file(file, key)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    elif result.ok:
        click.echo(
            f"ok: {result.period}, seq {result.seq_from}..{result.seq_to}, {result.events:,} "
            f"events, {result.checkpoints} checkpoints, signed by key {result.key_id}"
        )
    else:
        click.echo(f"BROKEN: {result.problem}", err=True)
    sys.exit(0 if result.ok else 1)


@main.group("webhooks")
def webhooks_group() -> None:
    """Webhook deliveries: the worker, and replaying what failed."""


@webhooks_group.command("worker")
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit.")
@with_appcontext
def webhooks_worker(once: bool) -> None:
    """Deliver webhooks: claim due deliveries, post them signed, retry with back-off.
    SIGTERM or SIGINT finishes the deliveries in flight, then exits."""
    import logging

    from casehub.webhooks import worker

    # Unless the deployment configured logging: one line per attempt on standard error.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    attempts = worker.run(current_app._get_current_object(), once=once)  # type: ignore[attr-defined]
    click.echo(f"made {attempts} delivery attempt{'' if attempts == 1 else 's'}")


def _aware_datetime(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as error:
        raise click.BadParameter("not an ISO 8601 date and time") from error
    if parsed.tzinfo is None:
        raise click.BadParameter("give a time zone, e.g. 2025-06-01T09:00:00Z")
    return parsed


@webhooks_group.command("replay")
@click.argument("webhook_id", type=click.UUID)
@click.option(
    "--since",
    callback=_aware_datetime,
    metavar="ISO8601",
    help="Only deliveries of events since this time.",
)
@click.option("--enable", is_flag=True, help="Re-enable the webhook if it was disabled.")
@with_appcontext
def webhooks_replay(webhook_id: uuid.UUID, since: datetime | None, enable: bool) -> None:
    """Queue a webhook's failed and cancelled deliveries again, due now."""
    from casehub import audit
    from casehub.db import utcnow
    from casehub.webhooks import worker

    try:
        with session_scope() as session:
            queued = worker.replay(
                session, webhook_id=webhook_id, since=since, enable=enable, now=utcnow()
            )
            audit.write_pending(session, None, status=200)
    except CasehubError as error:
        _fail(error)
    click.echo(f"queued {queued} deliveries of webhook {webhook_id}")


@main.group("retention")
def retention_group() -> None:
    """Retention (CONTRACT §11): erasure at the end of the retention period, and pruning."""


@retention_group.command("run")
@click.option(
    "--dry-run", is_flag=True, help="Say what would be erased and pruned; change nothing."
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=500,
    show_default=True,
    help="Referrals read, and expired rows deleted, per batch.",
)
@with_appcontext
def retention_run(dry_run: bool, batch_size: int) -> None:
    """Erase the referrals closed longer than CASEHUB_RETENTION_DAYS ago and not under legal
    hold (each in its own transaction, audited, its recipients told), then prune expired
    idempotency records, used assertions and revoked tokens. Idempotent, and safe to run from
    cron or a Kubernetes CronJob, two at once included (PostgreSQL). Prints ids, references and
    counts only."""
    from casehub.db import utcnow
    from casehub.services import retention

    days = current_app.config["RETENTION_DAYS"]
    verb = "would erase" if dry_run else "erased"

    def said(done: retention.Erased) -> None:
        children = f" (child's record {', '.join(map(str, done.subjects_erased))} erased)"
        click.echo(
            f"{verb} {done.reference} {done.id}"
            + (children if done.subjects_erased else "")
            + (f", told {', '.join(done.notified)}" if done.notified else "")
        )

    report = retention.run(
        session_scope,
        now=utcnow(),
        days=days,
        dry_run=dry_run,
        batch=batch_size,
        on_referral=said,
    )
    if not dry_run:
        _record_retention_run()
    click.echo(
        f"{verb} {report.referrals} referrals closed before {report.cutoff:%Y-%m-%d %H:%M} UTC "
        f"({days} days)"
        + (
            ""
            if dry_run
            else f", {report.subjects} children's records, {report.notifications} "
            f"notifications; {report.skipped} skipped (taken by another run or busy)"
        )
        + f"; {report.held} kept by legal hold ({report.erase_seconds:.2f}s)"
    )
    pruned = ", ".join(f"{name} {count}" for name, count in report.pruned.items())
    click.echo(
        f"{'would prune' if dry_run else 'pruned'} expired {pruned} ({report.prune_seconds:.2f}s)"
    )


def _record_retention_run() -> None:
    """The run itself is in the audit trail (no actor: the command line), besides each
    erasure's own event."""
    from casehub import audit

    with session_scope() as session:
        audit.record(session, None, "retention.run", resource_type="retention", basis="retention")
        audit.write_pending(session, None, status=200)
@main.group("statistics")
def statistics_group() -> None:
    """Partnership statistics (CONTRACT §12)."""


@statistics_group.command("refresh")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@with_appcontext
def statistics_refresh(as_json: bool) -> None:
    """Recompute the counts GET /v1/statistics/referrals answers from (run it on a schedule:
    answers say `as_of`). Safe to run twice at once: the second waits, then recomputes."""
    from casehub import audit
    from casehub.db import utcnow
    from casehub.services.statistics import refresh_statistics

    with session_scope() as session:
        refresh = refresh_statistics(session, now=utcnow())
        # Aggregates only, but it reads every referral: the command line's action is on record.
        audit.record(
            session, None, "statistics.refresh", resource_type="statistics", purpose="statistics"
        )
        audit.write_pending(session, None, status=200)
        outcome = {
            "refreshed_at": refresh.refreshed_at.isoformat(),
            "referrals": refresh.referrals,
            "seconds": refresh.seconds,
        }
    if as_json:
        click.echo(json.dumps(outcome))
    else:
        click.echo(
            f"statistics refreshed at {outcome['refreshed_at']}: {outcome['referrals']} "
            f"referrals counted in {outcome['seconds']:.1f}s"
        )
