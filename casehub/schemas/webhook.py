"""Webhook subscriptions, their delivery attempts, and the event feed (CONTRACT §6)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from casehub.schemas import enums
from casehub.schemas.common import ListArgsSchema, StrictSchema, page_of
from casehub.webhooks.targets import MAX_URL_LENGTH


class WebhookCreateSchema(StrictSchema):
    url = ma.fields.String(
        required=True,
        validate=validate.Length(min=1, max=MAX_URL_LENGTH),
        metadata={
            "description": "An `https` URL whose every address is public (checked now and again "
            "at each delivery; no credentials or fragment). Deployments for demos and tests may "
            "allow `http` and private addresses (CASEHUB_WEBHOOKS_ALLOW_PRIVATE=1).",
            "example": "https://cases.example.org/casehub/webhooks",
        },
    )
    events = ma.fields.List(
        enums.EVENT_TYPE.field(),
        required=True,
        validate=validate.Length(min=1, max=len(enums.EVENT_TYPE.values)),
        metadata={"description": "The event types to deliver (repeats are ignored)."},
    )


class WebhookSchema(ma.Schema):
    id = ma.fields.UUID(required=True)
    url = ma.fields.String(required=True)
    events = ma.fields.List(enums.EVENT_TYPE.field(), required=True)
    status = enums.WEBHOOK_STATUS.field(required=True)
    disabled_at = ma.fields.AwareDateTime(required=True, allow_none=True)
    disabled_reason = enums.WEBHOOK_DISABLED_REASON.field(required=True, allow_none=True)
    created_at = ma.fields.AwareDateTime(required=True)
    last_success_at = ma.fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "When a delivery last succeeded."},
    )
    failing_since = ma.fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={
            "description": "The first failed attempt since the last success; after 24 hours of "
            "failure the subscription is disabled."
        },
    )
    previous_secret_expires_at = ma.fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={
            "description": "After a rotation: until when deliveries are also signed with the "
            "previous secret."
        },
    )

    def get_attribute(self, obj: Any, attr: str, default: Any) -> Any:
        if attr == "status":
            return "disabled" if obj.disabled_at is not None else "active"
        return super().get_attribute(obj, attr, default)


class WebhookCreatedSchema(WebhookSchema):
    secret = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "The signing secret (`whsec_` + base64 of 32 bytes), shown only in "
            "this response: casehub keeps no copy it could show again. Verify deliveries with "
            "any Standard Webhooks library. null when an Idempotency-Key replays the creation.",
            "example": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        },
    )

    def get_attribute(self, obj: Any, attr: str, default: Any) -> Any:
        """Dumps a `services.webhooks.NewSecret`: the subscription plus its one-time secret."""
        if attr == "secret":
            return obj.secret
        return super().get_attribute(obj.webhook, attr, default)


class WebhookAttemptSchema(ma.Schema):
    id = ma.fields.UUID(required=True)
    event_id = ma.fields.UUID(
        required=True, metadata={"description": "The event, and the `webhook-id` header sent."}
    )
    event_type = enums.EVENT_TYPE.field(required=True)
    attempt = ma.fields.Integer(
        required=True, metadata={"description": "1 for the first try of this event."}
    )
    attempted_at = ma.fields.AwareDateTime(required=True)
    outcome = enums.DELIVERY_OUTCOME.field(required=True)
    http_status = ma.fields.Integer(
        required=True, allow_none=True, metadata={"description": "null when nothing answered."}
    )
    error = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Why no usable answer came (timeout, refused, unsafe target)."},
    )
    duration_ms = ma.fields.Integer(required=True)
    response_excerpt = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "At most 200 characters of the receiver's answer."},
    )


class EventArgsSchema(ListArgsSchema):
    type = ma.fields.List(
        enums.EVENT_TYPE.field(),
        metadata={"description": "Only these types (repeat the parameter for several)."},
    )


class EventDataSchema(ma.Schema):
    """Ids and agency codes only: fetch the record with a token to see it (that read is
    audited)."""

    class Meta:
        unknown = ma.INCLUDE

    agency = ma.fields.String(
        metadata={
            "description": "The agency whose action caused the event (absent for events "
            "casehub itself raises, such as webhook.disabled)."
        }
    )
    referral_id = ma.fields.UUID()
    share_id = ma.fields.UUID()
    note_id = ma.fields.UUID()
    webhook_id = ma.fields.UUID()

    @ma.post_dump(pass_original=True)
    def _as_stored(self, _dumped: Any, original: Any, **_: Any) -> Any:
        """Every id the event carries, including those of types added later."""
        return dict(original)

    reason = enums.WEBHOOK_DISABLED_REASON.field(metadata={"description": "webhook.disabled only."})


class EventSchema(ma.Schema):
    id = ma.fields.UUID(
        required=True,
        metadata={"description": "Unique per event and recipient; the `webhook-id` header."},
    )
    type = enums.EVENT_TYPE.field(required=True)
    occurred_at = ma.fields.AwareDateTime(required=True)
    data = ma.fields.Nested(EventDataSchema, required=True)


class EventPageSchema(page_of(EventSchema)):  # type: ignore[misc]
    """A list page like any other, plus where to resume polling from."""

    poll_cursor = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "Where this page ends: pass as `cursor` when polling later to get "
            "only newer events (on an empty page, the cursor that was sent). null only when the "
            "agency has had no event yet."
        },
    )
