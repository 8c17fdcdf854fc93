"""Request bodies as typed frozen dataclasses, turned into the JSON a provider is sent in one place.

A body's fields carry the provider's own names, declared in the order they go on the wire, so a body
class reads like the provider's documentation and the JSON keeps a stable order. An optional field
left at None is omitted -- never sent as `null` -- because the providers apply their own defaults to
absent fields, not to nulls.
"""
from __future__ import annotations

from dataclasses import fields


class WireBody:
    """Mixin for a frozen dataclass: `to_json()` is the dict sent (nested bodies and tuples converted)."""

    def to_json(self) -> dict:
        body = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and f.metadata.get("wire", True):
                body[f.name] = _plain(value)
        return body


def _plain(value):
    if isinstance(value, WireBody):
        return value.to_json()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value
