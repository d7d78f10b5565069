"""Interactive API docs at /docs: Swagger UI 5 (it reads OpenAPI 3.1), served offline."""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Response, render_template_string, send_from_directory

from casehub.api.base import public
from casehub.errors import NotFound

# A plain Flask blueprint, registered with the app rather than the Api: the docs page is not part
# of the API, so flask-smorest must neither document it nor add a tag for it.
blp = Blueprint("docs", __name__)

SWAGGER_UI_DIST = Path(flask_swagger_ui.__file__).with_name("dist")
OWN_ASSETS = Path(__file__).with_name("docs_assets")
# Only what the page loads. The package's dist folder also holds an index.html and an
# oauth2-redirect.html with inline scripts that have no business running on this origin.
ASSETS = {
    "swagger-ui-bundle.js": SWAGGER_UI_DIST,
    "swagger-ui.css": SWAGGER_UI_DIST,
    "index.css": SWAGGER_UI_DIST,
    "favicon-16x16.png": SWAGGER_UI_DIST,
    "favicon-32x32.png": SWAGGER_UI_DIST,
    "casehub-docs.js": OWN_ASSETS,
}

# Only what Swagger UI was seen to need in Chromium (tests/test_docs_browser.py fails on any
# violation the console reports). No font-src: swagger-ui.css names system fonts only.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        # The bundle and our initializer, both files from this origin: no inline script, no eval.
        "script-src 'self'",
        # No 'unsafe-inline': React sets inline styles through the CSSOM, which CSP allows.
        "style-src 'self'",
        # Swagger UI draws its arrows and icons as data: SVGs.
        "img-src 'self' data:",
        # The OpenAPI document, "Try it out" and the token request behind "Authorize".
        "connect-src 'self'",
        "base-uri 'none'",
        # Swagger UI handles its forms in script; none may post anywhere else.
        "form-action 'self'",
        # Never framed: a page that sends requests with the caller's token is a clickjacking target.
        "frame-ancestors 'none'",
    )
)

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>casehub API</title>
  <link rel="stylesheet" href="{{ url_for('docs.asset', filename='index.css') }}">
  <link rel="stylesheet" href="{{ url_for('docs.asset', filename='swagger-ui.css') }}">
  <link rel="icon" type="image/png" sizes="32x32"
        href="{{ url_for('docs.asset', filename='favicon-32x32.png') }}">
  <link rel="icon" type="image/png" sizes="16x16"
        href="{{ url_for('docs.asset', filename='favicon-16x16.png') }}">
</head>
<body>
  <div id="swagger-ui" data-openapi-url="{{ url_for('api-docs.openapi_json') }}"></div>
  <script src="{{ url_for('docs.asset', filename='swagger-ui-bundle.js') }}"></script>
  <script src="{{ url_for('docs.asset', filename='casehub-docs.js') }}"></script>
</body>
</html>
"""


@blp.after_request
def _harden(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@blp.route("/docs")
@public
def page() -> str:
    return render_template_string(PAGE)


@blp.route("/docs/assets/<path:filename>")
@public
def asset(filename: str) -> Response:
    folder = ASSETS.get(filename)
    if folder is None:
        raise NotFound("No such file.")
    return send_from_directory(folder, filename, max_age=3600)
