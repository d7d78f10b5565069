"""Shared schema pieces: strict bodies, list arguments and pages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import marshmallow as ma
from marshmallow import validate

MAX_LIMIT = 200


NUL_MESSAGE = "Must not contain NUL characters."


def contains_nul(value: Any) -> bool:
    """Whether a parsed JSON value or query argument holds a NUL character anywhere."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(contains_nul(item) for item in value)
    return False


class StrictSchema(ma.Schema):
    """Unknown fields are refused (422), so a typo never silently drops data."""

    class Meta:
        unknown = ma.RAISE

    @ma.pre_load
    def _refuse_nul(self, data: Any, **_: Any) -> Any:
        """No text here has a use for NUL, and PostgreSQL cannot store one (it would be a 500
        at the database): 422 naming the field instead."""
        if isinstance(data, Mapping):
            refused = {name: [NUL_MESSAGE] for name in data if contains_nul(data[name])}
            if refused:
                raise ma.ValidationError(refused)
        return data


class ListArgsSchema(StrictSchema):
    limit = ma.fields.Integer(
        load_default=50,
        validate=validate.Range(min=1, max=MAX_LIMIT),
        metadata={"description": "Items per page (1..200)."},
    )
    cursor = ma.fields.String(
        validate=validate.Length(min=1, max=512),
        metadata={"description": "Opaque cursor from a previous page's `next_cursor`."},
    )


_page_schemas: dict[str, type[ma.Schema]] = {}


def page_of(item: type[ma.Schema]) -> type[ma.Schema]:
    """`{"items": [...], "next_cursor": str | null}` for one item schema (cached by name)."""
    name = item.__name__.removesuffix("Schema") + "PageSchema"
    if name not in _page_schemas:
        fields: dict[str, Any] = {
            "items": ma.fields.List(ma.fields.Nested(item), required=True),
            "next_cursor": ma.fields.String(
                required=True,
                allow_none=True,
                metadata={"description": "Pass as `cursor` for the next page; null at the end."},
            ),
        }
        _page_schemas[name] = ma.Schema.from_dict(fields, name=name)
    return _page_schemas[name]


def Text(
    max_length: int,
    *,
    required: bool = False,
    allow_none: bool = False,
    min_length: int = 1,
    **kw: Any,
) -> ma.fields.String:
    """A string with a documented maximum length, trimmed of surrounding white space."""
    return TrimmedString(
        required=required,
        allow_none=allow_none,
        validate=validate.Length(min=min_length, max=max_length),
        max_length=max_length,
        **kw,
    )


class TrimmedString(ma.fields.String):
    def __init__(self, *args: Any, max_length: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_length = max_length

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        result = super()._deserialize(value, attr, data, **kwargs)
        if not isinstance(result, str):
            return result
        if self.max_length is not None and len(result) > self.max_length:
            # The documented maxLength holds for the value as sent, white space included.
            raise ma.ValidationError(f"Longer than maximum length {self.max_length}.")
        return result.strip()
