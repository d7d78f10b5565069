"""Parsing request bodies: every way a body can fail to be usable JSON is a JSONDecodeError
(400), including what the standard parser lets through or falls over on."""

from __future__ import annotations

import json
from typing import Any


def loads(raw: bytes | str) -> Any:
    """The JSON value of `raw`, or json.JSONDecodeError: not UTF-8, not JSON, nested deeper than
    the parser can go (a RecursionError otherwise: a 500), or holding a lone UTF-16 surrogate
    such as "\\ud800" (valid JSON syntax but no Unicode character; PostgreSQL cannot store it)."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    try:
        value = json.loads(text)
    except RecursionError as error:
        raise json.JSONDecodeError("JSON nested too deeply", text or " ", 0) from error
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        raise json.JSONDecodeError(
            "a string holds a lone surrogate (not a Unicode character)", text or " ", 0
        ) from error
    except RecursionError as error:  # pragma: no cover - the parser would have refused first
        raise json.JSONDecodeError("JSON nested too deeply", text or " ", 0) from error
    return value
