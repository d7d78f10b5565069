"""Resource protection: authlib's protector with casehub's token validator."""

from __future__ import annotations

from authlib.integrations.flask_oauth2 import ResourceProtector

from casehub.auth.tokens import AccessTokenValidator


def make_protector(validator: AccessTokenValidator) -> ResourceProtector:
    """Errors are not raised through authlib's Flask helper (flask-smorest would swallow their
    headers): web.py catches OAuth2Error and renders problem+json with WWW-Authenticate."""
    protector = ResourceProtector()
    protector.register_token_validator(validator)
    return protector
