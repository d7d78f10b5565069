"""Parsing request bodies: every way a body can fail to be usable JSON is a JSONDecodeError
(400), including what the standard parser lets through or falls over on."""

from __future__ import annotations

import json
import math
from typing import Any


def _no_constant(name: str) -> Any:
    # NaN, Infinity and -Infinity are Python's extensions, not JSON (RFC 8259 §6).
    raise ValueError(f"{name} is not JSON")


def _finite(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):  # 1e400: no JSON consumer can hold it
        raise ValueError("number out of range")
    return value


def loads(raw: bytes | str) -> Any:
    """The JSON value of `raw`, or json.JSONDecodeError: not UTF-8, not JSON (NaN and Infinity
    included), a number out of range, nested deeper than the parser can go (a RecursionError
    otherwise: a 500), or holding a lone UTF-16 surrogate such as "\\ud800" (valid JSON syntax
    but no Unicode character; PostgreSQL cannot store it)."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError as error:
        raise json.JSONDecodeError("JSON nested too deeply", text or " ", 0) from error
    except json.JSONDecodeError:
        raise
    except ValueError as error:  # an integer longer than Python converts (4,300 digits)
        raise json.JSONDecodeError("a number too long to read", text or " ", 0) from error
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        raise json.JSONDecodeError(
            "a string holds a lone surrogate (not a Unicode character)", text or " ", 0
        ) from error
    except RecursionError as error:  # pragma: no cover - the parser would have refused first
        raise json.JSONDecodeError("JSON nested too deeply", text or " ", 0) from error
    return value
