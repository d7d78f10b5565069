"""The OpenAPI document as committed under openapi/: stable key order, trailing newline."""

from __future__ import annotations

import json

from flask import Flask


def spec_dict(app: Flask) -> dict[str, object]:
    with app.app_context():
        spec: dict[str, object] = app.extensions["casehub.api"].spec.to_dict()
    return spec


def render_spec(app: Flask) -> str:
    return json.dumps(spec_dict(app), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
