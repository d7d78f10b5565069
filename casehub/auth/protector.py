"""Resource protection: authlib's protector with casehub's token validator."""

from __future__ import annotations

from typing import Any

from authlib.integrations.flask_oauth2 import ResourceProtector
from flask import g, request

from casehub.auth.tokens import AccessTokenValidator


class Protector(ResourceProtector):
    """authlib's Flask protector, reading only the Authorization header.

    authlib's `acquire_token` first copies the whole request into an OAuth request object (its
    URL, headers and form, on every request), which casehub's validator never reads, and sends
    a `token_authenticated` signal nobody in casehub receives: a few percent of an audited
    read's CPU. The checks are authlib's own, in its order: the header, the validator's
    request check, the token, its scope."""

    def acquire_token(self, scopes: Any = None, **kwargs: Any) -> Any:
        if isinstance(scopes, str):
            scopes = [scopes]
        validator, token_string = self.parse_request_authorization(request)
        validator.validate_request(request)
        token = validator.authenticate_token(token_string)
        validator.validate_token(token, scopes, request, **kwargs)
        g.authlib_server_oauth2_token = token  # what authlib's `current_token` reads
        return token


def make_protector(validator: AccessTokenValidator) -> ResourceProtector:
    """Errors are not raised through authlib's Flask helper (flask-smorest would swallow their
    headers): web.py catches OAuth2Error and renders problem+json with WWW-Authenticate."""
    protector = Protector()
    protector.register_token_validator(validator)
    return protector
