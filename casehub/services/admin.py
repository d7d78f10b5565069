"""Administration: the platform manages agencies; each agency's admin its clients and users.

Deactivation takes effect on the very next request because `auth.actor.load_actor` checks
`active` on every call; it also moves `tokens_not_before` past every token issued so far, so
turning a principal back on never revives a token issued before it was turned off.

Case scopes (`auth.scopes.CASE_SCOPES`) on a client are where the role split between
administrators and caseworkers lives, so no one person can mint case access: those a person
asks for wait for a second administrator (`approve_client_scopes`); a partner system acting as
itself may pass on only the case scopes it holds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from casehub import audit
from casehub.auth import scopes as scope_registry
from casehub.auth.actor import Actor
from casehub.db import utcnow
from casehub.errors import Conflict, Forbidden, NotFound, ValidationFailed
from casehub.models import Agency, Client, User
from casehub.services import agencies
from casehub.services.pagination import keyset_page


@dataclass(frozen=True)
class NewClient:
    """A just-registered partner system and its secret, which is never retrievable again."""

    client: Client
    secret: str


def _tokens_cut_off() -> datetime:
    """The next whole second: token `iat`s are whole seconds, so every token issued up to now
    (including earlier in this second) is older than this moment."""
    now = utcnow()
    return now.replace(microsecond=0) + timedelta(seconds=1)


def _switch_off(record: Client | Agency) -> None:
    """Deactivate a client or an agency: every token issued to it (or, for an agency, to its
    clients and users) so far is refused from the next request. Repeatable."""
    if record.active:
        record.active = False
        record.tokens_not_before = _tokens_cut_off()


def _refuse_platform_off(agency: Agency) -> None:
    if agency.is_platform:
        # Switching the platform off would leave nobody able to switch anything back on.
        raise Conflict("The platform agency cannot be deactivated.")


# -- agencies (platform only) ------------------------------------------------------------------
def _require_platform(session: Session, actor: Actor, action: str, resource_id: str) -> None:
    if not actor.is_platform:
        audit.record(
            session,
            actor,
            action,
            outcome="denied",
            resource_type="agency",
            resource_id=resource_id[:64],
        )
        raise Forbidden("Only the platform agency administers agencies.")


def create_agency(
    session: Session,
    *,
    actor: Actor,
    code: str,
    name: str,
    kind: str,
    area: str | None = None,
    active: bool = True,
) -> Agency:
    """Add an agency; the platform flag is never granted over the API (only by the CLI)."""
    _require_platform(session, actor, "admin.agency.create", code)
    agency = agencies.add_agency(session, code=code, name=name, kind=kind, area=area)
    if not active:
        agency.active = False
        session.flush()
    audit.record(session, actor, "admin.agency.create", resource_type="agency", resource_id=code)
    return agency


def update_agency(session: Session, *, actor: Actor, code: str, changes: dict[str, Any]) -> Agency:
    """Change an agency's name, kind, area or active flag; its code is permanent."""
    _require_platform(session, actor, "admin.agency.update", code)
    agency = session.get(Agency, code, with_for_update=True)
    if agency is None:
        raise NotFound("No such agency.")
    if changes.get("active") is False:
        _refuse_platform_off(agency)
    for name in ("name", "kind", "area"):
        if name in changes:
            setattr(agency, name, changes[name])
    if changes.get("active") is False:
        _switch_off(agency)
    elif changes.get("active") is True:
        agency.active = True
    session.flush()
    audit.record(session, actor, "admin.agency.update", resource_type="agency", resource_id=code)
    return agency


# -- clients (own agency) ----------------------------------------------------------------------
def create_client(
    session: Session,
    *,
    actor: Actor,
    name: str,
    scopes: list[str],
    jwks: dict[str, Any] | None = None,
    scrypt_n: int,
) -> NewClient:
    """Register a partner system of the actor's agency, with its one-time secret.

    Any scope may be asked for except the platform agency's own (`agencies.add_client`).
    Case scopes asked for by a person are held as pending until another administrator
    approves them; a system acting as itself (no person behind the token) may ask only for
    case scopes it holds itself — passing those on gives whoever holds its secret nothing it
    did not have, and for any other there would be no first person to be the second one to.
    """
    case = [s for s in dict.fromkeys(scopes) if s in scope_registry.CASE_SCOPES]
    hold_back: list[str] = []
    if actor.user_id is not None:
        hold_back = case
    elif case:
        caller = session.get(Client, actor.client_id)
        held = set(caller.scopes) if caller is not None else set()
        not_held = [s for s in case if s not in held]
        if not_held:
            raise ValidationFailed.field(
                "scopes",
                f"Not held by the calling system: {' '.join(not_held)}. A system may pass on "
                "only the case scopes it holds; others need a person's request and a second "
                "administrator's approval.",
            )
    client, secret = agencies.add_client(
        session,
        agency_code=actor.agency,
        name=name,
        scope=" ".join(scopes),
        jwks=jwks,
        scrypt_n=scrypt_n,
        hold_back=hold_back,
    )
    assert secret is not None  # add_client issues a secret by default
    client.created_by_client_id = actor.client_id
    client.created_by_user_id = actor.user_id
    session.flush()
    audit.record(
        session,
        actor,
        "admin.client.create",
        resource_type="client",
        resource_id=client.client_id,
        basis="approval_pending" if client.pending_scope else None,
    )
    return NewClient(client=client, secret=secret)


def approve_client_scopes(
    session: Session, *, actor: Actor, client_id: str, scopes: list[str]
) -> Client:
    """A second administrator approves pending case scopes; tokens carry them from now on.

    The approver is a person (not a system acting as itself) other than the one who asked, of
    the client's agency or the platform agency; anyone else's attempt is refused and audited.
    Pending scopes not listed stay pending.
    """
    client = session.execute(
        select(Client).where(Client.client_id == client_id).with_for_update(of=Client)
    ).scalar_one_or_none()

    def refuse(error: Exception) -> Exception:
        audit.record(
            session,
            actor,
            "admin.client.approve",
            outcome="denied",
            resource_type="client",
            resource_id=client_id[:64],
        )
        return error

    if client is None or not (actor.is_platform or client.agency_code == actor.agency):
        raise refuse(NotFound("No such client."))
    if actor.user_id is None:
        raise refuse(
            Forbidden(
                "Case scopes are approved by a person: use a token obtained for an "
                "administrator (the jwt-bearer grant), not a system's own token."
            )
        )
    if actor.user_id == client.created_by_user_id:
        raise refuse(
            Forbidden(
                "Another administrator must approve the case scopes of a client you asked for."
            )
        )
    pending = client.pending_scopes
    if not pending:
        raise Conflict("Nothing of this client awaits approval.")
    approved = list(dict.fromkeys(scopes))
    not_pending = [s for s in approved if s not in pending]
    if not_pending:
        raise ValidationFailed.field("scopes", f"Not awaiting approval: {' '.join(not_pending)}.")
    client.scope = " ".join([*client.scopes, *approved])
    client.pending_scope = " ".join(s for s in pending if s not in approved)
    client.approved_by_agency = actor.agency
    client.approved_by_client_id = actor.client_id
    client.approved_by_user_id = actor.user_id
    client.approved_at = utcnow()
    session.flush()
    audit.record(
        session, actor, "admin.client.approve", resource_type="client", resource_id=client_id
    )
    return client


def list_clients(
    session: Session, *, actor: Actor, active: bool | None, limit: int, cursor: str | None
) -> tuple[list[Client], str | None]:
    stmt = select(Client).where(Client.agency_code == actor.agency)
    if active is not None:
        stmt = stmt.where(Client.active.is_(active))
    page = keyset_page(
        session, stmt, keys=[Client.created_at, Client.client_id], limit=limit, cursor=cursor
    )
    audit.record(session, actor, "admin.client.list", resource_type="client")
    return page


def deactivate_client(session: Session, *, actor: Actor, client_id: str) -> None:
    """Switch a partner system off; its tokens are refused from the next request. Repeatable."""
    client = session.execute(
        select(Client)
        .where(Client.client_id == client_id, Client.agency_code == actor.agency)
        .with_for_update(of=Client)  # not the eagerly joined agency row
    ).scalar_one_or_none()
    if client is None:
        audit.record(
            session,
            actor,
            "admin.client.deactivate",
            outcome="denied",
            resource_type="client",
            resource_id=client_id[:64],
        )
        raise NotFound("No such client.")
    _switch_off(client)
    session.flush()
    audit.record(
        session, actor, "admin.client.deactivate", resource_type="client", resource_id=client_id
    )


# -- users (own agency) ------------------------------------------------------------------------
def create_user(session: Session, *, actor: Actor, email: str, name: str, roles: list[str]) -> User:
    user = agencies.add_user(session, agency_code=actor.agency, email=email, name=name, roles=roles)
    audit.record(session, actor, "admin.user.create", resource_type="user", resource_id=user.id)
    return user


def list_users(
    session: Session, *, actor: Actor, active: bool | None, limit: int, cursor: str | None
) -> tuple[list[User], str | None]:
    stmt = select(User).where(User.agency_code == actor.agency)
    if active is not None:
        stmt = stmt.where(User.active.is_(active))
    page = keyset_page(session, stmt, keys=[User.created_at, User.id], limit=limit, cursor=cursor)
    audit.record(session, actor, "admin.user.list", resource_type="user")
    return page


def update_user(
    session: Session, *, actor: Actor, user_id: uuid.UUID, changes: dict[str, Any]
) -> User:
    """Rename, re-role or (de)activate a user of the actor's agency.

    Deactivating, or taking a role away, refuses the user's earlier tokens: a token carries
    the scopes of the roles it was issued for, and none may outlive a role taken away.
    """
    user = session.execute(
        select(User).where(User.id == user_id, User.agency_code == actor.agency).with_for_update()
    ).scalar_one_or_none()
    if user is None:
        audit.record(
            session,
            actor,
            "admin.user.update",
            outcome="denied",
            resource_type="user",
            resource_id=user_id,
        )
        raise NotFound("No such user.")
    cut_off = False
    if "name" in changes:
        user.name = changes["name"]
    if "roles" in changes:
        roles = list(dict.fromkeys(changes["roles"]))
        if set(user.role_list) - set(roles):
            cut_off = True
        user.roles = " ".join(roles)
    if "active" in changes and changes["active"] != user.active:
        user.active = changes["active"]
        cut_off = cut_off or not user.active
    if cut_off:
        user.tokens_not_before = _tokens_cut_off()
    session.flush()
    audit.record(session, actor, "admin.user.update", resource_type="user", resource_id=user.id)
    return user


# -- operators (the `casehub` command on the server: incident response) --------------------------
def cut_off_client(session: Session, *, client_id: str) -> Client:
    """Switch a partner system off from the command line, whichever agency it belongs to: its
    live tokens are refused from the next request. Audited with no actor (the command line)."""
    client = session.execute(
        select(Client).where(Client.client_id == client_id).with_for_update(of=Client)
    ).scalar_one_or_none()
    if client is None:
        raise NotFound("No such client.")
    _switch_off(client)
    session.flush()
    audit.record(
        session, None, "admin.client.deactivate", resource_type="client", resource_id=client_id
    )
    return client


def cut_off_agency(session: Session, *, code: str) -> Agency:
    """Switch a whole agency off from the command line: every client, user and token of it is
    refused from the next request. Never the platform agency (nobody could switch it back on
    through the API)."""
    agency = session.get(Agency, code, with_for_update=True)
    if agency is None:
        raise NotFound("No such agency.")
    _refuse_platform_off(agency)
    _switch_off(agency)
    session.flush()
    audit.record(session, None, "admin.agency.update", resource_type="agency", resource_id=code)
    return agency
