"""HTTP resources: one blueprint per resource, registered in this order."""

from __future__ import annotations

from casehub.api.base import Api


def register_blueprints(api: Api) -> None:
    from casehub.api import (
        access_requests,
        admin,
        agencies,
        emergency,
        indicators,
        matches,
        oauth,
        ops,
        referrals,
        shares,
        statistics,
        subjects,
        webhooks,
    )
    from casehub.api import audit as trail

    for module in (
        oauth,
        ops,
        agencies,
        indicators,
        subjects,
        matches,
        referrals,
        shares,
        access_requests,
        webhooks,
        admin,
        trail,
        emergency,
        statistics,
    ):
        api.register_blueprint(module.blp)
