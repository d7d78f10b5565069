"""casehub: multi-agency referrals about children at risk of criminal exploitation."""

from casehub.app import create_app

__all__ = ["create_app"]
