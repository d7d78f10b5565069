"""casehub: multi-agency referrals about children at risk of criminal exploitation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from casehub.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use: gunicorn's master imports casehub.logs (its logger class) before
    # any worker exists, and must not import the application with it (prometheus_client reads
    # PROMETHEUS_MULTIPROC_DIR when imported, which gunicorn.conf.py sets later).
    if name == "create_app":
        from casehub.app import create_app

        return create_app
    raise AttributeError(f"module 'casehub' has no attribute {name!r}")
