"""HTTP resources: one blueprint per resource, registered in this order."""

from __future__ import annotations

from casehub.api.base import Api


def register_blueprints(api: Api) -> None:
    from casehub.api import agencies, indicators, oauth, ops, referrals, subjects

    for module in (oauth, ops, agencies, indicators, subjects, referrals):
        api.register_blueprint(module.blp)
