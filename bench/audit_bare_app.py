"""The baseline for bench/audit_throughput.py: a bare flask-smorest + SQLAlchemy read of the same
referral row (with its categories and indicators, dumped by the same schema) — no token, no
audit, no request lifecycle. `gunicorn bench.audit_bare_app:app` (CASEHUB_DATABASE_URL set)."""

from __future__ import annotations

import os
import uuid
from typing import Any

from flask import Flask
from flask.views import MethodView
from flask_smorest import Api, Blueprint, abort
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from casehub.db import make_engine
from casehub.models import Referral
from casehub.schemas.referral import ReferralSchema

app = Flask("bare")
app.config.update(API_TITLE="bare", API_VERSION="1", OPENAPI_VERSION="3.1.0")
api = Api(app)
blp = Blueprint("referrals", __name__, url_prefix="/v1/referrals")
engine = make_engine(os.environ["CASEHUB_DATABASE_URL"])
sessions = sessionmaker(bind=engine, expire_on_commit=False)


@blp.route("/<uuid:referral_id>")
class ReferralById(MethodView):
    @blp.response(200, ReferralSchema)
    def get(self, referral_id: uuid.UUID) -> Any:
        with sessions() as session:
            referral = _read(session, referral_id)
            if referral is None:
                abort(404)
            return referral


def _read(session: Session, referral_id: uuid.UUID) -> Referral | None:
    return session.execute(
        select(Referral)
        .where(Referral.id == referral_id)
        .options(selectinload(Referral.category_rows), selectinload(Referral.indicator_rows))
    ).scalar_one_or_none()


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


api.register_blueprint(blp)
