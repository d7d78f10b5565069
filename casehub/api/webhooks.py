"""Partner notifications (CONTRACT §6): an agency's webhook subscriptions and its event feed."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app, url_for
from flask.views import MethodView

from casehub.api.base import Blueprint, current_actor, problem_response
from casehub.db import get_session, utcnow
from casehub.schemas.common import ListArgsSchema, page_of
from casehub.schemas.webhook import (
    EventArgsSchema,
    EventPageSchema,
    WebhookAttemptSchema,
    WebhookCreatedSchema,
    WebhookCreateSchema,
    WebhookSchema,
)
from casehub.services import events
from casehub.services import webhooks as service
from casehub.webhooks import secrets
from casehub.webhooks.targets import Resolver, system_resolver

blp = Blueprint(
    "webhooks",
    __name__,
    url_prefix="/v1",
    description=(
        "Partner notifications. When something happens to a referral an agency can see, casehub "
        "writes an event for that agency in the same transaction as the change, and delivers it "
        "to the agency's subscriptions following the Standard Webhooks specification: a POST "
        "of `{id, type, occurred_at, data}` (ids and agency codes only, never a child's data: "
        "fetch the record with a token, and that read is audited) with `webhook-id` (the event "
        "id, the same on every retry: use it to drop duplicates), `webhook-timestamp` and "
        "`webhook-signature` (`v1,<base64 HMAC-SHA256>` of `id.timestamp.body`, one per secret "
        "in use, space-separated). At least once: answer 2xx within 15 seconds; anything else "
        "(redirects included, which are never followed) is retried with growing back-off and "
        "jitter for at least 24 hours, honouring `Retry-After`. 410 Gone disables the "
        "subscription at once, and 24 hours of failure disables it too; either way the agency "
        "hears `webhook.disabled` in its feed. `GET /v1/events` serves the same events for "
        "partners that cannot take webhooks."
    ),
)

NOT_FOUND = {"404": problem_response("No such webhook in the caller's agency.")}


def _key() -> secrets.WebhookKey:
    return secrets.load_key(current_app)


def _resolver() -> Resolver:
    resolver: Resolver = current_app.extensions.get("casehub.webhook_resolver", system_resolver)
    return resolver


@blp.route("/webhooks")
class Webhooks(MethodView):
    @blp.requires("webhooks:manage")
    @blp.arguments(ListArgsSchema, location="query")
    @blp.response(200, page_of(WebhookSchema))
    @blp.doc(
        operationId="listWebhooks",
        summary="The agency's webhook subscriptions",
        description="Deleted subscriptions are not listed. Ordered by created_at, then id.",
    )
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        items, next_cursor = service.list_webhooks(
            get_session(), actor=current_actor(), limit=args["limit"], cursor=args.get("cursor")
        )
        return {"items": items, "next_cursor": next_cursor}

    @blp.requires("webhooks:manage")
    @blp.idempotent
    @blp.replay_without("secret")
    @blp.arguments(WebhookCreateSchema)
    @blp.response(201, WebhookCreatedSchema, headers={"Location": {"schema": {"type": "string"}}})
    @blp.doc(
        operationId="createWebhook",
        summary="Subscribe to events",
        description=(
            "Returns the signing `secret` once. 422 (naming `url`) when the URL is not https, "
            "carries credentials or a fragment, or resolves to a private, loopback, link-local, "
            "multicast or other internal address (IPv4 or IPv6); the same check runs again at "
            "every delivery, which connects to the address it checked. An agency may hold at "
            f"most {service.MAX_WEBHOOKS_PER_AGENCY} subscriptions."
        ),
    )
    def post(self, data: dict[str, Any]) -> Any:
        created = service.create_webhook(
            get_session(),
            actor=current_actor(),
            data=data,
            key=_key(),
            allow_private=current_app.config["WEBHOOKS_ALLOW_PRIVATE"],
            now=utcnow(),
            resolver=_resolver(),
        )
        location = url_for("webhooks.WebhookById", webhook_id=created.webhook.id)
        return created, 201, {"Location": location}


@blp.route("/webhooks/<uuid:webhook_id>")
class WebhookById(MethodView):
    @blp.requires("webhooks:manage")
    @blp.response(200, WebhookSchema)
    @blp.doc(
        operationId="getWebhook",
        summary="One subscription",
        description="Its status shows whether deliveries are being made.",
        responses=NOT_FOUND,
    )
    def get(self, webhook_id: uuid.UUID) -> Any:
        return service.get_webhook(get_session(), actor=current_actor(), webhook_id=webhook_id)

    @blp.requires("webhooks:manage")
    @blp.response(204)
    @blp.doc(
        operationId="deleteWebhook",
        summary="Unsubscribe",
        description="Nothing more is delivered, including retries already due; the feed keeps "
        "serving the agency's events. A deleted subscription answers 404.",
        responses=NOT_FOUND,
    )
    def delete(self, webhook_id: uuid.UUID) -> None:
        service.delete_webhook(
            get_session(), actor=current_actor(), webhook_id=webhook_id, now=utcnow()
        )


@blp.route("/webhooks/<uuid:webhook_id>/rotate-secret")
class RotateSecret(MethodView):
    @blp.requires("webhooks:manage")
    @blp.response(200, WebhookCreatedSchema)
    @blp.doc(
        operationId="rotateWebhookSecret",
        summary="Replace the signing secret",
        description=(
            "Returns the new secret once. For the next 24 hours (`previous_secret_expires_at`) "
            "every delivery carries two signatures, one per secret, so the receiver can switch "
            "at any moment; then only the new one signs. Rotating again within the 24 hours "
            "drops the oldest secret at once."
        ),
        responses=NOT_FOUND,
    )
    def post(self, webhook_id: uuid.UUID) -> Any:
        return service.rotate_secret(
            get_session(), actor=current_actor(), webhook_id=webhook_id, key=_key(), now=utcnow()
        )


@blp.route("/webhooks/<uuid:webhook_id>/deliveries")
class Deliveries(MethodView):
    @blp.requires("webhooks:manage")
    @blp.arguments(ListArgsSchema, location="query")
    @blp.response(200, page_of(WebhookAttemptSchema))
    @blp.doc(
        operationId="listWebhookDeliveries",
        summary="Delivery attempts of a subscription",
        description=(
            "Every attempt: which event, which try, when, the HTTP status or the error, how "
            "long it took and at most 200 characters of the answer. Ordered by attempted_at, "
            "then id; kept as long as the events (30 days by default)."
        ),
        responses=NOT_FOUND,
    )
    def get(self, args: dict[str, Any], webhook_id: uuid.UUID) -> dict[str, Any]:
        items, next_cursor = service.list_attempts(
            get_session(),
            actor=current_actor(),
            webhook_id=webhook_id,
            limit=args["limit"],
            cursor=args.get("cursor"),
        )
        return {"items": items, "next_cursor": next_cursor}


@blp.route("/events")
class Events(MethodView):
    @blp.requires("referrals:read", "webhooks:manage")
    @blp.arguments(EventArgsSchema, location="query")
    @blp.response(200, EventPageSchema)
    @blp.doc(
        operationId="listEvents",
        summary="The agency's event feed",
        description=(
            "The events the agency's webhooks receive (whether or not it has any), in the order "
            "they were committed, kept for 30 days (CASEHUB_EVENTS_RETENTION_DAYS); without a "
            "cursor, from the oldest kept. Follow `next_cursor` as for any list until it is "
            "null: that is everything there is now. Keep the last page's `poll_cursor` and "
            "pass it as `cursor` on the next poll to get only what came after (an empty page: "
            "nothing new yet). An event is served once every database transaction that began "
            "before it committed has ended (usually within milliseconds; a long-running one "
            "delays the feed and never reorders it), so a cursor never skips an event that "
            "commits late. Needs `referrals:read` or `webhooks:manage`."
        ),
    )
    def get(self, args: dict[str, Any]) -> events.FeedPage:
        return events.feed(
            get_session(),
            actor=current_actor(),
            types=args.get("type") or [],
            limit=args["limit"],
            cursor=args.get("cursor"),
        )


def document_deliveries(spec: Any) -> None:
    """The request casehub sends to a subscription's URL, as an OpenAPI 3.1 `webhooks` entry,
    so a partner can generate (and test) its receiver from the same document."""
    header = {"in": "header", "required": True}
    spec.options.setdefault("webhooks", {})["event"] = {
        "post": {
            "operationId": "receiveEvent",
            "tags": ["webhooks"],
            "summary": "A notification, as casehub POSTs it to a subscription",
            "description": (
                "Standard Webhooks: verify `webhook-signature` (HMAC-SHA256 with the secret "
                "shown when the subscription was made, over `webhook-id.webhook-timestamp.body` "
                "exactly as received) and reject a timestamp more than 5 minutes away, e.g. "
                "with `standardwebhooks.Webhook(secret).verify(body, headers)`. Then drop "
                "duplicates by `webhook-id` (delivery is at least once), answer 2xx within 15 "
                "seconds, and fetch the record with a token. Only the event types the "
                "subscription names are sent."
            ),
            "security": [],
            "parameters": [
                {
                    **header,
                    "name": "webhook-id",
                    "description": "The event id: the same on every retry.",
                    "schema": {"type": "string", "format": "uuid"},
                },
                {
                    **header,
                    "name": "webhook-timestamp",
                    "description": "Unix time (seconds) of this attempt.",
                    "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
                },
                {
                    **header,
                    "name": "webhook-signature",
                    "description": "`v1,<base64 HMAC-SHA256>`, one per secret in use "
                    "(two for 24 hours after a rotation), separated by spaces.",
                    "schema": {"type": "string", "maxLength": 200},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Event"}}},
            },
            "responses": {
                "204": {"description": "Received; any 2xx will do."},
                "410": {
                    "description": "The receiver is gone for good: casehub disables the "
                    "subscription and stops delivering."
                },
            },
        }
    }
