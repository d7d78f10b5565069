"""The bare baseline for `python -m bench.compare`: flask-smorest + marshmallow + SQLAlchemy 2 and
nothing else — no token, no audit, no rate limit, no request lifecycle.

It serves the referral document casehub returns for `GET /v1/referrals/{id}`, stored as one row of
`bare_referrals` (scalars as plain columns, lists and objects as JSONB columns), and inserts the
same document for `POST /v1/referrals`. `BARE_DATABASE_URL` names the database;
`gunicorn bench.compare_bare_app:app`.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import Any

import marshmallow as ma
from flask import Flask
from flask.views import MethodView
from flask_smorest import Api, Blueprint, abort
from sqlalchemy import DateTime, Index, String, Text, Uuid, create_engine, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


class BareReferral(Base):
    __tablename__ = "bare_referrals"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    reference: Mapped[str] = mapped_column(String(40))
    subject_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    lead_agency: Mapped[str] = mapped_column(String(40))
    created_by: Mapped[dict[str, Any]] = mapped_column(JSONB)
    categories: Mapped[list[str]] = mapped_column(JSONB)
    indicators: Mapped[list[str]] = mapped_column(JSONB)
    summary: Mapped[str] = mapped_column(Text)
    narrative: Mapped[str | None] = mapped_column(Text)
    observed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    location: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    risk_level: Mapped[str] = mapped_column(String(20))
    immediate_action: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(30))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_bare_referrals_risk_created", "risk_level", "created_at", "id"),)


COLUMNS = [c.name for c in BareReferral.__table__.columns]


class ReferralSchema(ma.Schema):
    id = ma.fields.UUID(required=True)
    reference = ma.fields.String(required=True)
    subject_id = ma.fields.UUID(required=True)
    lead_agency = ma.fields.String(required=True)
    created_by = ma.fields.Dict(required=True)
    categories = ma.fields.List(ma.fields.String(), required=True)
    indicators = ma.fields.List(ma.fields.String(), required=True)
    summary = ma.fields.String(required=True)
    narrative = ma.fields.String(allow_none=True, required=True)
    observed_at = ma.fields.DateTime(required=True)
    location = ma.fields.Dict(allow_none=True, required=True)
    risk_level = ma.fields.String(required=True)
    immediate_action = ma.fields.String(allow_none=True, required=True)
    status = ma.fields.String(required=True)
    created_at = ma.fields.DateTime(required=True)
    updated_at = ma.fields.DateTime(required=True)


class ReferralCreateSchema(ma.Schema):
    subject = ma.fields.Dict(required=True)
    categories = ma.fields.List(ma.fields.String(), required=True)
    indicators = ma.fields.List(ma.fields.String(), load_default=list)
    summary = ma.fields.String(required=True)
    narrative = ma.fields.String(allow_none=True, load_default=None)
    observed_at = ma.fields.AwareDateTime(required=True)
    location = ma.fields.Dict(allow_none=True, load_default=None)
    risk_level = ma.fields.String(required=True)
    immediate_action = ma.fields.String(allow_none=True, load_default=None)


class ListArgsSchema(ma.Schema):
    limit = ma.fields.Integer(load_default=50, validate=ma.validate.Range(min=1, max=100))
    risk_level = ma.fields.String()
    status = ma.fields.String()


class PageSchema(ma.Schema):
    items = ma.fields.List(ma.fields.Nested(ReferralSchema), required=True)
    next_cursor = ma.fields.String(allow_none=True, required=True)


app = Flask("bare")
app.config.update(API_TITLE="bare", API_VERSION="1", OPENAPI_VERSION="3.1.0")
api = Api(app)
blp = Blueprint("referrals", __name__, url_prefix="/v1/referrals")
engine = create_engine(os.environ.get("BARE_DATABASE_URL", "sqlite://"), pool_pre_ping=False)
sessions = sessionmaker(bind=engine, expire_on_commit=False)


@blp.route("")
class Referrals(MethodView):
    @blp.arguments(ListArgsSchema, location="query")
    @blp.response(200, PageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        query = select(BareReferral)
        for name in ("risk_level", "status"):
            if name in args:
                query = query.where(getattr(BareReferral, name) == args[name])
        query = query.order_by(BareReferral.created_at, BareReferral.id).limit(args["limit"])
        with sessions() as session:
            items = list(session.execute(query).scalars())
        return {"items": items, "next_cursor": None}

    @blp.arguments(ReferralCreateSchema)
    @blp.response(201, ReferralSchema)
    def post(self, data: dict[str, Any]) -> BareReferral:
        now = datetime.now(UTC)
        referral = BareReferral(
            id=uuid.uuid4(),
            reference=f"BARE-{now.year}-{uuid.uuid4().hex[:6]}",
            subject_id=uuid.uuid4(),
            lead_agency="btp",
            created_by={"agency": "btp", "client_id": "bare", "user_id": None},
            categories=data["categories"],
            indicators=data["indicators"],
            summary=data["summary"],
            narrative=data["narrative"],
            observed_at=data["observed_at"],
            location=data["location"],
            risk_level=data["risk_level"],
            immediate_action=data["immediate_action"],
            status="submitted",
            created_at=now,
            updated_at=now,
        )
        with sessions() as session, session.begin():
            session.add(referral)
        return referral


@blp.route("/<uuid:referral_id>")
class ReferralById(MethodView):
    @blp.response(200, ReferralSchema)
    def get(self, referral_id: uuid.UUID) -> Any:
        with sessions() as session:
            referral = session.get(BareReferral, referral_id)
        if referral is None:
            abort(404)
        return referral


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


api.register_blueprint(blp)
