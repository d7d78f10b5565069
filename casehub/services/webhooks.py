"""An agency's webhook subscriptions: register, list, read, delete, rotate the secret, and the
log of delivery attempts. Another agency's subscription answers 404, like one that never was."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from casehub import audit
from casehub.auth.actor import Actor
from casehub.errors import NotFound, ValidationFailed
from casehub.models import Webhook, WebhookAttempt, WebhookDelivery
from casehub.services.events import EVENT_TYPES
from casehub.services.pagination import keyset_page
from casehub.webhooks import secrets
from casehub.webhooks.targets import Resolver, UnsafeTarget, check_url, system_resolver

ROTATION_OVERLAP = timedelta(hours=24)
MAX_WEBHOOKS_PER_AGENCY = 20


@dataclass(frozen=True)
class NewSecret:
    webhook: Webhook
    secret: str  # shown once


def check_target(url: str, *, allow_private: bool, resolver: Resolver = system_resolver) -> None:
    """422 naming `url` unless webhooks may be delivered there (checked again at delivery)."""
    try:
        check_url(url, allow_private=allow_private, resolver=resolver)
    except UnsafeTarget as error:
        raise ValidationFailed.field("url", str(error)) from error


def create_webhook(
    session: Session,
    *,
    actor: Actor,
    data: dict[str, Any],
    key: secrets.WebhookKey,
    allow_private: bool,
    now: datetime,
    resolver: Resolver = system_resolver,
) -> NewSecret:
    check_target(data["url"], allow_private=allow_private, resolver=resolver)
    types = list(dict.fromkeys(data["events"]))
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise ValidationFailed(
            "Unknown event type.",
            errors={"json": {"events": [f"Unknown event type: {t}" for t in unknown[:5]]}},
        )
    count = len(
        session.execute(
            select(Webhook.id)
            .where(Webhook.agency_code == actor.agency, Webhook.deleted_at.is_(None))
            .limit(MAX_WEBHOOKS_PER_AGENCY)
        ).all()
    )
    if count >= MAX_WEBHOOKS_PER_AGENCY:
        raise ValidationFailed.field(
            "url", f"An agency may have at most {MAX_WEBHOOKS_PER_AGENCY} subscriptions."
        )
    webhook = Webhook(
        id=uuid.uuid4(),
        agency_code=actor.agency,
        url=data["url"],
        events=types,
        secret_salt=secrets.new_salt(),
        created_at=now,
        created_by_client_id=actor.client_id,
        created_by_user_id=actor.user_id,
    )
    session.add(webhook)
    session.flush()
    audit.record(session, actor, "webhook.create", resource_type="webhook", resource_id=webhook.id)
    return NewSecret(webhook, key.secret(webhook.secret_salt))


def _own(session: Session, actor: Actor, webhook_id: uuid.UUID, action: str) -> Webhook:
    webhook = session.get(Webhook, webhook_id)
    if webhook is None or webhook.agency_code != actor.agency or webhook.deleted_at is not None:
        audit.record(
            session,
            actor,
            action,
            outcome="denied",
            resource_type="webhook",
            resource_id=webhook_id,
        )
        raise NotFound("No such webhook.")
    return webhook


def list_webhooks(
    session: Session, *, actor: Actor, limit: int, cursor: str | None
) -> tuple[list[Webhook], str | None]:
    stmt = select(Webhook).where(Webhook.agency_code == actor.agency, Webhook.deleted_at.is_(None))
    page = keyset_page(
        session, stmt, keys=[Webhook.created_at, Webhook.id], limit=limit, cursor=cursor
    )
    audit.record(session, actor, "webhook.list", resource_type="webhook")
    return page


def get_webhook(session: Session, *, actor: Actor, webhook_id: uuid.UUID) -> Webhook:
    webhook = _own(session, actor, webhook_id, "webhook.read")
    audit.record(session, actor, "webhook.read", resource_type="webhook", resource_id=webhook.id)
    return webhook


def delete_webhook(session: Session, *, actor: Actor, webhook_id: uuid.UUID, now: datetime) -> None:
    """Stop the subscription at once: its pending deliveries are cancelled."""
    webhook = _own(session, actor, webhook_id, "webhook.delete")
    webhook.deleted_at = now
    session.execute(
        WebhookDelivery.__table__.update()
        .where(WebhookDelivery.webhook_id == webhook.id, WebhookDelivery.status == "pending")
        .values(status="cancelled", finished_at=now)
    )
    session.flush()
    audit.record(session, actor, "webhook.delete", resource_type="webhook", resource_id=webhook.id)


def rotate_secret(
    session: Session,
    *,
    actor: Actor,
    webhook_id: uuid.UUID,
    key: secrets.WebhookKey,
    now: datetime,
) -> NewSecret:
    """A new secret, shown once; the one it replaces keeps signing for 24 hours too."""
    webhook = _own(session, actor, webhook_id, "webhook.rotate_secret")
    webhook.previous_secret_salt = webhook.secret_salt
    webhook.previous_secret_expires_at = now + ROTATION_OVERLAP
    webhook.secret_salt = secrets.new_salt()
    session.flush()
    audit.record(
        session, actor, "webhook.rotate_secret", resource_type="webhook", resource_id=webhook.id
    )
    return NewSecret(webhook, key.secret(webhook.secret_salt))


def signing_secrets(webhook: Webhook, key: secrets.WebhookKey, now: datetime) -> list[str]:
    """The secrets a delivery is signed with now: the current one, and the previous one during
    the 24 hours after a rotation."""
    in_use = [key.secret(webhook.secret_salt)]
    expires = webhook.previous_secret_expires_at
    if webhook.previous_secret_salt and expires is not None and expires > now:
        in_use.append(key.secret(webhook.previous_secret_salt))
    return in_use


def list_attempts(
    session: Session, *, actor: Actor, webhook_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[WebhookAttempt], str | None]:
    webhook = _own(session, actor, webhook_id, "webhook.deliveries")
    stmt = select(WebhookAttempt).where(WebhookAttempt.webhook_id == webhook.id)
    page = keyset_page(
        session,
        stmt,
        keys=[WebhookAttempt.attempted_at, WebhookAttempt.id],
        limit=limit,
        cursor=cursor,
    )
    audit.record(
        session, actor, "webhook.deliveries", resource_type="webhook", resource_id=webhook.id
    )
    return page
